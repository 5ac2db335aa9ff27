"""
What the daemons' status pages share: drop counts and Go's time formats.

Every event lost by policy is counted with its reason (L{DropCounts}), the
product's promise made visible.  Message counts (L{MessageCounts}), times
and durations are written as the Go daemons wrote them, so existing
dashboards keep reading them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import attrs

from replayforge.gojson import GO_ZERO_TIME as GO_ZERO_TIME  # re-exported for the pages


def rfc3339(seconds: float | None) -> str:
    """Format a Unix time as RFC 3339 in UTC; never is Go's zero time."""
    if seconds is None:
        return GO_ZERO_TIME
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(text: Any) -> float | None:
    """Read back a time L{rfc3339} wrote; L{None} for never or not a time."""
    if not isinstance(text, str) or not text or text == GO_ZERO_TIME:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def go_duration(seconds: float) -> str:
    """Format a duration the way Go's C{time.Duration} prints it."""
    whole_hours, rest = divmod(seconds, 3600)
    minutes, rest = divmod(rest, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    if whole_hours:
        return f"{int(whole_hours)}h{int(minutes)}m{text}"
    if minutes:
        return f"{int(minutes)}m{text}"
    return text


@attrs.define
class DropCounts:
    """Events lost by policy, by reason; the base of every stats record."""

    dropped: Counter[str] = attrs.field(factory=Counter, kw_only=True)

    def drop(self, reason: str, count: int = 1) -> None:
        """Count C{count} events lost for C{reason}."""
        if count:
            self.dropped[reason] += count


LAST_MESSAGE_CHARS = 15


def excerpt(message: str) -> str:
    """Cut C{message} as the Go status pages did: 15 characters, then C{...}."""
    if len(message) > LAST_MESSAGE_CHARS:
        return message[:LAST_MESSAGE_CHARS] + "..."
    return message


@attrs.define
class MessageCounts:
    """
    Messages counted in the current minute and since start, and the last
    one seen, under the Go status pages' names.

    @ivar last_minute: the count of the minute before this one.
    """

    by_minute: int = 0
    last_minute: int = 0
    since_start: int = 0
    last_at: float | None = None
    last_message: str = ""

    def count(self, number: int, now: float, last_message: str | None = None) -> None:
        """Count C{number} messages seen at C{now}, the last one given."""
        if not number:
            return
        self.by_minute += number
        self.since_start += number
        self.last_at = now
        if last_message is not None:
            self.last_message = excerpt(last_message)

    def next_minute(self) -> None:
        """Start a new minute."""
        self.last_minute, self.by_minute = self.by_minute, 0

    def as_json(self) -> dict[str, Any]:
        """Render with the Go field names."""
        return {
            "messagesByMinute": self.by_minute,
            "lastMinuteMessages": self.last_minute,
            "messageSinceStart": self.since_start,
            "lastMessageDate": rfc3339(self.last_at),
            "lastMessage": self.last_message,
        }


@attrs.define
class StatsRecord(DropCounts):
    """Counts of one source or sink: drops, and messages by minute."""

    messages: MessageCounts = attrs.field(factory=MessageCounts, kw_only=True)

    def next_minute(self) -> None:
        """Start a new minute of per-minute counts."""
        self.messages.next_minute()

    def dropped_json(self) -> dict[str, int]:
        """Render the drops by reason, sorted, for C{/statusz}."""
        return dict(sorted(self.dropped.items()))


@attrs.define
class SourceCounts(StatsRecord):
    """
    Counts of one source: events received (the messages) and emitted.
    """

    received: int = attrs.field(default=0, kw_only=True)
    emitted: int = attrs.field(default=0, kw_only=True)

    def saw(self, content: str, now: float) -> None:
        """Count one event received at C{now}."""
        self.received += 1
        self.messages.count(1, now, content)


def total_drops(records: Iterable[DropCounts]) -> dict[str, int]:
    """Add up the drops of C{records} by reason, for a daemon's totals."""
    total: Counter[str] = Counter()
    for record in records:
        total.update(record.dropped)
    return dict(sorted(total.items()))
