"""
Tests for the proxy's pulled sources other than C{logfile}: C{repeatfile}
and C{system-stats} (L{replayforge.proxy.sources}), the timers every source
type runs, and L{SourcePipeline.submit_many}, through which they all commit.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from replayforge.lua import LuaScript
from replayforge.proxy.buffer import BufferFull, SinkBuffer
from replayforge.proxy.config import ProxySourceConfig, load_proxy_config
from replayforge.proxy.pipeline import SourcePipeline
from replayforge.proxy.sources.blocking import ReactorThreads
from replayforge.proxy.sources.repeatfile import RepeatFileSource
from replayforge.proxy.sources.settings import (
    RepeatFileSettings,
    SystemStatsSettings,
)
from replayforge.proxy.sources.system_stats import (
    NETWORK_COUNTERS,
    SystemStatsSource,
    figure_event,
    read_figures,
)
from replayforge.proxy.stats import SinkStats, SourceStats
from replayforge.proxy.tap import ProxyService
from tests.logfile_helpers import buffered_events

MIB = 1024 * 1024
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
GO_FIGURES = [
    "memory_process",
    "num_goroutines",
    "gc_pause_ns",
    "memory_host_total",
    "memory_host_free",
    "memory_host_used",
    "cpu_percent",
    "disk_total",
    "disk_free",
    "disk_used",
]


def source_config(kind: str, script: str | None = None) -> ProxySourceConfig:
    """A source C{src} of C{kind} sending to sink C{main}."""
    return ProxySourceConfig(
        id="src",
        type=kind,
        transform_script=script,
        target_sink=None if script else "main",
        hook_interval=1.0,
        listen=None,
        max_body_bytes=MIB,
    )


class BufferTestCase(TestCase):
    """A fresh folder, a clock and real sink buffers in it."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="rf-sources-"))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.stats = SourceStats()

    async def pipeline(
        self,
        kind: str,
        sinks: tuple[str, ...] = ("main",),
        script: str | None = None,
        max_bytes: int = 64 * MIB,
    ) -> SourcePipeline:
        """A pipeline of a C{kind} source over real buffers named C{sinks}."""
        self.buffers: dict[str, SinkBuffer] = {}
        for sink in sinks:
            buffer = SinkBuffer(
                self.folder / f"{sink}.sqlite3", max_bytes, reactor, self.clock
            )
            await buffer.open()
            self.addCleanup(buffer.close)
            self.buffers[sink] = buffer
        lua = None
        if script is not None:
            path = self.folder / "script.lua"
            path.write_text(script)
            lua = LuaScript(path, "source:src")
        self.sink_stats = {sink: SinkStats() for sink in sinks}
        return SourcePipeline(
            source_config(kind, str(script) if script else None),
            lua,
            self.buffers,
            self.stats,
            self.sink_stats,
            self.clock,
        )

    def stored(self, sink: str = "main") -> list[str]:
        """The events committed to C{sink}'s buffer."""
        return buffered_events(self.folder / f"{sink}.sqlite3")


class SubmitManyTests(BufferTestCase):
    """L{SourcePipeline.submit_many} commits many events at once."""

    async def test_one_append_per_sink(self) -> None:
        """
        The emits of all the events go to each sink in one append: one
        transaction, however many events.
        """
        pipeline = await self.pipeline(
            "logfile",
            sinks=("a", "b"),
            script='function Process(c, emit) emit("a", c) emit("b", c .. "!") end',
        )
        appends: list[int] = []
        for buffer in self.buffers.values():
            append = buffer.append

            def counted(contents: Any, append: Any = append) -> Any:
                appends.append(len(contents))
                return append(contents)

            buffer.append = counted  # type: ignore[method-assign]

        stored = await pipeline.submit_many([f"e{n}" for n in range(300)])

        self.assertEqual(stored, 600)
        self.assertEqual(appends, [300, 300])
        self.assertEqual(self.stored("a"), [f"e{n}" for n in range(300)])
        self.assertEqual(self.stored("b"), [f"e{n}!" for n in range(300)])
        self.assertEqual(self.stats.received, 300)
        self.assertEqual(self.stats.emitted, 600)

    async def test_full_buffer_refuses_all_without_counting_a_loss(self) -> None:
        """
        When a buffer cannot take the whole lot, nothing is stored, and
        nothing is counted as dropped: the caller keeps the events.
        """
        pipeline = await self.pipeline("logfile", max_bytes=20_000)

        with self.assertRaises(BufferFull):
            await pipeline.submit_many(["x" * 1000] * 100)

        self.assertEqual(self.stored(), [])
        self.assertEqual(dict(self.stats.dropped), {})
        self.assertEqual(dict(self.sink_stats["main"].dropped), {})
        self.assertEqual(self.stats.received, 0)

    async def test_script_failure_costs_its_event(self) -> None:
        """An event the script fails on is counted; the others are stored."""
        pipeline = await self.pipeline(
            "logfile",
            script=(
                "function Process(c, emit)\n"
                '  if c == "bad" then error_out() end\n'
                '  emit("main", c)\n'
                "end"
            ),
        )

        stored = await pipeline.submit_many(["one", "bad", "two"])

        self.assertEqual(stored, 2)
        self.assertEqual(self.stored(), ["one", "two"])
        self.assertEqual(self.stats.dropped["script_error"], 1)


