"""
A smoke run of the suites that load the real daemons (C{ingest}, C{relay},
C{pipeline}): each still runs in its quick form and gives every figure
beside its baseline.  Nothing here asserts on speed, latency or memory,
which depend on the machine.
"""

from __future__ import annotations

import math

from twisted.trial.unittest import SynchronousTestCase

from benchmarks import ingest, pipeline, relay
from benchmarks.measures import Measure, report


class QuickPipelineBenchmarkTests(SynchronousTestCase):
    """The quick runs of the daemon suites."""

    def assert_figures(self, measures: list[Measure], names: list[str]) -> None:
        """
        C{measures} are named C{names}, in order; each has a positive,
        finite figure of ours and of its baseline; the report has a row for
        each.
        """
        self.assertEqual([measure.name for measure in measures], names)
        for measure in measures:
            for value in (measure.ours, measure.baseline):
                self.assertTrue(math.isfinite(value) and value > 0, measure)
        self.assertEqual(len(report(measures)), len(measures) + 1)

    def test_ingest(self) -> None:
        """The proxy's http source and the bare server each answer load."""
        self.assert_figures(ingest.measure(quick=True), ["ingest, 32 conns"])

    def test_relay(self) -> None:
        """Events go into and out of the relay, and into SQLite alone."""
        self.assert_figures(
            relay.measure(quick=True),
            ["relay in, record-batch", "relay out, first+ack"],
        )

    def test_pipeline(self) -> None:
        """
        A small log file crosses the three daemons; latencies, CPU and peak
        memory of each daemon are measured.
        """
        lines = f"{pipeline.LINES_QUICK:,}"
        backlog = f"{pipeline.BACKLOG_QUICK:,}"
        self.assert_figures(
            pipeline.measure(quick=True),
            [
                f"end to end, {lines} lines",
                "CPU per line, proxy",
                "CPU per line, relay",
                "CPU per line, player",
                "latency p50 at 1,000/s",
                "latency p99 at 1,000/s",
                "peak RSS proxy, end to end",
                "peak RSS relay, end to end",
                "peak RSS player, end to end",
                f"peak RSS relay, {backlog} backlog",
                f"peak RSS player, {backlog} backlog",
            ],
        )
