"""
Log a recurring message at most once per interval, counting the repeats.

A script failing on every event, or a relay down for an hour, must not
write a line per event.  The first occurrence of a message is written at
once; the same message is held back until the interval has passed since it
was written, and is then written again followed by how many times it was
held back.  Messages are told apart by their rendered text, or by a key the
caller gives.

Two ways use the same rule: a L{ThrottledLog} wraps a L{Logger} for one
component, and a L{ThrottlingObserver} sits in front of a daemon's log
output and holds back every repeated line, whoever logged it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, formatEvent
from zope.interface import implementer

DEFAULT_INTERVAL_SECONDS = 30.0
DEFAULT_MAX_MESSAGES = 1000

SUPPRESSED_SUFFIX = " ({suppressed_count} more since last logged)"

_Held = TypeVar("_Held")


@attrs.define
class _Seen(Generic[_Held]):
    """The last time a message was written, and what came since."""

    written_at: float
    suppressed: int
    last: _Held


class _Throttle(Generic[_Held]):
    """
    Decide, per key, whether a message is written now; remember what was
    held back so its count can be written later through C{write}.
    """

    def __init__(
        self,
        interval: float,
        max_messages: int,
        write: Callable[[_Held, int], None],
    ) -> None:
        self.interval = interval
        self._max_messages = max_messages
        self._write = write
        self._seen: dict[str, _Seen[_Held]] = {}

    def admit(self, key: str, now: float, held: _Held) -> int | None:
        """
        Tell whether the message under C{key} is written at C{now}.

        @return: L{None} when it is held back, else how many times it was
            held back since it was last written.
        """
        seen = self._seen.get(key)
        if seen is not None and now - seen.written_at < self.interval:
            seen.suppressed += 1
            seen.last = held
            return None
        suppressed = seen.suppressed if seen is not None else 0
        if seen is not None:
            del self._seen[key]
        elif len(self._seen) >= self._max_messages:
            self._forget(now)
        self._seen[key] = _Seen(now, 0, held)
        return suppressed

    def expire(self, now: float) -> None:
        """Write the count of every message whose interval is over; forget it."""
        for key in [
            key
            for key, entry in self._seen.items()
            if now - entry.written_at >= self.interval
        ]:
            self._release(key)

    def flush(self) -> None:
        """Write the held-back count of every message, and forget them all."""
        for key in list(self._seen):
            self._release(key)

    def _forget(self, now: float) -> None:
        before = len(self._seen)
        self.expire(now)
        if len(self._seen) == before:
            # Every message is recent: make room by the oldest one.
            self._release(next(iter(self._seen)))

    def _release(self, key: str) -> None:
        entry = self._seen.pop(key)
        if entry.suppressed:
            self._write(entry.last, entry.suppressed)


@attrs.frozen
class _Message:
    level: LogLevel
    format: str
    fields: dict[str, Any]


class ThrottledLog:
    """
    Write through C{logger}, each distinct message at most once per
    C{interval} seconds of C{clock}.

    At most C{max_messages} distinct messages are remembered; past that the
    ones whose interval is over are forgotten first (their held-back count,
    if any, is written then), the oldest next.
    """

    def __init__(
        self,
        logger: Logger,
        clock: IReactorTime,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        max_messages: int = DEFAULT_MAX_MESSAGES,
    ) -> None:
        self._logger = logger
        self._clock = clock
        self._throttle: _Throttle[_Message] = _Throttle(
            interval, max_messages, self._write
        )

    @property
    def interval(self) -> float:
        """The shortest time between two writes of the same message."""
        return self._throttle.interval

    def emit(
        self, level: LogLevel, format: str, key: str | None = None, **fields: Any
    ) -> bool:
        """
        Write C{format} with C{fields} unless the same message was written
        less than the interval ago.

        @param key: what makes two messages the same; by default their
            rendered text.
        @return: whether the message was written.
        """
        if key is None:
            key = formatEvent({"log_format": format, **fields})
        message = _Message(level, format, fields)
        suppressed = self._throttle.admit(key, self._clock.seconds(), message)
        if suppressed is None:
            return False
        self._write(message, suppressed)
        return True

    def debug(self, format: str, key: str | None = None, **fields: Any) -> bool:
        """Write at debug level; see L{emit}."""
        return self.emit(LogLevel.debug, format, key, **fields)

    def info(self, format: str, key: str | None = None, **fields: Any) -> bool:
        """Write at info level; see L{emit}."""
        return self.emit(LogLevel.info, format, key, **fields)

    def warn(self, format: str, key: str | None = None, **fields: Any) -> bool:
        """Write at warn level; see L{emit}."""
        return self.emit(LogLevel.warn, format, key, **fields)

    def error(self, format: str, key: str | None = None, **fields: Any) -> bool:
        """Write at error level; see L{emit}."""
        return self.emit(LogLevel.error, format, key, **fields)

    def flush(self) -> None:
        """Write the held-back count of every message, and forget them all."""
        self._throttle.flush()

    def _write(self, message: _Message, suppressed: int) -> None:
        if suppressed:
            self._logger.emit(
                message.level,
                message.format + SUPPRESSED_SUFFIX,
                suppressed_count=suppressed,
                **message.fields,
            )
        else:
            self._logger.emit(message.level, message.format, **message.fields)


@implementer(ILogObserver)
class ThrottlingObserver:
    """
    Pass events on to C{observer}, each distinct line at most once per
    C{interval} seconds.

    Time is each event's own C{log_time}, so no clock is needed.  Lines
    are told apart by level, namespace and rendered text.  A held-back
    count is written when its line comes again after the interval, or,
    when it does not, with the first event logged after a sweep period;
    L{flush} writes the rest.
    """

    def __init__(
        self,
        observer: Callable[[LogEvent], None],
        interval: float = DEFAULT_INTERVAL_SECONDS,
        max_messages: int = DEFAULT_MAX_MESSAGES,
    ) -> None:
        self._observer = observer
        self._throttle: _Throttle[LogEvent] = _Throttle(
            interval, max_messages, self._write
        )
        self._swept_at: float | None = None

    def __call__(self, event: LogEvent) -> None:
        now = float(event.get("log_time") or 0.0)
        key = "\x00".join(
            [
                getattr(event.get("log_level"), "name", ""),
                str(event.get("log_namespace", "")),
                formatEvent(event),
            ]
        )
        suppressed = self._throttle.admit(key, now, event)
        if suppressed is not None:
            self._write(event, suppressed)
        # Counts of lines that did not come again go out with later ones.
        if self._swept_at is None:
            self._swept_at = now
        elif now - self._swept_at >= self._throttle.interval:
            self._swept_at = now
            self._throttle.expire(now)

    def flush(self) -> None:
        """Write the held-back count of every line, and forget them all."""
        self._throttle.flush()

    def _write(self, event: LogEvent, suppressed: int) -> None:
        if suppressed:
            event = {
                **event,
                "log_format": str(event.get("log_format") or "") + SUPPRESSED_SUFFIX,
                "suppressed_count": suppressed,
            }
        self._observer(event)
