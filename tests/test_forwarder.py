"""
Tests for L{replayforge.proxy.forwarder}: batching, headers, retries.

Most tests drive a L{Forwarder} on a L{Clock} with an in-memory buffer and a
relay we script, so every step happens at once and time moves only when a
test says so.  L{ForwarderWithSinkBufferTests} runs it over a real
L{SinkBuffer} on SQLite.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import error, reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from replayforge.backoff import DEFAULT_INITIAL_SECONDS as INITIAL_BACKOFF_SECONDS
from replayforge.backoff import DEFAULT_MAXIMUM_SECONDS as MAX_BACKOFF_SECONDS
from replayforge.backoff import Backoff
from replayforge.proxy.buffer import BufferedEvent, SinkBuffer
from replayforge.proxy.config import Batching, ProxySinkConfig
from replayforge.proxy.forwarder import (
    REQUEST_TIMEOUT_SECONDS,
    Forwarder,
)
from replayforge.proxy.stats import SinkStats


def sink_config(
    max_events: int = 1000,
    goal_bytes: int = 4 * 1024 * 1024,
    max_payload_bytes: int = 5 * 1024 * 1024,
    timeout_seconds: float = 5.0,
    buckets: Sequence[str] = ("events", "audit"),
    linger_seconds: float = 0.0,
) -> ProxySinkConfig:
    """Make the configuration of a sink called C{relay} with this batching."""
    return ProxySinkConfig(
        id="relay",
        url="http://relay.test:8081/",
        auth_bearer="sink-token",
        buckets=list(buckets),
        database_path=Path("unused.sqlite3"),
        max_bytes=10 * 1024 * 1024,
        max_messages_per_minute=0,
        transform_script=None,
        batching=Batching(
            max_events=max_events,
            goal_bytes=goal_bytes,
            max_payload_bytes=max_payload_bytes,
            timeout_seconds=timeout_seconds,
            linger_seconds=linger_seconds,
        ),
    )


def backoff_delay(attempt: int, rng: Callable[[], float]) -> float:
    """The forwarder's wait before retry number C{attempt}, with C{rng}."""
    return Backoff(rng=rng).delay(attempt)


def always(value: float) -> Callable[[], float]:
    """Make a random number generator that always returns C{value}."""
    return lambda: value


def sequence_of(values: Sequence[float]) -> Callable[[], float]:
    """Make a random number generator that returns C{values} in turn."""
    remaining: Iterator[float] = iter(values)
    return lambda: next(remaining)


class MemoryBuffer:
    """
    An in-memory sink buffer: every operation has already happened when it
    returns, so a forwarder over it runs synchronously.

    @ivar deletions: the ids of each call to L{delete}, in order.
    @ivar failing_reads: how many of the next calls to L{oldest} fail.
    @ivar failing_deletes: how many of the next calls to L{delete} fail.
    """

    def __init__(self, clock: Clock, instance_id: str = "0a1b2c") -> None:
        self.instance_id = instance_id
        self.events: list[BufferedEvent] = []
        self.deletions: list[list[int]] = []
        self.failing_reads = 0
        self.failing_deletes = 0
        self._clock = clock
        self._next_id = 1
        self._thresholds: list[tuple[int, int, Deferred[None]]] = []

    @property
    def pending_events(self) -> int:
        return len(self.events)

    @property
    def pending_bytes(self) -> int:
        return sum(len(event.content.encode("utf-8")) for event in self.events)

    def add(self, *contents: str) -> None:
        """Store C{contents} at the clock's present time."""
        for content in contents:
            self.events.append(
                BufferedEvent(self._next_id, content, self._clock.seconds())
            )
            self._next_id += 1
        self._wake()

    def contents(self) -> list[str]:
        """The contents still stored, oldest first."""
        return [event.content for event in self.events]

    def oldest(self, limit: int) -> Deferred[list[BufferedEvent]]:
        if self.failing_reads:
            self.failing_reads -= 1
            return fail(sqlite3.OperationalError("disk I/O error"))
        return succeed(list(self.events[:limit]))

    def delete(self, events: Sequence[BufferedEvent]) -> Deferred[None]:
        if self.failing_deletes:
            self.failing_deletes -= 1
            return fail(sqlite3.OperationalError("database or disk is full"))
        ids = [event.id for event in events]
        self.deletions.append(ids)
        self.events = [event for event in self.events if event.id not in ids]
        return succeed(None)

    def when_pending(self, events: int, size: int) -> Deferred[None]:
        def forget(waiter: Deferred[None]) -> None:
            self._thresholds = [t for t in self._thresholds if t[2] is not waiter]

        waiter: Deferred[None] = Deferred(forget)
        self._thresholds.append((events, size, waiter))
        self._wake()
        return waiter

    @property
    def waiting(self) -> int:
        """How many L{when_pending} waiters have neither fired nor been cancelled."""
        return len(self._thresholds)

    def _wake(self) -> None:
        reached = [
            entry
            for entry in self._thresholds
            if self.pending_events >= entry[0] or self.pending_bytes >= entry[1]
        ]
        for entry in reached:
            self._thresholds.remove(entry)
            entry[2].callback(None)


