"""
Tests for a proxy source's script inside the daemon: an HTTP source over
the real pipeline and SQLite buffers keeps buffering valid events while its
script fails on others, and a failing C{TimerHandler} keeps its schedule.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.logger import formatEvent
from twisted.trial.unittest import TestCase

from replayforge.lua import LuaScript
from replayforge.periodic import PeriodicTask
from replayforge.proxy.buffer import SinkBuffer
from replayforge.proxy.config import ProxySourceConfig
from replayforge.proxy.http_source import CaptureResource
from replayforge.proxy.pipeline import SourcePipeline
from replayforge.proxy.stats import SinkStats, SourceStats
from tests.log_support import capture_log
from tests.stub_support import settle

MIB = 1024 * 1024

# Fails on every other event, always on the same line.
EVERY_OTHER = """
count = 0
function Process(content, emit)
  count = count + 1
  local call = json_decode(content)
  if count % 2 == 0 then
    local missing = nil
    return missing.field
  end
  emit("main", call.body)
end
"""

ODD_TICKS = """
ticks = 0
function TimerHandler(emit)
  ticks = ticks + 1
  assert(ticks % 2 == 0, "odd tick")
  emit("main", "tick " .. ticks)
end
"""


class ScriptedSourceTests(TestCase):
    """A scripted HTTP source, its script failing now and then."""

    def setUp(self) -> None:
        folder = tempfile.TemporaryDirectory(prefix="rf-lua-source-")
        self.addCleanup(folder.cleanup)
        self.folder = Path(folder.name)
        self.clock = Clock()
        self.stats = SourceStats()
        self.sink_stats = {"main": SinkStats()}

    async def pipeline(self, script: str) -> tuple[SourcePipeline, SinkBuffer]:
        """A pipeline running C{script} over one real buffer, C{main}."""
        buffer = SinkBuffer(self.folder / "main.sqlite3", 10 * MIB, reactor, self.clock)
        await buffer.open()
        self.addCleanup(buffer.close)
        path = self.folder / "source.lua"
        path.write_text(script, encoding="utf-8")
        config = ProxySourceConfig(
            id="web",
            type="http",
            transform_script=str(path),
            target_sink=None,
            hook_interval=1.0,
            listen=None,
            max_body_bytes=MIB,
        )
        pipeline = SourcePipeline(
            config,
            LuaScript(path, "source:web"),
            {"main": buffer},
            self.stats,
            self.sink_stats,
            self.clock,
        )
        return pipeline, buffer

    async def test_valid_traffic_kept_while_script_fails(self) -> None:
        """
        While the script fails on every other event, the others are still
        buffered; each failure is counted, every client answered, and the
        failure logged once, with the script's line.
        """
        events = capture_log(self)
        pipeline, buffer = await self.pipeline(EVERY_OTHER)
        client = StubTreq(CaptureResource(pipeline))

        codes = []
        for number in range(10):
            response = await settle(
                client,
                client.post(f"http://proxy.test/e{number}", data=f"body {number}"),
            )
            codes.append(response.code)
            await settle(client, response.content())

        self.assertEqual(codes, [200] * 10)
        stored = [event.content for event in await buffer.oldest(100)]
        self.assertEqual(stored, [f"body {n}" for n in range(0, 10, 2)])
        self.assertEqual(self.stats.received, 10)
        self.assertEqual(self.stats.emitted, 5)
        self.assertEqual(self.stats.dropped["script_error"], 5)

        failures = [
            formatEvent(event)
            for event in events
            if "script failed" in event.get("log_format", "")
        ]
        self.assertEqual(len(failures), 1, failures)
        self.assertIn("source.lua:8: attempt to index a nil value", failures[0])

    async def test_failure_logged_again_after_interval(self) -> None:
        """
        The same failure is logged again once 30 seconds have passed, with
        the count of those held back.
        """
        events = capture_log(self)
        pipeline, _ = await self.pipeline(EVERY_OTHER)
        call = json.dumps({"body": "x"})
        for _ in range(6):
            await pipeline.submit(call)
        self.clock.advance(30)
        await pipeline.submit(call)
        await pipeline.submit(call)

        failures = [
            formatEvent(event)
            for event in events
            if "script failed" in event.get("log_format", "")
        ]
        self.assertEqual(len(failures), 2, failures)
        self.assertTrue(failures[1].endswith("(2 more since last logged)"), failures)

    async def test_timer_failures_counted_and_timer_goes_on(self) -> None:
        """
        A failing C{TimerHandler} costs its tick only: it is counted, and the
        timer keeps its schedule, so the next ticks emit.
        """
        pipeline, buffer = await self.pipeline(ODD_TICKS)
        timer = PeriodicTask("timer web", 1.0, pipeline.run_timer, self.clock)
        timer.startService()
        self.addCleanup(timer.stopService)

        for tick in range(1, 5):
            self.clock.advance(1.0)
            # Let the tick's events reach SQLite before the next one is due.
            for _ in range(500):
                if self.stats.emitted + self.stats.dropped["script_error"] == tick:
                    break
                await deferLater(reactor, 0.01, lambda: None)

        stored = [event.content for event in await buffer.oldest(100)]
        self.assertEqual(stored, ["tick 2", "tick 4"])
        self.assertEqual(self.stats.dropped["script_error"], 2)
