"""
One bucket's records on disk: appended by proxies, read and deleted by players.

Each bucket is one SQLite file, C{<dataDir>/<bucket>/relay.sqlite3}, with the
Go relay's C{wrap_calls} table.  Ids come from C{AUTOINCREMENT}, so they grow
strictly and are never handed out twice, even once every record was
acknowledged: a player recognises a redelivery by its id.  Batch ids seen in
the last hour are kept beside the records, in the same transaction, so a
retried batch is stored once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorCore, IReactorTime
from twisted.logger import Logger

from replayforge.relay.config import BucketConfig
from replayforge.store import (
    delete_by_ids,
    maintain,
    open_pool,
    prepare_now,
    run_interaction,
    run_with_connection,
    used_bytes,
)

log = Logger()

BATCH_ID_MEMORY_SECONDS = 3600

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS wrap_calls ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " content TEXT NOT NULL,"
    " timestamp INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS idx_timestamp ON wrap_calls (timestamp)",
    # Without rowids a batch id is stored once, not also in an index: about
    # 60 bytes instead of 120, for the hour it is kept (a proxy sending as
    # soon as its link is free can send a hundred batches a second).
    "CREATE TABLE IF NOT EXISTS batch_ids ("
    " batch_id TEXT PRIMARY KEY,"
    " seen_at INTEGER NOT NULL) WITHOUT ROWID",
)

# A database written by the Go relay has ids without AUTOINCREMENT, which
# SQLite may reuse once the newest record is deleted: its rows move to a new
# table, in the same transaction as the schema.
_ADOPT_GO_TABLE = (
    "ALTER TABLE wrap_calls RENAME TO wrap_calls_go",
    "DROP INDEX IF EXISTS idx_timestamp",
)
_COPY_GO_ROWS = (
    "INSERT INTO wrap_calls (id, content, timestamp)"
    " SELECT id, content, COALESCE(timestamp, 0) FROM wrap_calls_go",
    "DROP TABLE wrap_calls_go",
)


class BucketFull(Exception):
    """The bucket's file is over its size cap; nothing was stored."""


class Record(NamedTuple):
    """
    One stored event as players receive it.

    A named tuple rather than an attrs class: a batch makes a thousand of
    them, straight from the rows SQLite returns.
    """

    id: int
    content: str