@attrs.frozen
class Post:
    """One request the forwarder made."""

    url: str
    headers: dict[str, list[str]]
    body: bytes
    timeout: float | None

    def header(self, name: str) -> str | None:
        """Return the single value of header C{name}, or L{None}."""
        values = self.headers.get(name)
        if values is None:
            return None
        assert len(values) == 1, values
        return values[0]

    def events(self) -> list[str]:
        """Decode the body: the JSON array of event strings."""
        decoded = json.loads(self.body)
        assert isinstance(decoded, list)
        return decoded


class RelayResponse:
    """A response of L{FakeRelay}: a status code and a body."""

    def __init__(self, code: int, body: bytes | Deferred[bytes] = b"") -> None:
        self.code = code
        self._body = body

    def content(self) -> Deferred[bytes]:
        if isinstance(self._body, Deferred):
            return self._body
        return succeed(self._body)


Answer = int | Exception | RelayResponse | Deferred[Any]


class FakeRelay:
    """
    An HTTP client that records each post and answers from a script.

    Each post takes the next of L{answers}: a status code, an exception the
    request fails with, a L{RelayResponse}, or a L{Deferred} the test fires.
    With the script empty, the relay answers 200.
    """

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.posts: list[Post] = []

    def post(
        self,
        url: str,
        data: bytes = b"",
        headers: dict[str, list[str]] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Deferred[Any]:
        assert not kwargs, kwargs
        self.posts.append(Post(url, dict(headers or {}), data, timeout))
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Deferred):
            return answer
        if isinstance(answer, Exception):
            return fail(answer)
        if isinstance(answer, int):
            answer = RelayResponse(answer, b"stored" if answer < 300 else b"nope")
        return succeed(answer)

    def sent(self) -> list[list[str]]:
        """The events of every post, one list per post."""
        return [post.events() for post in self.posts]


