"""
Follow one log file by its path, across rotations and truncations.

A L{FileTail} does the blocking file work of a C{logfile} source: it runs
in a worker thread, one call at a time, and never holds more than one read
window (1 MiB, or one line more than the longest line kept) in memory.
It hands out complete lines in batches and moves on only when told the
batch was committed (L{FileTail.commit}), so a batch refused by a full
buffer is read again later and nothing is skipped.

A file is known by its device, its inode and a fingerprint of its first
bytes (or first lines): a file renamed away is drained to its end through
the descriptor still open, then the new file at the path is opened; a file
whose size falls below the position, or whose first bytes changed, was
truncated or rewritten and is read again from its start.  When that
happens to a file truncated in place (copytruncate), the copy beside it,
recognised by the same fingerprint, is drained first from the old position,
so the lines written just before the truncation are not lost.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from replayforge.proxy.sources.identity import (
    EMPTY_FINGERPRINT,
    Fingerprint,
    Identity,
    Position,
    grown_fingerprint,
    matches,
    open_regular,
    siblings,
)
from replayforge.proxy.sources.lines import LineDecoder, decode_one, without_cr

MIB = 1024 * 1024
READ_WINDOW_BYTES = MIB
DEFAULT_BATCH_MAX_LINES = 2048


@attrs.define
class TailCounts:
    """What happened to the followed file since start."""

    rotations: int = 0
    truncations: int = 0
    replaced: int = 0
    copies_drained: int = 0
    invalid_utf8_lines: int = 0
    truncated_lines: int = 0
    partial_flushes: int = 0
    removals: int = 0


@attrs.frozen
class Notice:
    """Something the source should log: C{kind} happened to C{path}."""

    kind: str
    path: str
    offset: int = 0


@attrs.define(eq=False)
class _OpenFile:
    """A file being read, by its descriptor."""

    fd: int
    path: str
    device: int
    inode: int
    fingerprint: Fingerprint
    offset: int
    skipping: bool = False
    retired_at: float | None = None
    partial_at: int = -1
    partial_size: int = 0
    partial_since: float = 0.0

    @property
    def identity(self) -> Identity:
        return (self.device, self.inode)

    def position(self, offset: int, skipping: bool) -> Position:
        return Position(
            self.device, self.inode, self.fingerprint, offset, skipping, self.path
        )


@attrs.frozen
class TailBatch:
    """
    Lines read from one file, and where that file stands after them.

    @ivar position: where to resume once the lines are committed; L{None}
        when nothing moved.
    @ivar caught_up: nothing more can be read now.
    @ivar forgotten: files seen deleted, whose positions are of no more use.
    @ivar partial_flush: the last line had no newline and was delivered
        after the quiet period.
    """

    lines: list[str]
    position: Position | None
    caught_up: bool
    notices: list[Notice]
    forgotten: list[Identity]
    invalid_utf8: int = 0
    truncated: int = 0
    partial_flush: bool = False
    file: _OpenFile | None = None


class FileTail:
    """
    The lines of the file at C{path}, as it is rotated, truncated or
    replaced.

    @param known: positions saved before, oldest first.
    @param drain_grace: how long a file renamed away must stay quiet before
        it is given up for the new one (its writer may still be finishing).
    """

    def __init__(
        self,
        path: Path,
        *,
        fingerprint_bytes: int,
        fingerprint_lines: int,
        max_line_bytes: int,
        flush_partial_after: float,
        drain_grace: float,
        known: Iterable[Position] = (),
    ) -> None:
        self.path = path
        self.counts = TailCounts()
        self._fingerprint_bytes = fingerprint_bytes
        self._fingerprint_lines = fingerprint_lines
        self._max_line_bytes = max_line_bytes
        self._lines = LineDecoder(max_line_bytes)
        self._window = max(READ_WINDOW_BYTES, max_line_bytes + 1)
        self._flush_partial_after = flush_partial_after
        self._drain_grace = drain_grace
        self._known = {position.identity: position for position in known}
        self._current: _OpenFile | None = None
        self._retired: list[_OpenFile] = []
        self._recovered = False
        self.missing = False

    # Reading, in a worker thread.

    def read(self, now: float, max_lines: int = DEFAULT_BATCH_MAX_LINES) -> TailBatch:
        """
        Read the next lines: those of files renamed away first, then the
        file at the path.  Blocking.
        """
        notices: list[Notice] = []
        forgotten: list[Identity] = []
        if not self._recovered:
            self._recovered = True
            self._recover(now, notices)
        self._look(now, notices)

        while self._retired:
            old = self._retired[0]
            drained = old.retired_at is None or now - old.retired_at >= (
                self._drain_grace
            )
            batch = self._read_lines(old, now, max_lines, notices, drained)
            if batch.position is not None:
                return attrs.evolve(batch, forgotten=forgotten, caught_up=False)
            if not drained:
                # The new file waits too: its lines come after the old ones.
                return TailBatch([], None, True, notices, forgotten)
            self._retired.pop(0)
            if os.fstat(old.fd).st_nlink == 0:
                # Deleted: its inode may be reused by a file that is not it.
                self._known.pop(old.identity, None)
                forgotten.append(old.identity)
            os.close(old.fd)

        if self._current is None:
            return TailBatch([], None, True, notices, forgotten)
        batch = self._read_lines(self._current, now, max_lines, notices, False)
        return attrs.evolve(batch, forgotten=forgotten)

    def read_ahead(self, after: TailBatch, max_lines: int) -> TailBatch | None:
        """
        Read the lines that follow C{after} while it is being committed, so
        that reading and committing overlap.  Blocking.

        Only more lines of the same file are read ahead: when the file was
        renamed, truncated or replaced, or C{after} reached its end, the
        answer is L{None} and the next plain L{read} sees to it.
        """
        file, position = after.file, after.position
        if (
            file is None
            or position is None
            or after.caught_up
            or after.partial_flush
            or file is not self._current
            or self._retired
        ):
            return None
        try:
            at_path = os.stat(self.path)
        except OSError:
            return None
        size = os.fstat(file.fd).st_size
        if (
            (at_path.st_dev, at_path.st_ino) != file.identity
            or size < position.offset
            or not matches(file.fd, size, file.fingerprint)
        ):
            return None
        batch = self._read_lines(file, 0.0, max_lines, [], False, ahead_of=position)
        return batch if batch.position is not None else None

    def _recover(self, now: float, notices: list[Notice]) -> None:
        """
        At start, find the files renamed away while the source was down
        whose ends were not delivered yet: they are drained first.
        """
        try:
            at_path = os.stat(self.path)
            path_identity: Identity | None = (at_path.st_dev, at_path.st_ino)
        except OSError:
            path_identity = None
        wanted = {
            identity: position
            for identity, position in self._known.items()
            if identity != path_identity
        }
        if not wanted:
            return
        found: list[tuple[float, _OpenFile]] = []
        for sibling in siblings(self.path):
            try:
                info = os.stat(sibling)
            except OSError:
                continue
            position = wanted.pop((info.st_dev, info.st_ino), None)
            if position is None or info.st_size <= position.offset:
                continue
            opened = open_regular(sibling)
            if opened is None:
                continue
            fd, info = opened
            if not matches(fd, info.st_size, position.fingerprint):
                os.close(fd)
                continue
            old = _OpenFile(
                fd,
                str(sibling),
                info.st_dev,
                info.st_ino,
                position.fingerprint,
                position.offset,
                position.skipping,
                retired_at=now,
            )
            found.append((info.st_mtime, old))
        # The oldest rotated file holds the oldest lines.
        for _, old in sorted(found, key=_first):
            self._retired.append(old)
            self.counts.copies_drained += 1
            notices.append(Notice("draining", old.path, old.offset))

    def _look(self, now: float, notices: list[Notice]) -> None:
        """Notice a rotation, truncation or replacement; open the file."""
        current = self._current
        if current is not None:
            try:
                at_path: os.stat_result | None = os.stat(self.path)
            except OSError:
                at_path = None
            if at_path is None or (at_path.st_dev, at_path.st_ino) != (
                current.device,
                current.inode,
            ):
                current.retired_at = now
                self._retired.append(current)
                self._current = None
                self.counts.rotations += 1
                kind = "rotated" if at_path is not None else "removed"
                notices.append(Notice(kind, current.path, current.offset))
            else:
                size = os.fstat(current.fd).st_size
                if size < current.offset or not matches(
                    current.fd, size, current.fingerprint
                ):
                    self._restart(current, notices)
                self._grow_fingerprint(current, size)
        if self._current is None:
            self._open_current(notices)

    def _restart(self, current: _OpenFile, notices: list[Notice]) -> None:
        """The file was truncated or rewritten in place: read it from 0."""
        self.counts.truncations += 1
        notices.append(Notice("truncated", current.path, current.offset))
        copy = self._find_copy(current)
        if copy is not None:
            self._retired.append(copy)
            self.counts.copies_drained += 1
            notices.append(Notice("draining", copy.path, copy.offset))
        current.offset = 0
        current.skipping = False
        current.fingerprint = EMPTY_FINGERPRINT
        current.partial_at, current.partial_size = -1, 0
        self._known[current.identity] = current.position(0, False)

    def _open_current(self, notices: list[Notice]) -> None:
        opened = open_regular(self.path)
        if opened is None:
            self.missing = True
            return
        self.missing = False
        fd, info = opened
        current = _OpenFile(
            fd, str(self.path), info.st_dev, info.st_ino, EMPTY_FINGERPRINT, 0
        )
        saved = self._known.get(current.identity)
        if saved is not None:
            if not matches(fd, info.st_size, saved.fingerprint):
                # Same inode, other first bytes: a new file in an old inode.
                self.counts.replaced += 1
                notices.append(Notice("replaced", str(self.path), saved.offset))
            elif info.st_size < saved.offset:
                current.fingerprint = saved.fingerprint
                current.offset = saved.offset
                self._restart(current, notices)
            else:
                current.fingerprint = saved.fingerprint
                current.offset = saved.offset
                current.skipping = saved.skipping
        self._current = current
        self._grow_fingerprint(current, info.st_size)
        notices.append(Notice("opened", str(self.path), current.offset))

    def _find_copy(self, current: _OpenFile) -> _OpenFile | None:
        """
        Find the copy that copytruncate made of C{current}: same first
        bytes, and longer than what was delivered.
        """
        if current.offset == 0 or current.fingerprint.length == 0:
            return None
        for sibling in siblings(self.path):
            opened = open_regular(sibling)
            if opened is None:
                continue
            fd, info = opened
            if (
                info.st_ino != current.inode
                and info.st_size > current.offset
                and matches(fd, info.st_size, current.fingerprint)
            ):
                return _OpenFile(
                    fd,
                    str(sibling),
                    info.st_dev,
                    info.st_ino,
                    current.fingerprint,
                    current.offset,
                    current.skipping,
                    retired_at=None,
                )
            os.close(fd)
        return None

    def _grow_fingerprint(self, current: _OpenFile, size: int) -> None:
        current.fingerprint = grown_fingerprint(
            current.fd,
            size,
            current.fingerprint,
            self._fingerprint_bytes,
            self._fingerprint_lines,
        )

    def _read_lines(
        self,
        file: _OpenFile,
        now: float,
        max_lines: int,
        notices: list[Notice],
        flush_partial: bool,
        ahead_of: Position | None = None,
    ) -> TailBatch:
        """
        Read the complete lines at C{file}'s offset, at most C{max_lines}.

        @param flush_partial: deliver a last line without newline at once
            (the file is finished) instead of after the quiet period.
        @param ahead_of: read from this position, not yet committed, and
            leave the waiting partial line to the next plain read.
        """
        start = file.offset if ahead_of is None else ahead_of.offset
        data = os.pread(file.fd, self._window, start)
        at_end = len(data) < self._window
        begin = 0
        skipping = file.skipping if ahead_of is None else ahead_of.skipping
        was_skipping = skipping
        if skipping:
            newline = data.find(b"\n")
            if newline < 0:
                if not data:
                    return TailBatch([], None, True, notices, [])
                # The rest of an over-long line, dropped as it comes.
                return TailBatch(
                    [],
                    file.position(start + len(data), True),
                    at_end,
                    notices,
                    [],
                    file=file,
                )
            begin = newline + 1
            skipping = False

        end = begin
        newlines = data.count(b"\n", begin)
        limited = newlines > max_lines
        if limited:
            for _ in range(max_lines):
                end = data.index(b"\n", end) + 1
        elif newlines:
            end = data.rindex(b"\n") + 1
        lines: list[str] = []
        invalid = truncated = 0
        if end > begin:
            lines, invalid, truncated = self._lines.block(data[begin : end - 1])

        partial_flush = False
        rest = len(data) - end
        if not limited and rest:
            if rest > self._max_line_bytes:
                # No newline within the longest line kept: deliver its start.
                lines.append(self._lines.cut(data[end:]))
                truncated += 1
                end = len(data)
                skipping = True
            elif at_end and ahead_of is None:
                spot = (start + end, rest)
                if (file.partial_at, file.partial_size) != spot:
                    file.partial_at, file.partial_size = spot
                    file.partial_since = now
                quiet = now - file.partial_since >= self._flush_partial_after
                if not lines and (flush_partial or quiet):
                    text, bad = decode_one(without_cr(data[end:]))
                    lines.append(text)
                    invalid += bad
                    end = len(data)
                    partial_flush = True
        elif at_end and ahead_of is None:
            file.partial_at, file.partial_size = -1, 0

        moved = end != 0 or skipping != was_skipping
        return TailBatch(
            lines,
            file.position(start + end, skipping) if moved else None,
            at_end and not limited,
            notices,
            [],
            invalid_utf8=invalid,
            truncated=truncated,
            partial_flush=partial_flush,
            file=file,
        )

    # Bookkeeping, in the reactor thread, between reads.

    def commit(self, batch: TailBatch) -> Position | None:
        """
        Record that C{batch}'s lines are committed: the next read starts
        after them.

        @return: the position to save.
        """
        counts = self.counts
        counts.invalid_utf8_lines += batch.invalid_utf8
        counts.truncated_lines += batch.truncated
        counts.partial_flushes += batch.partial_flush
        position, file = batch.position, batch.file
        if position is None or file is None:
            return None
        file.offset = position.offset
        file.skipping = position.skipping
        if batch.partial_flush:
            file.partial_at, file.partial_size = -1, 0
        self._known[position.identity] = position
        return position

    def truncate_if_read(self) -> Position | None:
        """
        Truncate the file to 0 if every line of it was delivered
        (C{removeAfterSecs}).  Blocking.

        Lines written between the size check and the truncation, a few
        microseconds, are lost; so is a partial line, which is why a file
        with one waiting is left alone.

        @return: the new position to save, or L{None} when the file was
            not truncated.
        """
        current = self._current
        if (
            current is None
            or self._retired
            or current.skipping
            or current.partial_size
            or current.offset == 0
        ):
            return None
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino) != current.identity:
                return None
            if info.st_size != current.offset:
                return None
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)
        self.counts.removals += 1
        current.offset = 0
        current.fingerprint = EMPTY_FINGERPRINT
        position = current.position(0, False)
        self._known[current.identity] = position
        return position

    def status(self) -> dict[str, Any]:
        """What C{/statusz} shows of the followed file."""
        current = self._current
        status: dict[str, Any] = {
            "path": str(self.path),
            "missing": self.missing,
            "draining": [old.path for old in self._retired],
            "rotations": self.counts.rotations,
            "truncations": self.counts.truncations,
            "replaced": self.counts.replaced,
            "copiesDrained": self.counts.copies_drained,
            "invalidUtf8Lines": self.counts.invalid_utf8_lines,
            "truncatedLines": self.counts.truncated_lines,
            "partialLinesFlushed": self.counts.partial_flushes,
            "removals": self.counts.removals,
        }
        if current is not None:
            status["inode"] = current.inode
            status["offset"] = current.offset
            status["partialLineBytes"] = current.partial_size
            status["partialLineSince"] = (
                current.partial_since if current.partial_size else None
            )
        return status

    def close(self) -> None:
        """Close every open descriptor."""
        for file in [*self._retired, *([self._current] if self._current else [])]:
            os.close(file.fd)
        self._retired = []
        self._current = None


def _first(pair: tuple[float, _OpenFile]) -> float:
    return pair[0]
