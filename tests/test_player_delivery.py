"""
The player's sinks fed from its durable queue, on the real reactor, with
real SQLite threads and real HTTP targets: one sink's trouble stays its own,
and events that cannot be delivered end in the dead-letter table.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from replayforge.backoff import Backoff
from replayforge.player.queue import PlayerQueue
from replayforge.player.sinks.db import DbSink
from replayforge.player.sinks.http import HttpSink
from replayforge.player.sinks.settings import (
    DbSinkSettings,
    HttpSinkSettings,
    RetryPolicy,
)
from replayforge.player.worker import SinkWorker
from tests.player_support import (
    RecordingTarget,
    call,
    listen,
    sink_config,
    temp_folder,
)

POLL_SECONDS = 0.02
MAX_POLLS = 1500


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll C{condition} on the reactor, a bounded number of times."""
    for _ in range(MAX_POLLS):
        if condition():
            return
        pause: Deferred[None] = Deferred()
        reactor.callLater(POLL_SECONDS, pause.callback, None)  # type: ignore[attr-defined]
        await pause
    raise AssertionError(f"never happened: {what}")


class DeliveryTests(TestCase):
    """A db sink and an http sink fed by one queue file."""

    def setUp(self) -> None:
        self.folder = temp_folder(self, "rf-player-delivery-")
        self.queue = PlayerQueue(
            self.folder / "player-queue.sqlite3", reactor, 10_000, 1_000
        )
        self.target = RecordingTarget()
        port = listen(self.target)
        self.addCleanup(port.stopListening)
        self.target_url = f"http://127.0.0.1:{port.getHost().port}"
        self.database = self.folder / "store.sqlite3"
        self.db = DbSink(
            sink_config("store", DbSinkSettings(self.database, None, None, 0)),
            reactor,
            queue_instance=self.queue.instance,
        )
        self.workers: list[SinkWorker] = []

    async def tearDown(self) -> None:
        for worker in self.workers:
            await worker.stop()
        for worker in self.workers:
            await worker.sink.stop()
        await self.db.stop()
        self.queue.close()

    def http_sink(self, max_retries: int) -> HttpSink:
        settings = HttpSinkSettings(
            self.target_url,
            timeout_seconds=5.0,
            retry=RetryPolicy(max_retries=max_retries, initial_seconds=0.05),
        )
        return HttpSink(sink_config("web", settings, "http"), reactor)

    def start(self, *sinks: Any) -> None:
        for sink in sinks:
            worker = SinkWorker(
                sink,
                self.queue,
                reactor,
                backoff=Backoff(initial=0.05, maximum=0.1),
            )
            worker.start()
            self.workers.append(worker)

    def stored(self) -> list[str]:
        connection = sqlite3.connect(self.database)
        try:
            return [
                row[0]
                for row in connection.execute("SELECT id FROM events ORDER BY _rpf_id")
            ]
        except sqlite3.OperationalError:
            return []
        finally:
            connection.close()

    def dead_letters(self) -> list[tuple[str, str, int]]:
        connection = sqlite3.connect(self.queue.path)
        try:
            return list(
                connection.execute(
                    "SELECT sink, reason, attempts FROM dead_letters ORDER BY id"
                )
            )
        finally:
            connection.close()

    async def test_failing_target_does_not_delay_the_db_sink(self) -> None:
        """
        While the HTTP target fails every call and the http sink backs off,
        the db sink stores every event it was given.
        """
        self.target.codes = [503] * 1000
        web = self.http_sink(max_retries=1000)
        self.start(self.db, web)
        events = [call("POST", "/events", {"id": str(n)}) for n in range(200)]
        await self.queue.commit(
            "bucket",
            [],
            [(name, text) for text in events for name in ("store", "web")],
        )
        await wait_until(lambda: len(self.stored()) == 200, "200 rows stored")
        self.assertEqual(self.stored(), [str(n) for n in range(200)])
        self.assertEqual(self.queue.depth("store"), 0)
        self.assertEqual(self.queue.depth("web"), 200)
        # The http sink kept trying the oldest call only.
        self.assertEqual({seen.uri for seen in self.target.seen}, {b"/events"})
        self.assertEqual(
            {json.loads(seen.body)["id"] for seen in self.target.seen}, {"0"}
        )

    async def test_dead_letter_path(self) -> None:
        """
        A call the target refuses (400) and one it fails past C{maxRetries}
        are dead-lettered with their reasons and counted; the next call goes.
        """
        self.target.codes = [400, 503, 503, 200]
        web = self.http_sink(max_retries=1)
        self.start(web)
        await self.queue.commit(
            "bucket",
            [],
            [("web", call("POST", f"/n/{n}", {"n": n})) for n in range(3)],
        )
        await wait_until(lambda: self.queue.depth("web") == 0, "the queue drained")
        self.assertEqual(
            self.dead_letters(), [("web", "rejected", 1), ("web", "sink_gave_up", 2)]
        )
        self.assertEqual(web.stats.dropped["rejected"], 1)
        self.assertEqual(web.stats.dropped["sink_gave_up"], 1)
        self.assertEqual(web.stats.delivered, 1)
        self.assertEqual(
            [seen.uri for seen in self.target.seen],
            [b"/n/0", b"/n/1", b"/n/1", b"/n/2"],
        )
        self.assertEqual(self.queue.dead_letters("web"), 2)

    async def test_bad_event_never_stalls_the_db_sink(self) -> None:
        """
        Events the database refuses are dead-lettered one by one while the
        valid events around them, in the same batches, are stored.
        """
        self.start(self.db)
        bad = [
            call("POST", "/pragma_database_list", {"id": "x"}),
            call("POST", "/json_each", {"id": "x"}),
            call("POST", "/dbstat", {"id": "x"}),
            call("POST", "/events", {f"k{n}": n for n in range(2100)}),
        ]
        events = []
        for number in range(40):
            events.append(call("POST", "/events", {"id": str(number)}))
            events.append(bad[number % len(bad)])
        await self.queue.commit("bucket", [], [("store", text) for text in events])
        await wait_until(lambda: self.queue.depth("store") == 0, "the queue drained")
        self.assertEqual(self.stored(), [str(n) for n in range(40)])
        reasons = [reason for _, reason, _ in self.dead_letters()]
        self.assertEqual(reasons.count("bad_table"), 30)
        self.assertEqual(reasons.count("too_many_columns"), 10)
        self.assertEqual(self.db.stats.failures, 0)