class ForwarderTestCase(SynchronousTestCase):
    """Build a forwarder over a L{MemoryBuffer} and a L{FakeRelay}."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.buffer = MemoryBuffer(self.clock)
        self.relay = FakeRelay()
        self.stats = SinkStats()

    def start(
        self,
        config: ProxySinkConfig | None = None,
        env_name: str = "prod",
        rng: Callable[[], float] | None = None,
    ) -> Forwarder:
        """
        Start a forwarder; stop it when the test ends.

        @param rng: its random numbers; by default always 0.
        """
        forwarder = Forwarder(
            config or sink_config(),
            self.buffer,
            self.relay,
            self.clock,
            self.stats,
            env_name,
            "edge-1",
            rng=rng or always(0.0),
        )
        forwarder.start()
        self.addCleanup(forwarder.stop)
        return forwarder

    def next_delay(self) -> float:
        """Return how long the only scheduled call waits from now."""
        calls = self.clock.getDelayedCalls()
        self.assertEqual(len(calls), 1, calls)
        return calls[0].getTime() - self.clock.seconds()


class BatchingTests(ForwarderTestCase):
    """When a batch goes out, and how big it is."""

    def test_idle_link_sends_at_once(self) -> None:
        """
        With no batch in flight, a pending event leaves at once, however
        long C{batchTimeoutSecs} would let it wait for company.
        """
        self.start(sink_config(max_events=10, timeout_seconds=5))

        self.buffer.add("a")

        self.assertEqual(self.relay.sent(), [["a"]])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_linger_gathers_a_trickle(self) -> None:
        """
        With C{batchLingerMs}, a batch that is not full waits that long after
        its oldest event for company, then leaves with what came.
        """
        self.start(sink_config(max_events=10, linger_seconds=0.02))

        self.buffer.add("a")
        self.clock.advance(0.01)
        self.buffer.add("b")
        self.assertEqual(self.relay.sent(), [])
        self.assertAlmostEqual(self.next_delay(), 0.01)

        self.clock.advance(0.01)

        self.assertEqual(self.relay.sent(), [["a", "b"]])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_full_batch_does_not_linger(self) -> None:
        """A batch that reaches C{batchMaxEvents} leaves without lingering."""
        self.start(sink_config(max_events=3, linger_seconds=0.02))

        self.buffer.add("a", "b")
        self.assertEqual(self.relay.sent(), [])
        self.buffer.add("c")

        self.assertEqual(self.relay.sent(), [["a", "b", "c"]])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_linger_counts_from_the_oldest_event(self) -> None:
        """
        Events that waited through a send have lingered already: once the
        send is answered they leave at once.
        """
        answer: Deferred[RelayResponse] = Deferred()
        self.relay.answers = [answer]
        self.start(sink_config(max_events=10, linger_seconds=0.02))
        self.buffer.add("a")
        self.clock.advance(0.02)
        self.assertEqual(self.relay.sent(), [["a"]])
        self.buffer.add("b")
        self.clock.advance(0.05)

        answer.callback(RelayResponse(200))

        self.assertEqual(self.relay.sent(), [["a"], ["b"]])

    def test_linger_bounded_by_timeout(self) -> None:
        """C{batchTimeoutSecs} stays the longest an event waits."""
        self.start(sink_config(max_events=10, linger_seconds=0.5, timeout_seconds=0.1))
        self.buffer.add("a")
        self.assertAlmostEqual(self.next_delay(), 0.1)

        self.clock.advance(0.1)

        self.assertEqual(self.relay.sent(), [["a"]])

    def test_events_gather_while_a_batch_is_in_flight(self) -> None:
        """
        Events that arrive while a batch is in flight wait for its answer,
        then leave together in the next batch.
        """
        answer: Deferred[RelayResponse] = Deferred()
        self.relay.answers = [answer]
        self.start(sink_config(max_events=10))
        self.buffer.add("a")
        self.buffer.add("b")
        self.buffer.add("c")
        self.assertEqual(self.relay.sent(), [["a"]])

        answer.callback(RelayResponse(200))

        self.assertEqual(self.relay.sent(), [["a"], ["b", "c"]])
        self.assertEqual(self.buffer.contents(), [])

    def test_batch_holds_at_most_max_events(self) -> None:
        """
        Of more than C{batchMaxEvents} waiting events, the oldest
        C{batchMaxEvents} go first; the rest follow in the next batches.
        """
        answer: Deferred[RelayResponse] = Deferred()
        self.relay.answers = [answer]
        self.start(sink_config(max_events=3))
        self.buffer.add("a")
        self.buffer.add("b", "c", "d", "e", "f", "g", "h")

        answer.callback(RelayResponse(200))

        self.assertEqual(
            self.relay.sent(), [["a"], ["b", "c", "d"], ["e", "f", "g"], ["h"]]
        )

    def test_batch_stops_at_goal_bytes(self) -> None:
        """
        A batch takes events up to the first that brings it to
        C{batchGoalBytes}; the rest go in the next batch.
        """
        answer: Deferred[RelayResponse] = Deferred()
        self.relay.answers = [answer]
        self.start(sink_config(max_events=100, goal_bytes=100))
        self.buffer.add("first")
        self.buffer.add("x" * 40, "y" * 40, "z" * 40, "w")

        answer.callback(RelayResponse(200))

        self.assertEqual(
            self.relay.sent(),
            [["first"], ["x" * 40, "y" * 40, "z" * 40], ["w"]],
        )

    def test_max_payload_splits(self) -> None:
        """
        Events that together exceed C{maxPayloadBytes} are split over several
        batches, oldest first; no body is ever larger than the limit.
        """
        self.start(sink_config(max_payload_bytes=100, timeout_seconds=5))
        # Each event is 42 bytes as a JSON string: two fit in 100 with the
        # brackets and comma, three do not.
        events = [letter * 40 for letter in "abcde"]

        self.buffer.add(*events)
        self.clock.advance(5)

        self.assertEqual(self.relay.sent(), [events[0:2], events[2:4], events[4:5]])
        for post in self.relay.posts:
            self.assertLessEqual(len(post.body), 100)

    def test_event_exactly_filling_payload_sent(self) -> None:
        """An event whose JSON array is exactly C{maxPayloadBytes} long is sent."""
        self.start(sink_config(max_payload_bytes=64, timeout_seconds=0))

        # 60 characters, 62 as a JSON string, 64 inside the brackets.
        self.buffer.add("x" * 60)

        self.assertEqual(self.relay.sent(), [["x" * 60]])
        self.assertEqual(len(self.relay.posts[0].body), 64)
        self.assertEqual(self.stats.dropped["payload_too_large"], 0)

    def test_oversized_event_dropped_and_counted(self) -> None:
        """
        An event too large to be sent even alone is deleted and counted as
        C{payload_too_large}; the events around it are sent.
        """
        self.start(sink_config(max_payload_bytes=64, timeout_seconds=0))

        self.buffer.add("before", "x" * 61, "after")

        self.assertEqual(self.relay.sent(), [["before", "after"]])
        self.assertEqual(self.stats.dropped["payload_too_large"], 1)
        self.assertEqual(self.buffer.contents(), [])

    def test_only_oversized_events(self) -> None:
        """
        A buffer holding nothing but oversized events is emptied without a
        request, and the forwarder goes on with what comes next.
        """
        self.start(sink_config(max_payload_bytes=64, timeout_seconds=0))

        self.buffer.add("x" * 100, "y" * 100)
        self.assertEqual(self.relay.posts, [])
        self.assertEqual(self.buffer.contents(), [])
        self.buffer.add("small")

        self.assertEqual(self.relay.sent(), [["small"]])
        self.assertEqual(self.stats.dropped["payload_too_large"], 2)


class RequestTests(ForwarderTestCase):
    """What a batch request carries."""

    def test_url(self) -> None:
        """Batches are posted to the sink's C{url} followed by C{record-batch}."""
        self.start(sink_config(timeout_seconds=0))

        self.buffer.add("a")

        self.assertEqual(self.relay.posts[0].url, "http://relay.test:8081/record-batch")

    def test_headers(self) -> None:
        """
        A batch carries the bearer token, the bucket list joined by commas,
        the environment and host names, a batch id and the JSON content type.
        """
        self.start(sink_config(timeout_seconds=0), env_name="prod")

        self.buffer.add("a")

        post = self.relay.posts[0]
        self.assertEqual(post.header("Authorization"), "Bearer sink-token")
        self.assertEqual(post.header("RF-BUCKETS"), "events,audit")
        self.assertEqual(post.header("RF-ENV-NAME"), "prod")
        self.assertEqual(post.header("RF-HOSTNAME"), "edge-1")
        self.assertEqual(post.header("Content-Type"), "application/json")
        self.assertTrue(post.header("RF-BATCH-ID"))

    def test_no_env_name_header_without_env(self) -> None:
        """Without an C{envName}, no C{RF-ENV-NAME} header is sent."""
        self.start(sink_config(timeout_seconds=0), env_name="")

        self.buffer.add("a")

        self.assertNotIn("RF-ENV-NAME", self.relay.posts[0].headers)

    def test_single_bucket(self) -> None:
        """One bucket is sent as it is, with no comma."""
        self.start(sink_config(timeout_seconds=0, buckets=["events"]))

        self.buffer.add("a")

        self.assertEqual(self.relay.posts[0].header("RF-BUCKETS"), "events")

    def test_body_is_json_array_of_events(self) -> None:
        """
        The body is a JSON array of the events' strings, exactly as stored:
        quotes, backslashes, newlines and non-ASCII text included.
        """
        self.start(sink_config(timeout_seconds=0))
        events = ['{"path": "/a\\\\b", "body": "line\\n"}', "é ✓ 日本", "tab\tend"]

        self.buffer.add(*events)

        self.assertEqual(self.relay.sent(), [events])

    def test_batch_ids_differ_between_batches(self) -> None:
        """Different batches carry different C{RF-BATCH-ID}s."""
        self.start(sink_config(max_events=1))

        self.buffer.add("a", "b")

        ids = [post.header("RF-BATCH-ID") for post in self.relay.posts]
        self.assertEqual(len(ids), 2)
        self.assertNotEqual(ids[0], ids[1])

    def test_batch_ids_differ_between_buffers(self) -> None:
        """
        The same event ids in another buffer file make another C{RF-BATCH-ID},
        so a recreated buffer's batches are not taken for redeliveries.
        """
        self.start(sink_config(timeout_seconds=0))
        self.buffer.add("a")
        first = self.relay.posts[0].header("RF-BATCH-ID")
        self.buffer = MemoryBuffer(self.clock, instance_id="ffeedd")
        self.start(sink_config(timeout_seconds=0))

        self.buffer.add("a")

        self.assertNotEqual(self.relay.posts[1].header("RF-BATCH-ID"), first)

    def test_request_timeout(self) -> None:
        """Each request is bounded by the request timeout."""
        self.start(sink_config(timeout_seconds=0))

        self.buffer.add("a")

        self.assertEqual(self.relay.posts[0].timeout, REQUEST_TIMEOUT_SECONDS)

    def test_success_deletes_and_counts(self) -> None:
        """
        Once the relay answers 2xx, the batch is deleted from the buffer and
        counted as forwarded.
        """
        self.relay.answers = [RelayResponse(204)]
        self.start(sink_config(timeout_seconds=0))

        self.buffer.add("a", "b")

        self.assertEqual(self.buffer.contents(), [])
        self.assertEqual(self.buffer.deletions, [[1, 2]])
        self.assertEqual(self.stats.forwarded_events, 2)
        self.assertEqual(self.stats.batches, 1)
        self.assertEqual(self.stats.bytes_sent, len(self.relay.posts[0].body))


