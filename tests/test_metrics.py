"""
Tests for L{replayforge.metrics}: the Prometheus text a daemon serves.
"""

from __future__ import annotations

from collections.abc import Iterable

from klein import Klein
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from replayforge.metrics import DaemonMetrics, Sample, proxy_samples
from replayforge.proxy.stats import SinkStats, SourceStats

Scraped = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics: DaemonMetrics) -> Scraped:
    """Parse a scrape of C{metrics}: each sample's name and labels, its value."""
    values = {}
    text = generate_latest(metrics.registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset(
                (key, value) for key, value in sample.labels.items() if value
            )
            values[(sample.name, labels)] = sample.value
    return values


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    """The non-empty labels of a sample."""
    return frozenset(pairs.items())


class CollectorTests(SynchronousTestCase):
    """Counters and gauges are read from the stats at each scrape."""

    def test_read_at_scrape(self) -> None:
        """A later change of the stats shows in the next scrape."""
        source = SourceStats(id="web")
        sinks = {"main": SinkStats(id="main")}
        metrics = DaemonMetrics(
            "proxy", lambda: proxy_samples(12.5, {"web": source}, sinks, {})
        )
        source.saw("a", 1.0)
        source.drop("script_error", 2)
        sinks["main"].forwarded(3, 2.0)
        sinks["main"].drop("payload_too_large")
        first = scrape(metrics)
        source.saw("b", 3.0)
        second = scrape(metrics)

        web = labels(component="proxy", source="web")
        main = labels(component="proxy", sink="main")
        self.assertEqual(first[("replayforge_events_received_total", web)], 1)
        self.assertEqual(second[("replayforge_events_received_total", web)], 2)
        self.assertEqual(first[("replayforge_events_forwarded_total", main)], 3)
        self.assertEqual(
            first[
                (
                    "replayforge_events_dropped_total",
                    labels(component="proxy", source="web", reason="script_error"),
                )
            ],
            2,
        )
        self.assertEqual(
            first[
                (
                    "replayforge_events_dropped_total",
                    labels(component="proxy", sink="main", reason="payload_too_large"),
                )
            ],
            1,
        )
        self.assertEqual(
            first[("replayforge_uptime_seconds", labels(component="proxy"))], 12.5
        )

    def test_histograms(self) -> None:
        """A batch observer records sizes and times under its labels."""
        metrics = DaemonMetrics("player", lambda: [])
        observe = metrics.batch_observer(sink="store")
        observe(10, 0.02)
        observe(3, 0.5)
        values = scrape(metrics)
        store = labels(component="player", sink="store")
        self.assertEqual(values[("replayforge_batch_events_count", store)], 2)
        self.assertEqual(values[("replayforge_batch_events_sum", store)], 13)
        self.assertEqual(
            values[
                (
                    "replayforge_batch_seconds_bucket",
                    labels(component="player", sink="store", le="0.025"),
                )
            ],
            1,
        )

    def test_registries_apart(self) -> None:
        """Two daemons in one process keep their own metrics."""

        def one(name: str) -> Iterable[Sample]:
            return [Sample("events_received", 1, {"bucket": name})]

        first = DaemonMetrics("relay", lambda: one("a"))
        second = DaemonMetrics("relay", lambda: one("b"))
        first.batch_observer(bucket="a")(1, 0.1)
        second.batch_observer(bucket="b")(1, 0.1)
        self.assertEqual(
            {
                key
                for key in scrape(first)
                if key[0] == "replayforge_events_received_total"
            },
            {
                (
                    "replayforge_events_received_total",
                    labels(component="relay", bucket="a"),
                )
            },
        )

    def test_served(self) -> None:
        """C{render} answers the text format with its content type."""
        app = Klein()
        metrics = DaemonMetrics("relay", lambda: [Sample("node_reports", 2)])

        @app.route("/metrics")
        def serve(request: object) -> bytes:
            return metrics.render(request)  # type: ignore[arg-type]

        client = StubTreq(app.resource())
        response = self.successResultOf(client.get("http://status/metrics"))
        self.assertEqual(response.code, 200)
        self.assertIn(b"text/plain", response.headers.getRawHeaders(b"Content-Type")[0])
        body = self.successResultOf(response.content())
        [line] = [line for line in body.splitlines() if line.startswith(b"replay")]
        self.assertTrue(line.startswith(b"replayforge_node_reports{"), line)
        self.assertIn(b'component="relay"', line)
        self.assertTrue(line.endswith(b" 2.0"), line)
