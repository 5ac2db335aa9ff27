"""
A sink's buffer: the events waiting on disk for the relay to take them.

Sources append; the sink's forwarder reads the oldest and deletes them once
the relay has stored them.  Appends that arrive together share one
transaction (L{GroupCommit}), and an append is acknowledged only once it is
committed.  The size cap is checked before anything is written: a full
buffer refuses whole requests, never part of one.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.python.failure import Failure

from replayforge.store import (
    GroupCommit,
    delete_by_ids,
    maintain,
    open_pool,
    prepare_now,
    run_interaction,
    run_with_connection,
    used_bytes,
)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sink_events ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " content TEXT NOT NULL,"
    " created_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS buffer_meta (key TEXT PRIMARY KEY, value TEXT)",
)

# SQLite stores a row in a little more than its text; this keeps the cap
# check honest for events not yet written.
ROW_OVERHEAD_BYTES = 16


def utf8_length(text: str) -> int:
    """
    Return the UTF-8 size of C{text}, encoding it only when it is not ASCII.

    Every appended and deleted event is measured; C{str.isascii} costs
    nothing in CPython, so the usual ASCII event is never copied for it.
    """
    return len(text) if text.isascii() else len(text.encode("utf-8"))


class BufferFull(Exception):
    """The buffer is over its cap; the events were not stored."""


class BufferedEvent(NamedTuple):
    """
    One event waiting in a buffer.

    A named tuple, made straight from the rows SQLite returns: the forwarder
    reads a thousand at a time.
    """

    id: int
    content: str
    created_at: float


class SinkBuffer:
    """
    The on-disk queue of one proxy sink.

    @ivar instance_id: a random id given to the file when it was created;
        with the never-reused event ids it names batches uniquely.
    @ivar pending_events: events stored and not yet deleted.
    @ivar pending_bytes: the UTF-8 size of their contents.
    """

    def __init__(
        self,
        path: str | Path,
        max_bytes: int,
        reactor: IReactorCore,
        clock: IReactorTime,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.instance_id = ""
        self.pending_events = 0
        self.pending_bytes = 0
        self._used_bytes = 0
        self._clock = clock
        self._pool = open_pool(self.path, reactor)
        # On the reactor, not the clock that stamps events: a transaction
        # begins once the reactor has read the requests that came with the
        # first append, so they share it.
        self._appends: GroupCommit[tuple[str, float], int] = GroupCommit(
            self._pool, self._insert, IReactorTime(reactor)
        )
        self._queued_bytes = 0
        self._thresholds: list[tuple[int, int, Deferred[None]]] = []

    def prepare(self) -> None:
        """
        Create the schema if needed and read the backlog's size, at start-up.

        @raise StoreUnavailable: when the file cannot be opened or prepared.
        """
        prepare_now(self.path, self._open)

    def open(self) -> Deferred[None]:
        """Create the schema if needed; read the backlog's size."""
        return run_interaction(self._pool, self._open)

    def _open(self, cursor: sqlite3.Cursor) -> None:
        cursor.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            cursor.execute(statement)
        cursor.execute(
            "INSERT OR IGNORE INTO buffer_meta (key, value) VALUES ('instance', ?)",
            (uuid.uuid4().hex,),
        )
        self.instance_id = cursor.execute(
            "SELECT value FROM buffer_meta WHERE key = 'instance'"
        ).fetchone()[0]
        count, size = cursor.execute(
            "SELECT COUNT(*), SUM(length(CAST(content AS BLOB))) FROM sink_events"
        ).fetchone()
        self.pending_events = count
        self.pending_bytes = size or 0
        self._used_bytes = used_bytes(cursor)

    def close(self) -> None:
        """Close the file."""
        self._pool.close()

    @property
    def used_bytes(self) -> int:
        """Bytes in use on disk plus those of appends not yet committed."""
        return self._used_bytes + self._queued_bytes

    def is_full(self, incoming_bytes: int = 0) -> bool:
        """Tell whether C{incoming_bytes} more would pass the cap."""
        return self.used_bytes + incoming_bytes > self.max_bytes

    @staticmethod
    def _sizes(contents: Sequence[str]) -> tuple[int, int]:
        content_bytes = sum(utf8_length(text) for text in contents)
        return content_bytes, content_bytes + ROW_OVERHEAD_BYTES * len(contents)

    def would_overflow(self, contents: Sequence[str]) -> bool:
        """Tell whether appending C{contents} would pass the cap."""
        return self.is_full(self._sizes(contents)[1])

    def append(self, contents: Sequence[str]) -> Deferred[None]:
        """
        Store C{contents}; fire once they are committed.

        @raise BufferFull: when they would pass the cap; nothing is stored.
        """
        content_bytes, size = self._sizes(contents)
        if self.is_full(size):
            raise BufferFull(str(self.path))
        now = self._clock.seconds()
        self._queued_bytes += size
        done = self._appends.submit([(text, now) for text in contents])

        def committed(_: int) -> None:
            self.pending_events += len(contents)
            self.pending_bytes += content_bytes
            self._wake_thresholds()

        def settled(result: int | Failure) -> int | Failure:
            self._queued_bytes -= size
            return result

        return done.addBoth(settled).addCallback(committed)

    def _insert(self, cursor: sqlite3.Cursor, rows: list[tuple[str, float]]) -> int:
        cursor.executemany(
            "INSERT INTO sink_events (content, created_at) VALUES (?, ?)", rows
        )
        self._used_bytes = used_bytes(cursor)
        return len(rows)

    def when_pending(self, events: int, size: int) -> Deferred[None]:
        """
        Fire once at least C{events} events or C{size} bytes are pending.

        The result can be cancelled, which forgets it.
        """
        waiter: Deferred[None] = Deferred(self._forget_threshold)
        self._thresholds.append((events, size, waiter))
        self._wake_thresholds()
        return waiter

    def _forget_threshold(self, waiter: Deferred[None]) -> None:
        self._thresholds = [
            entry for entry in self._thresholds if entry[2] is not waiter
        ]

    def _wake_thresholds(self) -> None:
        reached = [
            entry
            for entry in self._thresholds
            if self.pending_events >= entry[0] or self.pending_bytes >= entry[1]
        ]
        for entry in reached:
            self._thresholds.remove(entry)
            entry[2].callback(None)

    def oldest(self, limit: int) -> Deferred[list[BufferedEvent]]:
        """Read up to C{limit} of the oldest events."""
        return run_interaction(self._pool, self._select_oldest, limit)

    @staticmethod
    def _select_oldest(cursor: sqlite3.Cursor, limit: int) -> list[BufferedEvent]:
        rows = cursor.execute(
            "SELECT id, content, created_at FROM sink_events ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        return list(map(BufferedEvent._make, rows))

    def delete(self, events: Sequence[BufferedEvent]) -> Deferred[None]:
        """Delete C{events}, once the relay holds them."""
        ids = [event.id for event in events]
        size = sum(utf8_length(event.content) for event in events)
        done = run_interaction(self._pool, self._delete, ids)

        def deleted(count: int) -> None:
            self.pending_events -= count
            self.pending_bytes = max(0, self.pending_bytes - size)

        return done.addCallback(deleted)

    def _delete(self, cursor: sqlite3.Cursor, ids: list[int]) -> int:
        deleted = delete_by_ids(cursor, "sink_events", ids)
        self._used_bytes = used_bytes(cursor)
        return deleted

    def maintain(self) -> Deferred[None]:
        """Give free pages back to the disk and fold the WAL into the file."""
        done = run_with_connection(self._pool, maintain)

        def measured(size: int) -> None:
            self._used_bytes = size

        return done.addCallback(measured)