class BackoffDelayTests(SynchronousTestCase):
    """L{backoff_delay}: how long to wait before each retry."""

    def test_doubles_from_initial(self) -> None:
        """
        The ceiling starts at L{INITIAL_BACKOFF_SECONDS} and doubles with each
        attempt; with no randomness the delay is half the ceiling.
        """
        delays = [backoff_delay(attempt, always(0.0)) for attempt in range(1, 6)]

        self.assertEqual(delays, [INITIAL_BACKOFF_SECONDS * 2**n / 2 for n in range(5)])
        self.assertEqual(delays, [0.25, 0.5, 1.0, 2.0, 4.0])

    def test_random_half(self) -> None:
        """The random number decides the upper half of the ceiling."""
        self.assertEqual(backoff_delay(3, always(0.5)), 1.5)
        self.assertEqual(backoff_delay(3, always(1.0)), 2.0)

    def test_capped(self) -> None:
        """No delay is longer than L{MAX_BACKOFF_SECONDS}."""
        self.assertEqual(backoff_delay(20, always(1.0)), MAX_BACKOFF_SECONDS)
        self.assertEqual(backoff_delay(20, always(0.0)), MAX_BACKOFF_SECONDS / 2)

    def test_capped_after_very_many_attempts(self) -> None:
        """
        The cap holds however many attempts came before: a relay down for a
        day still gets a retry every minute or so.
        """
        for attempt in (1024, 1025, 5000, 10**6):
            self.assertEqual(backoff_delay(attempt, always(1.0)), MAX_BACKOFF_SECONDS)


