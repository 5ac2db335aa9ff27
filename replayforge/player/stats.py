"""
What the player has done, per source and per sink, for C{/statusz} and
C{/metrics}.

Every event lost by policy is counted with its reason, so the operator can
tell a script error from a sink that gave up.  Message counts use the Go
status pages' names (C{messagesByMinute}, C{messageSinceStart},
C{lastMessageDate}, C{lastMessage}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from replayforge.status import SourceCounts, StatsRecord, rfc3339

BatchObserver = Callable[[int, float], None]


@attrs.define
class SourceStats(SourceCounts):
    """
    Counts of one pulled bucket.

    @ivar received: records fetched from the relay, redeliveries excluded.
    @ivar messages: the same, per minute and since start, with the last one.
    @ivar emitted: events the script (or the fan-out) handed to sinks.
    @ivar acknowledged: records the relay confirmed deleting.
    @ivar redelivered: records fetched again after they were queued but
        before their acknowledgement was confirmed; they are acknowledged,
        not processed again.
    @ivar pull_errors: failed relay requests and queue commits, each
        followed by a backoff.
    @ivar paused: pulls put off because a sink's queue was full.
    """

    acknowledged: int = 0
    redelivered: int = 0
    pull_errors: int = 0
    paused: int = 0
    last_pull: float | None = None

    def as_json(self) -> dict[str, Any]:
        """Render for C{/statusz}."""
        return {
            **self.messages.as_json(),
            "received": self.received,
            "emitted": self.emitted,
            "acknowledged": self.acknowledged,
            "redelivered": self.redelivered,
            "pullErrors": self.pull_errors,
            "paused": self.paused,
            "lastPull": self.last_pull,
            "lastPullDate": rfc3339(self.last_pull),
            "dropped": self.dropped_json(),
        }


@attrs.define
class SinkStats(StatsRecord):
    """
    Counts of one sink.

    @ivar delivered: events the sink applied (replayed, stored, deleted).
    @ivar messages: the same, per minute and since start, with the last one.
    @ivar batches: deliveries the worker handed the sink.
    @ivar retries: failed attempts followed by another try.
    @ivar failures: deliveries that failed as a whole (the sink could not
        work) and were offered again after a backoff.
    @ivar expired: stored rows removed by the sink's time to live.
    @ivar dropped: events dead-lettered, by reason.
    @ivar observe_batch: told the size and time of every delivery (the
        metrics' histograms).
    """

    delivered: int = 0
    batches: int = 0
    retries: int = 0
    failures: int = 0
    expired: int = 0
    observe_batch: BatchObserver | None = attrs.field(default=None, eq=False)

    def delivered_events(self, count: int, now: float, last: str | None) -> None:
        """Count C{count} events delivered at C{now}, C{last} the last."""
        self.delivered += count
        self.messages.count(count, now, last)

    def batch_done(self, count: int, seconds: float) -> None:
        """Count one delivery of C{count} events that took C{seconds}."""
        self.batches += 1
        if self.observe_batch is not None:
            self.observe_batch(count, seconds)

    def as_json(self) -> dict[str, Any]:
        """Render for C{/statusz}."""
        return {
            **self.messages.as_json(),
            "delivered": self.delivered,
            "batchCounter": self.batches,
            "retries": self.retries,
            "failures": self.failures,
            "expired": self.expired,
            "dropped": self.dropped_json(),
        }
