"""
Tests for L{replayforge.player.puller}: the pull loop of one bucket, against
the relay's real HTTP API (L{replayforge.relay.api.RelayAPI}) over an
in-memory bucket, committing to a real queue file, on a L{Clock}.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from treq.testing import StringStubbingResource, StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from replayforge.backoff import Backoff
from replayforge.lua import Emitted, ScriptFailure
from replayforge.player.config import PlayerConfig, PlayerSourceConfig
from replayforge.player.processing import FanOut
from replayforge.player.puller import BucketPuller
from replayforge.player.queue import PlayerQueue
from replayforge.relay.api import RelayAPI
from replayforge.relay.bucket import Record
from replayforge.relay.config import BucketConfig, RelayConfig
from replayforge.relay.stats import RelayStats
from tests.player_support import (
    SynchronousReactor,
    make_queue,
    player_config,
    temp_folder,
)

TOKEN = "bucket-token"
HOOK_INTERVAL = 1.0


def source_config(
    token: str = TOKEN, sinks: tuple[str, ...] = ("out",)
) -> PlayerSourceConfig:
    """The source pulling bucket C{logs}."""
    return PlayerSourceConfig(
        name="logs",
        bearer=token,
        transform_script=None,
        sinks=sinks,
        hook_interval=HOOK_INTERVAL,
        key_path="sources[0]",
    )


def config_for(
    source: PlayerSourceConfig, wait: float = 10.0, limit: int = 100
) -> PlayerConfig:
    """A player configuration pulling C{source}."""
    return player_config(sources=(source,), poll_wait_seconds=wait, poll_limit=limit)


class MemoryBucket:
    """
    A relay bucket in memory, with the methods L{RelayAPI} calls.

    @ivar journal: the requests the relay served, in order.
    @ivar reuse_ids: start ids again from 1 once the bucket is empty, as a
        Go relay does.
    """

    def __init__(
        self,
        name: str,
        clock: Clock,
        journal: list[Any],
        reuse_ids: bool = False,
    ) -> None:
        self.config = BucketConfig(
            name=name, auth=TOKEN, db_max_size_kb=0, ttl_seconds=0
        )
        self.records: list[Record] = []
        self.used_bytes = 0
        self.is_full = False
        self.fail_acknowledgements = 0
        self._next_id = 1
        self.reuse_ids = reuse_ids
        self._clock = clock
        self._journal = journal
        self._waiters: list[tuple[Deferred[None], IDelayedCall]] = []

    @property
    def name(self) -> str:
        return self.config.name

    def add(self, *contents: str) -> None:
        if self.reuse_ids and not self.records:
            self._next_id = 1
        for content in contents:
            self.records.append(Record(id=self._next_id, content=content))
            self._next_id += 1
        waiters, self._waiters = self._waiters, []
        for waiter, timer in waiters:
            timer.cancel()
            waiter.callback(None)

    def first(self, limit: int) -> Deferred[list[Record]]:
        self._journal.append(("first-batch", [r.id for r in self.records[:limit]]))
        return succeed(self.records[:limit])

    def wait_for_records(self, seconds: float) -> Deferred[None]:
        def forget(waiter: Deferred[None]) -> None:
            for entry in list(self._waiters):
                if entry[0] is waiter:
                    self._waiters.remove(entry)
                    entry[1].cancel()

        waiter: Deferred[None] = Deferred(forget)

        def timed_out() -> None:
            self._waiters = [e for e in self._waiters if e[0] is not waiter]
            waiter.callback(None)

        self._waiters.append((waiter, self._clock.callLater(seconds, timed_out)))
        return waiter

    def acknowledge(self, ids: list[int]) -> Deferred[int]:
        if self.fail_acknowledgements:
            self.fail_acknowledgements -= 1
            return fail(OSError("disk I/O error"))
        self._journal.append(("acknowledge", sorted(ids)))
        before = len(self.records)
        self.records = [r for r in self.records if r.id not in ids]
        return succeed(before - len(self.records))


class CountingScript:
    """A processor that upper-cases contents, fails on C{bad}, counts calls."""

    def __init__(self, target: str = "out") -> None:
        self.target = target
        self.calls: list[str] = []

    def process(self, content: str) -> Emitted:
        self.calls.append(content)
        if content == "bad":
            raise ScriptFailure("script.lua:3: attempt to index a nil value")
        if content.startswith("to:"):
            return [(content[3:], content)]
        return [(self.target, content.upper())]

    def timer(self) -> Emitted:
        return [(self.target, "tick")]


def queued_contents(queue: PlayerQueue, sink: str = "out") -> list[str]:
    """What waits in C{sink}'s queue, in order."""
    path = queue.path
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute(
            "SELECT content FROM queued_events WHERE sink = ? ORDER BY id", (sink,)
        ).fetchall()
    finally:
        connection.close()
    return [row[0] for row in rows]