class RetryTests(ForwarderTestCase):
    """What happens when the relay does not store a batch."""

    def test_failures_keep_events(self) -> None:
        """
        On 5xx, 429 and connection errors nothing is deleted: the events stay
        in the buffer.
        """
        for answer in (500, 503, 429, error.ConnectionRefusedError()):
            self.relay.answers = [answer]
            self.buffer = MemoryBuffer(self.clock)
            forwarder = self.start(sink_config(timeout_seconds=0))

            self.buffer.add("a", "b")

            self.assertEqual(len(self.relay.posts), 1)
            self.assertEqual(self.buffer.deletions, [])
            self.assertEqual(self.buffer.contents(), ["a", "b"])
            self.assertEqual(self.stats.forwarded_events, 0)
            self.successResultOf(forwarder.stop())
            self.relay.posts.clear()

    def test_growing_delays(self) -> None:
        """
        Each retry of a failing batch comes after the delay L{backoff_delay}
        gives for its attempt number, with the forwarder's random numbers.
        """
        randoms = [0.0, 1.0, 0.5, 0.25, 0.0]
        self.relay.answers = [503, 429, error.ConnectionRefusedError(), 500, 502, 200]
        self.start(sink_config(timeout_seconds=0), rng=sequence_of(randoms))
        self.buffer.add("a")

        expected = [
            backoff_delay(attempt, always(value))
            for attempt, value in enumerate(randoms, start=1)
        ]
        self.assertEqual(expected, [0.25, 1.0, 1.5, 2.5, 4.0])
        for number, delay in enumerate(expected, start=1):
            self.assertEqual(len(self.relay.posts), number)
            self.assertEqual(self.next_delay(), delay)
            self.clock.advance(delay)

        self.assertEqual(len(self.relay.posts), 6)
        self.assertEqual(self.buffer.contents(), [])
        self.assertEqual(self.stats.retries, 5)

    def test_no_retry_before_delay(self) -> None:
        """A retry does not come a moment before its delay has passed."""
        self.relay.answers = [503]
        self.start(sink_config(timeout_seconds=0))
        self.buffer.add("a")

        self.clock.advance(0.24)
        self.assertEqual(len(self.relay.posts), 1)
        self.clock.advance(0.01)

        self.assertEqual(len(self.relay.posts), 2)

    def test_delays_capped(self) -> None:
        """
        A relay that keeps failing is retried at most
        L{MAX_BACKOFF_SECONDS} apart, for well over a thousand attempts.
        """
        attempts = 1100
        self.relay.answers = [503] * attempts
        self.start(sink_config(timeout_seconds=0), rng=always(1.0))
        self.buffer.add("a")

        delays = []
        for _ in range(attempts):
            delays.append(self.next_delay())
            self.clock.advance(delays[-1])

        self.assertEqual(max(delays), MAX_BACKOFF_SECONDS)
        self.assertEqual(delays[-1], MAX_BACKOFF_SECONDS)
        self.assertEqual(len(self.relay.posts), attempts + 1)
        self.assertEqual(self.buffer.contents(), [])

    def test_retry_same_batch_same_id(self) -> None:
        """
        A retry resends the same events under the same C{RF-BATCH-ID}, even
        when more events arrived meanwhile.
        """
        self.relay.answers = [503, 503]
        self.start(sink_config(max_events=10, timeout_seconds=0))
        self.buffer.add("a", "b")
        self.buffer.add("c")

        self.clock.advance(self.next_delay())
        self.clock.advance(self.next_delay())

        self.assertEqual(self.relay.sent()[:3], [["a", "b"]] * 3)
        ids = {post.header("RF-BATCH-ID") for post in self.relay.posts[:3]}
        self.assertEqual(len(ids), 1)

    def test_order_kept_across_retries(self) -> None:
        """
        Events reach the relay in the order they were buffered, whatever
        failed in between: no later batch overtakes a failing one.
        """
        self.relay.answers = [503, error.ConnectionRefusedError(), 200, 429, 200]
        self.start(sink_config(max_events=2, timeout_seconds=0))

        self.buffer.add("a", "b", "c", "d")
        for _ in range(4):
            if self.clock.getDelayedCalls():
                self.clock.advance(self.next_delay())
        self.buffer.add("e")

        self.assertEqual(
            self.relay.sent(),
            [["a", "b"], ["a", "b"], ["a", "b"], ["c", "d"], ["c", "d"], ["e"]],
        )

    def test_attempts_restart_after_success(self) -> None:
        """
        After a batch is stored, the next failing batch starts again at the
        first delay.
        """
        self.relay.answers = [503, 503, 200, 503]
        self.start(sink_config(max_events=1), rng=always(0.0))
        self.buffer.add("a", "b")
        self.clock.advance(0.25)
        self.clock.advance(0.5)

        self.assertEqual(self.relay.sent(), [["a"], ["a"], ["a"], ["b"]])
        self.assertEqual(self.next_delay(), 0.25)

    def test_unread_answer_retried(self) -> None:
        """
        A relay that sends its status but never the rest of its answer does
        not hold the forwarder: after the request timeout the batch is tried
        again, and nothing is deleted meanwhile.
        """
        self.relay.answers = [RelayResponse(200, Deferred()), 200]
        self.start(sink_config(timeout_seconds=0))
        self.buffer.add("a")

        self.clock.advance(REQUEST_TIMEOUT_SECONDS)
        self.assertEqual(self.buffer.contents(), ["a"])
        self.clock.advance(self.next_delay())

        self.assertEqual(self.relay.sent(), [["a"], ["a"]])
        self.assertEqual(self.buffer.contents(), [])


