"""
The last hour of each bucket, minute by minute, for the dashboard's sparklines.

At the end of every minute the relay records, per bucket, the events stored
and handed out during that minute and the backlog left at its end.  Sixty
minutes are kept per bucket; older ones fall off.  Nothing is stored on disk:
a restarted relay starts a new hour.
"""

from __future__ import annotations

from collections import deque

import attrs

MINUTES_KEPT = 60


@attrs.frozen
class MinuteSample:
    """
    One bucket's traffic over one minute.

    @ivar ended: the Unix time the minute ended (or, for the minute still
        running, the time it was read).
    @ivar received: events stored in the bucket during the minute.
    @ivar sent: events handed to players during the minute.
    @ivar backlog: records waiting in the bucket at C{ended}.
    """

    ended: float
    received: int
    sent: int
    backlog: int

    def as_json(self) -> dict[str, float | int]:
        """Render for the dashboard."""
        return {
            "ended": self.ended,
            "rx": self.received,
            "tx": self.sent,
            "backlog": self.backlog,
        }


class TrafficHistory:
    """A ring of the last L{MINUTES_KEPT} minutes of every bucket."""

    def __init__(self, bucket_names: list[str]) -> None:
        self._minutes: dict[str, deque[MinuteSample]] = {
            name: deque(maxlen=MINUTES_KEPT) for name in bucket_names
        }

    def record(self, samples: dict[str, MinuteSample]) -> None:
        """Keep the minute that just ended; buckets not named are left alone."""
        for name, sample in samples.items():
            ring = self._minutes.get(name)
            if ring is not None:
                ring.append(sample)

    def minutes(self, bucket: str) -> list[MinuteSample]:
        """Return the kept minutes of C{bucket}, oldest first."""
        return list(self._minutes.get(bucket, ()))
