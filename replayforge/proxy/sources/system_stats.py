"""
The C{system-stats} source: the machine's figures, as the Go proxy sent them.

Every C{intervalSeconds} one event per figure, read with psutil in a
thread: the proxy's memory, threads and last garbage collection pause; the
host's memory, CPU and root disk; and the counters of each network
interface.  Each event is a call object whose body is C{{"envName",
"hostName", "id", "serieName", "timestamp", "value"}} posted to
C{ts_gauge_systemstats_<N>s}, the path the player's time series sink
reads.

The Go names are kept: C{num_goroutines} counts the proxy's threads, and
C{memory_process} is its resident memory.  C{cpu_percent} is the host's
CPU use over the whole interval (Go sampled one second of it).  A round
that meets a full sink buffer is dropped and counted: the next one follows.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

import psutil
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from replayforge import gojson
from replayforge.logthrottle import ThrottledLog
from replayforge.periodic import PeriodicTask
from replayforge.proxy.buffer import BufferFull
from replayforge.proxy.pipeline import SourcePipeline
from replayforge.proxy.sources.blocking import BlockingRunner
from replayforge.proxy.sources.settings import SystemStatsSettings
from replayforge.proxy.stats import SourceStats

log = Logger()

NETWORK_COUNTERS = (
    "bytes_sent",
    "bytes_recv",
    "packets_sent",
    "packets_recv",
    "errin",
    "errout",
    "dropin",
    "dropout",
)


class GarbageCollectionPauses:
    """Measure the pauses of Python's cyclic garbage collector."""

    def __init__(self) -> None:
        self.last_pause_ns = 0
        self._started_ns = 0

    def _observe(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started_ns = time.perf_counter_ns()
        elif self._started_ns:
            self.last_pause_ns = time.perf_counter_ns() - self._started_ns

    def start(self) -> None:
        """Begin measuring."""
        if self._observe not in gc.callbacks:
            gc.callbacks.append(self._observe)

    def stop(self) -> None:
        """Stop measuring."""
        if self._observe in gc.callbacks:
            gc.callbacks.remove(self._observe)


def read_figures(process: psutil.Process, gc_pause_ns: int) -> list[tuple[str, float]]:
    """Read every figure, named as the Go proxy named it.  Blocking."""
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage("/")
    disk_room = disk.used + disk.free
    figures = [
        ("memory_process", float(process.memory_info().rss)),
        ("num_goroutines", float(threading.active_count())),
        ("gc_pause_ns", float(gc_pause_ns)),
        ("memory_host_total", float(memory.total)),
        ("memory_host_free", float(memory.free)),
        ("memory_host_used", 100.0 * (memory.total - memory.available) / memory.total),
        ("cpu_percent", float(psutil.cpu_percent(interval=None))),
        ("disk_total", float(disk.total)),
        ("disk_free", float(disk.free)),
        ("disk_used", 100.0 * disk.used / disk_room if disk_room else 0.0),
    ]
    for nic, counters in sorted(psutil.net_io_counters(pernic=True).items()):
        figures.extend(
            (f"network_{nic}_{name}", float(getattr(counters, name)))
            for name in NETWORK_COUNTERS
        )
    return figures


def figure_event(
    name: str,
    value: float,
    now: float,
    interval_seconds: int,
    env_name: str,
    host_name: str,
) -> str:
    """Make the event of one figure, in the Go proxy's shape."""
    body = gojson.dumps(
        {
            "envName": env_name,
            "hostName": host_name,
            "id": f"{name}{int(now)}",
            "serieName": name,
            "timestamp": gojson.local_rfc3339_nano(now),
            "value": value,
        }
    )
    return gojson.dumps(
        {
            "body": body,
            "headers": {"Content-Type": ["application/json"]},
            "ip": "127.0.0.1",
            "method": "POST",
            "params": {},
            "path": f"ts_gauge_systemstats_{interval_seconds}s",
        }
    )


class SystemStatsSource:
    """Read the figures and submit them, one event each."""

    def __init__(
        self,
        source_id: str,
        settings: SystemStatsSettings,
        pipeline: SourcePipeline,
        stats: SourceStats,
        run_blocking: BlockingRunner,
        clock: IReactorTime,
        env_name: str,
        host_name: str,
    ) -> None:
        self.source_id = source_id
        self.settings = settings
        self._pipeline = pipeline
        self._stats = stats
        self._run = run_blocking
        self._clock = clock
        self._env_name = env_name
        self._host_name = host_name
        self._log = ThrottledLog(log, clock)
        self._process = psutil.Process()
        self.pauses = GarbageCollectionPauses()

    async def tick(self) -> None:
        """Submit one round of figures."""
        figures = await self._run(
            lambda: read_figures(self._process, self.pauses.last_pause_ns)
        )
        now = self._clock.seconds()
        events = [
            figure_event(
                name,
                value,
                now,
                self.settings.interval_seconds,
                self._env_name,
                self._host_name,
            )
            for name, value in figures
        ]
        try:
            await self._pipeline.submit_many(events)
        except BufferFull as full:
            self._stats.drop("buffer_full", len(events))
            self._log.warn(
                "system-stats source {source}: sink buffer full ({sinks}); "
                "{count} figures dropped",
                source=self.source_id,
                sinks=str(full),
                count=len(events),
            )


class SystemStatsService(PeriodicTask):
    """Run a L{SystemStatsSource} every C{intervalSeconds}."""

    def __init__(self, source: SystemStatsSource, clock: IReactorTime) -> None:
        super().__init__(
            f"system-stats {source.source_id}",
            source.settings.interval_seconds,
            source.tick,
            clock,
        )
        self._source = source

    def startService(self) -> None:
        self._source.pauses.start()
        # The first call starts psutil's CPU count; each later one returns
        # the use since the one before.
        psutil.cpu_percent(interval=None)
        super().startService()

    def stopService(self) -> Any:
        self._source.pauses.stop()
        return super().stopService()
