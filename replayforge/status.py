"""
What the daemons' status pages share: drop counts and Go's time formats.

Every event lost by policy is counted with its reason (L{DropCounts}), the
product's promise made visible.  Times and durations are written as the Go
daemons wrote them, so existing dashboards keep reading them.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import attrs

GO_ZERO_TIME = "0001-01-01T00:00:00Z"


def rfc3339(seconds: float | None) -> str:
    """Format a Unix time as RFC 3339 in UTC; never is Go's zero time."""
    if seconds is None:
        return GO_ZERO_TIME
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