class BucketStore:
    """
    The records of one bucket, reached through a single-writer pool.

    @ivar used_bytes: bytes of the file's pages that hold data, refreshed by
        every write and by L{maintain}; the size cap is checked against it.
    @ivar backlog: the records waiting for a player: counted once when the
        file is prepared, then kept by every committed append, acknowledgement
        and purge, so reading it costs no query.
    """

    def __init__(
        self,
        config: BucketConfig,
        data_dir: Path,
        reactor: IReactorCore,
        clock: IReactorTime,
    ) -> None:
        self.config = config
        self.path = data_dir / config.name / "relay.sqlite3"
        self.used_bytes = 0
        self.backlog = 0
        self._clock = clock
        self._pool: adbapi.ConnectionPool = open_pool(self.path, reactor)
        self._waiters: list[Deferred[None]] = []

    @property
    def name(self) -> str:
        """The bucket's name."""
        return self.config.name

    def prepare(self) -> None:
        """
        Create the schema if needed and measure the file, at start-up.

        @raise StoreUnavailable: when the file cannot be opened or prepared.
        """
        prepare_now(self.path, self._create_schema)

    def open(self) -> Deferred[None]:
        """Create the schema if needed and measure the file, through the pool."""
        return run_interaction(self._pool, self._create_schema)

    def close(self) -> None:
        """Close the pool; wake long-polling readers so they answer now."""
        self._wake_waiters()
        self._pool.close()

    def _create_schema(self, cursor: sqlite3.Cursor) -> None:
        row = cursor.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
            ("wrap_calls",),
        ).fetchone()
        adopting = row is not None and "AUTOINCREMENT" not in row[0].upper()
        cursor.execute("BEGIN IMMEDIATE")
        statements: tuple[str, ...] = _SCHEMA
        if adopting:
            statements = _ADOPT_GO_TABLE + _SCHEMA + _COPY_GO_ROWS
        for statement in statements:
            cursor.execute(statement)
        if adopting:
            log.info("{bucket}: adopted a database of the Go relay", bucket=self.name)
        self.used_bytes = used_bytes(cursor)
        self.backlog = cursor.execute("SELECT COUNT(*) FROM wrap_calls").fetchone()[0]

    @property
    def is_full(self) -> bool:
        """Tell whether the file is over the bucket's size cap."""
        cap = self.config.max_bytes
        return cap is not None and self.used_bytes > cap

    def append(
        self, contents: Sequence[str], batch_id: str | None = None
    ) -> Deferred[bool]:
        """
        Store C{contents} in one transaction.

        @param batch_id: the sender's id for this batch; a batch whose id was
            stored in the last hour is not stored again.
        @return: a L{Deferred} firing with C{True} once the records are
            committed, or C{False} for a repeated batch.
        @raise BucketFull: when the bucket is over its cap.
        """
        if self.is_full:
            raise BucketFull(self.name)
        now = int(self._clock.seconds())
        done = run_interaction(self._pool, self._insert, list(contents), batch_id, now)

        def committed(stored: bool) -> bool:
            if stored:
                self.backlog += len(contents)
            # An empty batch must not end a reader's wait with nothing.
            if stored and contents:
                self._wake_waiters()
            return stored

        return done.addCallback(committed)

    def _insert(
        self,
        cursor: sqlite3.Cursor,
        contents: list[str],
        batch_id: str | None,
        now: int,
    ) -> bool:
        if batch_id:
            seen = cursor.execute(
                "SELECT 1 FROM batch_ids WHERE batch_id = ? AND seen_at >= ?",
                (batch_id, now - BATCH_ID_MEMORY_SECONDS),
            ).fetchone()
            if seen is not None:
                return False
            cursor.execute(
                "INSERT OR REPLACE INTO batch_ids (batch_id, seen_at) VALUES (?, ?)",
                (batch_id, now),
            )
        cursor.executemany(
            "INSERT INTO wrap_calls (content, timestamp) VALUES (?, ?)",
            ((content, now) for content in contents),
        )
        self.used_bytes = used_bytes(cursor)
        return True

    def first(self, limit: int) -> Deferred[list[Record]]:
        """Return up to C{limit} of the oldest records."""
        return run_interaction(self._pool, self._select_first, limit)

    @staticmethod
    def _select_first(cursor: sqlite3.Cursor, limit: int) -> list[Record]:
        rows = cursor.execute(
            "SELECT id, content FROM wrap_calls ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        return list(map(Record._make, rows))

    def wait_for_records(self, seconds: float) -> Deferred[None]:
        """
        Fire when records are next appended, or after C{seconds}.

        Cancelling the result (a reader that went away) forgets it.
        """
        if seconds <= 0:
            return succeed(None)
        call: IDelayedCall | None = None

        def forget(waiter: Deferred[None]) -> None:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if call is not None and call.active():
                call.cancel()

        waiter: Deferred[None] = Deferred(forget)

        def timed_out() -> None:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                waiter.callback(None)

        call = self._clock.callLater(seconds, timed_out)

        def stop_timer(result: None) -> None:
            if call.active():
                call.cancel()

        waiter.addCallback(stop_timer)
        self._waiters.append(waiter)
        return waiter

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def acknowledge(self, ids: Sequence[int]) -> Deferred[int]:
        """Delete the records with C{ids}; fire with how many were deleted."""
        done = run_interaction(self._pool, self._delete, list(ids))
        return done.addCallback(self._left_backlog)

    def _delete(self, cursor: sqlite3.Cursor, ids: list[int]) -> int:
        deleted = delete_by_ids(cursor, "wrap_calls", ids)
        self.used_bytes = used_bytes(cursor)
        return deleted

    def purge_expired(self) -> Deferred[int]:
        """
        Delete records older than the bucket's time to live, and batch ids
        older than an hour; fire with how many records were deleted.
        """
        now = int(self._clock.seconds())
        done = run_interaction(self._pool, self._purge, now)
        return done.addCallback(self._left_backlog)

    def _left_backlog(self, deleted: int) -> int:
        """Count C{deleted} records, once committed, out of the backlog."""
        self.backlog -= deleted
        return deleted

    def _purge(self, cursor: sqlite3.Cursor, now: int) -> int:
        cursor.execute(
            "DELETE FROM batch_ids WHERE seen_at < ?", (now - BATCH_ID_MEMORY_SECONDS,)
        )
        purged = 0
        if self.config.ttl_seconds:
            cursor.execute(
                "DELETE FROM wrap_calls WHERE timestamp < ?",
                (now - self.config.ttl_seconds,),
            )
            purged = cursor.rowcount
        self.used_bytes = used_bytes(cursor)
        return purged

    def maintain(self) -> Deferred[int]:
        """Shrink the file to its data; fire with the bytes in use."""
        done = run_with_connection(self._pool, maintain)

        def measured(size: int) -> int:
            self.used_bytes = size
            return size

        return done.addCallback(measured)


def bucket_sizes(
    stores: Mapping[str, BucketStore],
) -> dict[str, tuple[int, int | None]]:
    """Per bucket, the bytes in use and the cap (or L{None})."""
    return {
        name: (store.used_bytes, store.config.max_bytes)
        for name, store in stores.items()
    }