class RepeatFileTests(BufferTestCase):
    """C{repeatfile} sends every line of a file, raw, every interval."""

    async def source(self, text: str | None) -> RepeatFileSource:
        """A repeatfile source over a file holding C{text} (none if None)."""
        self.path = self.folder / "lines.txt"
        if text is not None:
            self.path.write_text(text)
        pipeline = await self.pipeline("repeatfile")
        return RepeatFileSource(
            "src",
            RepeatFileSettings(self.path, 0.5),
            pipeline,
            ReactorThreads(reactor),
            self.clock,
        )

    async def test_each_round_sends_every_line(self) -> None:
        """Lines go raw (CR and newline removed), again at every round."""
        source = await self.source("alpha\r\nbeta\n\ngamma")

        await source.tick()
        await source.tick()

        self.assertEqual(self.stored(), ["alpha", "beta", "", "gamma"] * 2)

    async def test_missing_file(self) -> None:
        """A file that cannot be read is logged; a later round finds it."""
        source = await self.source(None)
        await source.tick()
        self.assertEqual(self.stored(), [])

        self.path.write_text("late\n")
        await source.tick()
        self.assertEqual(self.stored(), ["late"])

    async def test_full_buffer_resumes_the_round(self) -> None:
        """
        A round interrupted by a full buffer goes on at the next tick with
        the lines it had left, before any new round: none is lost.
        """
        source = await self.source("".join(f"{n}\n" for n in range(2500)))
        pipeline = source._pipeline
        submit_many = pipeline.submit_many
        refusals = [1]

        async def refuse_once(contents: list[str]) -> int:
            if len(contents) and contents[0] == "1000" and refusals:
                refusals.pop()
                raise BufferFull("main")
            return await submit_many(contents)

        pipeline.submit_many = refuse_once  # type: ignore[method-assign]
        await source.tick()
        self.assertEqual(self.stored(), [str(n) for n in range(1000)])

        await source.tick()
        self.assertEqual(self.stored(), [str(n) for n in range(2500)])


class SystemStatsTests(BufferTestCase):
    """C{system-stats} sends the machine's figures in the Go proxy's shape."""

    def test_figures_named_as_in_go(self) -> None:
        """
        The figures are those the Go proxy sent, in its order, then eight
        counters per network interface.
        """
        figures = read_figures(psutil.Process(), 1234)

        names = [name for name, _ in figures]
        self.assertEqual(names[: len(GO_FIGURES)], GO_FIGURES)
        nics = sorted(psutil.net_io_counters(pernic=True))
        self.assertEqual(
            names[len(GO_FIGURES) :],
            [f"network_{nic}_{name}" for nic in nics for name in NETWORK_COUNTERS],
        )
        values = dict(figures)
        self.assertEqual(values["gc_pause_ns"], 1234)
        self.assertGreater(values["memory_process"], 0)
        self.assertTrue(0 <= values["memory_host_used"] <= 100)
        self.assertTrue(0 <= values["disk_used"] <= 100)

    def test_event_shape(self) -> None:
        """
        Each figure is a POST to C{ts_gauge_systemstats_<N>s} whose body
        names the environment, host and series, Go-encoded (sorted keys,
        whole numbers without a fraction).
        """
        now = 1_700_000_000.25
        event = figure_event("disk_total", 5e11, now, 60, "prod", "web-1")

        call = json.loads(event)
        self.assertEqual(
            list(call), ["body", "headers", "ip", "method", "params", "path"]
        )
        self.assertEqual(call["path"], "ts_gauge_systemstats_60s")
        self.assertEqual(call["headers"], {"Content-Type": ["application/json"]})
        self.assertEqual((call["method"], call["ip"]), ("POST", "127.0.0.1"))
        self.assertIn('"value":500000000000}', call["body"])
        body = json.loads(call["body"])
        self.assertEqual(
            list(body), ["envName", "hostName", "id", "serieName", "timestamp", "value"]
        )
        self.assertEqual(body["id"], "disk_total1700000000")
        self.assertEqual((body["envName"], body["hostName"]), ("prod", "web-1"))
        self.assertRegex(body["timestamp"], RFC3339)
        self.assertEqual(datetime.fromisoformat(body["timestamp"]).timestamp(), now)

    async def test_tick_buffers_every_figure(self) -> None:
        """One tick commits one event per figure."""
        pipeline = await self.pipeline("system-stats")
        source = SystemStatsSource(
            "src",
            SystemStatsSettings(30),
            pipeline,
            self.stats,
            ReactorThreads(reactor),
            self.clock,
            "prod",
            "web-1",
        )

        await source.tick()

        bodies = [json.loads(json.loads(event)["body"]) for event in self.stored()]
        self.assertEqual(
            [body["serieName"] for body in bodies][: len(GO_FIGURES)], GO_FIGURES
        )
        self.assertEqual({body["hostName"] for body in bodies}, {"web-1"})

    async def test_full_buffer_drops_the_round_counted(self) -> None:
        """A round a full buffer refuses is dropped and counted."""
        pipeline = await self.pipeline("system-stats", max_bytes=1024)
        source = SystemStatsSource(
            "src",
            SystemStatsSettings(30),
            pipeline,
            self.stats,
            ReactorThreads(reactor),
            self.clock,
            "",
            "h",
        )

        await source.tick()

        self.assertEqual(self.stored(), [])
        self.assertEqual(
            self.stats.dropped["buffer_full"], len(read_figures(psutil.Process(), 0))
        )


