"""
SQLite files reached through L{twisted.enterprise.adbapi}, one writer each.

Every database of ReplayForge (the proxy's sink buffers, the relay's buckets,
the player's sink databases) is opened here: one connection per file, so
writers never fight over the lock, in WAL mode with a busy timeout, and with
incremental auto-vacuum so L{maintain} can give freed pages back to the disk.

L{GroupCommit} gathers the writes that arrive while one transaction is in
flight and commits them together: that is how many small HTTP requests share
one fsync.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, Generic, ParamSpec, TypeVar, cast

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.python.failure import Failure

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")

BUSY_TIMEOUT_MS = 10_000


def _prepare_connection(connection: sqlite3.Connection) -> None:
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    # auto_vacuum only takes effect on a database without tables yet.
    connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")


def open_pool(path: str | Path, reactor: IReactorCore) -> adbapi.ConnectionPool:
    """
    Open the single writer connection pool of the SQLite file at C{path}.

    Its folder is created if needed.  Each C{runInteraction} on the pool is
    one transaction, committed when the function returns.

    @raise StoreUnavailable: when the folder cannot be created.
    """
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreUnavailable(f"{path}: {error}") from None
    return adbapi.ConnectionPool(
        "sqlite3",
        str(path),
        check_same_thread=False,
        cp_min=1,
        cp_max=1,
        cp_openfun=_prepare_connection,
        cp_reactor=reactor,
    )


def _prepare_reader(connection: sqlite3.Connection) -> None:
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    connection.execute("PRAGMA query_only = 1")


def open_read_pool(
    path: str | Path, reactor: IReactorCore, connections: int = 2
) -> adbapi.ConnectionPool:
    """
    Open a pool of read-only connections to the SQLite file at C{path}.

    In WAL mode its reads never wait for the writer, nor make it wait.  The
    file must exist, with its writer open, before the first read.
    """
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    return adbapi.ConnectionPool(
        "sqlite3",
        uri,
        uri=True,
        check_same_thread=False,
        cp_min=1,
        cp_max=connections,
        cp_openfun=_prepare_reader,
        cp_reactor=reactor,
    )


def run_interaction(
    pool: adbapi.ConnectionPool,
    work: Callable[Concatenate[sqlite3.Cursor, P], R],
    *args: P.args,
    **kwargs: P.kwargs,
) -> Deferred[R]:
    """
    Run C{work} in one transaction on C{pool}; fire with what it returns.

    adbapi hands C{work} a transaction that stands in for a cursor.
    """
    # adbapi is unannotated: this is where its result gets its type.
    return cast("Deferred[R]", pool.runInteraction(work, *args, **kwargs))


def run_with_connection(
    pool: adbapi.ConnectionPool,
    work: Callable[Concatenate[sqlite3.Connection, P], R],
    *args: P.args,
    **kwargs: P.kwargs,
) -> Deferred[R]:
    """Run C{work} with C{pool}'s connection; fire with what it returns."""
    # adbapi is unannotated: this is where its result gets its type.
    return cast("Deferred[R]", pool.runWithConnection(work, *args, **kwargs))


def prepare_now(path: str | Path, work: Callable[[sqlite3.Cursor], R]) -> R:
    """
    Run C{work} in one transaction on a short-lived connection to C{path}.

    For start-up only, before the reactor runs: a database that cannot be
    opened or migrated then stops the daemon with a clear error instead of
    failing every later request.

    @raise StoreUnavailable: when the file cannot be opened or prepared.
    """
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000)
    except (OSError, sqlite3.Error) as error:
        raise StoreUnavailable(f"{path}: {error}") from None
    try:
        _prepare_connection(connection)
        with connection:
            return work(connection.cursor())
    except sqlite3.Error as error:
        raise StoreUnavailable(f"{path}: {error}") from None
    finally:
        connection.close()


class StoreUnavailable(Exception):
    """A database file that cannot be opened or prepared."""


def delete_by_ids(cursor: sqlite3.Cursor, table: str, ids: list[int]) -> int:
    """
    Delete the rows of C{table} whose C{id} is in C{ids}; return how many.

    C{table} is one of our own table names, never user input.
    """
    deleted = 0
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        cursor.execute(f"DELETE FROM {table} WHERE id IN ({marks})", chunk)
        deleted += cursor.rowcount
    return deleted


def used_bytes(cursor: sqlite3.Cursor) -> int:
    """Return the bytes of the database's pages that hold data."""
    page_size = cursor.execute("PRAGMA page_size").fetchone()[0]
    pages = cursor.execute("PRAGMA page_count").fetchone()[0]
    free = cursor.execute("PRAGMA freelist_count").fetchone()[0]
    return int((pages - free) * page_size)


def maintain(connection: sqlite3.Connection) -> int:
    """
    Give free pages back to the file system and fold the WAL into the file.

    Meant for C{runWithConnection} from a periodic task.

    @return: the bytes of the pages that still hold data.
    """
    cursor = connection.cursor()
    # incremental_vacuum frees one page per step, and the sqlite3 module
    # stops a statement without result columns after its first step:
    # executescript steps it to the end (committing any open transaction).
    connection.executescript("PRAGMA incremental_vacuum;")
    connection.commit()
    cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    return used_bytes(cursor)


class GroupCommit(Generic[T, R]):
    """
    Commit items in as few transactions as the disk allows.

    Items submitted while a transaction runs wait for the next one, which
    takes all of them at once.  Each submitter's L{Deferred} fires with the
    result of the transaction that committed its items, or fails with its
    error: nothing is acknowledged before it is on disk.

    Given a C{clock}, an idle group commit begins its transaction on the
    clock's next turn rather than at once: on a reactor, that is once every
    request that arrived with the first has been read, so they share its
    transaction instead of waiting for the next (each transaction costs a
    hand-off to the pool's thread and back).
    """

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        write: Callable[[sqlite3.Cursor, list[T]], R],
        clock: IReactorTime | None = None,
    ) -> None:
        self._pool = pool
        self._write = write
        self._clock = clock
        self._items: list[T] = []
        self._waiters: list[Deferred[R]] = []
        self._busy = False

    @property
    def pending(self) -> int:
        """How many items wait for the next transaction."""
        return len(self._items)

    def submit(self, items: list[T]) -> Deferred[R]:
        """Queue C{items} for the next transaction; fire once it committed."""
        waiter: Deferred[R] = Deferred()
        self._items.extend(items)
        self._waiters.append(waiter)
        if not self._busy:
            self._busy = True
            if self._clock is None:
                self._commit_next()
            else:
                self._clock.callLater(0, self._commit_next)
        return waiter

    def _commit_next(self) -> None:
        items, self._items = self._items, []
        waiters, self._waiters = self._waiters, []
        self._busy = True

        def finished(outcome: R | Failure) -> None:
            for waiter in waiters:
                if isinstance(outcome, Failure):
                    waiter.errback(outcome)
                else:
                    waiter.callback(outcome)
            self._busy = False
            if self._waiters:
                self._commit_next()

        done = run_interaction(self._pool, self._write, items)
        done.addBoth(finished)
