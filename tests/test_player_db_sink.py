"""
Tests for the player's C{db} sink: L{replayforge.player.sinks.db} and its
writer, reader and query API, on real SQLite files.

The sink's adbapi pool runs its interactions synchronously here (a thread
pool that calls at once, a reactor that calls back at once), so every
delivery is committed when C{deliver} returns.
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from replayforge.player.config import PlayerSinkConfig
from replayforge.player.sinks.db import DbSink
from replayforge.player.sinks.dbwrite import DropEvent, snake_case, table_from_path
from replayforge.player.sinks.settings import DbSinkSettings
from replayforge.player.sinks.timestamps import normalize_timestamp
from replayforge.store import open_pool

NOW = 1_700_000_000


class SynchronousThreadPool:
    """A thread pool that runs each call at once, on the calling thread."""

    def callInThreadWithCallback(
        self, on_result: Any, function: Any, *args: Any, **kwargs: Any
    ) -> None:
        try:
            result = function(*args, **kwargs)
        except Exception:
            on_result(False, Failure())
        else:
            on_result(True, result)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class SynchronousReactor(Clock):
    """A clock on which adbapi's thread hand-offs happen at once."""

    def callWhenRunning(self, function: Any, *args: Any, **kwargs: Any) -> None:
        return None

    def callFromThread(self, function: Any, *args: Any, **kwargs: Any) -> None:
        function(*args, **kwargs)


def call(method: str, path: str, body: Any = None, **extra: Any) -> str:
    """Encode a call object whose body is C{body} as JSON (or as given)."""
    text = body if isinstance(body, str) or body is None else json.dumps(body)
    document = {"method": method, "path": path, **extra}
    if text is not None:
        document["body"] = text
    return json.dumps(document)


