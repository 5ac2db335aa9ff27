"""
The player's durable hand-off between the relay and its sinks.

One SQLite file, C{<dataDir>/player-queue.sqlite3}, holds per sink the
events scripts emitted to it and not yet delivered (C{queued_events}),
per sink the events given up on (C{dead_letters}, with their reason), and
per bucket the relay records already queued whose acknowledgement the relay
has not confirmed (C{pulled_records}: relay id and a digest of the content).

A pulled batch's events and its records' marks are committed in one
transaction, and only then is the batch acknowledged to the relay.  A player
killed in between pulls the same records again, recognises each by id and
digest, and acknowledges it without queueing it twice.  The marks are
forgotten once the relay confirms the acknowledgement: a Go relay gives ids
out again once its table is empty, and a mark kept longer could hide a new
record (the digest guards that window too, short of a new record with the
same id and the very same content).

Each sink's worker (L{replayforge.player.worker}) takes its events in queue
order and settles them: delivered events leave, given-up ones move to the
dead letters, retried ones keep their attempt count.  Queue ids are never
given out twice by a file (C{AUTOINCREMENT}); with the file's random
C{instance} they let a sink recognise an event it already applied.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import attrs
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from replayforge.player.sinks.base import QueuedEvent
from replayforge.store import delete_by_ids, open_pool, prepare_now, run_interaction

log = Logger()

QUEUE_FILE = "player-queue.sqlite3"
DETAIL_MAX_CHARS = 1000
_CHUNK = 500

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS queue_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS queued_events"
    " (id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL,"
    " content TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
    " queued_at INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS queued_events_by_sink ON queued_events (sink, id)",
    "CREATE TABLE IF NOT EXISTS pulled_records"
    " (bucket TEXT NOT NULL, relay_id INTEGER NOT NULL, digest BLOB NOT NULL,"
    " PRIMARY KEY (bucket, relay_id)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS dead_letters"
    " (id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL,"
    " content TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL,"
    " attempts INTEGER NOT NULL, failed_at INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS dead_letters_by_sink ON dead_letters (sink, id)",
)


def record_digest(content: str | None) -> bytes:
    """Return the digest that recognises a relay record's content."""
    data = b"\x00" if content is None else content.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).digest()


@attrs.frozen
class DeadLetter:
    """An event a sink gave up on, and why."""

    event: QueuedEvent
    reason: str
    detail: str
    attempts: int


@attrs.frozen
class _Loaded:
    instance: str
    depth: dict[str, int]
    dead: dict[str, int]
    pulled: dict[str, dict[int, bytes]]


def _prepare(cursor: sqlite3.Cursor) -> _Loaded:
    for statement in _SCHEMA:
        cursor.execute(statement)
    row = cursor.execute(
        "SELECT value FROM queue_meta WHERE key = 'instance'"
    ).fetchone()
    if row is None:
        instance = secrets.token_hex(8)
        cursor.execute("INSERT INTO queue_meta VALUES ('instance', ?)", (instance,))
    else:
        instance = str(row[0])
    depth = dict(
        cursor.execute("SELECT sink, COUNT(*) FROM queued_events GROUP BY sink")
    )
    dead = dict(cursor.execute("SELECT sink, COUNT(*) FROM dead_letters GROUP BY sink"))
    pulled: dict[str, dict[int, bytes]] = {}
    for bucket, relay_id, digest in cursor.execute(
        "SELECT bucket, relay_id, digest FROM pulled_records"
    ):
        pulled.setdefault(bucket, {})[relay_id] = bytes(digest)
    return _Loaded(instance, depth, dead, pulled)


