"""
Build the player service for C{twistd replayforge-player -c FILE}.
"""

from __future__ import annotations

import signal
from typing import Any, cast

from treq.client import HTTPClient
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource

from replayforge.config import ConfigError
from replayforge.logs import configure_daemon
from replayforge.lua import ScriptError
from replayforge.metrics import DaemonMetrics, player_samples
from replayforge.nodeinfo import (
    REPORT_INTERVAL_SECONDS,
    NodeReporter,
    NodeTarget,
    host_figures,
)
from replayforge.outgoing import client_pool, make_agent
from replayforge.periodic import PeriodicTask
from replayforge.player.api import PlayerAPI, StatusAPI
from replayforge.player.auth import basic_auth
from replayforge.player.config import (
    PlayerConfig,
    PlayerSourceConfig,
    load_player_config,
)
from replayforge.player.processing import (
    EventProcessor,
    has_timer,
    load_processor,
)
from replayforge.player.puller import BucketPuller
from replayforge.player.queue import QUEUE_FILE, PlayerQueue
from replayforge.player.relay_client import REQUEST_TIMEOUT_SECONDS
from replayforge.player.relay_client import HTTPClient as RelayClient
from replayforge.player.relay_proxy import RelayStatusProxy
from replayforge.player.sinks.base import Sink
from replayforge.player.sinks.factory import make_sink
from replayforge.player.worker import SinkWorker
from replayforge.store import StoreUnavailable
from replayforge.tailscale import LocalAPI, TailnetListener, tailnet_listen_problem
from replayforge.tapbase import DaemonOptions
from replayforge.web import listening_service, make_site

log = Logger()


class Options(DaemonOptions):
    """Options of C{twistd replayforge-player}."""

    synopsis = "-c FILE"
    longdesc = "Pull batches from a relay and replay them to sinks."


