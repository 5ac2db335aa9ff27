"""
Tests for L{replayforge.proxy.buffer} on real SQLite files, and for the
L{GroupCommit} of L{replayforge.store} it appends through.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from replayforge.proxy.buffer import ROW_OVERHEAD_BYTES, BufferFull, SinkBuffer
from replayforge.store import GroupCommit

MIB = 1024 * 1024


def stored_rows(path: Path) -> list[tuple[int, str]]:
    """
    Read the committed events of the buffer file at C{path} through a
    connection of its own, as another process would see them.
    """
    connection = sqlite3.connect(path)
    try:
        return connection.execute(
            "SELECT id, content FROM sink_events ORDER BY id"
        ).fetchall()
    finally:
        connection.close()


class SinkBufferTestCase(TestCase):
    """Open buffers on files of a fresh folder; close them when a test ends."""

    def setUp(self) -> None:
        folder = tempfile.TemporaryDirectory(prefix="rf-proxy-buffer-")
        self.addCleanup(folder.cleanup)
        self.path = Path(folder.name) / "relay-sink.sqlite3"
        self.clock = Clock()

    async def open_buffer(
        self, max_bytes: int = 10 * MIB, close_at_end: bool = True
    ) -> SinkBuffer:
        """Open the buffer at C{self.path} with a cap of C{max_bytes}."""
        buffer = SinkBuffer(self.path, max_bytes, reactor, self.clock)
        await buffer.open()
        if close_at_end:
            self.addCleanup(buffer.close)
        return buffer


class AppendTests(SinkBufferTestCase):
    """L{SinkBuffer.append} stores events and fires once they are committed."""

    async def test_append_commits_and_counts(self) -> None:
        """
        Appended events are on disk, oldest first, stamped with the clock's
        time, and counted in C{pending_events} and C{pending_bytes} (UTF-8).
        """
        buffer = await self.open_buffer()
        self.clock.advance(1234.5)

        await buffer.append(["a", "é"])

        self.assertEqual(stored_rows(self.path), [(1, "a"), (2, "é")])
        self.assertEqual(buffer.pending_events, 2)
        self.assertEqual(buffer.pending_bytes, 3)
        events = await buffer.oldest(10)
        self.assertEqual([event.created_at for event in events], [1234.5, 1234.5])

    async def test_append_fires_after_commit(self) -> None:
        """
        Neither the append's L{Deferred} nor the counts move before the
        events are committed; when it fires, another connection sees them.
        """
        buffer = await self.open_buffer()
        seen: list[list[tuple[int, str]]] = []

        appended = buffer.append(["a"])
        self.assertNoResult(appended)
        self.assertEqual(buffer.pending_events, 0)
        appended.addCallback(lambda _: seen.append(stored_rows(self.path)))
        await appended

        self.assertEqual(seen, [[(1, "a")]])

    async def test_concurrent_appends_share_transactions(self) -> None:
        """
        Appends made in the same turn of the reactor are committed together
        in one transaction; each fires only once its own events are visible
        on disk, and the events keep the order of the appends.
        """
        buffer = await self.open_buffer()
        transactions: list[int] = []
        write = buffer._appends._write

        def counting_write(cursor: sqlite3.Cursor, rows: list[Any]) -> Any:
            transactions.append(len(rows))
            return write(cursor, rows)

        buffer._appends._write = counting_write
        visible: dict[str, bool] = {}

        def check(_: object, content: str) -> None:
            visible[content] = content in [row[1] for row in stored_rows(self.path)]

        appends = []
        for number in range(20):
            content = f"event-{number}"
            appends.append(buffer.append([content]).addCallback(check, content))
        await gatherResults(appends)

        self.assertEqual(visible, {f"event-{n}": True for n in range(20)})
        # The transaction began on the reactor's next turn, with all of them.
        self.assertEqual(transactions, [20])
        self.assertEqual(
            [row[1] for row in stored_rows(self.path)],
            [f"event-{n}" for n in range(20)],
        )
        self.assertEqual(buffer.pending_events, 20)


class CapTests(SinkBufferTestCase):
    """A buffer over its cap refuses whole appends and stores nothing."""

    async def test_refusal_stores_nothing(self) -> None:
        """
        An append that would pass the cap raises L{BufferFull}; nothing of it
        is stored or counted, and a smaller append still fits.
        """
        buffer = await self.open_buffer(max_bytes=256 * 1024)
        free = buffer.max_bytes - buffer.used_bytes

        self.assertTrue(buffer.would_overflow(["x" * free]))
        self.assertRaises(BufferFull, buffer.append, ["small", "x" * free])
        self.assertEqual(buffer.pending_events, 0)
        await buffer.append(["small"])

        self.assertEqual(stored_rows(self.path), [(1, "small")])

    async def test_uncommitted_appends_count(self) -> None:
        """
        Appends not yet committed count toward the cap: a burst cannot
        overshoot it while the disk catches up.
        """
        buffer = await self.open_buffer(max_bytes=256 * 1024)
        third = (buffer.max_bytes - buffer.used_bytes) // 3 + 1
        size = third - ROW_OVERHEAD_BYTES

        first = buffer.append(["a" * size])
        second = buffer.append(["b" * size])
        self.assertRaises(BufferFull, buffer.append, ["c" * size])
        await gatherResults([first, second])

        self.assertEqual(len(stored_rows(self.path)), 2)

    async def test_refusal_names_the_file(self) -> None:
        """L{BufferFull} names the buffer's file, for the log line."""
        buffer = await self.open_buffer(max_bytes=64 * 1024)

        error = self.assertRaises(BufferFull, buffer.append, ["x" * 64 * 1024])

        self.assertIn(str(self.path), str(error))


