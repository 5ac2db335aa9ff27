"""
What the proxy has done, per source and per sink, for C{/statusz}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from replayforge.status import DropCounts, go_duration, rfc3339


@attrs.define
class SourceStats(DropCounts):
    """
    Counts of one source.

    @ivar detail: what the source itself reports (a log file's position,
        its rotations), added to the source's C{/statusz} entry.
    """

    received: int = 0
    emitted: int = 0
    last_message_at: float | None = None
    last_message: str = ""
    detail: Callable[[], dict[str, Any]] | None = None

    def saw(self, content: str, now: float) -> None:
        """Count one event captured at C{now}."""
        self.received += 1
        self.last_message_at = now
        self.last_message = content[:15]

    def as_json(self) -> dict[str, Any]:
        """Render for C{/statusz}."""
        return {
            "received": self.received,
            "emitted": self.emitted,
            "lastMessageDate": rfc3339(self.last_message_at),
            "lastMessage": self.last_message,
            "dropped": dict(self.dropped),
            **(self.detail() if self.detail is not None else {}),
        }


@attrs.define
class SinkStats(DropCounts):
    """
    Counts of one sink and its forwarder.

    @ivar script_errors: failed calls of the sink script's
        C{TransformBatch}; the batch was kept and tried again.
    """

    buffered: int = 0
    forwarded_events: int = 0
    batches: int = 0
    retries: int = 0
    script_errors: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    last_forward_at: float | None = None

    def forwarded(self, count: int, now: float) -> None:
        """Count C{count} events the relay stored."""
        self.forwarded_events += count
        self.last_forward_at = now

    def as_json(self, pending: int, buffer_bytes: int, cap: int) -> dict[str, Any]:
        """Render for C{/statusz}."""
        return {
            "buffered": self.buffered,
            "pending": pending,
            "forwarded": self.forwarded_events,
            "batchCounter": self.batches,
            "retries": self.retries,
            "scriptErrors": self.script_errors,
            "bytesSent": self.bytes_sent,
            "bytesReceived": self.bytes_received,
            "lastForwardDate": rfc3339(self.last_forward_at),
            "bufferBytes": buffer_bytes,
            "bufferMaxBytes": cap,
            "dropped": dict(self.dropped),
        }


def uptime(started: float, now: float) -> str:
    """Format the time since C{started} as Go did."""
    return go_duration(now - started)