class DbSinkTests(SynchronousTestCase):
    """Writing call objects to tables, and listing them."""

    def setUp(self) -> None:
        folder = Path(tempfile.mkdtemp(prefix="rf-player-db-"))
        self.addCleanup(shutil.rmtree, folder, True)
        self.path = folder / "sink.sqlite3"
        self.reactor = SynchronousReactor()
        self.reactor.advance(NOW)
        self.sink = self.make_sink()

    def make_sink(self, ttl: int = 0) -> DbSink:
        config = PlayerSinkConfig(
            name="store",
            id="store",
            type="db",
            settings=DbSinkSettings(
                database=self.path, listen=None, static_dir=None, row_ttl_seconds=ttl
            ),
            metadata={},
            key_path="sinks[0]",
        )
        self.pool = open_pool(self.path, self.reactor)
        self.pool.threadpool = SynchronousThreadPool()
        sink = DbSink(config, self.reactor, pool=self.pool)
        self.successResultOf(sink.start())
        self.addCleanup(sink.stop)
        return sink

    def deliver(self, *events: str) -> None:
        self.successResultOf(self.sink.deliver(list(events)))

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Read C{table} with a separate connection, as another reader would."""
        connection = sqlite3.connect(self.path)
        connection.row_factory = sqlite3.Row
        try:
            rows = connection.execute(
                f'SELECT * FROM "{table}" ORDER BY _rpf_id'
            ).fetchall()
        finally:
            connection.close()
        return [dict(row) for row in rows]

    def column_types(self, table: str) -> dict[str, str]:
        connection = sqlite3.connect(self.path)
        try:
            info = connection.execute(f'PRAGMA table_info("{table}")').fetchall()
        finally:
            connection.close()
        return {row[1]: row[2] for row in info}

    def list_rows(self, table: str) -> tuple[int, Any, Any]:
        """GET C{/rpf-db/<table>} through the sink's own API."""
        stub = StubTreq(self.sink.resource())
        response = self.successResultOf(stub.get(f"http://sink/rpf-db/{table}"))
        body = self.successResultOf(stub.json_content(response))
        return response.code, body, response.headers

    def test_upsert_by_id(self) -> None:
        """A second POST with the same id replaces the row, as in the Go player."""
        self.deliver(
            call("POST", "/users", {"id": "u1", "name": "Ann", "city": "Oslo"}),
            call("PUT", "/rpf-db/users", {"id": "u1", "name": "Bob"}),
            call("POST", "/users", {"id": "u2", "name": "Cy"}),
        )
        rows = self.rows("users")
        self.assertEqual(
            [(r["id"], r["name"]) for r in rows], [("u1", "Bob"), ("u2", "Cy")]
        )
        self.assertIsNone(rows[0]["city"])
        self.assertEqual(self.sink.stats.received, 3)
        self.assertEqual(self.sink.stats.delivered, 3)

    def test_base_columns(self) -> None:
        """Rows carry a file-wide C{_rpf_id} sequence and the time of writing."""
        self.deliver(call("POST", "/a", {"x": 1}), call("POST", "/b", {"x": 2}))
        self.reactor.advance(5)
        self.deliver(call("POST", "/a", {"x": 3}))
        a_rows, b_rows = self.rows("a"), self.rows("b")
        self.assertEqual([row["_rpf_id"] for row in a_rows], [1, 3])
        self.assertEqual([row["_rpf_id"] for row in b_rows], [2])
        self.assertEqual([row["id"] for row in a_rows], ["1", "3"])
        self.assertEqual(
            [row["_rpf_last_updated_idx"] for row in a_rows], [NOW, NOW + 5]
        )
        types = self.column_types("a")
        self.assertEqual(types["id"], "TEXT")
        self.assertEqual(types["_rpf_id"], "INTEGER")

    def test_columns_added_with_first_type(self) -> None:
        """New keys become columns typed by their first non-null value."""
        self.deliver(call("POST", "/t", {"id": 1, "name": "n"}))
        self.deliver(
            call(
                "POST",
                "/t",
                {"id": 2, "age": 31, "score": 1.5, "active": True, "note": None},
            )
        )
        types = self.column_types("t")
        self.assertEqual(types["age"], "INTEGER")
        self.assertEqual(types["score"], "REAL")
        self.assertEqual(types["active"], "BOOLEAN")
        self.assertNotIn("note", types)
        self.assertEqual(self.rows("t")[1]["active"], 1)
        self.assertEqual([row["id"] for row in self.rows("t")], ["1", "2"])

    def test_snake_case_columns(self) -> None:
        """JSON keys are snake_cased the way the Go player did it."""
        self.deliver(
            call(
                "POST",
                "/t",
                {"createdAt": "x", "userID": "y", "first-name": "z", "HTTPStatus": 2},
            )
        )
        columns = set(self.column_types("t"))
        self.assertTrue(
            {"created_at", "user_id", "firstname", "httpstatus"} <= columns, columns
        )
        self.assertEqual(snake_case("already_snake"), "already_snake")

    def test_nested_values_as_json_text(self) -> None:
        """Objects and arrays are stored as their JSON text."""
        self.deliver(call("POST", "/t", {"tags": ["a", "b"], "meta": {"k": 1}}))
        [row] = self.rows("t")
        self.assertEqual(json.loads(row["tags"]), ["a", "b"])
        self.assertEqual(json.loads(row["meta"]), {"k": 1})

    def test_timestamp_normalized(self) -> None:
        """A C{timestamp} in milliseconds or RFC 3339 is stored in seconds."""
        self.deliver(
            call("POST", "/t", {"id": "ms", "timestamp": 1_700_000_123_456}),
            call("POST", "/t", {"id": "text", "timestamp": "2023-11-14T22:13:20Z"}),
            call("POST", "/t", {"id": "none"}),
        )
        stamps = {row["id"]: row["timestamp"] for row in self.rows("t")}
        self.assertEqual(stamps, {"ms": 1_700_000_123, "text": NOW, "none": NOW})

    def test_delete_by_id(self) -> None:
        """DELETE removes the row with the body's id; other rows stay."""
        self.deliver(
            call("POST", "/t", {"id": "a"}),
            call("POST", "/t", {"id": "b"}),
            call("DELETE", "/t", {"id": "a"}),
            call("DELETE", "/never-written", {"id": "a"}),
        )
        self.assertEqual([row["id"] for row in self.rows("t")], ["b"])
        self.assertEqual(self.sink.stats.delivered, 4)

    def test_delete_without_id(self) -> None:
        """A DELETE without an id is dropped and counted."""
        self.deliver(call("POST", "/t", {"id": "a"}), call("DELETE", "/t", {}))
        self.assertEqual(len(self.rows("t")), 1)
        self.assertEqual(self.sink.stats.dropped["missing_id"], 1)

    def test_bad_table_names(self) -> None:
        """
        Paths that do not name a table are dropped and counted; the valid
        events of the same batch are stored.
        """
        bad = ["/", "/bad name", '/t";DROP TABLE t;--', "/a/b", "/sqlite_master", "/é"]
        self.deliver(
            call("POST", "/t", {"id": "kept"}),
            *[call("POST", path, {"id": "x"}) for path in bad],
        )
        self.assertEqual([row["id"] for row in self.rows("t")], ["kept"])
        self.assertEqual(self.sink.stats.dropped["bad_table"], len(bad))
        self.assertEqual(table_from_path("/rpf-db/my-table_2"), "my-table_2")
        self.assertRaises(DropEvent, table_from_path, "/rpf-db/")

    def test_unusable_events(self) -> None:
        """Events that are not call objects, or not writes, are counted."""
        self.deliver(
            "not json",
            json.dumps(["a list"]),
            call("GET", "/t", {"id": "x"}),
            call("POST", "/t", "[1, 2]"),
            call("POST", "/t", {"id": "ok"}),
        )
        dropped = self.sink.stats.dropped
        self.assertEqual(dropped["unparseable"], 2)
        self.assertEqual(dropped["unsupported_method"], 1)
        self.assertEqual(dropped["bad_body"], 1)
        self.assertEqual([row["id"] for row in self.rows("t")], ["ok"])

    def test_base64_body(self) -> None:
        """A base64 body is decoded before it is read as JSON."""
        body = base64.b64encode(json.dumps({"id": "b64"}).encode()).decode()
        self.deliver(call("POST", "/t", body, bodyEncoding="base64"))
        self.assertEqual(self.rows("t")[0]["id"], "b64")

    def test_keys_cannot_inject(self) -> None:
        """Keys built to break out of an identifier become plain column names."""
        self.deliver(
            call("POST", "/t", {"id": "a", 'x" TEXT); DROP TABLE t; --': "v"}),
        )
        self.assertIn("x_textdroptablet", self.column_types("t"))
        self.assertEqual(len(self.rows("t")), 1)

    def test_failed_batch_commits_nothing(self) -> None:
        """
        When the database itself refuses a write, the whole delivery fails,
        nothing of it stays, and delivering it again works.
        """
        self.deliver(call("POST", "/t", {"id": "before"}))
        [connection] = self.pool.connections.values()
        connection.execute("PRAGMA query_only = 1")
        events = [call("POST", "/fresh", {"id": "a", "v": 1}), call("POST", "/t", {})]
        failure = self.failureResultOf(self.sink.deliver(events))
        self.assertIsInstance(failure.value, sqlite3.OperationalError)
        self.assertEqual(self.sink.stats.failures, 1)
        self.assertEqual(self.sink.stats.delivered, 1)
        self.assertEqual(self.column_types("fresh"), {})

        connection.execute("PRAGMA query_only = 0")
        self.deliver(*events)
        self.assertEqual([row["v"] for row in self.rows("fresh")], [1])
        self.assertEqual(len(self.rows("t")), 2)

    def test_go_era_table(self) -> None:
        """
        A table written by the Go player is adopted: the C{_rpf_id}
        sequence goes on after its highest value.
        """
        self.successResultOf(self.sink.stop())
        connection = sqlite3.connect(self.path)
        connection.execute(
            "CREATE TABLE legacy (id TEXT PRIMARY KEY,"
            " _rpf_last_updated_idx INTEGER, _rpf_id INTEGER, name TEXT)"
        )
        connection.execute("INSERT INTO legacy VALUES ('old', 1, 41, 'kept')")
        connection.commit()
        connection.close()
        self.sink = self.make_sink()
        self.deliver(call("POST", "/legacy", {"id": "new", "name": "n"}))
        self.assertEqual(
            [(row["id"], row["_rpf_id"]) for row in self.rows("legacy")],
            [("old", 41), ("new", 42)],
        )

    def test_list_rows(self) -> None:
        """C{GET /rpf-db/<table>} answers the rows as JSON objects."""
        self.deliver(
            call("POST", "/users", {"id": "u1", "name": "Ann"}),
            call("POST", "/users", {"id": "u2", "name": "Bob", "tags": ["x"]}),
        )
        code, body, headers = self.list_rows("users")
        self.assertEqual(code, 200)
        self.assertEqual(
            [(row["id"], row["name"]) for row in body], [("u1", "Ann"), ("u2", "Bob")]
        )
        self.assertEqual(json.loads(body[1]["tags"]), ["x"])
        self.assertEqual(body[0]["_rpf_last_updated_idx"], NOW)
        self.assertEqual(headers.getRawHeaders(b"Content-Type"), [b"application/json"])

    def test_list_unknown_table(self) -> None:
        """An unknown or invalid table name answers 404 with a JSON message."""
        self.deliver(call("POST", "/users", {"id": "u1"}))
        for table in ["nope", "sqlite_master", 'users"--', "users%20x"]:
            code, body, _ = self.list_rows(table)
            self.assertEqual(code, 404, table)
            self.assertIn("no table named", body["error"])
        self.assertEqual(len(self.rows("users")), 1)

    def test_row_ttl(self) -> None:
        """With C{row_ttl_sec}, rows not written for that long are removed."""
        self.successResultOf(self.sink.stop())
        self.sink = self.make_sink(ttl=30)
        self.deliver(call("POST", "/t", {"id": "old"}))
        self.reactor.advance(20)
        self.deliver(call("POST", "/t", {"id": "recent"}))
        self.reactor.advance(30)
        self.assertEqual([row["id"] for row in self.rows("t")], ["recent"])
        self.assertEqual(self.sink.stats.expired, 1)


class TimestampTests(SynchronousTestCase):
    """L{normalize_timestamp}: every unit and format to Unix seconds."""

    def test_units(self) -> None:
        """Seconds, milliseconds, microseconds and nanoseconds."""
        for value in [NOW, NOW * 1000, NOW * 1_000_000, NOW * 1_000_000_000]:
            self.assertEqual(normalize_timestamp(value, 0), NOW, value)
        self.assertEqual(normalize_timestamp(NOW + 0.75, 0), NOW)
        self.assertEqual(normalize_timestamp(str(NOW * 1000), 0), NOW)

    def test_text_formats(self) -> None:
        """RFC 3339, the Go layouts and the common log format."""
        for text in [
            "2023-11-14T22:13:20Z",
            "2023-11-14T23:13:20.5+01:00",
            "2023-11-14 22:13:20",
            "14/Nov/2023:23:13:20 +0100",
        ]:
            self.assertEqual(normalize_timestamp(text, 0), NOW, text)

    def test_not_a_time(self) -> None:
        """Anything else is the time of writing."""
        for value in [None, True, "yesterday", {"a": 1}, float("nan"), ""]:
            self.assertEqual(normalize_timestamp(value, 7), 7, value)
