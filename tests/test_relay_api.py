"""
Tests for the relay: L{replayforge.relay.api} over real bucket files, with
L{replayforge.relay.bucket}, L{replayforge.relay.stats} and the purge of
L{replayforge.relay.tap}.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock, LoopingCall, deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseNeverReceived

from replayforge.relay.api import RelayAPI, StatusAPI
from replayforge.relay.bucket import BucketStore
from replayforge.relay.config import BucketConfig, RelayConfig
from replayforge.relay.stats import RelayStats
from replayforge.relay.tap import RelayService
from replayforge.status import GO_ZERO_TIME

SHARED_TOKEN = "shared-token"
METRICS_TOKEN = "metrics-token"
URL = "http://relay.example"

GO_TRAFFIC_FIELDS = {
    "kind",
    "id",
    "rxMessagesByMinute",
    "lastMinuteRxMessages",
    "rxMessagesSinceStart",
    "rxLastMessageDate",
    "rxQueryByMinute",
    "txMessageByMinute",
    "txMessagesSinceStart",
    "txQueryByMinute",
    "txLastAccess",
}


def bucket(
    name: str, auth: str = SHARED_TOKEN, max_kb: int = 1024, ttl: int = 0
) -> BucketConfig:
    """Describe one bucket."""
    return BucketConfig(name=name, auth=auth, db_max_size_kb=max_kb, ttl_seconds=ttl)


def default_buckets() -> list[BucketConfig]:
    """
    C{logs} and C{audit} share a token, so one request may write both;
    C{metrics} has its own.
    """
    return [bucket("logs"), bucket("audit"), bucket("metrics", auth=METRICS_TOKEN)]


def relay_config(
    buckets: list[BucketConfig], data_dir: Path, max_batch: int = 1000
) -> RelayConfig:
    """Make a relay configuration for C{buckets} stored under C{data_dir}."""
    return RelayConfig(
        buckets={config.name: config for config in buckets},
        listen="tcp:0:interface=127.0.0.1",
        listen_status=None,
        data_dir=data_dir,
        max_batch=max_batch,
        max_body_bytes=1024 * 1024,
        use_tailnet=False,
        tailnet_hostname="relay",
    )


def temporary_folder(test: TestCase) -> Path:
    """
    Make an empty folder outside the working tree, removed when C{test} ends
    (after the stores opened in it, whose cleanups run first).
    """
    folder = Path(tempfile.mkdtemp(prefix="replayforge-test-"))
    test.addCleanup(shutil.rmtree, folder, ignore_errors=True)
    return folder


async def eventually(predicate: Callable[[], bool], what: str) -> None:
    """
    Let the real reactor run until C{predicate} holds, for at most 500 turns
    of 10 ms each.

    @raise AssertionError: when it never holds.
    """
    for _ in range(500):
        if predicate():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"never happened: {what}")


class Answer:
    """The status code and body of one response."""

    def __init__(self, code: int, body: bytes) -> None:
        self.code = code
        self.body = body

    @property
    def text(self) -> str:
        """The body as text."""
        return self.body.decode("utf-8")

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Answer({self.code}, {self.body!r})"


class Relay:
    """
    A relay API and its status API over real bucket files, reached in memory
    through L{StubTreq}.

    The stubs' connections are flushed every few milliseconds of the real
    reactor, since answers come once the stores' threads are done.
    """

    def __init__(
        self,
        test: TestCase,
        buckets: list[BucketConfig],
        data_dir: Path,
        clock: IReactorTime,
        max_batch: int = 1000,
    ) -> None:
        self.config = relay_config(buckets, data_dir, max_batch)
        self.clock = clock
        self.stores = {
            name: BucketStore(config, data_dir, reactor, clock)
            for name, config in self.config.buckets.items()
        }
        self.stats = RelayStats(list(self.stores), clock.seconds())
        self.api = StubTreq(
            RelayAPI(self.config, self.stores, self.stats, clock).app.resource()
        )
        self.status = StubTreq(StatusAPI(self.stores, self.stats, clock).app.resource())
        self._pump = LoopingCall(self._flush)
        self._pump.clock = reactor
        self._closed: set[str] = set()
        test.addCleanup(self.close)

    def _flush(self) -> None:
        self.api.flush()
        self.status.flush()

    async def open(self) -> Relay:
        """Open every store and start flushing the stubs."""
        for store in self.stores.values():
            await store.open()
        self._pump.start(0.002)
        return self

    def close_store(self, name: str) -> None:
        """Close the store of bucket C{name}, as stopping the relay does."""
        if name not in self._closed:
            self._closed.add(name)
            self.stores[name].close()

    def close(self) -> None:
        """Stop flushing and close every store still open."""
        if self._pump.running:
            self._pump.stop()
        for name in self.stores:
            self.close_store(name)

    async def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes = b"",
        api: StubTreq | None = None,
    ) -> Answer:
        """Send one request to the relay API and read the whole answer."""
        response = await (api or self.api).request(
            method, URL + path, headers=headers, data=body or None
        )
        return Answer(response.code, await response.content())

    async def post_batch(
        self,
        events: list[Any] | bytes,
        buckets: str = "logs",
        token: str | None = SHARED_TOKEN,
        **headers: str,
    ) -> Answer:
        """POST C{events} (a list to encode, or raw bytes) to C{record-batch}."""
        body = events if isinstance(events, bytes) else json.dumps(events).encode()
        return await self.request(
            "POST",
            "/record-batch",
            {**_authorization(token), "RF-BUCKETS": buckets, **headers},
            body,
        )

    async def first_batch(
        self,
        query: str = "",
        bucket: str = "logs",
        token: str | None = SHARED_TOKEN,
        **headers: str,
    ) -> Answer:
        """GET C{first-batch} of C{bucket} with C{query}."""
        return await self.request(
            "GET",
            "/first-batch" + query,
            {**_authorization(token), "RF-BUCKET": bucket, **headers},
        )

    async def acknowledge(
        self,
        ids: list[Any] | bytes,
        bucket: str = "logs",
        token: str | None = SHARED_TOKEN,
    ) -> Answer:
        """DELETE C{ids} (a list to send as C{{"ids": …}}, or raw bytes)."""
        body = ids if isinstance(ids, bytes) else json.dumps({"ids": ids}).encode()
        return await self.request(
            "DELETE",
            "/acknowledge-batch",
            {
                **_authorization(token),
                "RF-BUCKET": bucket,
                "Content-Type": "application/json",
            },
            body,
        )

    async def statusz(self) -> dict[str, Any]:
        """GET C{/statusz} from the status API."""
        answer = await self.request("GET", "/statusz", {}, api=self.status)
        assert answer.code == 200, answer
        status: dict[str, Any] = answer.json()
        return status

    async def contents(self, name: str) -> list[str]:
        """Read every record of bucket C{name} straight from its store."""
        return [record.content for record in await self.stores[name].first(10_000)]

    async def ids(self, name: str) -> list[int]:
        """Read every record id of bucket C{name} straight from its store."""
        return [record.id for record in await self.stores[name].first(10_000)]


def _authorization(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


class RelayTestCase(TestCase):
    """
    Start relays over bucket files in a fresh folder of each test.
    """

    timeout = 20

    def setUp(self) -> None:
        self.data_dir = temporary_folder(self)

    async def start(
        self,
        buckets: list[BucketConfig] | None = None,
        clock: IReactorTime = reactor,  # type: ignore[assignment]
        max_batch: int = 1000,
    ) -> Relay:
        """Start a relay with C{buckets}, by default L{default_buckets}."""
        relay = Relay(
            self, buckets or default_buckets(), self.data_dir, clock, max_batch
        )
        return await relay.open()


class RecordBatchAuthorizationTests(RelayTestCase):
    """
    C{record-batch} stores only when every listed bucket's own token is given.
    """

    async def assertRefused(self, relay: Relay, answer: Answer) -> None:
        """Assert a 401 answer and that no bucket holds anything."""
        self.assertEqual(answer.code, 401, answer)
        for name in relay.stores:
            self.assertEqual(await relay.contents(name), [], name)

    async def test_right_token(self) -> None:
        """
        The bucket's token stores the batch and is answered 200.
        """
        relay = await self.start()
        answer = await relay.post_batch(["a", "b"])
        self.assertEqual(answer.code, 200, answer)
        self.assertEqual(await relay.contents("logs"), ["a", "b"])

    async def test_wrong_token(self) -> None:
        """
        A token that belongs to no bucket is refused.
        """
        relay = await self.start()
        await self.assertRefused(relay, await relay.post_batch(["a"], token="guess"))

    async def test_token_of_another_bucket(self) -> None:
        """
        One bucket's token never opens another bucket.
        """
        relay = await self.start()
        answer = await relay.post_batch(["a"], buckets="logs", token=METRICS_TOKEN)
        await self.assertRefused(relay, answer)
        answer = await relay.post_batch(["a"], buckets="metrics", token=SHARED_TOKEN)
        await self.assertRefused(relay, answer)

    async def test_missing_authorization(self) -> None:
        """
        A request without C{Authorization} is refused.
        """
        relay = await self.start()
        await self.assertRefused(relay, await relay.post_batch(["a"], token=None))

    async def test_other_scheme(self) -> None:
        """
        The right token under a scheme other than C{Bearer} is refused.
        """
        relay = await self.start()
        for scheme in ("Basic", "Token"):
            answer = await relay.request(
                "POST",
                "/record-batch",
                {"Authorization": f"{scheme} {SHARED_TOKEN}", "RF-BUCKETS": "logs"},
                b'["a"]',
            )
            await self.assertRefused(relay, answer)

    async def test_unknown_bucket(self) -> None:
        """
        A bucket the relay does not have is refused like a wrong token.
        """
        relay = await self.start()
        answer = await relay.post_batch(["a"], buckets="nope")
        await self.assertRefused(relay, answer)
        self.assertIn("nope", answer.text)

    async def test_one_bucket_refused_refuses_all(self) -> None:
        """
        When one listed bucket is not authorized, nothing is stored in the
        others either.
        """
        relay = await self.start()
        for buckets in ("logs,metrics", "metrics,logs", "logs,nope", "nope,audit"):
            answer = await relay.post_batch(["a"], buckets=buckets)
            await self.assertRefused(relay, answer)


class RecordBatchTests(RelayTestCase):
    """
    C{record-batch} takes a JSON array of strings for the listed buckets.
    """

    async def test_two_buckets(self) -> None:
        """
        A batch for two buckets is stored whole in each.
        """
        relay = await self.start()
        answer = await relay.post_batch(["a", "b"], buckets="logs,audit")
        self.assertEqual(answer.code, 200, answer)
        self.assertEqual(await relay.contents("logs"), ["a", "b"])
        self.assertEqual(await relay.contents("audit"), ["a", "b"])
        self.assertEqual(await relay.contents("metrics"), [])

    async def test_bucket_list_trimmed(self) -> None:
        """
        Spaces around bucket names and empty entries are ignored.
        """
        relay = await self.start()
        answer = await relay.post_batch(["a"], buckets=" logs , audit ,")
        self.assertEqual(answer.code, 200, answer)
        self.assertEqual(await relay.contents("logs"), ["a"])
        self.assertEqual(await relay.contents("audit"), ["a"])

    async def test_bucket_listed_twice(self) -> None:
        """
        A bucket listed twice stores the batch once.
        """
        relay = await self.start()
        answer = await relay.post_batch(["a"], buckets="logs,logs")
        self.assertEqual(answer.code, 200, answer)
        self.assertEqual(await relay.contents("logs"), ["a"])

    async def test_content_kept_exactly(self) -> None:
        """
        Events come back byte for byte, whatever characters they hold.
        """
        relay = await self.start()
        events = ['{"path": "/x", "body": "é\\n"}', "", "tab\there", "😀"]
        self.assertEqual((await relay.post_batch(events)).code, 200)
        self.assertEqual(await relay.contents("logs"), events)

    async def test_empty_array(self) -> None:
        """
        An empty array is accepted and stores nothing.
        """
        relay = await self.start()
        self.assertEqual((await relay.post_batch([])).code, 200)
        self.assertEqual(await relay.contents("logs"), [])

    async def test_missing_bucket_list(self) -> None:
        """
        A request without C{RF-BUCKETS}, or with only commas and spaces, is
        answered 400.
        """
        relay = await self.start()
        answer = await relay.request(
            "POST",
            "/record-batch",
            {"Authorization": f"Bearer {SHARED_TOKEN}"},
            b'["a"]',
        )
        self.assertEqual(answer.code, 400, answer)
        self.assertIn("RF-BUCKETS", answer.text)
        self.assertEqual((await relay.post_batch(["a"], buckets=" , ")).code, 400)
        self.assertEqual(await relay.contents("logs"), [])

    async def test_malformed_bodies(self) -> None:
        """
        A body that is not a JSON array of strings is answered 400 and
        nothing is stored.
        """
        relay = await self.start()
        for body in [
            b"not json",
            b"",
            b'["unterminated',
            b"\xff\xfe",
            b'{"events": ["a"]}',
            b'"a"',
            b"null",
            b'["a", 1]',
            b'["a", null]',
            b'["a", ["b"]]',
        ]:
            answer = await relay.post_batch(body, buckets="logs,audit")
            self.assertEqual(answer.code, 400, body)
        self.assertEqual(await relay.contents("logs"), [])
        self.assertEqual(await relay.contents("audit"), [])

    async def test_batch_id_stores_once(self) -> None:
        """
        A batch sent twice with the same C{RF-BATCH-ID} is answered 200 both
        times and stored once; another id is stored again.
        """
        relay = await self.start()
        for _ in range(2):
            answer = await relay.post_batch(["a"], **{"RF-BATCH-ID": "batch-1"})
            self.assertEqual(answer.code, 200, answer)
        self.assertEqual(await relay.contents("logs"), ["a"])

        await relay.post_batch(["a"], **{"RF-BATCH-ID": "batch-2"})
        self.assertEqual(await relay.contents("logs"), ["a", "a"])

        status = await relay.statusz()
        self.assertEqual(status["buckets"]["logs"]["rxMessagesSinceStart"], 2)

    async def test_batch_id_per_bucket(self) -> None:
        """
        A batch id remembered by one bucket does not stop another bucket from
        storing its batch.
        """
        relay = await self.start()
        await relay.post_batch(["a"], buckets="logs", **{"RF-BATCH-ID": "b1"})
        await relay.post_batch(["a"], buckets="logs,audit", **{"RF-BATCH-ID": "b1"})
        self.assertEqual(await relay.contents("logs"), ["a"])
        self.assertEqual(await relay.contents("audit"), ["a"])

    async def test_without_batch_id_stores_every_time(self) -> None:
        """
        Without C{RF-BATCH-ID}, the same batch sent twice is stored twice.
        """
        relay = await self.start()
        await relay.post_batch(["a"])
        await relay.post_batch(["a"])
        self.assertEqual(await relay.contents("logs"), ["a", "a"])


class BucketCapTests(RelayTestCase):
    """
    A bucket over its size cap refuses new batches with 429.
    """

    async def start_with_full_bucket(self) -> Relay:
        """
        Start a relay whose C{small} bucket (32 KB, token shared with C{logs})
        was filled past its cap by an accepted batch.
        """
        relay = await self.start([bucket("logs"), bucket("small", max_kb=32)])
        self.assertFalse(relay.stores["small"].is_full)
        answer = await relay.post_batch(["x" * 2000] * 20, buckets="small")
        self.assertEqual(answer.code, 200, answer)
        self.assertTrue(relay.stores["small"].is_full)
        return relay

    async def test_refused_in_every_bucket(self) -> None:
        """
        A batch for a full bucket and another is answered 429 naming the full
        one, and is stored in neither.
        """
        relay = await self.start_with_full_bucket()

        answer = await relay.post_batch(["a", "b", "c"], buckets="logs,small")

        self.assertEqual(answer.code, 429, answer)
        self.assertIn("small", answer.text)
        self.assertNotIn("logs", answer.text)
        self.assertEqual(await relay.contents("logs"), [])
        self.assertEqual(len(await relay.contents("small")), 20)

    async def test_refusal_counted(self) -> None:
        """
        Every refused event is counted as dropped for the full bucket, in the
        stats and in C{/statusz}.
        """
        relay = await self.start_with_full_bucket()

        await relay.post_batch(["a", "b", "c"], buckets="logs,small")
        await relay.post_batch(["d"], buckets="small")

        self.assertEqual(
            dict(relay.stats.dropped), {("small", "refused_bucket_full"): 4}
        )
        status = await relay.statusz()
        self.assertEqual(status["dropped"], {"small/refused_bucket_full": 4})
        self.assertEqual(
            status["buckets"]["small"]["dropped"], {"refused_bucket_full": 4}
        )
        self.assertEqual(status["buckets"]["logs"]["dropped"], {})
        self.assertEqual(status["buckets"]["small"]["databaseMaxSizeKb"], 32)
        self.assertGreater(status["buckets"]["small"]["databaseSizeKb"], 32)

    async def test_other_buckets_unaffected(self) -> None:
        """
        A full bucket does not stop batches meant only for other buckets.
        """
        relay = await self.start_with_full_bucket()
        answer = await relay.post_batch(["a"], buckets="logs")
        self.assertEqual(answer.code, 200, answer)
        self.assertEqual(await relay.contents("logs"), ["a"])

    async def test_accepts_again_once_drained(self) -> None:
        """
        Once a player acknowledged its records, a full bucket takes data again.
        """
        relay = await self.start_with_full_bucket()
        ids = await relay.ids("small")
        self.assertEqual((await relay.acknowledge(ids, bucket="small")).code, 200)

        self.assertFalse(relay.stores["small"].is_full)
        answer = await relay.post_batch(["again"], buckets="small")
        self.assertEqual(answer.code, 200, answer)
        self.assertEqual(await relay.contents("small"), ["again"])


class FirstBatchTests(RelayTestCase):
    """
    C{first-batch} hands out the oldest records of one bucket.
    """

    async def test_oldest_first(self) -> None:
        """
        Records come oldest first, across batches, as id/content objects.
        """
        relay = await self.start()
        await relay.post_batch(["a", "b"])
        await relay.post_batch(["c"])

        answer = await relay.first_batch()

        self.assertEqual(answer.code, 200, answer)
        self.assertEqual(
            answer.json(),
            [
                {"id": 1, "content": "a"},
                {"id": 2, "content": "b"},
                {"id": 3, "content": "c"},
            ],
        )

    async def test_not_removed_until_acknowledged(self) -> None:
        """
        Fetching does not remove records: they come again until acknowledged.
        """
        relay = await self.start()
        await relay.post_batch(["a"])
        first = await relay.first_batch()
        second = await relay.first_batch()
        self.assertEqual(first.json(), second.json())

    async def test_empty(self) -> None:
        """
        An empty bucket is answered 404 with the JSON body C{[]}.
        """
        relay = await self.start()
        answer = await relay.first_batch()
        self.assertEqual((answer.code, answer.body), (404, b"[]"))

    async def test_default_limit(self) -> None:
        """
        Without C{limit}, at most 100 records are handed out.
        """
        relay = await self.start()
        await relay.post_batch([str(n) for n in range(150)])

        records = (await relay.first_batch()).json()

        self.assertEqual([r["content"] for r in records], [str(n) for n in range(100)])

    async def test_limit(self) -> None:
        """
        C{limit} bounds the number of records.
        """
        relay = await self.start()
        await relay.post_batch(["a", "b", "c"])
        records = (await relay.first_batch("?limit=2")).json()
        self.assertEqual([r["content"] for r in records], ["a", "b"])

    async def test_limit_capped_at_max_batch(self) -> None:
        """
        A limit above C{maxBatch} is lowered to it.
        """
        relay = await self.start(max_batch=5)
        await relay.post_batch([str(n) for n in range(8)])
        records = (await relay.first_batch("?limit=50")).json()
        self.assertEqual(len(records), 5)
        records = (await relay.first_batch()).json()
        self.assertEqual(len(records), 5)

    async def test_bad_limit(self) -> None:
        """
        A limit that is not a whole number above 0 is answered 400.
        """
        relay = await self.start()
        await relay.post_batch(["a"])
        for limit in ("abc", "0", "-3", "1.5", ""):
            answer = await relay.first_batch(f"?limit={limit}")
            self.assertEqual(answer.code, 400, limit)
            self.assertIn("limit", answer.text)

    async def test_missing_bucket(self) -> None:
        """
        A request without C{RF-BUCKET} is answered 400.
        """
        relay = await self.start()
        answer = await relay.request(
            "GET", "/first-batch", {"Authorization": f"Bearer {SHARED_TOKEN}"}
        )
        self.assertEqual(answer.code, 400, answer)

    async def test_authorization(self) -> None:
        """
        Reading needs the bucket's own token; nothing is handed out otherwise.
        """
        relay = await self.start()
        await relay.post_batch(["secret"])
        for token in ("guess", METRICS_TOKEN, None):
            answer = await relay.first_batch(token=token)
            self.assertEqual(answer.code, 401, token)
            self.assertNotIn("secret", answer.text)
        self.assertEqual((await relay.first_batch(bucket="nope")).code, 401)

    async def test_ids_grow_after_everything_acknowledged(self) -> None:
        """
        Ids keep growing after every record was acknowledged, so a player
        never sees an id twice.
        """
        relay = await self.start()
        await relay.post_batch(["a", "b"])
        ids = await relay.ids("logs")
        await relay.acknowledge(ids)

        await relay.post_batch(["c"])

        self.assertEqual(ids, [1, 2])
        self.assertEqual(
            (await relay.first_batch()).json(), [{"id": 3, "content": "c"}]
        )

    async def test_ids_never_reused_across_restart(self) -> None:
        """
        Ids are not reused even when every record was acknowledged and the
        relay restarted on the same files.
        """
        relay = await self.start()
        await relay.post_batch(["a", "b", "c"])
        await relay.acknowledge(await relay.ids("logs"))
        relay.close()

        restarted = await self.start()
        await restarted.post_batch(["d"])

        self.assertEqual(
            (await restarted.first_batch()).json(), [{"id": 4, "content": "d"}]
        )

    async def test_records_survive_restart(self) -> None:
        """
        Records not yet acknowledged are there after a restart, ids unchanged.
        """
        relay = await self.start()
        await relay.post_batch(["a", "b"])
        await relay.acknowledge([1])
        relay.close()

        restarted = await self.start()

        self.assertEqual(
            (await restarted.first_batch()).json(), [{"id": 2, "content": "b"}]
        )

    async def test_counted_as_sent(self) -> None:
        """
        Records handed out are counted for the bucket, environment and host.
        """
        relay = await self.start()
        await relay.post_batch(["a", "b"])
        await relay.first_batch(**{"RF-ENV-NAME": "prod", "RF-HOSTNAME": "player-1"})

        status = await relay.statusz()

        self.assertEqual(status["buckets"]["logs"]["txMessagesSinceStart"], 2)
        self.assertEqual(status["envs"]["prod"]["txMessagesSinceStart"], 2)
        self.assertEqual(status["hostnames"]["player-1"]["txMessagesSinceStart"], 2)


class LongPollTests(RelayTestCase):
    """
    C{first-batch?wait=S} holds an empty answer until records arrive or S
    seconds passed.
    """

    async def test_nothing_arrives(self) -> None:
        """
        When nothing arrives within the wait, the answer is 404 C{[]}.
        """
        relay = await self.start()
        answer = await relay.first_batch("?wait=0.2")
        self.assertEqual((answer.code, answer.body), (404, b"[]"))

    async def test_answers_when_records_arrive(self) -> None:
        """
        A waiting reader is answered with the records as soon as they are
        stored: its clock never moves, so only their arrival can answer it.
        """
        clock = Clock()
        relay = await self.start(clock=clock)
        waiting = Deferred.fromCoroutine(relay.first_batch("?wait=30"))
        await eventually(lambda: bool(clock.getDelayedCalls()), "reader waits")

        self.assertEqual((await relay.post_batch(["late"])).code, 200)
        answer = await waiting

        self.assertEqual(answer.code, 200, answer)
        self.assertEqual(answer.json(), [{"id": 1, "content": "late"}])
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_other_bucket_does_not_answer(self) -> None:
        """
        Records stored in another bucket leave the reader waiting; it gets
        404 C{[]} when its wait is over.
        """
        clock = Clock()
        relay = await self.start(clock=clock)
        waiting = Deferred.fromCoroutine(relay.first_batch("?wait=5"))
        await eventually(lambda: bool(clock.getDelayedCalls()), "reader waits")

        await relay.post_batch(["a"], buckets="audit")
        await deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(waiting.called)

        clock.advance(5)
        answer = await waiting
        self.assertEqual((answer.code, answer.body), (404, b"[]"))

    async def test_empty_batch_does_not_answer(self) -> None:
        """
        An empty batch stored meanwhile leaves the reader waiting for data.
        """
        clock = Clock()
        relay = await self.start(clock=clock)
        waiting = Deferred.fromCoroutine(relay.first_batch("?wait=5"))
        await eventually(lambda: bool(clock.getDelayedCalls()), "reader waits")

        self.assertEqual((await relay.post_batch([])).code, 200)
        await deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(waiting.called)

        await relay.post_batch(["a"])
        answer = await waiting
        self.assertEqual(answer.json(), [{"id": 1, "content": "a"}])

    async def test_closing_answers_waiting_readers(self) -> None:
        """
        Closing a bucket's store, as stopping the relay does, answers its
        waiting readers at once with 404 C{[]}.
        """
        clock = Clock()
        relay = await self.start(clock=clock)
        waiting = Deferred.fromCoroutine(relay.first_batch("?wait=30"))
        await eventually(lambda: bool(clock.getDelayedCalls()), "reader waits")

        relay.close_store("logs")

        answer = await waiting
        self.assertEqual((answer.code, answer.body), (404, b"[]"))
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_no_wait_when_records_present(self) -> None:
        """
        A reader asking to wait is answered at once when records are there.
        """
        clock = Clock()
        relay = await self.start(clock=clock)
        await relay.post_batch(["a"])

        answer = await relay.first_batch("?wait=30")

        self.assertEqual(answer.json(), [{"id": 1, "content": "a"}])
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_reader_gone(self) -> None:
        """
        A reader that hangs up while waiting is forgotten, its timer stopped.
        """
        clock = Clock()
        relay = await self.start(clock=clock)
        waiting = relay.api.get(
            URL + "/first-batch?wait=30",
            headers={"Authorization": f"Bearer {SHARED_TOKEN}", "RF-BUCKET": "logs"},
        )
        await eventually(lambda: bool(clock.getDelayedCalls()), "reader waits")

        waiting.cancel()

        await eventually(lambda: not clock.getDelayedCalls(), "timer stopped")
        self.failureResultOf(waiting, ResponseNeverReceived)
        self.assertEqual((await relay.post_batch(["a"])).code, 200)

    async def test_bad_wait(self) -> None:
        """
        A wait that is not a number from 0 to 30 is answered 400.
        """
        relay = await self.start()
        for wait in ("abc", "-1", "30.5", "nan", "inf", ""):
            answer = await relay.first_batch(f"?wait={wait}")
            self.assertEqual(answer.code, 400, wait)
            self.assertIn("wait", answer.text)


class AcknowledgeBatchTests(RelayTestCase):
    """
    C{acknowledge-batch} deletes records by id.
    """

    async def test_string_and_integer_ids(self) -> None:
        """
        Ids given as strings or integers are deleted, and the answer counts
        them.
        """
        relay = await self.start()
        await relay.post_batch(["a", "b", "c", "d"])

        answer = await relay.acknowledge(["1", 3])

        self.assertEqual(
            (answer.code, answer.text), (200, "2 records deleted successfully")
        )
        self.assertEqual(await relay.contents("logs"), ["b", "d"])

    async def test_some_matched(self) -> None:
        """
        Ids that match nothing are ignored when others match.
        """
        relay = await self.start()
        await relay.post_batch(["a"])
        answer = await relay.acknowledge([1, 99])
        self.assertEqual(
            (answer.code, answer.text), (200, "1 records deleted successfully")
        )

    async def test_none_matched(self) -> None:
        """
        When no id matches, the answer is 404.
        """
        relay = await self.start()
        await relay.post_batch(["a"])
        answer = await relay.acknowledge([42, "43"])
        self.assertEqual(answer.code, 404, answer)
        self.assertEqual(await relay.contents("logs"), ["a"])

    async def test_already_acknowledged(self) -> None:
        """
        Acknowledging the same ids twice finds nothing the second time.
        """
        relay = await self.start()
        await relay.post_batch(["a"])
        self.assertEqual((await relay.acknowledge([1])).code, 200)
        self.assertEqual((await relay.acknowledge([1])).code, 404)

    async def test_bad_bodies(self) -> None:
        """
        Empty id lists, invalid JSON, missing or mistyped ids and ids that
        are not whole numbers within SQLite's range are answered 400, and
        nothing is deleted.
        """
        relay = await self.start()
        await relay.post_batch(["a"])
        for body in [
            b'{"ids": []}',
            b"not json",
            b"",
            b"[1]",
            b"{}",
            b'{"ids": "1"}',
            b'{"ids": ["1", "x"]}',
            b'{"ids": ["1.5"]}',
            b'{"ids": [1.0]}',
            b'{"ids": [true]}',
            b'{"ids": [null]}',
            b'{"ids": [99999999999999999999999]}',
            b'{"ids": ["-99999999999999999999999"]}',
        ]:
            answer = await relay.acknowledge(body)
            self.assertEqual(answer.code, 400, body)
        self.assertEqual(await relay.contents("logs"), ["a"])

    async def test_authorization(self) -> None:
        """
        Deleting needs the bucket's own token; nothing is deleted otherwise.
        """
        relay = await self.start()
        await relay.post_batch(["a"])
        for token in ("guess", METRICS_TOKEN, None):
            self.assertEqual((await relay.acknowledge([1], token=token)).code, 401)
        self.assertEqual(await relay.contents("logs"), ["a"])

    async def test_only_the_named_bucket(self) -> None:
        """
        Ids are deleted only in the bucket named, not in another with the
        same ids.
        """
        relay = await self.start()
        await relay.post_batch(["a"], buckets="logs,audit")
        self.assertEqual((await relay.acknowledge([1], bucket="audit")).code, 200)
        self.assertEqual(await relay.contents("logs"), ["a"])
        self.assertEqual(await relay.contents("audit"), [])


class NodeInfoTests(RelayTestCase):
    """
    C{node-info} keeps each host's latest report for C{/statusz}.
    """

    async def post_report(
        self,
        relay: Relay,
        body: bytes,
        host: str | None = "web-1",
        token: str = SHARED_TOKEN,
    ) -> Answer:
        """POST C{body} as the report of C{host}."""
        headers = {"Authorization": f"Bearer {token}", "RF-BUCKET": "logs"}
        if host is not None:
            headers["RF-HOSTNAME"] = host
        return await relay.request("POST", "/node-info", headers, body)

    async def test_latest_report_shown(self) -> None:
        """
        The latest report of each host is shown in C{/statusz} with the time
        it arrived.
        """
        clock = Clock()
        clock.advance(60)
        relay = await self.start(clock=clock)

        await self.post_report(relay, b'{"cpu": 0.9}')
        answer = await self.post_report(relay, b'{"cpu": 0.5, "queue": 10}')
        await self.post_report(relay, b'{"cpu": 0.1}', host="web-2")

        self.assertEqual(answer.code, 200, answer)
        status = await relay.statusz()
        self.assertEqual(
            status["nodeInfo"],
            {
                "web-1": {
                    "cpu": 0.5,
                    "queue": 10,
                    "lastUpdated": "1970-01-01T00:01:00.000Z",
                },
                "web-2": {"cpu": 0.1, "lastUpdated": "1970-01-01T00:01:00.000Z"},
            },
        )

    async def test_refused_reports(self) -> None:
        """
        A report without C{RF-HOSTNAME} or whose body is not a JSON object is
        answered 400, one with a wrong token 401, and none is kept.
        """
        relay = await self.start()
        answers = [
            await self.post_report(relay, b'{"cpu": 1}', host=None),
            await self.post_report(relay, b"[1, 2]"),
            await self.post_report(relay, b'"text"'),
            await self.post_report(relay, b"not json"),
            await self.post_report(relay, b'{"cpu": 1}', token="guess"),
        ]
        self.assertEqual([a.code for a in answers], [400, 400, 400, 400, 401])
        self.assertEqual((await relay.statusz())["nodeInfo"], {})

    async def test_reports_bounded(self) -> None:
        """
        A report must hold finite numbers (the status pages are JSON, which
        has no infinities), stay under 64 KiB and name a host of at most
        255 characters; beyond 1,000 hosts new ones wait for old ones to be
        forgotten.  What is refused is not kept and the others still are.
        """
        relay = await self.start()
        refused = [
            await self.post_report(relay, b'{"memoryProcess": 1e400}'),
            await self.post_report(relay, b'{"cpu": NaN}'),
            await self.post_report(relay, b'{"warnCount": -Infinity}'),
            await self.post_report(relay, b'{"x": [Infinity]}'),
            await self.post_report(relay, b'{"pad": "%s"}' % (b"x" * 65536)),
            await self.post_report(relay, b'{"cpu": 1}', host="h" * 256),
        ]
        self.assertEqual(
            [a.code for a in refused], [400, 400, 400, 400, 413, 400], refused
        )
        self.assertEqual((await relay.statusz())["nodeInfo"], {})

        for index in range(1000):
            answer = await self.post_report(relay, b"{}", host=f"host-{index}")
            self.assertEqual(answer.code, 200, answer)
        answer = await self.post_report(relay, b"{}", host="one-too-many")
        self.assertEqual(answer.code, 429, answer)
        answer = await self.post_report(relay, b'{"cpu": 2.5}', host="host-7")
        self.assertEqual(answer.code, 200, answer)
        nodes = (await relay.statusz())["nodeInfo"]
        self.assertEqual(len(nodes), 1000)
        self.assertEqual(nodes["host-7"]["cpu"], 2.5)


class StatusTests(RelayTestCase):
    """
    The status API shows traffic with the Go relay's field names.
    """

    async def test_statusz(self) -> None:
        """
        C{/statusz} holds uptime, per bucket, environment and host traffic
        with the Go field names, database sizes and caps, node reports and
        drops.
        """
        clock = Clock()
        relay = await self.start(clock=clock)
        clock.advance(90.5)
        await relay.post_batch(
            ["a", "b"], **{"RF-ENV-NAME": "prod", "RF-HOSTNAME": "web-1"}
        )

        status = await relay.statusz()

        self.assertEqual(
            set(status),
            {"uptime", "buckets", "envs", "hostnames", "nodeInfo", "dropped"},
        )
        self.assertEqual(status["uptime"], "1m30.5s")
        self.assertEqual(set(status["buckets"]), {"logs", "audit", "metrics"})
        logs = status["buckets"]["logs"]
        self.assertEqual(
            set(logs),
            GO_TRAFFIC_FIELDS | {"databaseSizeKb", "databaseMaxSizeKb", "dropped"},
        )
        self.assertEqual(logs["kind"], "relay")
        self.assertEqual(logs["id"], "logs")
        self.assertEqual(logs["rxMessagesSinceStart"], 2)
        self.assertEqual(logs["rxMessagesByMinute"], 2)
        self.assertEqual(logs["rxQueryByMinute"], 1)
        self.assertEqual(logs["rxLastMessageDate"], "1970-01-01T00:01:30.500Z")
        self.assertEqual(logs["txLastAccess"], GO_ZERO_TIME)
        self.assertEqual(logs["databaseMaxSizeKb"], 1024)
        self.assertGreater(logs["databaseSizeKb"], 0)
        self.assertEqual(status["buckets"]["audit"]["rxLastMessageDate"], GO_ZERO_TIME)

        self.assertEqual(set(status["envs"]), {"prod"})
        self.assertEqual(set(status["envs"]["prod"]), GO_TRAFFIC_FIELDS)
        self.assertEqual(status["envs"]["prod"]["kind"], "env")
        self.assertEqual(status["envs"]["prod"]["rxMessagesSinceStart"], 2)
        self.assertEqual(set(status["hostnames"]), {"web-1"})
        self.assertEqual(status["hostnames"]["web-1"]["kind"], "hostname")
        self.assertEqual(status["hostnames"]["web-1"]["rxMessagesSinceStart"], 2)
        self.assertEqual(status["nodeInfo"], {})
        self.assertEqual(status["dropped"], {})

    async def test_no_tokens(self) -> None:
        """
        No bucket token appears on the status page.
        """
        relay = await self.start()
        await relay.post_batch(["a"])
        answer = await relay.request("GET", "/statusz", {}, api=relay.status)
        self.assertNotIn(SHARED_TOKEN.encode(), answer.body)
        self.assertNotIn(METRICS_TOKEN.encode(), answer.body)

    async def test_alive(self) -> None:
        """
        C{/} answers C{ok}.
        """
        relay = await self.start()
        answer = await relay.request("GET", "/", {}, api=relay.status)
        self.assertEqual((answer.code, answer.text), (200, "ok"))


class _ReactorWithClock:
    """
    The real reactor for threads and shutdown, with a L{Clock} for time.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def seconds(self) -> float:
        return self._clock.seconds()

    def callLater(self, delay: float, f: Any, *args: Any, **kwargs: Any) -> Any:
        return self._clock.callLater(delay, f, *args, **kwargs)

    def getDelayedCalls(self) -> Any:
        return self._clock.getDelayedCalls()

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


