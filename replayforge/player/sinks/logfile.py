"""
The C{log} sink: append one line per event to C{logFilePath}.

Each event is written as it is, on one line; an event holding a line break
or a carriage return is written as a JSON string instead (quoted, escaped),
so that one line is always one event.  Lines are written and flushed in a
thread of the reactor's pool, a batch at a time, before the events leave
the queue; a file that cannot be written fails the delivery, to be tried
again.

On SIGHUP (see L{replayforge.player.tap}) the file is reopened by name at
the next write, as logrotate expects.  With C{maxFileBytes} the sink
rotates the file itself once it passes that size: C{path} becomes
C{path.1}, C{path.1} becomes C{path.2}, ..., up to C{maxBackups}.

Without C{logFilePath} each event goes to the player's own log at info
level, as the Go player's C{log} sink did.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from replayforge.player.config import PlayerSinkConfig
from replayforge.player.sinks.base import DELIVERED, Outcome, QueuedEvent, Sink
from replayforge.player.sinks.settings import LogSinkSettings

log = Logger()


def event_line(text: str) -> str:
    """Return the line that stands for C{text} in the file, newline included."""
    if "\n" in text or "\r" in text:
        return json.dumps(text, ensure_ascii=False) + "\n"
    return text + "\n"


class LineFile:
    """
    A file that lines are appended to, reopened or rotated on demand.

    Its methods run in one thread at a time; L{reopen} may be called from
    any thread.
    """

    def __init__(self, path: Path, max_bytes: int = 0, backups: int = 1) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: IO[str] | None = None
        self._reopen = False

    def reopen(self) -> None:
        """Open the file again by name before the next write."""
        self._reopen = True

    def append(self, lines: Sequence[str]) -> None:
        """Write C{lines} and flush them to the operating system."""
        if self._reopen or self._file is None:
            self._reopen = False
            self.close()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8", errors="surrogateescape")
        self._file.write("".join(lines))
        self._file.flush()
        if self.max_bytes and self._file.tell() >= self.max_bytes:
            self.rotate()

    def rotate(self) -> None:
        """Shift C{path} to C{path.1} (and older copies further on)."""
        self.close()
        oldest = self.path.with_name(f"{self.path.name}.{self.backups}")
        if oldest.exists():
            oldest.unlink()
        for number in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{number}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{number + 1}"))
        if self.path.exists():
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def close(self) -> None:
        """Close the file if it is open."""
        current, self._file = self._file, None
        if current is not None:
            current.close()


class LogSink(Sink):
    """Append each event to a file, or to the player's log."""

    batch_size = 500

    def __init__(self, config: PlayerSinkConfig, reactor: Any) -> None:
        super().__init__(config)
        assert isinstance(config.settings, LogSinkSettings)
        self.settings: LogSinkSettings = config.settings
        self._reactor = reactor
        self._file: LineFile | None = None
        if self.settings.path is not None:
            self._file = LineFile(
                self.settings.path, self.settings.max_bytes, self.settings.backups
            )

    def reopen_files(self) -> None:
        """Reopen the file before the next write (after logrotate moved it)."""
        if self._file is not None:
            self._file.reopen()
            log.info(
                "sink {sink}: reopening {path}",
                sink=self.name,
                path=str(self._file.path),
            )

    def stop(self) -> Deferred[None]:
        """Close the file."""
        if self._file is not None:
            return deferToThreadPool(
                self._reactor, self._reactor.getThreadPool(), self._file.close
            )
        return succeed(None)

    def deliver(self, events: Sequence[QueuedEvent]) -> Deferred[list[Outcome]]:
        """Write one line per event; fire once they are flushed."""
        outcomes: list[Outcome] = [DELIVERED] * len(events)
        if self._file is None:
            for event in events:
                log.info("sink {sink}: {event}", sink=self.name, event=event.content)
            return succeed(outcomes)
        lines = [event_line(event.content) for event in events]
        written: Deferred[None] = deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), self._file.append, lines
        )
        return written.addCallback(lambda _: outcomes)
