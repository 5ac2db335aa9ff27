"""
A daemon's Prometheus metrics, served at C{/metrics} on its status listener.

Counters and gauges are read from the daemon's own stats records when
Prometheus scrapes (L{StatsCollector}), so the paths events take carry no
metric calls; only the batch histograms are observed as batches are sent,
stored or delivered.  Every name starts with C{replayforge_}; every sample
carries the labels C{component}, C{source}, C{sink}, C{bucket} and
C{reason}, empty where they do not apply.

Each daemon has its own L{CollectorRegistry}: several daemons in one
process (as in tests) never share a metric.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs
from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from twisted.web.iweb import IRequest

if TYPE_CHECKING:
    from replayforge.player.puller import BucketPuller
    from replayforge.player.queue import PlayerQueue
    from replayforge.player.sinks.base import Sink
    from replayforge.proxy.buffer import SinkBuffer
    from replayforge.proxy.stats import SinkStats, SourceStats
    from replayforge.relay.bucket import BucketStore
    from replayforge.relay.stats import RelayStats

PREFIX = "replayforge_"
LABELS = ("component", "source", "sink", "bucket", "reason")

COUNTERS = {
    "events_received": "Events taken in: captured by a proxy source, stored "
    "in a relay bucket, pulled by a player source.",
    "events_emitted": "Events a source's script (or its target) handed on.",
    "events_buffered": "Events appended to a proxy sink's buffer.",
    "events_forwarded": "Events of a proxy sink that the relay stored.",
    "events_sent": "Events a relay bucket handed to players.",
    "events_acknowledged": "Records a player acknowledged to the relay.",
    "events_redelivered": "Records a player fetched again and recognised.",
    "events_delivered": "Events a player sink delivered.",
    "events_dropped": "Events lost by policy, by reason.",
    "retries": "Failed attempts followed by another try.",
    "batches": "Batches sent (proxy sink) or delivered (player sink).",
    "pull_errors": "Failed pulls of a player source, each followed by a backoff.",
    "delivery_failures": "Deliveries a player sink could not make at all.",
    "bytes_sent": "Request bytes a proxy sink sent to its relay.",
    "bytes_received": "Answer bytes a proxy sink received from its relay.",
}
GAUGES = {
    "buffer_events": "Events waiting: a proxy sink's buffer, a relay bucket, "
    "a player sink's queue.",
    "buffer_bytes": "Bytes a proxy sink's buffer or a relay bucket holds.",
    "buffer_max_bytes": "The size cap of a proxy sink's buffer or a relay "
    "bucket (0: none).",
    "dead_letters": "Events of a player sink in the dead-letter table.",
    "node_reports": "Hosts whose node report a relay holds.",
    "uptime_seconds": "Seconds since the daemon started.",
}

BATCH_SIZE_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000)
BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@attrs.frozen
class Sample:
    """One value of a metric family, C{name} without its prefix."""

    name: str
    value: float
    labels: Mapping[str, str] = attrs.field(factory=dict)


class StatsCollector(Collector):
    """Turn the samples C{read} returns at each scrape into metric families."""

    def __init__(self, component: str, read: Callable[[], Iterable[Sample]]) -> None:
        self._component = component
        self._read = read

    def collect(self) -> Iterator[Metric]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for name, text in COUNTERS.items():
            families[name] = CounterMetricFamily(PREFIX + name, text, labels=LABELS)
        for name, text in GAUGES.items():
            families[name] = GaugeMetricFamily(PREFIX + name, text, labels=LABELS)
        for sample in self._read():
            labels = {"component": self._component, **sample.labels}
            families[sample.name].add_metric(
                [labels.get(label, "") for label in LABELS], sample.value
            )
        for family in families.values():
            if family.samples:
                yield family


class DaemonMetrics:
    """
    The registry of one daemon: its stats collector and batch histograms.
    """

    def __init__(self, component: str, read: Callable[[], Iterable[Sample]]) -> None:
        self.component = component
        self.registry = CollectorRegistry()
        self.registry.register(StatsCollector(component, read))
        labels = ("component", "sink", "bucket")
        self._batch_events = Histogram(
            PREFIX + "batch_events",
            "Events per batch sent (proxy), stored (relay) or delivered (player).",
            labels,
            registry=self.registry,
            buckets=BATCH_SIZE_BUCKETS,
        )
        self._batch_seconds = Histogram(
            PREFIX + "batch_seconds",
            "Seconds to send (proxy), store (relay) or deliver (player) a batch.",
            labels,
            registry=self.registry,
            buckets=BATCH_SECONDS_BUCKETS,
        )

    def batch_observer(
        self, sink: str = "", bucket: str = ""
    ) -> Callable[[int, float], None]:
        """Return what records one batch of a sink or bucket: size and time."""
        events = self._batch_events.labels(self.component, sink, bucket)
        seconds = self._batch_seconds.labels(self.component, sink, bucket)

        def observe(count: int, elapsed: float) -> None:
            events.observe(count)
            seconds.observe(max(elapsed, 0.0))

        return observe

    def render(self, request: IRequest) -> bytes:
        """Answer a scrape: the text exposition format."""
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)


def _drops(dropped: Mapping[str, int], **labels: str) -> Iterator[Sample]:
    for reason, count in sorted(dropped.items()):
        yield Sample("events_dropped", count, {**labels, "reason": reason})


def proxy_samples(
    uptime: float,
    sources: Mapping[str, SourceStats],
    sinks: Mapping[str, SinkStats],
    buffers: Mapping[str, SinkBuffer],
) -> Iterator[Sample]:
    """The proxy's counters and gauges, per source and per sink."""
    yield Sample("uptime_seconds", uptime)
    for source_id, source in sources.items():
        labels = {"source": source_id}
        yield Sample("events_received", source.received, labels)
        yield Sample("events_emitted", source.emitted, labels)
        yield from _drops(source.dropped, **labels)
    for sink_id, sink in sinks.items():
        labels = {"sink": sink_id}
        yield Sample("events_buffered", sink.buffered, labels)
        yield Sample("events_forwarded", sink.forwarded_events, labels)
        yield Sample("retries", sink.retries, labels)
        yield Sample("batches", sink.batches, labels)
        yield Sample("bytes_sent", sink.bytes_sent, labels)
        yield Sample("bytes_received", sink.bytes_received, labels)
        yield from _drops(sink.dropped, **labels)
        buffer = buffers.get(sink_id)
        if buffer is not None:
            yield Sample("buffer_events", buffer.pending_events, labels)
            yield Sample("buffer_bytes", buffer.used_bytes, labels)
            yield Sample("buffer_max_bytes", buffer.max_bytes, labels)