class PlayerQueue:
    """
    The durable queues of every sink, and the marks of pulled records.

    @ivar instance: a random name of this queue file, so a sink can tell
        its ids from those of a queue file made afresh.
    @ivar pool: the file's single writer connection pool.
    """

    def __init__(
        self,
        path: str | Path,
        reactor: Any,
        max_events: int,
        max_dead_letters: int,
    ) -> None:
        loaded = prepare_now(path, _prepare)
        self.path = Path(path)
        self.instance = loaded.instance
        self.max_events = max_events
        self.max_dead_letters = max_dead_letters
        self._clock = reactor
        self._depth: Counter[str] = Counter(loaded.depth)
        self._dead: Counter[str] = Counter(loaded.dead)
        self._pulled = loaded.pulled
        self._generation: Counter[str] = Counter()
        self._waiters: dict[str, list[Deferred[None]]] = {}
        self.pool: adbapi.ConnectionPool = open_pool(path, reactor)
        self._closed = False

    def close(self) -> None:
        """Cancel the workers' waits and close the file (once)."""
        waiters, self._waiters = self._waiters, {}
        for waiting in waiters.values():
            for waiter in waiting:
                waiter.cancel()
        if not self._closed:
            self._closed = True
            self.pool.close()

    def depth(self, sink: str) -> int:
        """How many events wait for C{sink}."""
        return self._depth[sink]

    def dead_letters(self, sink: str) -> int:
        """How many of C{sink}'s events lie in the dead-letter table."""
        return self._dead[sink]

    def queued_sinks(self) -> list[str]:
        """The names of every sink with events waiting."""
        return sorted(name for name, count in self._depth.items() if count)

    def full(self, sinks: Collection[str]) -> list[str]:
        """Return those of C{sinks} whose queue has reached its cap."""
        return sorted(name for name in sinks if self._depth[name] >= self.max_events)

    def recognise(self, bucket: str, relay_id: int, content: str | None) -> bool:
        """Tell whether a pulled record is already queued, unacknowledged."""
        known = self._pulled.get(bucket, {}).get(relay_id)
        return known is not None and known == record_digest(content)

    def commit(
        self,
        bucket: str,
        pulled: Sequence[tuple[int, bytes]],
        events: Sequence[tuple[str, str]],
    ) -> Deferred[None]:
        """
        Queue C{events} (sink name, text) and mark the C{pulled} records
        (relay id, digest) of C{bucket}, in one transaction.
        """
        now = int(self._clock.seconds())
        done = run_interaction(self.pool, _commit, bucket, pulled, events, now)

        def committed(_: None) -> None:
            if pulled:
                marks = self._pulled.setdefault(bucket, {})
                marks.update(pulled)
            added = Counter(sink for sink, _ in events)
            self._depth.update(added)
            for sink in added:
                self._generation[sink] += 1
                for waiter in self._waiters.pop(sink, []):
                    waiter.callback(None)

        return done.addCallback(committed)

    def forget(self, bucket: str, relay_ids: Sequence[int]) -> Deferred[None]:
        """Drop the marks of records the relay confirmed deleting."""
        marks = self._pulled.get(bucket, {})
        known = [relay_id for relay_id in relay_ids if relay_id in marks]
        if not known:
            return succeed(None)
        done = run_interaction(self.pool, _forget, bucket, known)

        def forgotten(_: None) -> None:
            for relay_id in known:
                marks.pop(relay_id, None)

        return done.addCallback(forgotten)

    def generation(self, sink: str) -> int:
        """A number that grows each time events are queued for C{sink}."""
        return self._generation[sink]

    def take(self, sink: str, limit: int) -> Deferred[list[QueuedEvent]]:
        """Read the first C{limit} events waiting for C{sink}, in order."""
        return run_interaction(self.pool, _take, sink, limit)

    def wait_for_events(self, sink: str, since: int) -> Deferred[None]:
        """
        Fire once events are queued for C{sink} after L{generation} was
        C{since}; at once if that already happened.
        """
        if self._generation[sink] != since:
            return succeed(None)

        def forget(waiter: Deferred[None]) -> None:
            waiting = self._waiters.get(sink, [])
            if waiter in waiting:
                waiting.remove(waiter)

        waiter: Deferred[None] = Deferred(forget)
        self._waiters.setdefault(sink, []).append(waiter)
        return waiter

    def settle(
        self,
        sink: str,
        delivered: Sequence[int],
        dead: Sequence[DeadLetter],
        retried: Sequence[tuple[int, int]],
    ) -> Deferred[int]:
        """
        Remove C{delivered} events, move C{dead} ones to the dead letters
        and record the attempts of C{retried} ones (id, attempts), in one
        transaction.

        @return: a L{Deferred} firing with how many old dead letters were
            forgotten to stay within the cap.
        """
        now = int(self._clock.seconds())
        done = run_interaction(
            self.pool,
            _settle,
            sink,
            delivered,
            dead,
            retried,
            now,
            self.max_dead_letters,
        )

        def settled(trimmed: int) -> int:
            self._depth[sink] -= len(delivered) + len(dead)
            if self._depth[sink] < 0:
                self._depth[sink] = 0
            self._dead[sink] += len(dead) - trimmed
            return trimmed

        return done.addCallback(settled)


def _commit(
    cursor: sqlite3.Cursor,
    bucket: str,
    pulled: Sequence[tuple[int, bytes]],
    events: Sequence[tuple[str, str]],
    now: int,
) -> None:
    cursor.executemany(
        "INSERT OR REPLACE INTO pulled_records (bucket, relay_id, digest)"
        " VALUES (?, ?, ?)",
        [(bucket, relay_id, digest) for relay_id, digest in pulled],
    )
    cursor.executemany(
        "INSERT INTO queued_events (sink, content, queued_at) VALUES (?, ?, ?)",
        [(sink, text, now) for sink, text in events],
    )


def _forget(cursor: sqlite3.Cursor, bucket: str, relay_ids: list[int]) -> None:
    for start in range(0, len(relay_ids), _CHUNK):
        chunk = relay_ids[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        cursor.execute(
            f"DELETE FROM pulled_records WHERE bucket = ? AND relay_id IN ({marks})",
            [bucket, *chunk],
        )


def _take(cursor: sqlite3.Cursor, sink: str, limit: int) -> list[QueuedEvent]:
    rows = cursor.execute(
        "SELECT id, content, attempts FROM queued_events"
        " WHERE sink = ? ORDER BY id LIMIT ?",
        (sink, limit),
    ).fetchall()
    return [QueuedEvent(row[0], row[1], row[2]) for row in rows]


def _settle(
    cursor: sqlite3.Cursor,
    sink: str,
    delivered: Sequence[int],
    dead: Sequence[DeadLetter],
    retried: Sequence[tuple[int, int]],
    now: int,
    cap: int,
) -> int:
    delete_by_ids(
        cursor, "queued_events", [*delivered, *(letter.event.id for letter in dead)]
    )
    cursor.executemany(
        "UPDATE queued_events SET attempts = ? WHERE id = ?",
        [(attempts, event_id) for event_id, attempts in retried],
    )
    if not dead:
        return 0
    cursor.executemany(
        "INSERT INTO dead_letters"
        " (sink, content, reason, detail, attempts, failed_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (
                sink,
                letter.event.content,
                letter.reason,
                letter.detail[:DETAIL_MAX_CHARS],
                letter.attempts,
                now,
            )
            for letter in dead
        ],
    )
    cursor.execute(
        "DELETE FROM dead_letters WHERE sink = ? AND id <= ("
        " SELECT id FROM dead_letters WHERE sink = ?"
        " ORDER BY id DESC LIMIT 1 OFFSET ?)",
        (sink, sink, cap),
    )
    return int(cursor.rowcount)
