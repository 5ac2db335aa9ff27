"""
Build the proxy service for C{twistd replayforge-proxy -c FILE}.
"""

from __future__ import annotations

from typing import Any

import treq
from klein import Klein
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import IRequest

from replayforge.config import ConfigError
from replayforge.logs import configure_daemon, mask_value
from replayforge.lua import LuaScript, LuaSettings, ScriptError
from replayforge.metrics import DaemonMetrics, proxy_samples
from replayforge.nodeinfo import (
    REPORT_INTERVAL_SECONDS,
    NodeReporter,
    NodeTarget,
    host_figures,
)
from replayforge.outgoing import client_pool, make_agent
from replayforge.periodic import PeriodicTask
from replayforge.proxy.buffer import SinkBuffer
from replayforge.proxy.config import ProxyConfig, load_proxy_config
from replayforge.proxy.forwarder import Forwarder
from replayforge.proxy.pipeline import SourcePipeline
from replayforge.proxy.sources.services import source_service
from replayforge.proxy.stats import SinkStats, SourceStats, uptime
from replayforge.status import total_drops
from replayforge.store import StoreUnavailable
from replayforge.tapbase import DaemonOptions
from replayforge.web import (
    json_body,
    listening_service,
    make_site,
    text_body,
)

log = Logger()

MAINTENANCE_INTERVAL_SECONDS = 60.0


class Options(DaemonOptions):
    """Options of C{twistd replayforge-proxy}."""

    synopsis = "-c FILE"
    longdesc = "Capture events, buffer them on disk and forward them to a relay."


class ForwardersService(Service):
    """Start every sink's buffer and forwarder; stop them cleanly."""

    def __init__(
        self,
        buffers: dict[str, SinkBuffer],
        forwarders: list[Forwarder],
        pools: list[HTTPConnectionPool],
    ) -> None:
        self._buffers = buffers
        self._forwarders = forwarders
        self._pools = pools

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        for forwarder in self._forwarders:
            forwarder.start()

    def stopService(self) -> Deferred[Any]:
        super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        stopped = DeferredList([forwarder.stop() for forwarder in self._forwarders])

        def close(_: object) -> Any:
            for buffer in self._buffers.values():
                buffer.close()
            return DeferredList([pool.closeCachedConnections() for pool in self._pools])

        return stopped.addCallback(close)


class StatusAPI:
    """
    The proxy's status listener: C{/statusz}, C{/metrics} and a liveness
    C{/}.
    """

    app = Klein()

    def __init__(self, proxy: ProxyService) -> None:
        self._proxy = proxy

    @app.route("/statusz", methods=["GET"])
    def statusz(self, request: IRequest) -> bytes:
        """Render per-source and per-sink counts as JSON, secrets masked."""
        return json_body(request, 200, mask_value(self._proxy.status()))

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: IRequest) -> bytes:
        """Render the counts for Prometheus."""
        return self._proxy.metrics.render(request)

    @app.route("/", methods=["GET"])
    def alive(self, request: IRequest) -> bytes:
        """Answer C{ok} while the proxy runs."""
        return text_body(request, 200, "ok")


