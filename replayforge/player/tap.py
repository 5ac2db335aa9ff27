"""
Build the player service for C{twistd replayforge-player -c FILE}.
"""

from __future__ import annotations

import signal
from typing import Any, cast

from treq.client import HTTPClient
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.client import Agent
from twisted.web.resource import IResource, Resource

from replayforge.config import ConfigError
from replayforge.lua import ScriptError
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
from replayforge.tapbase import DaemonOptions
from replayforge.web import client_pool, listening_service, make_site

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
            agent = Agent(
                reactor, pool=self._pool, connectTimeout=REQUEST_TIMEOUT_SECONDS
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
            self._listen(config.listen, exposed.app.resource(), reactor)
        if config.listen_status:
            status = StatusAPI(self.pullers, sinks, reactor, self.queue)
            self._listen(config.listen_status, status.app.resource(), reactor)
        for sink in sinks:
            description = sink.listen_description()
            resource = sink.resource()
            if description and resource is not None:
                # The Go player served a sink's API under /<sink id>/ on its
                # own port too; clients of that port keep their URLs.
                root = Resource()
                root.putChild(sink.id.encode("utf-8"), resource)
                self._listen(description, root, reactor)

    def _listen(self, description: str, resource: IResource, reactor: Any) -> None:
        guarded = basic_auth(
            resource, self.config.http_username, self.config.http_password
        )
        listening_service(description, make_site(guarded), reactor).setServiceParent(
            self
        )

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
        if self.config.tsnet_hostname or self.config.listen_using_tailscale:
            log.warn(
                "tsnet and listenUsingTailscale are set, but this player uses the "
                "host's network; run tailscaled and use its addresses"
            )
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


def make_player_service(config_path: str, reactor: IReactorCore) -> IService:
    """Read the configuration at C{config_path} and build the player."""
    return PlayerService(load_player_config(config_path), reactor)


def makeService(options: usage.Options) -> IService:
    """Build the player for twistd, from the real reactor."""
    from twisted.internet import reactor

    try:
        return make_player_service(options["config"], reactor)
    except (ConfigError, ScriptError, StoreUnavailable) as error:
        raise SystemExit(f"replayforge-player: {error}") from None