class TimerTests(SynchronousTestCase):
    """Every source type with a script defining it runs C{TimerHandler}."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="rf-timers-"))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        self.logged: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            self.logged.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def test_timer_handler_for_every_type(self) -> None:
        """
        A proxy with one source of each type, each with a script defining
        C{TimerHandler}, calls each script's handler once per
        C{hookInterval} (its own for each source).
        """
        script = self.folder / "timer.lua"
        script.write_text(
            "function Process(c, emit) end\n"
            'function TimerHandler(emit) info("tick") end\n'
        )
        params = {
            "http": {"listen": "tcp:0:interface=127.0.0.1"},
            "logfile": {
                "filePath": str(self.folder / "app.log"),
                "positionPath": str(self.folder / "logfile-source.sqlite3"),
            },
            "repeatfile": {"filePath": str(self.folder / "lines.txt")},
            "system-stats": {},
            "pgcall": {
                "intervalSeconds": 60,
                "connString": "host=127.0.0.1 port=1",
                "calls": [{"name": "one", "sql": "SELECT 1"}],
            },
        }
        intervals = {kind: index + 1 for index, kind in enumerate(params)}
        document = {
            "sources": [
                {
                    "id": kind,
                    "type": kind,
                    "transformScript": str(script),
                    "hookInterval": f"{intervals[kind]}s",
                    "params": kind_params,
                }
                for kind, kind_params in params.items()
            ],
            "sinks": [
                {
                    "id": "main",
                    "url": "http://127.0.0.1:1/",
                    "buckets": ["b"],
                    "databasePath": str(self.folder / "main-sink.sqlite3"),
                }
            ],
        }
        path = self.folder / "proxy.json"
        path.write_text(json.dumps(document))
        clock = MemoryReactorClock()
        proxy = ProxyService(load_proxy_config(path), clock)
        self.addCleanup(lambda: [buffer.close() for buffer in proxy.buffers.values()])

        for kind in params:
            proxy.getServiceNamed(f"timer {kind}").startService()
        for _ in range(60):
            clock.advance(1)

        ticks = {
            kind: sum(f"[source:{kind}] tick" in text for text in self.logged)
            for kind in params
        }
        self.assertEqual(ticks, {kind: 60 // intervals[kind] for kind in params})


class StatusTests(SynchronousTestCase):
    """A logfile source shows its file in the proxy's C{/statusz}."""

    def test_file_in_status(self) -> None:
        """
        The source's entry holds its file: path, whether it is missing,
        the partial line waiting and whether a full buffer paused it.
        """
        folder = Path(tempfile.mkdtemp(prefix="rf-status-"))
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        document = {
            "sources": [
                {
                    "id": "tail",
                    "type": "logfile",
                    "targetSink": "main",
                    "params": {
                        "filePath": str(folder / "app.log"),
                        "positionPath": str(folder / "tail-source.sqlite3"),
                    },
                }
            ],
            "sinks": [
                {
                    "id": "main",
                    "url": "http://127.0.0.1:1/",
                    "buckets": ["b"],
                    "databasePath": str(folder / "main-sink.sqlite3"),
                }
            ],
        }
        path = folder / "proxy.json"
        path.write_text(json.dumps(document))
        proxy = ProxyService(load_proxy_config(path), MemoryReactorClock())
        self.addCleanup(lambda: [buffer.close() for buffer in proxy.buffers.values()])

        file = proxy.status()["sources"]["tail"]["file"]

        self.assertEqual(file["path"], str(folder / "app.log"))
        self.assertEqual(
            (file["missing"], file["paused"], file["rotations"]), (False, False, 0)
        )
        self.assertEqual(proxy.status()["sources"]["tail"]["received"], 0)
