"""
What the player has done, per source and per sink, for C{/statusz}.

Every event lost by policy is counted with its reason, so the operator can
tell a script error from a sink that gave up.
"""

from __future__ import annotations

from typing import Any

import attrs

from replayforge.status import DropCounts


@attrs.define
class SourceStats(DropCounts):
    """
    Counts of one pulled bucket.

    @ivar received: records fetched from the relay, redeliveries excluded.
    @ivar emitted: events the script (or the fan-out) handed to sinks.
    @ivar acknowledged: records the relay confirmed deleting.
    @ivar redelivered: records fetched again after they were queued but
        before their acknowledgement was confirmed; they are acknowledged,
        not processed again.
    @ivar pull_errors: failed relay requests and queue commits, each
        followed by a backoff.
    @ivar paused: pulls put off because a sink's queue was full.
    """

    received: int = 0
    emitted: int = 0
    acknowledged: int = 0
    redelivered: int = 0
    pull_errors: int = 0
    paused: int = 0
    last_pull: float | None = None

    def as_json(self) -> dict[str, Any]:
        """Render for C{/statusz}."""
        return {
            "received": self.received,
            "emitted": self.emitted,
            "acknowledged": self.acknowledged,
            "redelivered": self.redelivered,
            "pullErrors": self.pull_errors,
            "paused": self.paused,
            "lastPull": self.last_pull,
            "dropped": dict(sorted(self.dropped.items())),
        }


@attrs.define
class SinkStats(DropCounts):
    """
    Counts of one sink.

    @ivar delivered: events the sink applied (replayed, stored, deleted).
    @ivar retries: failed attempts followed by another try.
    @ivar failures: deliveries that failed as a whole (the sink could not
        work) and were offered again after a backoff.
    @ivar expired: stored rows removed by the sink's time to live.
    @ivar dropped: events dead-lettered, by reason.
    """

    delivered: int = 0
    retries: int = 0
    failures: int = 0
    expired: int = 0

    def as_json(self) -> dict[str, Any]:
        """Render for C{/statusz}."""
        return {
            "delivered": self.delivered,
            "retries": self.retries,
            "failures": self.failures,
            "expired": self.expired,
            "dropped": dict(sorted(self.dropped.items())),
        }
