"""
What the proxy has done, per source and per sink, for C{/statusz} and
C{/metrics}.

The Go proxy's field names are kept (C{messagesByMinute},
C{messageSinceStart}, C{lastMessageDate}, C{lastMessage}, C{totalEvents},
C{batchCounter}, C{appBytesSent}, C{appBytesRecv}); ours come beside them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from replayforge.status import (
    SourceCounts,
    StatsRecord,
    excerpt,
    go_duration,
    rfc3339,
)

BatchObserver = Callable[[int, float], None]


@attrs.define
class SourceStats(SourceCounts):
    """
    Counts of one source.

    @ivar messages: events captured, per minute and since start.
    @ivar emitted: events stored in a sink's buffer.
    @ivar detail: what the source itself reports (a log file's position,
        its rotations), added to the source's C{/statusz} entry.
    """

    type: str = ""
    id: str = ""
    detail: Callable[[], dict[str, Any]] | None = None

    def as_json(self) -> dict[str, Any]:
        """Render for C{/statusz}."""
        return {
            "type": self.type,
            "id": self.id,
            **self.messages.as_json(),
            "received": self.received,
            "emitted": self.emitted,
            "dropped": self.dropped_json(),
            **(self.detail() if self.detail is not None else {}),
        }


@attrs.define
class SinkStats(StatsRecord):
    """
    Counts of one sink and its forwarder.

    @ivar messages: events the relay stored, per minute and since start.
    @ivar last_buffered: the start of the last event buffered.
    @ivar script_errors: failed calls of the sink script's
        C{TransformBatch}; the batch was kept and tried again.
    @ivar observe_batch: told the size and send time of every batch the
        relay stored (the metrics' histograms).
    """

    id: str = ""
    url: str = ""
    buffered: int = 0
    last_buffered: str = ""
    forwarded_events: int = 0
    batches: int = 0
    retries: int = 0
    script_errors: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    observe_batch: BatchObserver | None = attrs.field(default=None, eq=False)

    def stored(self, count: int, last: str) -> None:
        """Count C{count} events appended to the buffer, C{last} the last."""
        self.buffered += count
        self.last_buffered = excerpt(last)

    def forwarded(self, count: int, now: float) -> None:
        """Count C{count} events the relay stored."""
        self.forwarded_events += count
        self.messages.count(count, now)

    def batch_sent(self, count: int, seconds: float) -> None:
        """Count one batch of C{count} events the relay stored in C{seconds}."""
        self.batches += 1
        if self.observe_batch is not None:
            self.observe_batch(count, seconds)

    def as_json(self, pending: int, buffer_bytes: int, cap: int) -> dict[str, Any]:
        """Render for C{/statusz}."""
        messages = self.messages.as_json()
        messages["lastMessage"] = self.last_buffered
        return {
            "id": self.id,
            "url": self.url,
            **messages,
            "totalEvents": pending,
            "batchCounter": self.batches,
            "appBytesSent": self.bytes_sent,
            "appBytesRecv": self.bytes_received,
            "buffered": self.buffered,
            "pending": pending,
            "forwarded": self.forwarded_events,
            "retries": self.retries,
            "scriptErrors": self.script_errors,
            "bytesSent": self.bytes_sent,
            "bytesReceived": self.bytes_received,
            "lastForwardDate": rfc3339(self.messages.last_at),
            "bufferBytes": buffer_bytes,
            "bufferMaxBytes": cap,
            "dropped": self.dropped_json(),
        }


def uptime(started: float, now: float) -> str:
    """Format the time since C{started} as Go did."""
    return go_duration(now - started)
