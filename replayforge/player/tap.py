"""
Build the player service for C{twistd replayforge-player -c FILE}.
"""

from __future__ import annotations

from typing import Any, cast

from treq.client import HTTPClient
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import IResource, Resource

from replayforge.config import ConfigError
from replayforge.lua import ScriptError
from replayforge.periodic import PeriodicTask
from replayforge.player.api import PlayerAPI, StatusAPI
from replayforge.player.auth import basic_auth
from replayforge.player.config import PlayerConfig, load_player_config
from replayforge.player.processing import has_timer, load_processor
from replayforge.player.puller import BucketPuller
from replayforge.player.relay_client import REQUEST_TIMEOUT_SECONDS
from replayforge.player.relay_client import HTTPClient as RelayClient
from replayforge.player.sinks.base import Sink
from replayforge.player.sinks.factory import make_sink
from replayforge.store import StoreUnavailable
from replayforge.tapbase import DaemonOptions
from replayforge.web import listening_service, make_site

log = Logger()


class Options(DaemonOptions):
    """Options of C{twistd replayforge-player}."""

    synopsis = "-c FILE"
    longdesc = "Pull batches from a relay and replay them to sinks."


class PlayerService(MultiService):
    """The player: its sinks, one pull loop per bucket, its listeners."""

    def __init__(
        self, config: PlayerConfig, reactor: Any, client: RelayClient | None = None
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self.config = config
        self.sinks: dict[str, Sink] = {
            sink.name: make_sink(sink, reactor) for sink in config.sinks
        }
        self._pool = HTTPConnectionPool(reactor, persistent=True)
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
        for source in config.sources:
            processor = load_processor(source, config.source_file)
            puller = BucketPuller(
                config, source, processor, self.sinks, client, reactor
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
            self._listen(config.listen, PlayerAPI(sinks).app.resource(), reactor)
        if config.listen_status:
            status = StatusAPI(self.pullers, sinks, reactor)
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
        """Open the sinks, start the listeners and timers, then pull."""
        for sink in self.sinks.values():
            sink.start().addErrback(_log_start_failure, sink.name)
        waiting = [
            key
            for key, value in (
                ("staticFolderPath", self.config.static_folder),
                ("relayUrlStatusz", self.config.relay_url_statusz),
            )
            if value
        ]
        if waiting:
            log.warn(
                "{keys}: set, but this player does not serve static files or "
                "proxy the relay's status yet",
                keys=", ".join(waiting),
            )
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
        """Stop pulling, then close the listeners, the sinks and connections."""
        pulled = DeferredList([puller.stop() for puller in self.pullers])

        async def stop_the_rest() -> None:
            await pulled
            await super(PlayerService, self).stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
            await DeferredList([sink.stop() for sink in self.sinks.values()])
            await self._pool.closeCachedConnections()

        return Deferred.fromCoroutine(stop_the_rest())


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
