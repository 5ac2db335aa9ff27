"""
Tests for L{replayforge.nodeinfo}: node reports reach the relay, which
keeps the latest of each host and forgets hosts silent for an hour.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import formatEvent

from replayforge.logs import LogSettings
from replayforge.nodeinfo import NodeReporter, NodeTarget, host_figures
from tests.log_support import capture_log, warnings_in
from tests.test_relay_api import SHARED_TOKEN, RelayTestCase

FIGURES = {
    "memoryProcess": 1000,
    "memoryHostTotal": 8000,
    "memoryHostFree": 4000,
    "memoryHostUsedPct": 50.0,
    "cpuPercentHost": 12.5,
    "diskTotal": 100,
    "diskFree": 40,
    "diskUsedPct": 60.0,
}


class NodeReportTests(RelayTestCase):
    """A reporter posts into the real relay API; the relay shows the report."""

    async def test_report_shown_then_forgotten(self) -> None:
        """
        The report carries the figures, the log counts, the environment and
        a masked status summary; the relay shows it in C{/statusz} with its
        time, and forgets the host after an hour without a report.
        """
        clock = Clock()
        clock.advance(120)
        relay = await self.start(clock=clock)
        settings = LogSettings(warnings=3, errors=1)
        reporter = NodeReporter(
            [
                NodeTarget("http://relay.test/", "logs", SHARED_TOKEN, relay.api.post),
                # Same relay again: reported once.
                NodeTarget("http://relay.test/", "audit", "other", relay.api.post),
            ],
            clock,
            "prod",
            "edge-1",
            lambda: {"sinks": {"main": {"url": "http://u:pw@relay.test/"}}},
            lambda: dict(FIGURES),
            settings,
        )

        await reporter.send()

        self.assertEqual((reporter.sent, reporter.failed), (1, 0))
        self.assertGreater(reporter.bytes_sent, 0)
        status = await relay.statusz()
        report = status["nodeInfo"]["edge-1"]
        self.assertEqual({key: report[key] for key in FIGURES}, FIGURES)
        self.assertEqual(report["warnCount"], 3)
        self.assertEqual(report["errorCount"], 1)
        self.assertEqual(report["envName"], "prod")
        self.assertEqual(report["lastUpdated"], "1970-01-01T00:02:00.000Z")
        self.assertEqual(
            report["statuszInfo"],
            {"sinks": {"main": {"url": "http://u:***@relay.test/"}}},
        )

        clock.advance(3599)
        self.assertIn("edge-1", (await relay.statusz())["nodeInfo"])
        clock.advance(2)
        self.assertEqual((await relay.statusz())["nodeInfo"], {})

    async def test_relay_sweep(self) -> None:
        """The relay's minute task forgets silent hosts too."""
        clock = Clock()
        relay = await self.start(clock=clock)
        relay.stats.node_report("edge-1", {"cpuPercentHost": 1}, clock.seconds())
        relay.stats.node_report("edge-2", {"cpuPercentHost": 1}, 1800)
        relay.stats.next_minute(3601)
        self.assertEqual(list(relay.stats.node_info), ["edge-2"])

    async def test_refused_report_logged(self) -> None:
        """
        A report the relay refuses is counted and logged, at most once per
        30 seconds, and never raised.
        """
        logged = capture_log(self)
        clock = Clock()
        relay = await self.start(clock=clock)
        reporter = NodeReporter(
            [NodeTarget("http://relay.test/", "logs", "wrong-token", relay.api.post)],
            clock,
            "",
            "edge-1",
            dict,
            dict,
            LogSettings(),
        )

        await reporter.send()
        await reporter.send()

        self.assertEqual((reporter.sent, reporter.failed), (0, 2))
        warnings = [line for line in warnings_in(logged) if "node report" in line]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("answered 401", warnings[0])
        self.assertNotIn("wrong-token", warnings[0])
        self.assertEqual((await relay.statusz())["nodeInfo"], {})

    async def test_unreachable_relay(self) -> None:
        """A relay that cannot be reached costs a logged warning, nothing else."""
        logged = capture_log(self)
        calls: list[str] = []

        def post(url: str, /, **_: Any) -> Deferred[Any]:
            calls.append(url)
            return fail(ConnectionRefusedError("connection refused"))

        reporter = NodeReporter(
            [NodeTarget("http://u:pw@relay.test/", "logs", "t0ken", post)],
            Clock(),
            "",
            "edge-1",
            dict,
            dict,
            LogSettings(),
        )
        await reporter.send()
        self.assertEqual(calls, ["http://u:pw@relay.test/node-info"])
        self.assertEqual(reporter.failed, 1)
        [line] = [formatEvent(e) for e in logged if "node report" in formatEvent(e)]
        self.assertIn("ConnectionRefusedError", line)
        self.assertNotIn(":pw@", line)


class HostFiguresTests(RelayTestCase):
    """L{host_figures} measures with psutil under the Go field names."""

    def test_fields(self) -> None:
        """Every Go field is there, as a number in range."""
        figures = host_figures(os.getcwd())
        self.assertEqual(set(figures), set(FIGURES))
        self.assertGreater(figures["memoryProcess"], 0)
        self.assertGreater(figures["diskTotal"], 0)
        for key in ("memoryHostUsedPct", "diskUsedPct", "cpuPercentHost"):
            self.assertTrue(0 <= figures[key] <= 100, (key, figures[key]))