class OddRelayTests(SynchronousTestCase):
    """A relay answering what ours never would."""

    def setUp(self) -> None:
        self.reactor = SynchronousReactor()
        self.queue = make_queue(self, self.reactor, temp_folder(self))

    def test_unusable_records_counted(self) -> None:
        """
        Entries without an id cannot be acknowledged; entries whose content
        is not text are acknowledged and dropped; both are counted.
        """
        requests: list[tuple[bytes, bytes]] = []

        def answer(
            method: bytes, url: str, params: Any, headers: Any, data: bytes
        ) -> tuple[int, dict[str, str], bytes]:
            requests.append((method, data))
            if method == b"GET" and len(requests) == 1:
                return 200, {}, b'[{"content": "x"}, {"id": 5, "content": 7}]'
            if method == b"DELETE":
                return 200, {}, b"1 records deleted successfully"
            return 404, {}, b"[]"

        source = source_config()
        puller = BucketPuller(
            config_for(source, wait=0.0),
            source,
            FanOut(("out",)),
            ["out"],
            self.queue,
            StubTreq(StringStubbingResource(answer)),
            self.reactor,
        )
        puller.start()
        self.addCleanup(puller.stop)
        self.assertEqual(puller.stats.dropped["invalid_record"], 2)
        self.assertEqual(requests[1], (b"DELETE", b'{"ids": ["5"]}'))
        self.assertEqual(queued_contents(self.queue), [])

    def test_invalid_json_backs_off(self) -> None:
        """A body that is not a JSON array is a relay failure: back off."""
        resource = StringStubbingResource(lambda *_: (200, {}, b"<html>"))
        source = source_config()
        puller = BucketPuller(
            config_for(source),
            source,
            FanOut(("out",)),
            ["out"],
            self.queue,
            StubTreq(resource),
            self.reactor,
            backoff=Backoff(initial=4.0, rng=lambda: 0.0),
        )
        puller.start()
        self.addCleanup(puller.stop)
        self.assertEqual(puller.stats.pull_errors, 1)
        self.reactor.advance(2.0)
        self.assertEqual(puller.stats.pull_errors, 2)


