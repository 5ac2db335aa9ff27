"""
Tests for the player's durable queue, L{replayforge.player.queue}, and the
per-sink delivery loop, L{replayforge.player.worker}, on a real SQLite file
and a L{Clock}.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from replayforge.backoff import Backoff
from replayforge.player.queue import PlayerQueue, record_digest
from replayforge.player.sinks.base import (
    DELIVERED,
    POSTPONED,
    Outcome,
    QueuedEvent,
    Rejected,
    Retry,
    Sink,
)
from replayforge.player.sinks.settings import HttpSinkSettings, RetryPolicy
from replayforge.player.worker import SinkWorker
from tests.player_support import (
    SynchronousReactor,
    make_queue,
    sink_config,
    temp_folder,
)


class ScriptedSink(Sink):
    """
    A sink answering the outcomes the test gives, per content.

    @ivar answers: content → outcome, or a list of outcomes used in turn;
        an exception fails the whole delivery; a L{Deferred} is waited on.
    """

    def __init__(self, name: str, max_retries: int = 2, batch_size: int = 10) -> None:
        retry = RetryPolicy(max_retries=max_retries)
        super().__init__(
            sink_config(name, HttpSinkSettings("http://unused", retry=retry), "http")
        )
        self.batch_size = batch_size
        self.answers: dict[str, Any] = {}
        self.deliveries: list[list[str]] = []
        self.whole: list[Any] = []

    def deliver(self, events: Sequence[QueuedEvent]) -> Deferred[list[Outcome]]:
        self.deliveries.append([event.content for event in events])
        if self.whole:
            answer = self.whole.pop(0)
            if isinstance(answer, Exception):
                return fail(answer)
            return answer  # type: ignore[no-any-return]
        outcomes: list[Outcome] = []
        for event in events:
            answer = self.answers.get(event.content, DELIVERED)
            if isinstance(answer, list):
                answer = answer.pop(0) if len(answer) > 1 else answer[0]
            outcomes.append(answer)
        return succeed(outcomes)


class QueueTestCase(SynchronousTestCase):
    """A queue file and helpers to read it back."""

    def setUp(self) -> None:
        self.folder = temp_folder(self, "rf-player-queue-")
        self.reactor = SynchronousReactor()
        self.queue = make_queue(self, self.reactor, self.folder, max_dead_letters=3)

    def commit(self, *events: tuple[str, str]) -> None:
        self.successResultOf(self.queue.commit("bucket", [], list(events)))

    def dead_letters(self) -> list[tuple[Any, ...]]:
        connection = sqlite3.connect(self.queue.path)
        try:
            return connection.execute(
                "SELECT sink, content, reason, detail, attempts FROM dead_letters"
                " ORDER BY id"
            ).fetchall()
        finally:
            connection.close()

    def worker(self, sink: Sink, jitter: float = 0.0) -> SinkWorker:
        worker = SinkWorker(
            sink,
            self.queue,
            self.reactor,
            backoff=Backoff(initial=1.0, maximum=8.0, rng=lambda: jitter),
            failure_backoff=Backoff(initial=2.0, maximum=8.0, rng=lambda: 0.0),
        )
        worker.start()
        self.addCleanup(self.stop, worker)
        return worker

    def stop(self, worker: SinkWorker) -> None:
        self.successResultOf(worker.stop())


class PlayerQueueTests(QueueTestCase):
    """What the queue file keeps, and across restarts."""

    def test_take_in_order_per_sink(self) -> None:
        """Events come out per sink, in the order they were committed."""
        self.commit(("a", "1"), ("b", "x"), ("a", "2"), ("a", "3"))
        events = self.successResultOf(self.queue.take("a", 2))
        self.assertEqual([event.content for event in events], ["1", "2"])
        self.assertEqual(self.queue.depth("a"), 3)
        self.assertEqual(self.queue.depth("b"), 1)
        self.assertLess(events[0].id, events[1].id)

    def test_settle(self) -> None:
        """Settling removes delivered events and keeps retried attempts."""
        self.commit(("a", "1"), ("a", "2"))
        first, second = self.successResultOf(self.queue.take("a", 10))
        self.successResultOf(self.queue.settle("a", [first.id], [], [(second.id, 2)]))
        [left] = self.successResultOf(self.queue.take("a", 10))
        self.assertEqual((left.content, left.attempts), ("2", 2))
        self.assertEqual(self.queue.depth("a"), 1)

    def test_survives_restart(self) -> None:
        """A queue opened again finds its events, marks, counts and name."""
        self.successResultOf(
            self.queue.commit("bucket", [(7, record_digest("r"))], [("a", "1")])
        )
        instance = self.queue.instance
        self.queue.close()
        again = make_queue(self, self.reactor, self.folder)
        self.assertEqual(again.instance, instance)
        self.assertEqual(again.depth("a"), 1)
        self.assertTrue(again.recognise("bucket", 7, "r"))
        self.assertFalse(again.recognise("bucket", 7, "other content"))
        self.assertFalse(again.recognise("other", 7, "r"))

    def test_forget_marks(self) -> None:
        """Marks forgotten after an acknowledgement no longer recognise."""
        self.successResultOf(self.queue.commit("bucket", [(1, record_digest("r"))], []))
        self.successResultOf(self.queue.forget("bucket", [1, 2]))
        self.assertFalse(self.queue.recognise("bucket", 1, "r"))
        self.queue.close()
        again = make_queue(self, self.reactor, self.folder)
        self.assertFalse(again.recognise("bucket", 1, "r"))

    def test_full(self) -> None:
        """A sink whose queue reached its cap is reported full."""
        queue = PlayerQueue(self.folder / "small.sqlite3", self.reactor, 2, 10)
        self.addCleanup(queue.close)
        from tests.player_support import synchronous

        synchronous(queue.pool)
        self.successResultOf(queue.commit("b", [], [("a", "1"), ("b", "1")]))
        self.assertEqual(queue.full(["a", "b"]), [])
        self.successResultOf(queue.commit("b", [], [("a", "2")]))
        self.assertEqual(queue.full(["a", "b"]), ["a"])


class SinkWorkerTests(QueueTestCase):
    """Draining one sink's queue."""

    def test_delivers_and_waits_for_more(self) -> None:
        """Queued events are delivered; events queued later wake the worker."""
        sink = ScriptedSink("a")
        self.commit(("a", "1"), ("a", "2"))
        self.worker(sink)
        self.assertEqual(sink.deliveries, [["1", "2"]])
        self.assertEqual(self.queue.depth("a"), 0)
        self.commit(("a", "3"))
        self.assertEqual(sink.deliveries, [["1", "2"], ["3"]])
        self.assertEqual(sink.stats.delivered, 3)

    def test_rejected_goes_to_dead_letters(self) -> None:
        """A rejected event is dead-lettered with its reason, and counted."""
        sink = ScriptedSink("a")
        sink.answers["bad"] = Rejected("bad_table", "'json_each' is built in")
        self.commit(("a", "ok"), ("a", "bad"), ("a", "ok2"))
        self.worker(sink)
        self.assertEqual(
            self.dead_letters(),
            [("a", "bad", "bad_table", "'json_each' is built in", 1)],
        )
        self.assertEqual(sink.stats.dropped["bad_table"], 1)
        self.assertEqual(sink.stats.delivered, 2)
        self.assertEqual(self.queue.dead_letters("a"), 1)
        self.assertEqual(self.queue.depth("a"), 0)

    def test_retry_with_backoff_then_give_up(self) -> None:
        """
        An event worth retrying is tried again after a growing backoff; past
        C{maxRetries} it is given up, dead-lettered and counted.
        """
        sink = ScriptedSink("a", max_retries=2)
        sink.answers["flaky"] = Retry("answered 503")
        self.commit(("a", "flaky"))
        self.worker(sink)
        self.assertEqual(len(sink.deliveries), 1)
        self.reactor.advance(0.49)
        self.assertEqual(len(sink.deliveries), 1)
        self.reactor.advance(0.01)
        self.assertEqual(len(sink.deliveries), 2)
        self.reactor.advance(0.99)
        self.assertEqual(len(sink.deliveries), 2)
        self.reactor.advance(0.01)
        self.assertEqual(len(sink.deliveries), 3)
        self.assertEqual(
            self.dead_letters(),
            [("a", "flaky", "sink_gave_up", "after 3 attempts: answered 503", 3)],
        )
        self.assertEqual(sink.stats.dropped["sink_gave_up"], 1)
        self.assertEqual(sink.stats.retries, 2)

    def test_jitter(self) -> None:
        """The backoff is drawn between half the ceiling and the ceiling."""
        sink = ScriptedSink("a", max_retries=5)
        sink.answers["flaky"] = [Retry("503"), DELIVERED]
        self.commit(("a", "flaky"))
        self.worker(sink, jitter=0.999)
        self.reactor.advance(0.99)
        self.assertEqual(len(sink.deliveries), 1)
        self.reactor.advance(0.01)
        self.assertEqual(len(sink.deliveries), 2)

    def test_retry_after_honoured(self) -> None:
        """A target's C{Retry-After} sets the wait before the next attempt."""
        sink = ScriptedSink("a", max_retries=5)
        sink.answers["busy"] = [Retry("answered 429", retry_after=30.0), DELIVERED]
        self.commit(("a", "busy"))
        self.worker(sink)
        self.reactor.advance(29.9)
        self.assertEqual(len(sink.deliveries), 1)
        self.reactor.advance(0.1)
        self.assertEqual(len(sink.deliveries), 2)
        self.assertEqual(self.queue.depth("a"), 0)

    def test_attempts_survive_restart(self) -> None:
        """Attempts already failed still count after the worker restarts."""
        sink = ScriptedSink("a", max_retries=1)
        sink.answers["flaky"] = Retry("answered 500")
        self.commit(("a", "flaky"))
        worker = self.worker(sink)
        self.successResultOf(worker.stop())
        [event] = self.successResultOf(self.queue.take("a", 1))
        self.assertEqual(event.attempts, 1)

        restarted = ScriptedSink("a", max_retries=1)
        restarted.answers["flaky"] = Retry("answered 500")
        self.worker(restarted)
        self.assertEqual(len(restarted.deliveries), 1)
        self.assertEqual(
            self.dead_letters(),
            [("a", "flaky", "sink_gave_up", "after 2 attempts: answered 500", 2)],
        )

    def test_postponed_events_stay(self) -> None:
        """Postponed events stay queued without an attempt counted."""
        sink = ScriptedSink("a", max_retries=5)
        sink.answers["first"] = [Retry("503"), DELIVERED]
        sink.answers["second"] = [POSTPONED, DELIVERED]
        self.commit(("a", "first"), ("a", "second"))
        self.worker(sink)
        [head, tail] = self.successResultOf(self.queue.take("a", 10))
        self.assertEqual((head.attempts, tail.attempts), (1, 0))
        self.reactor.advance(1.0)
        self.assertEqual(sink.deliveries[-1], ["first", "second"])
        self.assertEqual(self.queue.depth("a"), 0)

    def test_sink_failure_retries_the_batch(self) -> None:
        """
        A sink that cannot work (its delivery fails) gets the same batch
        again after a backoff; no event is blamed or dropped.
        """
        sink = ScriptedSink("a", max_retries=0)
        sink.whole = [OSError("disk full"), OSError("still full")]
        self.commit(("a", "1"), ("a", "2"))
        self.worker(sink)
        self.reactor.advance(2.0)
        self.assertEqual(len(sink.deliveries), 2)
        self.reactor.advance(4.0)
        self.assertEqual(sink.deliveries, [["1", "2"]] * 3)
        self.assertEqual(self.queue.depth("a"), 0)
        self.assertEqual(self.dead_letters(), [])
        self.assertEqual(sink.stats.failures, 2)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)

    def test_slow_sink_does_not_hold_the_others(self) -> None:
        """A sink still delivering, or backing off, holds back only itself."""
        slow = ScriptedSink("slow")
        hanging: Deferred[list[Outcome]] = Deferred()
        slow.whole = [hanging]
        failing = ScriptedSink("failing", max_retries=10)
        failing.answers["e"] = Retry("refused")
        fast = ScriptedSink("fast")
        for sink in (slow, failing, fast):
            self.worker(sink)
        for number in range(3):
            self.commit(("slow", "e"), ("failing", "e"), ("fast", f"e{number}"))
        self.assertEqual(fast.stats.delivered, 3)
        self.assertEqual(self.queue.depth("fast"), 0)
        self.assertEqual(self.queue.depth("slow"), 3)
        self.assertEqual(self.queue.depth("failing"), 3)
        hanging.callback([DELIVERED])
        self.assertEqual(self.queue.depth("slow"), 0)

    def test_dead_letter_cap(self) -> None:
        """Past the cap the oldest dead letters of a sink are forgotten."""
        sink = ScriptedSink("a")
        for number in range(5):
            sink.answers[f"bad{number}"] = Rejected("rejected", "answered 400")
        self.commit(*[("a", f"bad{number}") for number in range(5)])
        self.worker(sink)
        self.assertEqual(
            [row[1] for row in self.dead_letters()], ["bad2", "bad3", "bad4"]
        )
        self.assertEqual(self.queue.dead_letters("a"), 3)
        self.assertEqual(sink.stats.dropped["rejected"], 5)

    def test_stop_while_waiting(self) -> None:
        """Stopping a worker that waits for events leaves nothing pending."""
        worker = SinkWorker(ScriptedSink("a"), self.queue, self.reactor)
        worker.start()
        self.successResultOf(worker.stop())
        self.assertEqual(self.reactor.getDelayedCalls(), [])
