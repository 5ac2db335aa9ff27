"""
Build the relay service for C{twistd replayforge-relay -c FILE}.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger
from twisted.python import usage

from replayforge.config import ConfigError
from replayforge.periodic import PeriodicTask
from replayforge.relay.api import RelayAPI, StatusAPI
from replayforge.relay.bucket import BucketStore
from replayforge.relay.config import RelayConfig, load_relay_config
from replayforge.relay.stats import RelayStats
from replayforge.store import StoreUnavailable
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

        api = RelayAPI(config, self.stores, self.stats, clock)
        site = make_site(api.app.resource(), max_body_bytes=config.max_body_bytes)
        listening_service(config.listen, site, reactor).setServiceParent(self)
        if config.listen_status:
            status = StatusAPI(self.stores, self.stats, clock)
            listening_service(
                config.listen_status, make_site(status.app.resource()), reactor
            ).setServiceParent(self)

        for name, interval, work in [
            ("purge", PURGE_INTERVAL_SECONDS, self.purge),
            ("maintenance", MAINTENANCE_INTERVAL_SECONDS, self.maintain),
            ("minute", 60.0, lambda: self.stats.next_minute(clock.seconds())),
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
        if self.config.use_tailnet:
            log.warn(
                "useTailnet is set, but this relay listens only where 'listen' "
                "or 'port' says; run tailscaled and listen on its address"
            )
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


def make_relay_service(config_path: str, reactor: IReactorCore) -> IService:
    """Read the configuration at C{config_path} and build the relay."""
    return RelayService(load_relay_config(config_path), reactor)


def makeService(options: usage.Options) -> IService:
    """Build the relay for twistd, from the real reactor."""
    from twisted.internet import reactor

    try:
        return make_relay_service(options["config"], reactor)
    except (ConfigError, StoreUnavailable) as error:
        raise SystemExit(f"replayforge-relay: {error}") from None