class BucketPullerTests(SynchronousTestCase):
    """One bucket's pull, process, queue and acknowledge loop."""

    def setUp(self) -> None:
        self.reactor = SynchronousReactor()
        self.folder = temp_folder(self)
        self.queue = make_queue(self, self.reactor, self.folder, max_events=50)
        self.journal: list[Any] = []
        self.bucket = MemoryBucket("logs", self.reactor, self.journal)
        relay_config = RelayConfig(
            buckets={"logs": self.bucket.config},
            listen="tcp:0",
            listen_status=None,
            data_dir=Path("."),
            max_batch=1000,
            max_body_bytes=1024 * 1024,
            use_tailnet=False,
            tailnet_hostname="relay",
        )
        self.relay_stats = RelayStats(["logs"], 0)
        api = RelayAPI(
            relay_config,
            {"logs": self.bucket},  # type: ignore[dict-item]
            self.relay_stats,
            self.reactor,
        )
        self.stub = StubTreq(api.app.resource())
        self.script = CountingScript()

    def make_puller(
        self,
        wait: float = 10.0,
        token: str = TOKEN,
        processor: Any = None,
        limit: int = 100,
        queue: PlayerQueue | None = None,
        sinks: tuple[str, ...] = ("out",),
    ) -> BucketPuller:
        source = source_config(token)
        puller = BucketPuller(
            config_for(source, wait=wait, limit=limit),
            source,
            processor if processor is not None else self.script,
            sinks,
            queue or self.queue,
            self.stub,
            self.reactor,
            backoff=Backoff(initial=2.0, maximum=8.0, rng=lambda: 0.0),
        )
        self.addCleanup(self.stop, puller)
        return puller

    def stop(self, puller: BucketPuller) -> None:
        stopped = puller.stop()
        # A cancelled in-memory request fails once its connection is pumped.
        self.stub.flush()
        self.successResultOf(stopped)

    def steps(self) -> list[str]:
        """The kinds of the journal's entries, without the last long poll."""
        kinds = [entry[0] for entry in self.journal]
        if len(kinds) > 1 and kinds[-1] == "first-batch" and kinds[-2] == "acknowledge":
            kinds.pop()
        return kinds

    def test_pull_queue_then_acknowledge(self) -> None:
        """
        A batch is processed, committed to the queue, then acknowledged; the
        marks of its records are forgotten once the relay confirms.
        """
        self.bucket.add("a", "b", "c")
        puller = self.make_puller()
        puller.start()
        self.assertEqual(self.steps(), ["first-batch", "acknowledge"])
        self.assertEqual(self.journal[1], ("acknowledge", [1, 2, 3]))
        self.assertEqual(queued_contents(self.queue), ["A", "B", "C"])
        self.assertEqual(self.bucket.records, [])
        self.assertFalse(self.queue.recognise("logs", 1, "a"))
        self.assertEqual(puller.stats.received, 3)
        self.assertEqual(puller.stats.emitted, 3)
        self.assertEqual(puller.stats.acknowledged, 3)

    def test_failed_commit_is_not_acknowledged(self) -> None:
        """
        When the queue cannot commit, nothing is acknowledged; the batch is
        pulled and processed again after a backoff, and queued once.
        """
        self.bucket.add("a", "b")
        connection = self.queue.pool.connect()
        connection.execute("PRAGMA query_only = 1")
        puller = self.make_puller()
        puller.start()
        self.assertEqual(self.steps(), ["first-batch"])
        self.assertEqual(puller.stats.pull_errors, 1)
        self.assertEqual(len(self.bucket.records), 2)
        connection.execute("PRAGMA query_only = 0")
        self.reactor.advance(1.0)
        self.assertEqual(self.steps(), ["first-batch", "first-batch", "acknowledge"])
        self.assertEqual(queued_contents(self.queue), ["A", "B"])
        self.flushLoggedErrors(sqlite3.OperationalError)

    def test_redelivered_records_are_recognised(self) -> None:
        """
        When the acknowledgement fails, the records come again: they are
        acknowledged without being processed or queued a second time.
        """
        self.bucket.add("a", "b")
        self.bucket.fail_acknowledgements = 1
        puller = self.make_puller()
        puller.start()
        self.assertEqual(self.steps(), ["first-batch"])
        self.assertEqual(len(self.bucket.records), 2)

        self.bucket.add("c")
        self.reactor.advance(1.0)
        self.assertEqual(self.steps(), ["first-batch", "first-batch", "acknowledge"])
        self.assertEqual(self.journal[2], ("acknowledge", [1, 2, 3]))
        self.assertEqual(self.script.calls, ["a", "b", "c"])
        self.assertEqual(queued_contents(self.queue), ["A", "B", "C"])
        self.assertEqual(puller.stats.redelivered, 2)
        self.assertEqual(puller.stats.pull_errors, 1)
        self.flushLoggedErrors(OSError)

    def test_restart_between_commit_and_acknowledge(self) -> None:
        """
        A player stopped after its commit but before the relay confirmed the
        acknowledgement recognises the records after a restart, from the
        queue file alone, and queues none of them twice.
        """
        self.bucket.add("a", "b")
        self.bucket.fail_acknowledgements = 1
        first = self.make_puller()
        first.start()
        self.stop(first)
        self.queue.close()

        reopened = make_queue(self, self.reactor, self.folder)
        script = CountingScript()
        second = self.make_puller(queue=reopened, processor=script)
        second.start()
        self.assertEqual(script.calls, [])
        self.assertEqual(second.stats.redelivered, 2)
        self.assertEqual(self.bucket.records, [])
        self.assertEqual(queued_contents(reopened), ["A", "B"])
        self.flushLoggedErrors(OSError)

    def test_go_relay_reusing_ids(self) -> None:
        """
        A Go relay gives ids out again once its table is empty: records with
        an id seen before, after a confirmed acknowledgement, are new.
        """
        self.bucket.reuse_ids = True
        self.bucket.add("a", "b")
        puller = self.make_puller(wait=0.0)
        puller.start()
        self.bucket.add("c", "d")
        self.reactor.advance(HOOK_INTERVAL)
        self.assertEqual(queued_contents(self.queue), ["A", "B", "C", "D"])
        self.assertEqual(puller.stats.redelivered, 0)

    def test_reused_id_with_stale_mark(self) -> None:
        """
        Even with a mark left over (a crash right after the relay confirmed),
        a reused id with other content is processed as new.
        """
        self.successResultOf(
            self.queue.commit("logs", [(1, b"digest of something else")], [])
        )
        self.bucket.add("fresh")
        puller = self.make_puller()
        puller.start()
        self.assertEqual(queued_contents(self.queue), ["FRESH"])
        self.assertFalse(self.queue.recognise("logs", 1, "fresh"))

    def test_script_error_drops_one_record(self) -> None:
        """A record the script fails on is dropped and counted; the rest go on."""
        self.bucket.add("a", "bad", "c")
        puller = self.make_puller()
        puller.start()
        self.assertEqual(queued_contents(self.queue), ["A", "C"])
        self.assertEqual(self.journal[1], ("acknowledge", [1, 2, 3]))
        self.assertEqual(puller.stats.dropped["script_error"], 1)

    def test_unknown_sink_dropped(self) -> None:
        """Events emitted to a sink that does not exist are counted and dropped."""
        self.bucket.add("to:nowhere", "x")
        puller = self.make_puller()
        puller.start()
        self.assertEqual(queued_contents(self.queue), ["X"])
        self.assertEqual(puller.stats.dropped["unknown_sink"], 1)
        self.assertEqual(self.journal[1], ("acknowledge", [1, 2]))

    def test_events_for_several_sinks(self) -> None:
        """Each sink's events go to its own queue."""
        self.bucket.add("to:out", "to:other", "to:out")
        puller = self.make_puller(sinks=("out", "other"))
        puller.start()
        self.assertEqual(queued_contents(self.queue), ["to:out", "to:out"])
        self.assertEqual(queued_contents(self.queue, "other"), ["to:other"])

    def test_full_queue_pauses_the_pull(self) -> None:
        """
        While a sink's queue is full the bucket is not pulled; the records
        wait on the relay, and the pull resumes once there is room.
        """
        self.bucket.add(*[f"r{number}" for number in range(60)])
        puller = self.make_puller(processor=FanOut(("out",)), limit=50)
        puller.start()
        self.assertEqual(self.queue.depth("out"), 50)
        self.assertEqual(len(self.bucket.records), 10)
        self.reactor.advance(5.0)
        self.assertEqual(len(self.bucket.records), 10)
        self.assertGreater(puller.stats.paused, 0)
        events = self.successResultOf(self.queue.take("out", 20))
        self.successResultOf(
            self.queue.settle("out", [event.id for event in events], [], [])
        )
        self.reactor.advance(1.0)
        self.assertEqual(self.bucket.records, [])
        self.assertEqual(self.queue.depth("out"), 40)

    def test_long_poll_answers_new_records(self) -> None:
        """An empty bucket holds the request; new records are pulled at once."""
        puller = self.make_puller(wait=10.0)
        puller.start()
        self.assertEqual(self.steps(), ["first-batch"])
        self.bucket.add("late")
        self.stub.flush()
        self.assertEqual(self.steps(), ["first-batch", "first-batch", "acknowledge"])
        self.assertEqual(queued_contents(self.queue), ["LATE"])

    def test_long_poll_timeout_asks_again(self) -> None:
        """After a held request ends empty, the next one is sent right away."""
        puller = self.make_puller(wait=10.0)
        puller.start()
        self.reactor.advance(10.0)
        self.stub.flush()
        # The relay looks once more when the wait ends, then the next poll.
        self.assertEqual(self.steps(), ["first-batch"] * 3)

    def test_relay_without_wait_paced_by_hook_interval(self) -> None:
        """A relay that answers an empty bucket at once is asked again only
        after C{hookInterval}."""
        puller = self.make_puller(wait=0.0)
        puller.start()
        self.assertEqual(self.steps(), ["first-batch"])
        self.reactor.advance(HOOK_INTERVAL - 0.01)
        self.assertEqual(self.steps(), ["first-batch"])
        self.reactor.advance(0.01)
        self.assertEqual(self.steps(), ["first-batch", "first-batch"])

    def test_refused_token_backs_off(self) -> None:
        """A relay refusing the token is asked again after a growing backoff."""
        puller = self.make_puller(token="wrong")
        puller.start()
        self.assertEqual(puller.stats.pull_errors, 1)
        self.reactor.advance(1.0)
        self.assertEqual(puller.stats.pull_errors, 2)
        self.reactor.advance(1.99)
        self.assertEqual(puller.stats.pull_errors, 2)
        self.reactor.advance(0.01)
        self.assertEqual(puller.stats.pull_errors, 3)
        self.assertEqual(self.journal, [])

    def test_relay_sees_player_headers(self) -> None:
        """The relay counts the pull under the player's env and host names."""
        self.bucket.add("a")
        puller = self.make_puller()
        puller.start()
        self.assertIn("prod", self.relay_stats.envs)
        self.assertIn("player-1", self.relay_stats.hostnames)

    def test_limit_sent(self) -> None:
        """C{pollLimit} caps the batch the relay answers."""
        self.bucket.add("a", "b", "c")
        puller = self.make_puller(limit=2)
        puller.start()
        acknowledged = [entry[1] for entry in self.journal if entry[0] == "acknowledge"]
        self.assertEqual(acknowledged, [[1, 2], [3]])

    def test_fan_out_without_script(self) -> None:
        """Without a script, each record goes unchanged to the listed sinks."""
        self.bucket.add("raw")
        puller = self.make_puller(processor=FanOut(("out",)))
        puller.start()
        self.assertEqual(queued_contents(self.queue), ["raw"])

    def test_timer_queues(self) -> None:
        """C{run_timer} queues what the script's timer emits."""
        puller = self.make_puller()
        self.successResultOf(Deferred.fromCoroutine(puller.run_timer()))
        self.assertEqual(queued_contents(self.queue), ["tick"])

    def test_stop_cancels_long_poll(self) -> None:
        """Stopping ends a held request and leaves no timers behind."""
        puller = self.make_puller(wait=10.0)
        puller.start()
        self.stop(puller)
        self.assertEqual(
            [call for call in self.reactor.getDelayedCalls() if call.active()], []
        )
