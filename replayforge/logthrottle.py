"""
Log a recurring message at most once per interval, counting the repeats.

A script failing on every event, or a relay down for an hour, must not
write a line per event.  A L{ThrottledLog} writes the first occurrence of a
message at once, holds back the same message until the interval has passed
since it was written, and then writes it again followed by how many times
it was held back.  Messages are told apart by their rendered text, or by a
key the caller gives.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel, formatEvent

DEFAULT_INTERVAL_SECONDS = 30.0
DEFAULT_MAX_MESSAGES = 1000

SUPPRESSED_SUFFIX = " ({suppressed_count} more since last logged)"


@attrs.define
class _Seen:
    """The last time a message was written, and what came since."""

    written_at: float
    suppressed: int
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
        self.interval = interval
        self._max_messages = max_messages
        self._seen: dict[str, _Seen] = {}

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
        now = self._clock.seconds()
        seen = self._seen.get(key)
        if seen is not None and now - seen.written_at < self.interval:
            seen.suppressed += 1
            seen.level, seen.format, seen.fields = level, format, fields
            return False
        suppressed = seen.suppressed if seen is not None else 0
        if seen is not None:
            del self._seen[key]
        elif len(self._seen) >= self._max_messages:
            self._forget(now)
        self._seen[key] = _Seen(now, 0, level, format, fields)
        self._write(level, format, fields, suppressed)
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
        seen, self._seen = self._seen, {}
        for entry in seen.values():
            if entry.suppressed:
                self._write(entry.level, entry.format, entry.fields, entry.suppressed)

    def _forget(self, now: float) -> None:
        expired = [
            key
            for key, entry in self._seen.items()
            if now - entry.written_at >= self.interval
        ]
        if not expired:
            # Every message is recent: make room by the oldest one.
            expired = [next(iter(self._seen))]
        for key in expired:
            entry = self._seen.pop(key)
            if entry.suppressed:
                self._write(entry.level, entry.format, entry.fields, entry.suppressed)

    def _write(
        self, level: LogLevel, format: str, fields: dict[str, Any], suppressed: int
    ) -> None:
        if suppressed:
            self._logger.emit(
                level,
                format + SUPPRESSED_SUFFIX,
                suppressed_count=suppressed,
                **fields,
            )
        else:
            self._logger.emit(level, format, **fields)