def relay_samples(
    uptime: float, stats: RelayStats, stores: Mapping[str, BucketStore]
) -> Iterator[Sample]:
    """The relay's counters and gauges, per bucket."""
    yield Sample("uptime_seconds", uptime)
    yield Sample("node_reports", len(stats.node_info))
    for name, traffic in stats.buckets.items():
        labels = {"bucket": name}
        yield Sample("events_received", traffic.rx_messages_since_start, labels)
        yield Sample("events_sent", traffic.tx_messages_since_start, labels)
    for (bucket, reason), count in sorted(stats.dropped.items()):
        yield Sample("events_dropped", count, {"bucket": bucket, "reason": reason})
    for name, store in stores.items():
        labels = {"bucket": name}
        yield Sample("buffer_events", store.backlog, labels)
        yield Sample("buffer_bytes", store.used_bytes, labels)
        yield Sample("buffer_max_bytes", store.config.max_bytes or 0, labels)


def player_samples(
    uptime: float,
    pullers: Sequence[BucketPuller],
    sinks: Sequence[Sink],
    queue: PlayerQueue | None,
) -> Iterator[Sample]:
    """The player's counters and gauges, per source and per sink."""
    yield Sample("uptime_seconds", uptime)
    for puller in pullers:
        source = puller.stats
        labels = {"source": puller.bucket, "bucket": puller.bucket}
        yield Sample("events_received", source.received, labels)
        yield Sample("events_emitted", source.emitted, labels)
        yield Sample("events_acknowledged", source.acknowledged, labels)
        yield Sample("events_redelivered", source.redelivered, labels)
        yield Sample("pull_errors", source.pull_errors, labels)
        yield from _drops(source.dropped, **labels)
    for sink in sinks:
        stats = sink.stats
        labels = {"sink": sink.name}
        yield Sample("events_delivered", stats.delivered, labels)
        yield Sample("retries", stats.retries, labels)
        yield Sample("batches", stats.batches, labels)
        yield Sample("delivery_failures", stats.failures, labels)
        yield from _drops(stats.dropped, **labels)
        if queue is not None:
            yield Sample("buffer_events", queue.depth(sink.name), labels)
            yield Sample("dead_letters", queue.dead_letters(sink.name), labels)