class ExpiryTests(TestCase):
    """
    Records older than a bucket's time to live are purged, and every purge
    is counted; batch ids are remembered for an hour.
    """

    timeout = 20

    async def open_store(self, config: BucketConfig, clock: Clock) -> BucketStore:
        """Open a store for C{config} whose time is C{clock}."""
        store = BucketStore(config, temporary_folder(self), reactor, clock)
        self.addCleanup(store.close)
        await store.open()
        return store

    async def test_purge_expired(self) -> None:
        """
        Records older than the time to live are deleted and counted; younger
        ones stay.
        """
        clock = Clock()
        store = await self.open_store(bucket("logs", ttl=60), clock)
        await store.append(["old-1", "old-2"])
        clock.advance(30)
        await store.append(["young"])
        clock.advance(31)

        purged = await store.purge_expired()

        self.assertEqual(purged, 2)
        self.assertEqual([r.content for r in await store.first(10)], ["young"])
        self.assertEqual(await store.purge_expired(), 0)

    async def test_no_ttl_keeps_forever(self) -> None:
        """
        A time to live of 0 keeps records forever.
        """
        clock = Clock()
        store = await self.open_store(bucket("logs", ttl=0), clock)
        await store.append(["a"])
        clock.advance(10 * 365 * 86400)

        self.assertEqual(await store.purge_expired(), 0)
        self.assertEqual([r.content for r in await store.first(10)], ["a"])

    async def test_batch_id_forgotten_after_an_hour(self) -> None:
        """
        A batch id is remembered for an hour, then the same batch is stored
        again, also after the purge forgot it.
        """
        clock = Clock()
        store = await self.open_store(bucket("logs"), clock)
        self.assertTrue(await store.append(["a"], "b1"))
        clock.advance(3600)
        self.assertFalse(await store.append(["a"], "b1"))
        clock.advance(1)
        self.assertTrue(await store.append(["a"], "b1"))

        clock.advance(3601)
        await store.purge_expired()
        self.assertTrue(await store.append(["a"], "b1"))
        self.assertEqual(len(await store.first(10)), 3)

    async def test_relay_counts_purged_records(self) -> None:
        """
        The relay's purge counts expired records as dropped with the reason
        C{ttl_expired}, per bucket.
        """
        clock = Clock()
        config = relay_config(
            [bucket("logs", ttl=60), bucket("keep")], temporary_folder(self)
        )
        service = RelayService(config, _ReactorWithClock(clock))
        for store in service.stores.values():
            self.addCleanup(store.close)
            await store.open()
        await service.stores["logs"].append(["a", "b", "c"])
        await service.stores["keep"].append(["d"])
        clock.advance(61)

        await service.purge()
        await service.purge()

        self.assertEqual(dict(service.stats.dropped), {("logs", "ttl_expired"): 3})
        self.assertEqual(await service.stores["logs"].first(10), [])
        self.assertEqual(len(await service.stores["keep"].first(10)), 1)
        status = service.stats.as_json(clock.seconds(), {})
        self.assertEqual(status["dropped"], {"logs/ttl_expired": 3})