class ProxyService(MultiService):
    """The proxy: sources, sink buffers, forwarders and listeners."""

    def __init__(self, config: ProxyConfig, reactor: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self.config = config
        clock: IReactorTime = reactor
        self._clock = clock
        self.started = clock.seconds()

        # Scripts first: one that does not load stops start-up before any
        # buffer file is touched.
        sink_scripts = {
            sink_id: _load_script(
                sink.transform_script, f"sink:{sink_id}", sink.lua, "TransformBatch"
            )
            for sink_id, sink in config.sinks.items()
            if sink.transform_script
        }
        source_scripts = {
            source.id: _load_script(
                source.transform_script,
                f"source:{source.id}",
                source.lua,
                "Process",
                "TimerHandler",
            )
            for source in config.sources
            if source.transform_script
        }

        self.buffers = {
            sink_id: SinkBuffer(sink.database_path, sink.max_bytes, reactor, clock)
            for sink_id, sink in config.sinks.items()
        }
        for buffer in self.buffers.values():
            buffer.prepare()
        self.sink_stats = {
            sink_id: SinkStats(id=sink_id, url=sink.url)
            for sink_id, sink in config.sinks.items()
        }
        self.source_stats = {
            source.id: SourceStats(type=source.type, id=source.id)
            for source in config.sources
        }
        self.metrics = DaemonMetrics(
            "proxy",
            lambda: proxy_samples(
                clock.seconds() - self.started,
                self.source_stats,
                self.sink_stats,
                self.buffers,
            ),
        )
        for sink_id, stats in self.sink_stats.items():
            stats.observe_batch = self.metrics.batch_observer(sink=sink_id)

        # A pool per sink: sinks calling one relay with different client
        # certificates must not share connections.
        pools = {sink_id: client_pool(reactor) for sink_id in config.sinks}
        forwarders = [
            Forwarder(
                sink,
                self.buffers[sink_id],
                treq.client.HTTPClient(
                    make_agent(
                        reactor, sink.outgoing, f"sink {sink_id}", pools[sink_id]
                    )
                ),
                clock,
                self.sink_stats[sink_id],
                config.env_name,
                config.host_name,
                transform=sink_scripts.get(sink_id),
            )
            for sink_id, sink in config.sinks.items()
        ]
        forwarding = ForwardersService(self.buffers, forwarders, list(pools.values()))
        forwarding.setServiceParent(self)  # type: ignore[no-untyped-call]  # unannotated in Twisted

        self.node_reporter = NodeReporter(
            [
                NodeTarget(
                    forwarder.config.url,
                    forwarder.config.buckets[0],
                    forwarder.config.auth_bearer,
                    forwarder.client.post,
                )
                for forwarder in forwarders
                if forwarder.config.url and forwarder.config.buckets
            ],
            clock,
            config.env_name,
            config.host_name,
            self.status,
            lambda: host_figures(_disk_of(config)),
        )
        PeriodicTask("minute", 60.0, self.next_minute, clock).setServiceParent(self)  # type: ignore[no-untyped-call]  # unannotated in Twisted
        # The first report goes out at start: a relay learns of a new host
        # at once.
        PeriodicTask(  # type: ignore[no-untyped-call]  # unannotated in Twisted
            "node-info",
            REPORT_INTERVAL_SECONDS,
            self.node_reporter.send,
            clock,
            now=True,
        ).setServiceParent(self)

        for sink_id, buffer in self.buffers.items():
            PeriodicTask(  # type: ignore[no-untyped-call]  # unannotated in Twisted
                f"maintain {sink_id}",
                MAINTENANCE_INTERVAL_SECONDS,
                buffer.maintain,
                clock,
            ).setServiceParent(self)

        for source in config.sources:
            script = source_scripts.get(source.id)
            pipeline = SourcePipeline(
                source,
                script,
                self.buffers,
                self.source_stats[source.id],
                self.sink_stats,
                clock,
                payload_limits={
                    sink_id: sink.batching.max_payload_bytes
                    for sink_id, sink in config.sinks.items()
                },
            )
            if script is not None and script.defines("TimerHandler"):
                PeriodicTask(  # type: ignore[no-untyped-call]  # unannotated in Twisted
                    f"timer {source.id}",
                    source.hook_interval,
                    pipeline.run_timer,
                    clock,
                ).setServiceParent(self)
            source_service(
                source,
                pipeline,
                self.source_stats[source.id],
                reactor,
                clock,
                config.env_name,
                config.host_name,
            ).setServiceParent(self)

        if config.listen_status:
            status = make_site(StatusAPI(self).app.resource(), reactor=reactor)
            listening_service(config.listen_status, status, reactor).setServiceParent(
                self
            )

    def startService(self) -> None:
        if self.config.tsnet_hostname:
            log.info(
                "tsnetHostname {name!r} ignored: this proxy has no tailnet node of "
                "its own; it listens where its sources say, and reaches a relay "
                "on the tailnet through the host's tailscaled",
                name=self.config.tsnet_hostname,
            )
        for sink_id, sink in self.config.sinks.items():
            if not sink.use_tsnet:
                continue
            socks5 = sink.outgoing.socks5
            log.info(
                "sink {sink}: useTsnet: {how}",
                sink=sink_id,
                how=(
                    f"calls go through tailscaled's SOCKS5 server at {socks5}"
                    if socks5 is not None
                    else "calls go out on the host's network, which reaches the "
                    "tailnet through a kernel-mode tailscaled (set tailscaleSocks5 "
                    "for a userspace one)"
                ),
            )
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def next_minute(self) -> None:
        """Start a new minute of every per-minute count."""
        for source in self.source_stats.values():
            source.next_minute()
        for sink in self.sink_stats.values():
            sink.next_minute()

    def status(self) -> dict[str, Any]:
        """Gather what C{/statusz} shows."""
        return {
            "uptime": uptime(self.started, self._clock.seconds()),
            "envName": self.config.env_name,
            "hostName": self.config.host_name,
            "sources": {
                source_id: stats.as_json()
                for source_id, stats in self.source_stats.items()
            },
            "sinks": {
                sink_id: stats.as_json(
                    self.buffers[sink_id].pending_events,
                    self.buffers[sink_id].used_bytes,
                    self.buffers[sink_id].max_bytes,
                )
                for sink_id, stats in self.sink_stats.items()
            },
            "dropped": total_drops(
                [*self.source_stats.values(), *self.sink_stats.values()]
            ),
        }


def _disk_of(config: ProxyConfig) -> str:
    """The folder whose disk node reports describe: the first buffer's."""
    for sink in config.sinks.values():
        return str(sink.database_path.resolve().parent)
    return "."


def _load_script(
    path: str, tag: str, settings: LuaSettings, *entry_points: str
) -> LuaScript:
    """
    Load the script at C{path}, which must define one of C{entry_points}.

    @raise ScriptError: when it cannot be loaded or defines none of them.
    """
    script = LuaScript(path, tag, settings)
    script.require(*entry_points)
    return script


def make_proxy_service(config_path: str, reactor: IReactorCore) -> IService:
    """Read the configuration at C{config_path} and build the proxy."""
    return ProxyService(load_proxy_config(config_path), reactor)


def makeService(options: usage.Options) -> IService:
    """Build the proxy for twistd, from the real reactor."""
    from twisted.internet import reactor

    try:
        config = load_proxy_config(options["config"])
        warning = configure_daemon(
            "proxy",
            [sink.auth_bearer for sink in config.sinks.values()],
            config.verbosity_level,
        )
        if warning:
            log.warn("{warning}", warning=warning)
        return ProxyService(config, reactor)
    except (ConfigError, ScriptError, StoreUnavailable) as error:
        raise SystemExit(f"replayforge-proxy: {error}") from None