class PlayerService(MultiService):
    """
    The player: its sinks' durable queue, one worker per sink, one pull loop
    per bucket, its listeners.
    """

    def __init__(
        self, config: PlayerConfig, reactor: Any, client: RelayClient | None = None
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self.config = config
        self._reactor = reactor
        self._local_api: LocalAPI | None = None
        self.started: float = reactor.seconds()
        self._previous_sighup: Any = None
        # Scripts are checked before any file is opened.
        processors = [
            (source, load_processor(source, config.source_file))
            for source in config.sources
        ]
        self.queue = PlayerQueue(
            config.data_dir / QUEUE_FILE,
            reactor,
            max_events=config.queue_max_events,
            max_dead_letters=config.dead_letter_max_events,
        )
        self.sinks: dict[str, Sink] = {}
        try:
            for sink_config in config.sinks:
                self.sinks[sink_config.name] = make_sink(
                    sink_config, reactor, self.queue.instance
                )
            self._build(processors, reactor, client)
        except BaseException:
            # A half-built player must not leave database threads behind.
            for sink in self.sinks.values():
                sink.stop()
            self.queue.close()
            raise

    def _build(
        self,
        processors: list[tuple[PlayerSourceConfig, EventProcessor]],
        reactor: Any,
        client: RelayClient | None,
    ) -> None:
        config = self.config
        self.workers = [
            SinkWorker(sink, self.queue, reactor) for sink in self.sinks.values()
        ]
        self._pool = client_pool(reactor)
        # Every bucket holds one long poll open to the same relay.
        self._pool.maxPersistentPerHost = len(config.sources) + 2
        if client is None:
            agent = make_agent(
                reactor,
                config.relay_outgoing,
                "relay client",
                self._pool,
                REQUEST_TIMEOUT_SECONDS,
            )
            # treq's keyword-only signature is wider than what the puller
            # calls; the protocol names only that part.
            client = cast(RelayClient, HTTPClient(agent))

        self.pullers: list[BucketPuller] = []
        for source, processor in processors:
            puller = BucketPuller(
                config, source, processor, self.sinks, self.queue, client, reactor
            )
            self.pullers.append(puller)
            if has_timer(processor) and source.hook_interval > 0:
                PeriodicTask(  # type: ignore[no-untyped-call]  # unannotated in Twisted
                    f"{source.name}-timer",
                    source.hook_interval,
                    puller.run_timer,
                    reactor,
                ).setServiceParent(self)

        sinks = list(self.sinks.values())
        if config.listen:
            relay_status = None
            if config.relay_url_statusz:
                relay_status = RelayStatusProxy(
                    config.relay_url_statusz, client, reactor
                )
            exposed = PlayerAPI(sinks, config.static_folder, relay_status)
            self._listen(
                config.listen,
                exposed.app.resource(),
                reactor,
                "listenUsingTailscale" if self._exposed_on_tailnet() else None,
            )
        self._watch(client, reactor)
        if config.listen_status:
            self._listen(
                config.listen_status,
                self.status.app.resource(),
                reactor,
                "useTsnetStatusZ" if self._status_on_tailnet() else None,
            )
        for sink in sinks:
            description = sink.listen_description()
            resource = sink.resource()
            if description and resource is not None:
                # The Go player served a sink's API under /<sink id>/ on its
                # own port too; clients of that port keep their URLs.
                root = Resource()
                root.putChild(sink.id.encode("utf-8"), resource)
                self._listen(description, root, reactor)

    def _watch(self, client: RelayClient, reactor: Any) -> None:
        """Set up the status page, metrics, per-minute counts, node reports."""
        config = self.config
        sinks = list(self.sinks.values())
        self.metrics = DaemonMetrics(
            "player",
            lambda: player_samples(
                reactor.seconds() - self.started, self.pullers, sinks, self.queue
            ),
        )
        for sink in sinks:
            sink.stats.observe_batch = self.metrics.batch_observer(sink=sink.name)
        self.status = StatusAPI(
            self.pullers,
            sinks,
            reactor,
            self.queue,
            self.metrics,
            (config.env_name, config.host_name),
        )
        PeriodicTask("minute", 60.0, self.next_minute, reactor).setServiceParent(self)  # type: ignore[no-untyped-call]  # unannotated in Twisted

        def post(
            url: str,
            /,
            *,
            data: bytes,
            headers: dict[bytes | str, list[bytes | str]],
            timeout: float,
        ) -> Deferred[Any]:
            return client.request(
                "POST", url, data=data, headers=headers, timeout=timeout
            )

        targets = [
            NodeTarget(config.relay_url, source.name, source.bearer, post)
            for source in config.sources[:1]
        ]
        self.node_reporter = NodeReporter(
            targets,
            reactor,
            config.env_name,
            config.host_name,
            self.status.status,
            lambda: host_figures(str(config.data_dir.resolve())),
        )
        # The first report goes out at start: a relay learns of a new host
        # at once.
        PeriodicTask(  # type: ignore[no-untyped-call]  # unannotated in Twisted
            "node-info",
            REPORT_INTERVAL_SECONDS,
            self.node_reporter.send,
            reactor,
            now=True,
        ).setServiceParent(self)

    def next_minute(self) -> None:
        """Start a new minute of every per-minute count."""
        for puller in self.pullers:
            puller.stats.next_minute()
        for sink in self.sinks.values():
            sink.stats.next_minute()

    def _listen(
        self,
        description: str,
        resource: IResource,
        reactor: Any,
        tailnet_key: str | None = None,
    ) -> None:
        """
        Serve C{resource} behind the player's basic auth at C{description},
        or, when C{tailnet_key} names the key asking for it, at the same port
        on this node's tailnet addresses.
        """
        guarded = basic_auth(
            resource, self.config.http_username, self.config.http_password
        )
        site = make_site(guarded, reactor=reactor)
        if tailnet_key is None:
            listening_service(description, site, reactor).setServiceParent(self)
            return
        if self._local_api is None:
            self._local_api = LocalAPI(reactor, self.config.tailscale_socket)
        listener = TailnetListener(
            tailnet_key, description, site, self._local_api, reactor
        )
        listener.setServiceParent(self)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def _on_tailnet(self, wanted: bool, description: str | None) -> bool:
        """
        Whether a listener asked onto the tailnet (C{wanted}) goes there: only
        with a tsnet section and an address the tailnet can take.
        """
        return bool(
            self.config.use_tsnet
            and wanted
            and description
            and not tailnet_listen_problem(description)
        )

    def _exposed_on_tailnet(self) -> bool:
        return self._on_tailnet(self.config.listen_using_tailscale, self.config.listen)

    def _status_on_tailnet(self) -> bool:
        config = self.config
        return self._on_tailnet(config.status_using_tailscale, config.listen_status)

    def _tailscale_lines(self) -> list[str]:
        """Say what the player does with its Tailscale keys."""
        config = self.config
        lines = []
        for key, wanted, on_tailnet, description in [
            (
                "listenUsingTailscale",
                config.listen_using_tailscale,
                self._exposed_on_tailnet(),
                config.listen,
            ),
            (
                "useTsnetStatusZ",
                config.status_using_tailscale,
                self._status_on_tailnet(),
                config.listen_status,
            ),
        ]:
            if on_tailnet:
                lines.append(
                    f"{key}: listening on this node's tailnet addresses "
                    f"({description}) as soon as tailscaled at "
                    f"{config.tailscale_socket} tells them"
                )
            elif wanted and not config.use_tsnet:
                lines.append(f"{key} ignored without a tsnet section, as in Go")
            elif wanted:
                problem = (
                    tailnet_listen_problem(description)
                    if description
                    else "no listener"
                )
                lines.append(f"{key} ignored: {description or 'off'} ({problem})")
        if config.tsnet_hostname:
            lines.append(
                f"tsnet hostname {config.tsnet_hostname!r} ignored: the node "
                f"keeps the name tailscaled gave it"
            )
        return lines

    def startService(self) -> None:
        """
        Open the sinks and start their workers, the listeners and timers,
        then pull.
        """
        for sink in self.sinks.values():
            sink.start().addErrback(_log_start_failure, sink.name)
        for worker in self.workers:
            worker.start()
        for name in self.queue.queued_sinks():
            if name not in self.sinks:
                log.warn(
                    "{count} events wait in the queue for sink {sink}, which is "
                    "no longer configured; they stay there",
                    count=self.queue.depth(name),
                    sink=name,
                )
        self._install_sighup()
        for line in self._tailscale_lines():
            log.info("{line}", line=line)
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        for puller in self.pullers:
            log.info(
                "pulling bucket {bucket} from {relay}",
                bucket=puller.bucket,
                relay=self.config.relay_url,
            )
            puller.start()

    def stopService(self) -> Deferred[Any]:
        """
        Stop pulling and delivering, then close the listeners, the sinks,
        the queue and connections.
        """
        self._restore_sighup()
        pulled = DeferredList([puller.stop() for puller in self.pullers])
        delivered = DeferredList([worker.stop() for worker in self.workers])

        async def stop_the_rest() -> None:
            await pulled
            await delivered
            await super(PlayerService, self).stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
            await DeferredList([sink.stop() for sink in self.sinks.values()])
            self.queue.close()
            await self._pool.closeCachedConnections()

        return Deferred.fromCoroutine(stop_the_rest())

    def reopen_files(self) -> None:
        """Have every sink reopen the files it appends to."""
        for sink in self.sinks.values():
            sink.reopen_files()

    def _install_sighup(self) -> None:
        # logrotate sends SIGHUP once it moved a log sink's file; the
        # handler only hands the work to the reactor.
        def on_sighup(number: int, frame: Any) -> None:
            self._reactor.callFromThread(self.reopen_files)

        try:
            self._previous_sighup = signal.signal(signal.SIGHUP, on_sighup)
        except ValueError:
            # Not the main thread (a test harness): no signal handling.
            self._previous_sighup = None

    def _restore_sighup(self) -> None:
        previous, self._previous_sighup = self._previous_sighup, None
        if previous is not None:
            signal.signal(signal.SIGHUP, previous)


def _log_start_failure(failure: Failure, name: str) -> None:
    log.failure("sink {sink} failed to start", failure, sink=name)


def makeService(options: usage.Options) -> IService:
    """Build the player for twistd, from the real reactor."""
    from twisted.internet import reactor

    try:
        config = load_player_config(options["config"])
        warning = configure_daemon(
            "player",
            [source.bearer for source in config.sources] + [config.http_password],
        )
        if warning:
            log.warn("{warning}", warning=warning)
        return PlayerService(config, reactor)
    except (ConfigError, ScriptError, StoreUnavailable) as error:
        raise SystemExit(f"replayforge-player: {error}") from None
