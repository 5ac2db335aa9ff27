"""
Tests for the C{pgcall} source (L{replayforge.proxy.sources.pgcall})
against a real PostgreSQL server started for them on a loopback port.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import psycopg
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SkipTest, TestCase

from replayforge.proxy.buffer import SinkBuffer
from replayforge.proxy.config import ProxySourceConfig
from replayforge.proxy.pipeline import SourcePipeline
from replayforge.proxy.sources.pgcall import PgCallService, PgCallSource
from replayforge.proxy.sources.settings import PgCall, PgCallSettings
from replayforge.proxy.stats import SinkStats, SourceStats
from tests.logfile_helpers import buffered_events
from tests.postgres_server import PostgresServer, PostgresUnavailable

MIB = 1024 * 1024
NOW = 1_700_000_000.0

_SCHEMA = """
CREATE TABLE orders (
    id integer PRIMARY KEY,
    customer text,
    amount numeric(10, 2),
    ratio double precision,
    paid boolean,
    placed timestamptz,
    due date,
    extra jsonb,
    tags text[],
    raw bytea
);
INSERT INTO orders VALUES
    (1, 'ada', 12.50, 0.5, true, '2024-12-10 16:14:51.25+00', '2024-12-31',
     '{"vip": true, "n": [1, 2]}', '{a,b}', '\\x0102'),
    (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"""


class PgCallTests(TestCase):
    """A pgcall source runs its calls and sends their results as one event."""

    server: PostgresServer

    @classmethod
    def setUpClass(cls) -> None:
        try:
            cls.server = PostgresServer()
        except PostgresUnavailable as error:
            if os.environ.get("CI"):
                raise AssertionError(f"CI must run the pgcall tests: {error}") from None
            raise SkipTest(str(error)) from None
        cls.server.start()
        with psycopg.connect(cls.server.conninfo) as connection:
            connection.execute(_SCHEMA)

    @classmethod
    def tearDownClass(cls) -> None:
        server = getattr(cls, "server", None)
        if server is not None:
            server.stop()

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="rf-pgcall-"))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        self.clock = Clock()
        self.clock.advance(NOW)
        self.stats = SourceStats()

    async def source(
        self, calls: list[PgCall], conninfo: str | None = None
    ) -> PgCallSource:
        """A pgcall source over the test server, into a real sink buffer."""
        self.buffer_path = self.folder / "main.sqlite3"
        buffer = SinkBuffer(self.buffer_path, 64 * MIB, reactor, self.clock)
        await buffer.open()
        self.addCleanup(buffer.close)
        settings = PgCallSettings(
            interval_seconds=10,
            conninfo=conninfo or self.server.conninfo,
            calls=calls,
            path="/rpf-db/pg",
            statement_timeout_seconds=5,
        )
        config = ProxySourceConfig(
            id="pg",
            type="pgcall",
            transform_script=None,
            target_sink="main",
            hook_interval=1.0,
            listen=None,
            max_body_bytes=MIB,
            settings=settings,
        )
        pipeline = SourcePipeline(
            config,
            None,
            {"main": buffer},
            self.stats,
            {"main": SinkStats()},
            self.clock,
        )
        source = PgCallSource("pg", settings, pipeline, self.stats, reactor, self.clock)
        self.addCleanup(source.close)
        return source

    def events(self) -> list[dict[str, Any]]:
        """The call objects buffered, decoded."""
        return [json.loads(event) for event in buffered_events(self.buffer_path)]

    async def test_results_as_the_go_proxy_sent_them(self) -> None:
        """
        Each call's rows come under its name, column to value, with
        C{success}, the time of the call and its Unix time; the event is a
        POST to C{path} without an C{ip}, as in Go.
        """
        source = await self.source(
            [
                PgCall("orders", "SELECT * FROM orders ORDER BY id"),
                PgCall("count", "SELECT count(*) AS n FROM orders"),
            ]
        )

        await source.tick()

        [event] = self.events()
        self.assertEqual(
            {key: value for key, value in event.items() if key != "body"},
            {"headers": {}, "method": "POST", "params": {}, "path": "/rpf-db/pg"},
        )
        body = json.loads(event["body"])
        self.assertEqual(list(body), ["count", "orders"])
        self.assertEqual(
            body["count"],
            {
                "data": [{"n": 2}],
                "success": True,
                "update_time": body["count"]["update_time"],
                "update_timestamp": int(NOW),
            },
        )
        self.assertTrue(body["count"]["update_time"].startswith("2023-11-1"))
        self.assertEqual(
            body["orders"]["data"],
            [
                {
                    "id": 1,
                    "customer": "ada",
                    "amount": 12.5,
                    "ratio": 0.5,
                    "paid": True,
                    "placed": "2024-12-10T16:14:51.25Z",
                    "due": "2024-12-31T00:00:00Z",
                    "extra": {"vip": True, "n": [1, 2]},
                    "tags": ["a", "b"],
                    "raw": "AQI=",
                },
                {
                    "id": 2,
                    "customer": None,
                    "amount": None,
                    "ratio": None,
                    "paid": None,
                    "placed": None,
                    "due": None,
                    "extra": None,
                    "tags": None,
                    "raw": None,
                },
            ],
        )

    async def test_failed_call_reports_its_error(self) -> None:
        """
        A call that fails says so with its error and Go's zero time; the
        calls beside it still run; an empty result has no C{data}.
        """
        source = await self.source(
            [
                PgCall("broken", "SELECT * FROM no_such_table"),
                PgCall("empty", "SELECT id FROM orders WHERE id < 0"),
            ]
        )

        await source.tick()

        body = json.loads(self.events()[0]["body"])
        self.assertEqual(body["broken"]["success"], False)
        self.assertIn("no_such_table", body["broken"]["error"])
        self.assertEqual(body["broken"]["update_time"], "0001-01-01T00:00:00Z")
        self.assertNotIn("update_timestamp", body["broken"])
        self.assertEqual(body["empty"]["success"], True)
        self.assertNotIn("data", body["empty"])

    async def test_statement_timeout(self) -> None:
        """A call running past C{statementTimeoutSecs} fails; the next runs."""
        source = await self.source(
            [PgCall("slow", "SELECT pg_sleep(30)"), PgCall("one", "SELECT 1 AS v")]
        )

        await source.tick()

        body = json.loads(self.events()[0]["body"])
        self.assertEqual(body["slow"]["success"], False)
        self.assertIn("statement timeout", body["slow"]["error"])
        self.assertEqual(body["one"]["data"], [{"v": 1}])

    async def test_server_down(self) -> None:
        """
        When the server cannot be reached, each call reports the error: the
        event still tells that the source ran.
        """
        source = await self.source(
            [PgCall("one", "SELECT 1")],
            conninfo=f"host=127.0.0.1 port={self.server.port + 1} user=x "
            "connect_timeout=2",
        )

        await source.tick()

        body = json.loads(self.events()[0]["body"])
        self.assertEqual(body["one"]["success"], False)
        self.assertTrue(body["one"]["error"])

    async def test_first_run_after_one_interval(self) -> None:
        """
        Under its service the source runs first one C{intervalSeconds} after
        start, as in Go, then every interval.
        """
        source = await self.source([PgCall("one", "SELECT 1 AS v")])
        service = PgCallService(source, self.clock)
        service.startService()
        self.addCleanup(service.stopService)

        self.clock.advance(9)
        await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(self.events(), [])

        for expected in (1, 2):
            self.clock.advance(10 if expected == 2 else 1)
            for _ in range(100):
                if len(self.events()) == expected:
                    break
                await deferLater(reactor, 0.05, lambda: None)
            self.assertEqual(len(self.events()), expected)