class StopTests(ForwarderTestCase):
    """L{Forwarder.stop} ends the loop promptly and leaves no timer behind."""

    def test_stop_while_waiting_for_events(self) -> None:
        """Stopping an idle forwarder completes at once and forgets its wait."""
        forwarder = self.start()

        self.successResultOf(forwarder.stop())

        self.assertEqual(self.buffer.waiting, 0)
        self.buffer.add("a")
        self.assertEqual(self.relay.posts, [])

    def test_stop_while_rate_limited(self) -> None:
        """
        Stopping while events wait for C{maxMessagesPerMinute} to allow them
        completes at once; nothing is sent later.
        """
        config = attrs.evolve(sink_config(), max_messages_per_minute=1)
        forwarder = self.start(config)
        self.buffer.add("a")
        self.buffer.add("b")
        self.assertEqual(self.relay.sent(), [["a"]])

        self.successResultOf(forwarder.stop())

        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.buffer.waiting, 0)
        self.clock.advance(120)
        self.assertEqual(self.relay.sent(), [["a"]])

    def test_stop_while_backing_off(self) -> None:
        """
        Stopping during the wait before a retry completes at once; the retry
        never comes and the events stay buffered.
        """
        self.relay.answers = [503]
        forwarder = self.start(sink_config(timeout_seconds=0))
        self.buffer.add("a")

        self.successResultOf(forwarder.stop())

        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(MAX_BACKOFF_SECONDS)
        self.assertEqual(len(self.relay.posts), 1)
        self.assertEqual(self.buffer.contents(), ["a"])

    def test_stop_waits_for_request_in_flight(self) -> None:
        """
        Stopping while a request is in flight completes once it is answered,
        and a batch the relay stored is deleted first.
        """
        answer: Deferred[RelayResponse] = Deferred()
        self.relay.answers = [answer]
        forwarder = self.start(sink_config(timeout_seconds=0))
        self.buffer.add("a")

        stopped = forwarder.stop()
        self.assertNoResult(stopped)
        answer.callback(RelayResponse(200))

        self.successResultOf(stopped)
        self.assertEqual(self.buffer.contents(), [])

    def test_stop_does_not_wait_out_backoff(self) -> None:
        """
        Stopping while a request is in flight that then fails completes when
        it fails, without waiting for a retry delay.
        """
        answer: Deferred[RelayResponse] = Deferred()
        self.relay.answers = [answer]
        forwarder = self.start(sink_config(timeout_seconds=0))
        self.buffer.add("a")

        stopped = forwarder.stop()
        answer.callback(RelayResponse(503))

        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.relay.posts), 1)
        self.assertEqual(self.buffer.contents(), ["a"])

    def test_restart_after_stop(self) -> None:
        """A stopped forwarder started again forwards what was left."""
        self.relay.answers = [503]
        forwarder = self.start(sink_config(timeout_seconds=0))
        self.buffer.add("a")
        self.successResultOf(forwarder.stop())

        forwarder.start()

        self.assertEqual(self.relay.sent(), [["a"], ["a"]])
        self.assertEqual(self.buffer.contents(), [])