GO_SCHEMA = (
    "CREATE TABLE wrap_calls (id INTEGER PRIMARY KEY, content TEXT, timestamp INTEGER)"
)


class GoDatabaseTests(TestCase):
    """
    A bucket database written by the Go relay is adopted: its records are
    kept with their ids, and new ids are larger.
    """

    timeout = 20

    def go_database(self, *extra: str) -> Path:
        """
        Write a Go relay database for bucket C{logs} holding ids 1, 2 and 7,
        run C{extra} statements on it, and return the data folder.
        """
        data_dir = temporary_folder(self)
        path = data_dir / "logs" / "relay.sqlite3"
        path.parent.mkdir(parents=True)
        connection = sqlite3.connect(path)
        with connection:
            connection.execute(GO_SCHEMA)
            for statement in extra:
                connection.execute(statement)
            connection.executemany(
                "INSERT INTO wrap_calls (id, content, timestamp) VALUES (?, ?, ?)",
                [(1, "a", 1700000000), (2, "b", 1700000001), (7, "c", None)],
            )
        connection.close()
        return data_dir

    def setUp(self) -> None:
        self.closed: list[BucketStore] = []

    async def open_store(self, data_dir: Path) -> BucketStore:
        """Open the C{logs} store in C{data_dir}; close it in cleanup."""
        store = BucketStore(bucket("logs"), data_dir, reactor, reactor)
        self.addCleanup(self.close_store, store)
        await store.open()
        return store

    def close_store(self, store: BucketStore) -> None:
        """Close C{store} unless it already was."""
        if store not in self.closed:
            self.closed.append(store)
            store.close()

    async def assertAdopted(self, data_dir: Path) -> None:
        """
        Assert the Go rows are read with their ids, new ids come after them,
        and ids still grow after everything was acknowledged and reopened.
        """
        store = await self.open_store(data_dir)
        self.assertEqual(
            [(r.id, r.content) for r in await store.first(10)],
            [(1, "a"), (2, "b"), (7, "c")],
        )

        await store.append(["d"])
        self.assertEqual([r.id for r in await store.first(10)], [1, 2, 7, 8])

        self.assertEqual(await store.acknowledge([1, 2, 7, 8]), 4)
        self.close_store(store)
        reopened = await self.open_store(data_dir)
        await reopened.append(["e"])
        self.assertEqual(
            [(r.id, r.content) for r in await reopened.first(10)], [(9, "e")]
        )

    async def test_go_database_adopted(self) -> None:
        """
        The Go relay's table is adopted with its rows and ids.
        """
        await self.assertAdopted(self.go_database())

    async def test_go_database_with_index_adopted(self) -> None:
        """
        A Go table carrying a timestamp index is adopted as well.
        """
        await self.assertAdopted(
            self.go_database("CREATE INDEX idx_timestamp ON wrap_calls (timestamp)")
        )


