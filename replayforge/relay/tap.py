"""
Build the relay service for C{twistd replayforge-relay -c FILE}.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python import usage

from replayforge.config import ConfigError
from replayforge.logs import configure_daemon
from replayforge.metrics import DaemonMetrics, relay_samples
from replayforge.periodic import PeriodicTask
from replayforge.relay.api import RelayAPI, StatusAPI
from replayforge.relay.bucket import BucketStore
from replayforge.relay.config import RelayConfig, load_relay_config
from replayforge.relay.pages import Dashboard
from replayforge.relay.stats import RelayStats
from replayforge.store import StoreUnavailable
from replayforge.tailscale import (
    LocalAPI,
    PeerIdentities,
    TailnetListener,
    tailnet_listen_problem,
)
from replayforge.tapbase import DaemonOptions
from replayforge.web import listening_service, make_site

log = Logger()

PURGE_INTERVAL_SECONDS = 10.0
MAINTENANCE_INTERVAL_SECONDS = 60.0


class Options(DaemonOptions):
    """Options of C{twistd replayforge-relay}."""

    synopsis = "-c FILE"
    longdesc = "Store batches per bucket for players to fetch."


class RelayService(MultiService):
    """The relay: bucket stores, its listeners and its periodic tasks."""

    def __init__(self, config: RelayConfig, reactor: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self.config = config
        clock: IReactorTime = reactor
        self.stores = {
            name: BucketStore(bucket, config.data_dir, reactor, clock)
            for name, bucket in config.buckets.items()
        }
        for store in self.stores.values():
            store.prepare()
        self.stats = RelayStats(list(self.stores), clock.seconds())
        self._clock = clock
        self.metrics = DaemonMetrics(
            "relay",
            lambda: relay_samples(
                clock.seconds() - self.stats.started, self.stats, self.stores
            ),
        )
        for name in self.stores:
            self.stats.batch_observers[name] = self.metrics.batch_observer(bucket=name)

        self.listens_on_tailnet = config.use_tailnet and not tailnet_listen_problem(
            config.listen
        )
        local_api = None
        peers = None
        if self.listens_on_tailnet or any(
            bucket.needs_tailnet_identity for bucket in config.buckets.values()
        ):
            local_api = LocalAPI(reactor, config.tailscale_socket)
            peers = PeerIdentities(local_api, clock)
        api = RelayAPI(config, self.stores, self.stats, clock, peers)
        site = make_site(
            api.app.resource(),
            max_body_bytes=config.max_body_bytes,
            decode_gzip=True,
            reactor=reactor,
        )
        if self.listens_on_tailnet and local_api is not None:
            listener: IService = TailnetListener(
                "useTailnet", config.listen, site, local_api, reactor
            )
        else:
            listener = listening_service(config.listen, site, reactor)
        listener.setServiceParent(self)
        self.dashboard = Dashboard(
            self.stores, self.stats, clock, config.stale_host_seconds
        )
        if config.listen_status:
            status = StatusAPI(
                self.stores, self.stats, clock, self.dashboard, self.metrics
            )
            listening_service(
                config.listen_status,
                make_site(status.app.resource(), reactor=reactor),
                reactor,
            ).setServiceParent(self)

        for name, interval, work in [
            ("purge", PURGE_INTERVAL_SECONDS, self.purge),
            ("maintenance", MAINTENANCE_INTERVAL_SECONDS, self.maintain),
            ("minute", 60.0, self.next_minute),
        ]:
            task = PeriodicTask(name, interval, work, clock)
            task.setServiceParent(self)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def startService(self) -> None:
        for name, bucket in self.config.buckets.items():
            log.info(
                "bucket {bucket}: cap {cap} KB, time to live {ttl}",
                bucket=name,
                cap=bucket.db_max_size_kb or "none",
                ttl=f"{bucket.ttl_seconds}s" if bucket.ttl_seconds else "forever",
            )
        for line in _tailscale_lines(self.config, self.listens_on_tailnet):
            log.info("{line}", line=line)
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def stopService(self) -> Any:
        # Listeners and periodic tasks stop first: a purge in progress ends
        # before its bucket's pool closes.
        done: Deferred[Any] = maybeDeferred(super().stopService)

        def close_stores(result: Any) -> Any:
            for store in self.stores.values():
                store.close()
            return result

        return done.addBoth(close_stores)

    def next_minute(self) -> None:
        """Keep the ending minute in the dashboard's history, then roll it."""
        self.dashboard.record_minute()
        self.stats.next_minute(self._clock.seconds())

    async def purge(self) -> None:
        """Delete expired records in every bucket, counting each."""
        for store in self.stores.values():
            purged = await store.purge_expired()
            if purged:
                self.stats.drop(store.name, "ttl_expired", purged)
                log.info(
                    "{bucket}: {count} records expired after {ttl}s",
                    bucket=store.name,
                    count=purged,
                    ttl=store.config.ttl_seconds,
                )

    async def maintain(self) -> None:
        """Give every bucket's free pages back to the disk."""
        for store in self.stores.values():
            await store.maintain()


def _tailscale_lines(config: RelayConfig, on_tailnet: bool) -> list[str]:
    """Say what the relay does with its Tailscale keys."""
    lines = []
    if config.use_tailnet and not on_tailnet:
        lines.append(
            f"useTailnet ignored: listen {config.listen!r} says where to listen "
            f"({tailnet_listen_problem(config.listen)})"
        )
    elif config.use_tailnet:
        lines.append(
            f"useTailnet: the API listens on this node's tailnet addresses "
            f"({config.listen}), as soon as tailscaled at "
            f"{config.tailscale_socket} tells them"
        )
    if config.tailnet_hostname:
        lines.append(
            f"tailnetHostname {config.tailnet_hostname!r} ignored: the node "
            f"keeps the name tailscaled gave it"
        )
    for bucket in config.buckets.values():
        if bucket.needs_tailnet_identity:
            allowed = [*bucket.allowed_tailnet_nodes, *bucket.allowed_tailnet_users]
            lines.append(
                f"bucket {bucket.name}: only tailnet peers {', '.join(allowed)} "
                f"(asked of tailscaled at {config.tailscale_socket}), "
                f"with the bucket's token"
            )
    return lines


def makeService(options: usage.Options) -> IService:
    """Build the relay for twistd, from the real reactor."""
    from twisted.internet import reactor

    try:
        config = load_relay_config(options["config"])
        warning = configure_daemon(
            "relay", [bucket.auth for bucket in config.buckets.values()]
        )
        if warning:
            log.warn("{warning}", warning=warning)
        return RelayService(config, reactor)
    except (ConfigError, StoreUnavailable) as error:
        raise SystemExit(f"replayforge-relay: {error}") from None