class BufferErrorTests(ForwarderTestCase):
    """A buffer that fails once does not end forwarding."""

    def test_failed_delete_retried(self) -> None:
        """
        When deleting a stored batch fails, the error is logged and, after a
        backoff delay, the batch is sent again under the same C{RF-BATCH-ID}
        (the relay drops the duplicate) and deleted.
        """
        self.buffer.failing_deletes = 1
        self.start(sink_config(timeout_seconds=0))
        self.buffer.add("a")
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)

        self.clock.advance(self.next_delay())

        self.assertEqual(self.relay.sent(), [["a"], ["a"]])
        first, second = self.relay.posts
        self.assertEqual(first.header("RF-BATCH-ID"), second.header("RF-BATCH-ID"))
        self.assertEqual(self.buffer.contents(), [])

    def test_failed_read_retried(self) -> None:
        """
        When reading the buffer fails, the error is logged and the read is
        tried again after a backoff delay.
        """
        self.buffer.failing_reads = 2
        self.start(sink_config(timeout_seconds=0))
        self.buffer.add("a")
        self.assertEqual(self.next_delay(), backoff_delay(1, always(0.0)))
        self.clock.advance(self.next_delay())
        self.assertEqual(self.relay.posts, [])

        self.assertEqual(self.next_delay(), backoff_delay(2, always(0.0)))
        self.clock.advance(self.next_delay())

        self.assertEqual(self.relay.sent(), [["a"]])
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 2)

    def test_stop_while_waiting_after_error(self) -> None:
        """Stopping during the wait after a buffer error completes at once."""
        self.buffer.failing_reads = 1
        forwarder = self.start(sink_config(timeout_seconds=0))
        self.buffer.add("a")
        self.flushLoggedErrors(sqlite3.OperationalError)

        self.successResultOf(forwarder.stop())

        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.relay.posts, [])


async def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """
    Let the real reactor run until C{condition()} holds.

    The SQLite thread answers through the real reactor, so tests over a real
    buffer poll; the bound only stops a broken test from hanging.
    """
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"condition not met within {seconds} seconds")