class HostileInputTests(RelayTestCase):
    """Input that once cost a 500 or left the outcome to chance is a 400."""

    async def test_unpaired_surrogate(self) -> None:
        """
        A string escaping half of a UTF-16 pair cannot be stored as text: the
        batch is refused whole and nothing is stored.
        """
        relay = await self.start()
        answer = await relay.post_batch(b'["fine", "bad \\ud800"]')
        self.assertEqual(answer.code, 400, answer)
        self.assertIn(b"surrogate", answer.body)
        self.assertEqual(await relay.contents("logs"), [])

    async def test_other_content_encodings_refused(self) -> None:
        """
        A body in a coding the relay does not decode (gzip arrives already
        inflated by the listener) is answered 415, never stored as it is.
        """
        relay = await self.start()
        for coding in ["br", "deflate", "gzip, gzip", "identity, br"]:
            answer = await relay.post_batch(["kept?"], **{"Content-Encoding": coding})
            self.assertEqual(answer.code, 415, coding)
            self.assertIn(b"unsupported Content-Encoding", answer.body)
        self.assertEqual(await relay.contents("logs"), [])
        answer = await relay.post_batch(["plain"], **{"Content-Encoding": "identity"})
        self.assertEqual(answer.code, 200, answer)
        self.assertEqual(await relay.contents("logs"), ["plain"])

    async def test_deeply_nested_body(self) -> None:
        """JSON nested deeper than the parser goes is a 400, not a crash."""
        relay = await self.start()
        body = b"[" * 100_000 + b"]" * 100_000
        self.assertEqual((await relay.post_batch(body)).code, 400)
        # Node reports are capped at 64 KiB: nested as deep as fits in that.
        answer = await relay.request(
            "POST",
            "/node-info",
            {**_authorization(SHARED_TOKEN), "RF-BUCKET": "logs", "RF-HOSTNAME": "h"},
            b"[" * 30_000 + b"]" * 30_000,
        )
        self.assertEqual(answer.code, 400, answer)

    async def test_two_authorization_headers(self) -> None:
        """
        Two Authorization headers are refused, whichever holds the token:
        which one counted would otherwise depend on the server.
        """
        relay = await self.start()
        for values in (
            ["Bearer wrong", f"Bearer {SHARED_TOKEN}"],
            [f"Bearer {SHARED_TOKEN}", "Bearer wrong"],
        ):
            response = await relay.api.request(
                "POST",
                URL + "/record-batch",
                headers={"Authorization": values, "RF-BUCKETS": "logs"},
                data=b'["a"]',
            )
            self.assertEqual(response.code, 400)
            self.assertIn(b"Authorization", await response.content())
        self.assertEqual(await relay.contents("logs"), [])

    async def test_two_bucket_headers(self) -> None:
        """Two RF-BUCKETS headers are refused rather than one silently ignored."""
        relay = await self.start()
        response = await relay.api.request(
            "POST",
            URL + "/record-batch",
            headers={
                "Authorization": f"Bearer {SHARED_TOKEN}",
                "RF-BUCKETS": ["logs", "audit"],
            },
            data=b'["a"]',
        )
        self.assertEqual(response.code, 400)
        self.assertEqual(await relay.contents("logs"), [])
        self.assertEqual(await relay.contents("audit"), [])
