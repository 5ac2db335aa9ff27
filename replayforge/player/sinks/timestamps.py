"""
Turn the many shapes of a C{timestamp} into Unix seconds.

The C{db} sink stores every row's C{timestamp} as whole Unix seconds, as
the Go player did: numbers in seconds, milliseconds, microseconds or
nanoseconds, RFC 3339 text, C{2006-01-02 15:04:05} (UTC) and the common log
format C{02/Jan/2006:15:04:05 -0700} are understood; anything else is the
time of writing.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

# Below each bound a number is read in the unit beside it.  Seconds stay
# below 1e11 until the year 5138; the Go player's bounds read today's
# milliseconds as microseconds, which is not repeated here.
_UNIT_BOUNDS = (
    (1e11, 1),
    (1e14, 1_000),
    (1e17, 1_000_000),
)
_NANOSECONDS = 1_000_000_000
_COMMON_LOG_FORMAT = "%d/%b/%Y:%H:%M:%S %z"


def normalize_timestamp(value: Any, now: int) -> int:
    """Return C{value} as Unix seconds, or C{now} when it is not a time."""
    if isinstance(value, bool) or value is None:
        return now
    if isinstance(value, int | float):
        return _from_number(value, now)
    if isinstance(value, str):
        return _from_text(value.strip(), now)
    return now


def _from_number(value: float, now: int) -> int:
    if not math.isfinite(value):
        return now
    magnitude = abs(value)
    for bound, divisor in _UNIT_BOUNDS:
        if magnitude < bound:
            return int(value // divisor)
    return int(value // _NANOSECONDS)


def _from_text(text: str, now: int) -> int:
    if not text:
        return now
    try:
        return _from_number(float(text), now)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        try:
            moment = datetime.strptime(text, _COMMON_LOG_FORMAT)
        except ValueError:
            return now
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())