class ReadDeleteTests(SinkBufferTestCase):
    """L{SinkBuffer.oldest} and L{SinkBuffer.delete}."""

    async def test_oldest_first_up_to_limit(self) -> None:
        """C{oldest(n)} reads at most C{n} events, oldest first."""
        buffer = await self.open_buffer()
        await buffer.append(["a", "b"])
        await buffer.append(["c"])

        events = await buffer.oldest(2)

        self.assertEqual([(e.id, e.content) for e in events], [(1, "a"), (2, "b")])

    async def test_delete_only_given(self) -> None:
        """C{delete} removes exactly the given events and updates the counts."""
        buffer = await self.open_buffer()
        await buffer.append(["a", "bb", "ccc"])
        a, _, ccc = await buffer.oldest(3)

        await buffer.delete([a, ccc])

        self.assertEqual(stored_rows(self.path), [(2, "bb")])
        self.assertEqual(buffer.pending_events, 1)
        self.assertEqual(buffer.pending_bytes, 2)

    async def test_delete_many(self) -> None:
        """Deleting more events than one SQL statement takes deletes them all."""
        buffer = await self.open_buffer()
        await buffer.append([f"event-{n}" for n in range(1200)])

        await buffer.delete(await buffer.oldest(1200))

        self.assertEqual(stored_rows(self.path), [])
        self.assertEqual((buffer.pending_events, buffer.pending_bytes), (0, 0))


class ReopenTests(SinkBufferTestCase):
    """What a buffer file keeps across a restart of the proxy."""

    async def reopen(self, buffer: SinkBuffer) -> SinkBuffer:
        """Close C{buffer} and open its file again."""
        buffer.close()
        return await self.open_buffer()

    async def test_ids_never_reused(self) -> None:
        """
        Event ids keep growing after every event was deleted and the file
        reopened, so a batch id never names two different batches.
        """
        buffer = await self.open_buffer(close_at_end=False)
        await buffer.append(["a", "b", "c"])
        await buffer.delete(await buffer.oldest(3))

        reopened = await self.reopen(buffer)
        await reopened.append(["d"])

        self.assertEqual(stored_rows(self.path), [(4, "d")])

    async def test_instance_id_kept(self) -> None:
        """The file's instance id is made once and kept across reopening."""
        buffer = await self.open_buffer(close_at_end=False)
        instance_id = buffer.instance_id

        reopened = await self.reopen(buffer)

        self.assertTrue(instance_id)
        self.assertEqual(reopened.instance_id, instance_id)

    async def test_instance_ids_differ_between_files(self) -> None:
        """Two buffer files have different instance ids."""
        buffer = await self.open_buffer()
        self.path = self.path.with_name("other-sink.sqlite3")

        other = await self.open_buffer()

        self.assertNotEqual(other.instance_id, buffer.instance_id)

    async def test_pending_restored(self) -> None:
        """C{pending_events} and C{pending_bytes} are read back on reopening."""
        buffer = await self.open_buffer(close_at_end=False)
        await buffer.append(["a", "bb", "ccé"])
        await buffer.delete(await buffer.oldest(1))

        reopened = await self.reopen(buffer)

        self.assertEqual(reopened.pending_events, 2)
        self.assertEqual(reopened.pending_bytes, 6)

    async def test_events_kept(self) -> None:
        """Committed events are still there, in order, after reopening."""
        buffer = await self.open_buffer(close_at_end=False)
        await buffer.append(["a", "b"])

        reopened = await self.reopen(buffer)
        events = await reopened.oldest(10)

        self.assertEqual([event.content for event in events], ["a", "b"])


