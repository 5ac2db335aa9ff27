"""
Tests for L{replayforge.player.puller}: the pull loop of one bucket, against
the relay's real HTTP API (L{replayforge.relay.api.RelayAPI}) over an
in-memory bucket, on a L{Clock}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from treq.testing import StringStubbingResource, StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from replayforge.backoff import Backoff
from replayforge.lua import Emitted, ScriptFailure
from replayforge.player.config import (
    PlayerConfig,
    PlayerSinkConfig,
    PlayerSourceConfig,
)
from replayforge.player.processing import FanOut
from replayforge.player.puller import BucketPuller
from replayforge.player.sinks.base import Sink
from replayforge.player.sinks.settings import HttpSinkSettings
from replayforge.relay.api import RelayAPI
from replayforge.relay.bucket import Record
from replayforge.relay.config import BucketConfig, RelayConfig
from replayforge.relay.stats import RelayStats

TOKEN = "bucket-token"
HOOK_INTERVAL = 1.0


def player_config(
    source: PlayerSourceConfig, sink: Sink, wait: float = 10.0, limit: int = 100
) -> PlayerConfig:
    """A player configuration pulling C{source} into C{sink}."""
    return PlayerConfig(
        source_file="player.yaml",
        relay_url="http://relay.test/",
        relay_url_statusz="",
        env_name="prod",
        host_name="player-1",
        sources=(source,),
        sinks=(sink.config,),
        listen=None,
        listen_status=None,
        static_folder=None,
        http_username="",
        http_password="",
        poll_limit=limit,
        poll_wait_seconds=wait,
        tsnet_hostname="",
        listen_using_tailscale=False,
    )


class MemoryBucket:
    """
    A relay bucket in memory, with the methods L{RelayAPI} calls.

    @ivar journal: shared with the sinks, to check the order of events.
    """

    def __init__(self, name: str, clock: Clock, journal: list[Any]) -> None:
        self.config = BucketConfig(
            name=name, auth=TOKEN, db_max_size_kb=0, ttl_seconds=0
        )
        self.records: list[Record] = []
        self.used_bytes = 0
        self.is_full = False
        self.fail_acknowledgements = 0
        self._next_id = 1
        self._clock = clock
        self._journal = journal
        self._waiters: list[tuple[Deferred[None], IDelayedCall]] = []

    @property
    def name(self) -> str:
        return self.config.name

    def add(self, *contents: str) -> None:
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


class ScriptedSink(Sink):
    """A sink whose deliveries succeed, fail, or wait, as the test says."""

    def __init__(self, name: str, journal: list[Any]) -> None:
        super().__init__(
            PlayerSinkConfig(
                name=name,
                id=name,
                type="http",
                settings=HttpSinkSettings("http://unused", 1.0, 0),
                metadata={},
                key_path="sinks[0]",
            )
        )
        self.journal = journal
        self.outcomes: list[Exception | Deferred[None] | None] = []

    def deliver(self, events: list[str]) -> Deferred[None]:
        self.journal.append(("deliver", self.name, list(events)))
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if isinstance(outcome, Deferred):
            return outcome
        if isinstance(outcome, Exception):
            return fail(outcome)
        return succeed(None)


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


class OddRelayTests(SynchronousTestCase):
    """A relay answering what ours never would."""

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

        clock = Clock()
        journal: list[Any] = []
        sink = ScriptedSink("out", journal)
        source = PlayerSourceConfig("logs", TOKEN, None, ("out",), 1.0, "sources[0]")
        puller = BucketPuller(
            player_config(source, sink, wait=0.0),
            source,
            FanOut(("out",)),
            {"out": sink},
            StubTreq(StringStubbingResource(answer)),
            clock,
        )
        puller.start()
        self.addCleanup(puller.stop)
        self.assertEqual(puller.stats.dropped["invalid_record"], 2)
        self.assertEqual(requests[1], (b"DELETE", b'{"ids": ["5"]}'))
        self.assertEqual(journal, [])

    def test_invalid_json_backs_off(self) -> None:
        """A body that is not a JSON array is a relay failure: back off."""
        clock = Clock()
        resource = StringStubbingResource(lambda *_: (200, {}, b"<html>"))
        sink = ScriptedSink("out", [])
        source = PlayerSourceConfig("logs", TOKEN, None, ("out",), 1.0, "sources[0]")
        puller = BucketPuller(
            player_config(source, sink),
            source,
            FanOut(("out",)),
            {"out": sink},
            StubTreq(resource),
            clock,
            backoff=Backoff(initial=4.0, rng=lambda: 0.0),
        )
        puller.start()
        self.addCleanup(puller.stop)
        self.assertEqual(puller.stats.pull_errors, 1)
        clock.advance(2.0)
        self.assertEqual(puller.stats.pull_errors, 2)


class BucketPullerTests(SynchronousTestCase):
    """One bucket's pull, process, deliver and acknowledge loop."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.journal: list[Any] = []
        self.bucket = MemoryBucket("logs", self.clock, self.journal)
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
            self.clock,
        )
        self.stub = StubTreq(api.app.resource())
        self.sink = ScriptedSink("out", self.journal)
        self.script = CountingScript()

    def make_puller(
        self,
        wait: float = 10.0,
        token: str = TOKEN,
        processor: Any = None,
        limit: int = 100,
    ) -> BucketPuller:
        source = PlayerSourceConfig(
            name="logs",
            bearer=token,
            transform_script=None,
            sinks=("out",),
            hook_interval=HOOK_INTERVAL,
            key_path="sources[0]",
        )
        config = player_config(source, self.sink, wait=wait, limit=limit)
        puller = BucketPuller(
            config,
            source,
            processor if processor is not None else self.script,
            {"out": self.sink},
            self.stub,
            self.clock,
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

    def test_pull_deliver_then_acknowledge(self) -> None:
        """
        A batch is processed, delivered, and acknowledged only once the sink
        fired its delivery.
        """
        self.bucket.add("a", "b", "c")
        delivery: Deferred[None] = Deferred()
        self.sink.outcomes = [delivery]
        puller = self.make_puller()
        puller.start()

        self.assertEqual(self.steps(), ["first-batch", "deliver"])
        self.assertEqual(self.journal[1], ("deliver", "out", ["A", "B", "C"]))
        self.assertEqual(len(self.bucket.records), 3)

        delivery.callback(None)
        self.assertEqual(self.steps(), ["first-batch", "deliver", "acknowledge"])
        self.assertEqual(self.journal[2], ("acknowledge", [1, 2, 3]))
        self.assertEqual(self.bucket.records, [])
        self.assertEqual(puller.stats.received, 3)
        self.assertEqual(puller.stats.acknowledged, 3)

    def test_failed_delivery_is_retried_not_acknowledged(self) -> None:
        """
        A sink that fails gets the same events again after a backoff; the
        script is not run again and nothing is acknowledged before.
        """
        self.bucket.add("a", "b")
        self.sink.outcomes = [OSError("disk full"), OSError("still full")]
        puller = self.make_puller()
        puller.start()

        self.assertEqual(self.steps(), ["first-batch", "deliver"])
        self.clock.advance(0.99)
        self.assertEqual(self.steps(), ["first-batch", "deliver"])
        self.clock.advance(0.01)
        self.assertEqual(self.steps(), ["first-batch", "deliver", "deliver"])
        self.clock.advance(1.99)
        self.assertEqual(self.steps().count("deliver"), 2)
        self.clock.advance(0.01)
        self.assertEqual(
            self.steps(),
            ["first-batch", "deliver", "deliver", "deliver", "acknowledge"],
        )
        deliveries = [entry[2] for entry in self.journal if entry[0] == "deliver"]
        self.assertEqual(deliveries, [["A", "B"]] * 3)
        self.assertEqual(self.script.calls, ["a", "b"])
        self.assertEqual(self.bucket.records, [])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)

    def test_only_failed_sinks_get_events_again(self) -> None:
        """With two sinks, only the one that failed is given the events again."""
        other = ScriptedSink("other", self.journal)
        other.outcomes = [OSError("down")]
        self.bucket.add("to:out", "to:other")
        puller = self.make_puller()
        puller._sinks = {"out": self.sink, "other": other}
        puller.start()
        self.clock.advance(1.0)
        delivered = [entry[1] for entry in self.journal if entry[0] == "deliver"]
        self.assertEqual(delivered, ["out", "other", "other"])
        self.assertEqual(self.steps()[-1], "acknowledge")
        self.flushLoggedErrors(OSError)

    def test_script_error_drops_one_record(self) -> None:
        """A record the script fails on is dropped and counted; the rest go on."""
        self.bucket.add("a", "bad", "c")
        puller = self.make_puller()
        puller.start()
        self.assertEqual(self.journal[1], ("deliver", "out", ["A", "C"]))
        self.assertEqual(self.journal[2], ("acknowledge", [1, 2, 3]))
        self.assertEqual(puller.stats.dropped["script_error"], 1)

    def test_unknown_sink_dropped(self) -> None:
        """Events emitted to a sink that does not exist are counted and dropped."""
        self.bucket.add("to:nowhere", "x")
        puller = self.make_puller()
        puller.start()
        self.assertEqual(self.journal[1], ("deliver", "out", ["X"]))
        self.assertEqual(puller.stats.dropped["unknown_sink"], 1)
        self.assertEqual(self.journal[2], ("acknowledge", [1, 2]))

    def test_redelivered_records_are_skipped(self) -> None:
        """
        When the acknowledgement fails, the records come again: they are
        acknowledged without being processed or delivered a second time.
        """
        self.bucket.add("a", "b")
        self.bucket.fail_acknowledgements = 1
        puller = self.make_puller()
        puller.start()
        self.assertEqual(self.steps(), ["first-batch", "deliver"])
        self.assertEqual(len(self.bucket.records), 2)

        self.bucket.add("c")
        self.clock.advance(1.0)
        self.assertEqual(
            self.steps(),
            ["first-batch", "deliver", "first-batch", "deliver", "acknowledge"],
        )
        self.assertEqual(self.journal[3], ("deliver", "out", ["C"]))
        self.assertEqual(self.journal[4], ("acknowledge", [1, 2, 3]))
        self.assertEqual(self.script.calls, ["a", "b", "c"])
        self.assertEqual(puller.stats.redelivered, 2)
        self.assertEqual(puller.stats.pull_errors, 1)
        self.flushLoggedErrors(OSError)

    def test_long_poll_answers_new_records(self) -> None:
        """An empty bucket holds the request; new records are pulled at once."""
        puller = self.make_puller(wait=10.0)
        puller.start()
        self.assertEqual(self.steps(), ["first-batch"])
        self.bucket.add("late")
        self.stub.flush()
        self.assertEqual(
            self.steps(), ["first-batch", "first-batch", "deliver", "acknowledge"]
        )
        self.assertEqual(self.journal[2], ("deliver", "out", ["LATE"]))

    def test_long_poll_timeout_asks_again(self) -> None:
        """After a held request ends empty, the next one is sent right away."""
        puller = self.make_puller(wait=10.0)
        puller.start()
        self.clock.advance(10.0)
        self.stub.flush()
        # The relay looks once more when the wait ends, then the next poll.
        self.assertEqual(self.steps(), ["first-batch"] * 3)

    def test_relay_without_wait_paced_by_hook_interval(self) -> None:
        """A relay that answers an empty bucket at once is asked again only
        after C{hookInterval}."""
        puller = self.make_puller(wait=0.0)
        puller.start()
        self.assertEqual(self.steps(), ["first-batch"])
        self.clock.advance(HOOK_INTERVAL - 0.01)
        self.assertEqual(self.steps(), ["first-batch"])
        self.clock.advance(0.01)
        self.assertEqual(self.steps(), ["first-batch", "first-batch"])

    def test_refused_token_backs_off(self) -> None:
        """A relay refusing the token is asked again after a growing backoff."""
        puller = self.make_puller(token="wrong")
        puller.start()
        self.assertEqual(puller.stats.pull_errors, 1)
        self.clock.advance(1.0)
        self.assertEqual(puller.stats.pull_errors, 2)
        self.clock.advance(1.99)
        self.assertEqual(puller.stats.pull_errors, 2)
        self.clock.advance(0.01)
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
        deliveries = [entry[2] for entry in self.journal if entry[0] == "deliver"]
        self.assertEqual(deliveries, [["A", "B"], ["C"]])

    def test_fan_out_without_script(self) -> None:
        """Without a script, each record goes unchanged to the listed sinks."""
        self.bucket.add("raw")
        puller = self.make_puller(processor=FanOut(("out",)))
        puller.start()
        self.assertEqual(self.journal[1], ("deliver", "out", ["raw"]))

    def test_timer_delivers(self) -> None:
        """C{run_timer} delivers what the script's timer emits."""
        puller = self.make_puller()
        self.successResultOf(Deferred.fromCoroutine(puller.run_timer()))
        self.assertEqual(self.journal, [("deliver", "out", ["tick"])])

    def test_stop_cancels_long_poll(self) -> None:
        """Stopping ends a held request and leaves no timers behind."""
        puller = self.make_puller(wait=10.0)
        puller.start()
        self.stop(puller)
        self.assertEqual(
            [call for call in self.clock.getDelayedCalls() if call.active()], []
        )