class ForwarderWithSinkBufferTests(TestCase):
    """The forwarder over a real L{SinkBuffer}: what it deletes is gone from disk."""

    def setUp(self) -> None:
        folder = tempfile.TemporaryDirectory(prefix="rf-forwarder-")
        self.addCleanup(folder.cleanup)
        self.path = Path(folder.name) / "relay-sink.sqlite3"
        self.clock = Clock()
        self.relay = FakeRelay()

    async def open_buffer(self, close_at_end: bool = True) -> SinkBuffer:
        """Open the sink's buffer file; close it when the test ends."""
        buffer = SinkBuffer(self.path, 10 * 1024 * 1024, reactor, self.clock)
        await buffer.open()
        if close_at_end:
            self.addCleanup(buffer.close)
        return buffer

    def start(self, buffer: SinkBuffer, config: ProxySinkConfig) -> Forwarder:
        """Start a forwarder over C{buffer}; stop it when the test ends."""
        forwarder = Forwarder(
            config,
            buffer,
            self.relay,
            self.clock,
            SinkStats(),
            "prod",
            "edge-1",
            rng=always(0.0),
        )
        forwarder.start()
        self.addCleanup(forwarder.stop)
        return forwarder

    async def test_forwarded_events_deleted(self) -> None:
        """Events the relay stored are deleted from the file, in order."""
        buffer = await self.open_buffer()
        self.start(buffer, sink_config(max_events=3))

        await buffer.append(["a", "b", "c"])
        await wait_until(lambda: buffer.pending_events == 0)

        self.assertEqual(self.relay.sent(), [["a", "b", "c"]])
        self.assertEqual(await buffer.oldest(10), [])

    async def test_partial_batch_goes_without_the_clock(self) -> None:
        """
        A partial batch on an idle link is sent and deleted without the
        forwarder's clock moving.
        """
        buffer = await self.open_buffer()
        self.start(buffer, sink_config(max_events=10, timeout_seconds=5))

        await buffer.append(["a"])
        await wait_until(lambda: buffer.pending_events == 0)

        self.assertEqual(self.relay.sent(), [["a"]])
        self.assertEqual(self.clock.seconds(), 0)

    async def test_failed_batch_stays_on_disk(self) -> None:
        """
        A batch the relay refused is still in the file while the forwarder
        backs off, and is deleted after the retry succeeds.
        """
        self.relay.answers = [503, 200]
        buffer = await self.open_buffer()
        self.start(buffer, sink_config(timeout_seconds=0))

        await buffer.append(["a", "b"])
        await wait_until(lambda: bool(self.clock.getDelayedCalls()))
        stored = await buffer.oldest(10)
        self.assertEqual([event.content for event in stored], ["a", "b"])
        self.clock.advance(backoff_delay(1, always(0.0)))
        await wait_until(lambda: buffer.pending_events == 0)

        self.assertEqual(self.relay.sent(), [["a", "b"], ["a", "b"]])

    async def test_batch_id_survives_restart(self) -> None:
        """
        A batch retried after the proxy restarts carries the same
        C{RF-BATCH-ID}, so the relay can recognise it.
        """
        self.relay.answers = [503]
        buffer = await self.open_buffer(close_at_end=False)
        try:
            forwarder = self.start(buffer, sink_config(timeout_seconds=0))
            await buffer.append(["a", "b"])
            await wait_until(lambda: len(self.relay.posts) == 1)
            await forwarder.stop()
        finally:
            buffer.close()

        reopened = await self.open_buffer()
        self.start(reopened, sink_config(timeout_seconds=0))
        await wait_until(lambda: reopened.pending_events == 0)

        first, second = self.relay.posts
        self.assertEqual(second.events(), ["a", "b"])
        self.assertEqual(second.header("RF-BATCH-ID"), first.header("RF-BATCH-ID"))


class RefusedAsTooLargeTests(ForwarderTestCase):
    """A relay answering 413 gets the batch in halves, never losing the rest."""

    def test_batch_split_in_halves(self) -> None:
        """After a 413 the batch is sent again as two halves, in order."""
        self.relay.answers = [413]
        self.start(sink_config(max_events=4))

        self.buffer.add("a", "b", "c", "d")

        self.assertEqual(
            self.relay.sent(), [["a", "b", "c", "d"], ["a", "b"], ["c", "d"]]
        )
        self.assertEqual(self.buffer.contents(), [])
        self.assertEqual(self.stats.dropped, {})

    def test_lone_refused_event_dropped_and_counted(self) -> None:
        """
        An event the relay refuses on its own is dropped and counted as
        C{payload_too_large}; its neighbour is still delivered.
        """
        self.relay.answers = [413, 413, 200]
        self.start(sink_config(max_events=2))

        self.buffer.add("huge", "small")

        self.assertEqual(self.relay.sent(), [["huge", "small"], ["huge"], ["small"]])
        self.assertEqual(self.buffer.contents(), [])
        self.assertEqual(self.stats.dropped["payload_too_large"], 1)
        self.assertEqual(self.stats.forwarded_events, 1)


class RateLimitTests(ForwarderTestCase):
    """C{maxMessagesPerMinute} bounds the events sent per minute."""

    def test_events_beyond_the_rate_wait_in_the_buffer(self) -> None:
        """
        With a limit of 60 a minute, 60 events go at once and the next one
        only once a second has refilled the allowance.
        """
        config = attrs.evolve(
            sink_config(max_events=100, timeout_seconds=0.1),
            max_messages_per_minute=60,
        )
        self.start(config)

        self.buffer.add(*[f"e{number}" for number in range(61)])
        self.assertEqual([len(batch) for batch in self.relay.sent()], [60])

        self.clock.advance(0.5)
        self.assertEqual(self.buffer.contents(), ["e60"])

        self.clock.advance(0.5)
        self.assertEqual(self.relay.sent()[-1], ["e60"])
        self.assertEqual(self.buffer.contents(), [])