class MaintainTests(SinkBufferTestCase):
    """L{SinkBuffer.maintain} gives space back to the disk."""

    async def test_file_shrinks_after_large_delete(self) -> None:
        """
        After every event is deleted, C{maintain} shrinks the file and the
        size the cap is checked against.
        """
        buffer = await self.open_buffer()
        for _ in range(4):
            await buffer.append(["x" * 1000] * 1000)
        await buffer.maintain()
        full_file = self.path.stat().st_size
        full_used = buffer.used_bytes
        self.assertGreater(full_file, 3 * MIB)

        await buffer.delete(await buffer.oldest(4000))
        await buffer.maintain()

        self.assertLess(self.path.stat().st_size, full_file // 10)
        self.assertLess(buffer.used_bytes, full_used // 10)

    async def test_space_reused_for_cap(self) -> None:
        """
        Space given back by deleting counts as free again: a buffer that was
        full accepts events once the relay took the old ones.
        """
        buffer = await self.open_buffer(max_bytes=2 * MIB)
        chunk = ["x" * 1000] * 100
        for _ in range(100):
            if buffer.would_overflow(chunk):
                break
            await buffer.append(chunk)
        self.assertRaises(BufferFull, buffer.append, chunk)

        await buffer.delete(await buffer.oldest(buffer.pending_events))
        await buffer.maintain()

        await buffer.append(chunk)
        self.assertEqual(buffer.pending_events, 100)


class WhenPendingTests(SinkBufferTestCase):
    """L{SinkBuffer.when_pending} wakes the forwarder at its thresholds."""

    async def test_fires_at_once_when_reached(self) -> None:
        """A threshold already reached fires at once."""
        buffer = await self.open_buffer()
        await buffer.append(["a", "b"])

        self.successResultOf(buffer.when_pending(2, 1000))

    async def test_fires_on_event_count(self) -> None:
        """A waiter fires once the committed events reach its count."""
        buffer = await self.open_buffer()
        waiter = buffer.when_pending(3, 1000)

        await buffer.append(["a", "b"])
        self.assertNoResult(waiter)
        await buffer.append(["c"])

        self.successResultOf(waiter)

    async def test_fires_on_bytes(self) -> None:
        """A waiter fires once the committed events reach its size in bytes."""
        buffer = await self.open_buffer()
        waiter = buffer.when_pending(1000, 10)

        await buffer.append(["é" * 4])
        self.assertNoResult(waiter)
        await buffer.append(["xx"])

        self.successResultOf(waiter)

    async def test_cancelled_waiter_forgotten(self) -> None:
        """A cancelled waiter is forgotten: later appends do not touch it."""
        buffer = await self.open_buffer()
        waiter = buffer.when_pending(1, 1)
        failures: list[Failure] = []
        waiter.addErrback(failures.append)

        waiter.cancel()
        await buffer.append(["a"])

        self.assertEqual(len(failures), 1)
        self.assertEqual(buffer._thresholds, [])


class FakePool:
    """
    A connection pool whose transactions the test completes by hand.

    @ivar transactions: the items of each transaction begun, with the
        L{Deferred} that ends it.
    """

    def __init__(self) -> None:
        self.transactions: list[tuple[list[str], Deferred[int]]] = []

    def runInteraction(
        self, write: Callable[[Any, list[str]], int], items: list[str]
    ) -> Deferred[int]:
        done: Deferred[int] = Deferred()
        self.transactions.append((items, done))
        return done


class GroupCommitTests(SynchronousTestCase):
    """L{GroupCommit} gathers the writes that arrive during a transaction."""

    def setUp(self) -> None:
        self.pool = FakePool()
        self.commit: GroupCommit[str, int] = GroupCommit(
            self.pool,  # a fake standing in for an adbapi.ConnectionPool
            lambda cursor, items: len(items),
        )

    def test_first_submit_begins_transaction(self) -> None:
        """The first submission begins a transaction of its own items."""
        self.commit.submit(["a", "b"])

        self.assertEqual([items for items, _ in self.pool.transactions], [["a", "b"]])

    def test_submissions_during_transaction_share_next(self) -> None:
        """
        Submissions made while a transaction runs wait, then all go in one
        next transaction.
        """
        self.commit.submit(["a"])
        self.commit.submit(["b"])
        self.commit.submit(["c", "d"])
        self.assertEqual(self.commit.pending, 3)

        self.pool.transactions[0][1].callback(1)

        self.assertEqual(
            [items for items, _ in self.pool.transactions], [["a"], ["b", "c", "d"]]
        )
        self.assertEqual(self.commit.pending, 0)

    def test_fires_only_after_own_commit(self) -> None:
        """
        A submission fires with the result of the transaction that committed
        its items, not before.
        """
        first = self.commit.submit(["a"])
        second = self.commit.submit(["b"])
        third = self.commit.submit(["c"])

        self.pool.transactions[0][1].callback(1)
        self.assertEqual(self.successResultOf(first), 1)
        self.assertNoResult(second)
        self.assertNoResult(third)
        self.pool.transactions[1][1].callback(2)

        self.assertEqual(self.successResultOf(second), 2)
        self.assertEqual(self.successResultOf(third), 2)

    def test_failure_reaches_every_submitter_of_it(self) -> None:
        """
        A failed transaction fails each submission in it, and the next
        transaction still runs.
        """
        first = self.commit.submit(["a"])
        second = self.commit.submit(["b"])
        third = self.commit.submit(["c"])
        self.pool.transactions[0][1].callback(1)

        self.pool.transactions[1][1].errback(sqlite3.OperationalError("disk I/O"))
        fourth = self.commit.submit(["d"])
        self.pool.transactions[2][1].callback(1)

        self.successResultOf(first)
        self.failureResultOf(second, sqlite3.OperationalError)
        self.failureResultOf(third, sqlite3.OperationalError)
        self.assertEqual(self.successResultOf(fourth), 1)


class GroupCommitOnClockTests(SynchronousTestCase):
    """
    Given a clock, an idle L{GroupCommit} begins its transaction on the
    clock's next turn, with everything submitted until then.
    """

    def setUp(self) -> None:
        self.pool = FakePool()
        self.clock = Clock()
        self.commit: GroupCommit[str, int] = GroupCommit(
            self.pool,  # a fake standing in for an adbapi.ConnectionPool
            lambda cursor, items: len(items),
            self.clock,
        )

    def test_submissions_of_one_turn_share_a_transaction(self) -> None:
        """
        Nothing begins at the first submission; on the clock's next turn
        one transaction takes every item submitted before it.
        """
        first = self.commit.submit(["a"])
        second = self.commit.submit(["b", "c"])
        self.assertEqual(self.pool.transactions, [])

        self.clock.advance(0)
        self.assertEqual(
            [items for items, _ in self.pool.transactions], [["a", "b", "c"]]
        )
        self.pool.transactions[0][1].callback(3)

        self.assertEqual(self.successResultOf(first), 3)
        self.assertEqual(self.successResultOf(second), 3)

    def test_submissions_during_transaction_follow_at_once(self) -> None:
        """
        Items submitted while a transaction runs go in the next one as soon
        as it ends, without waiting for another turn.
        """
        self.commit.submit(["a"])
        self.clock.advance(0)
        self.commit.submit(["b"])

        self.pool.transactions[0][1].callback(1)

        self.assertEqual([items for items, _ in self.pool.transactions], [["a"], ["b"]])
        self.assertEqual(self.clock.getDelayedCalls(), [])
