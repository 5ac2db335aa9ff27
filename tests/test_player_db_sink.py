"""
Tests for the player's C{db} sink: L{replayforge.player.sinks.db} and its
writer (L{replayforge.player.sinks.dbwrite}) and naming rules
(L{replayforge.player.sinks.dbschema}), on real SQLite files.

The sink's pools run their interactions synchronously here, so every
delivery is committed when C{deliver} returns.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from replayforge.player.sinks.base import (
    DELIVERED,
    Outcome,
    QueuedEvent,
    Rejected,
)
from replayforge.player.sinks.db import DbSink
from replayforge.player.sinks.dbschema import base_column, column_names, snake_case
from replayforge.player.sinks.dbwrite import DropEvent, table_from_path
from replayforge.player.sinks.timestamps import normalize_timestamp
from tests.player_support import (
    SynchronousReactor,
    call,
    make_db_sink,
    queued,
    temp_folder,
)

NOW = 1_700_000_000


class DbSinkTestCase(SynchronousTestCase):
    """A C{db} sink on a fresh file, and ways to read the file back."""

    queue_instance = ""

    def setUp(self) -> None:
        self.folder = temp_folder(self, "rf-player-db-")
        self.path = self.folder / "sink.sqlite3"
        self.reactor = SynchronousReactor()
        self.reactor.advance(NOW)
        self.next_id = 1
        self.sink = self.make_sink()

    def make_sink(self, ttl: int = 0) -> DbSink:
        return make_db_sink(
            self,
            self.reactor,
            self.path,
            ttl=ttl,
            queue_instance=self.queue_instance,
        )

    def deliver(self, *contents: str) -> list[Outcome]:
        """Deliver C{contents} as the next events of the queue."""
        events = queued(*contents, first=self.next_id)
        self.next_id += len(contents)
        return self.successResultOf(self.sink.deliver(events))

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

    def schema_names(self) -> set[str]:
        connection = sqlite3.connect(self.path)
        try:
            return {
                row[0] for row in connection.execute("SELECT name FROM sqlite_master")
            }
        finally:
            connection.close()


class DbSinkWriteTests(DbSinkTestCase):
    """Writing call objects to tables."""

    def test_upsert_by_id(self) -> None:
        """A second POST with the same id replaces the row, as in the Go player."""
        outcomes = self.deliver(
            call("POST", "/users", {"id": "u1", "name": "Ann", "city": "Oslo"}),
            call("PUT", "/rpf-db/users", {"id": "u1", "name": "Bob"}),
            call("POST", "/users", {"id": "u2", "name": "Cy"}),
        )
        self.assertEqual(outcomes, [DELIVERED] * 3)
        rows = self.rows("users")
        self.assertEqual(
            [(r["id"], r["name"]) for r in rows], [("u1", "Bob"), ("u2", "Cy")]
        )
        self.assertIsNone(rows[0]["city"])

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

    def test_schema_drift_in_batches(self) -> None:
        """
        A column keeps the type of its first non-null value while later
        batches change its values' kinds, add columns and start with nulls:
        every value is stored, nested ones as JSON text.
        """
        self.deliver(call("POST", "/drift", {"id": 1, "v": "a"}))
        self.deliver(call("POST", "/drift", {"id": 2, "v": 5, "ok": True}))
        self.deliver(
            call("POST", "/drift", {"id": 3, "v": {"k": [1, None]}, "n": None})
        )
        self.deliver(
            call("POST", "/drift", {"id": 4, "late": None}),
            call("POST", "/drift", {"id": 5, "late": 2.5, "n": "now"}),
        )
        types = self.column_types("drift")
        self.assertEqual(types["v"], "TEXT")
        self.assertEqual(types["ok"], "BOOLEAN")
        self.assertEqual(types["late"], "REAL")
        self.assertEqual(types["n"], "TEXT")
        rows = {row["id"]: row for row in self.rows("drift")}
        self.assertEqual(rows["1"]["v"], "a")
        self.assertEqual(rows["2"]["v"], "5")
        self.assertEqual(rows["2"]["ok"], 1)
        self.assertEqual(json.loads(rows["3"]["v"]), {"k": [1, None]})
        self.assertIsNone(rows["3"]["n"])
        self.assertIsNone(rows["4"]["late"])
        self.assertEqual(rows["5"]["late"], 2.5)
        self.assertEqual(rows["5"]["n"], "now")

    def test_column_first_seen_late(self) -> None:
        """A key first seen in the 1,000th event of a batch becomes a column."""
        events = [call("POST", "/late", {"id": n}) for n in range(999)]
        events.append(call("POST", "/late", {"id": 999, "extra": "x"}))
        self.assertEqual(self.deliver(*events), [DELIVERED] * 1000)
        rows = self.rows("late")
        self.assertEqual(len(rows), 1000)
        self.assertEqual(rows[-1]["extra"], "x")

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

    def test_colliding_keys_keep_every_value(self) -> None:
        """
        Keys landing on the same column each keep their value: the key spelled
        as the column keeps it, the others get a digest suffix, in any order.
        """
        body = {"userID": 1, "user_id": 2, "Name": "a", "NAME": "b", 'x"y': 3}
        body["x]y"] = 4
        self.deliver(call("POST", "/c", body))
        reordered = dict(reversed(list(body.items())))
        reordered["id"] = "second"
        self.deliver(call("POST", "/c", reordered))
        first, second = self.rows("c")
        mapping = column_names(body)
        self.assertEqual(mapping["user_id"], "user_id")
        self.assertEqual(mapping["NAME"], "name")
        self.assertEqual(mapping['x"y'], "xy")
        for key, value in body.items():
            self.assertEqual(first[mapping[key]], value, key)
            self.assertEqual(second[mapping[key]], value, key)
        self.assertEqual(len(set(mapping.values())), len(body))
        self.assertRegex(mapping["userID"], r"^user_id_[0-9a-f]{8}$")

    def test_keys_without_letters(self) -> None:
        """Keys that snake_case empties get a hex name instead of vanishing."""
        self.deliver(call("POST", "/h", {"é": 1, "!!!": 2, "": 3}))
        [row] = self.rows("h")
        self.assertEqual(row["k_c3a9"], 1)
        self.assertEqual(row["k_212121"], 2)
        self.assertEqual(row["k_"], 3)
        self.assertEqual(base_column("x" * 100)[:49], "x" * 48 + "_")

    def test_internal_column_keys_renamed(self) -> None:
        """A body's C{_rpf_id} does not overwrite ours; it is kept aside."""
        self.deliver(call("POST", "/r", {"_rpf_id": "mine"}))
        [row] = self.rows("r")
        self.assertEqual(row["_rpf_id"], 1)
        renamed = column_names(["_rpf_id"])["_rpf_id"]
        self.assertEqual(row[renamed], "mine")

    def test_sql_keywords_and_spaces(self) -> None:
        """Keys that are SQL keywords are quoted; spaces are removed."""
        self.deliver(call("POST", "/k", {"select": 1, "from": 2, "my key": 3}))
        [row] = self.rows("k")
        self.assertEqual((row["select"], row["from"], row["mykey"]), (1, 2, 3))

    def test_nested_values_as_json_text(self) -> None:
        """Objects and arrays are stored as their JSON text."""
        self.deliver(call("POST", "/t", {"tags": ["a", "b"], "meta": {"k": 1}}))
        [row] = self.rows("t")
        self.assertEqual(json.loads(row["tags"]), ["a", "b"])
        self.assertEqual(json.loads(row["meta"]), {"k": 1})

    def test_timestamp_normalized(self) -> None:
        """Every form of C{timestamp} is stored as Unix seconds."""
        stamps = {
            "s": NOW,
            "ms": NOW * 1000 + 456,
            "us": NOW * 1_000_000,
            "ns": NOW * 1_000_000_000,
            "rfc": "2023-11-14T22:13:20Z",
            "clf": "14/Nov/2023:23:13:20 +0100",
            "none": None,
        }
        self.deliver(
            *[
                call("POST", "/ts", {"id": key, "timestamp": value})
                for key, value in stamps.items()
            ]
        )
        stored = {row["id"]: row["timestamp"] for row in self.rows("ts")}
        self.assertEqual(stored, {key: NOW for key in stamps})

    def test_indexes_on_id_like_columns(self) -> None:
        """Columns named like ids, statuses or timestamps get an index."""
        self.deliver(call("POST", "/ix", {"user_id": 1, "status": "ok", "note": "n"}))
        names = self.schema_names()
        self.assertIn("idx_ix_user_id", names)
        self.assertIn("idx_ix_status", names)
        self.assertIn("idx_ix_timestamp", names)
        self.assertNotIn("idx_ix_note", names)

    def test_delete_by_id(self) -> None:
        """DELETE removes the row with the body's id; other rows stay."""
        outcomes = self.deliver(
            call("POST", "/t", {"id": "a"}),
            call("POST", "/t", {"id": "b"}),
            call("DELETE", "/t", {"id": "a"}),
            call("DELETE", "/never-written", {"id": "a"}),
        )
        self.assertEqual([row["id"] for row in self.rows("t")], ["b"])
        self.assertEqual(outcomes, [DELIVERED] * 4)

    def test_delete_without_id(self) -> None:
        """A DELETE without an id is rejected with its reason."""
        outcomes = self.deliver(
            call("POST", "/t", {"id": "a"}), call("DELETE", "/t", {})
        )
        self.assertEqual(len(self.rows("t")), 1)
        self.assertEqual(
            outcomes[1], Rejected("missing_id", "DELETE on t without an id")
        )

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


class DbSinkBadEventTests(DbSinkTestCase):
    """One bad event costs only itself, never the batch or the sink."""

    def assert_isolated(self, bad: str, reason: str, detail: str) -> None:
        """
        C{bad}, between two valid events, is rejected with C{reason} and a
        detail containing C{detail}; the valid events are stored.
        """
        outcomes = self.deliver(
            call("POST", "/kept", {"id": "before"}),
            bad,
            call("POST", "/kept", {"id": "after"}),
        )
        self.assertEqual(outcomes[0], DELIVERED)
        self.assertEqual(outcomes[2], DELIVERED)
        rejected = outcomes[1]
        assert isinstance(rejected, Rejected), rejected
        self.assertEqual(rejected.reason, reason)
        self.assertIn(detail, rejected.detail)
        self.assertEqual(
            [row["id"] for row in self.rows("kept")][-2:], ["before", "after"]
        )

    def test_sqlite_built_in_table_names(self) -> None:
        """
        Tables named like SQLite's own table-valued functions are refused,
        and the sink goes on.
        """
        for table in [
            "pragma_database_list",
            "pragma_table_list",
            "PRAGMA_foo",
            "json_each",
            "json_tree",
            "dbstat",
            "sqlite_master",
            "_rpf_queue_marks",
        ]:
            self.assert_isolated(
                call("POST", f"/{table}", {"id": "x"}), "bad_table", table
            )
        names = {name.lower() for name in self.schema_names()}
        self.assertFalse({"json_each", "dbstat", "pragma_database_list"} & names)

    def test_table_named_like_an_index(self) -> None:
        """A table named like an index the sink made is refused."""
        self.deliver(call("POST", "/test", {"id": "a"}))
        self.assertIn("idx_test_timestamp", self.schema_names())
        self.assert_isolated(
            call("POST", "/idx_test_timestamp", {"id": "x"}),
            "bad_table",
            "existing index",
        )

    def test_index_named_like_a_table(self) -> None:
        """An index whose name a user table took is skipped, not an error."""
        self.deliver(call("POST", "/idx_u_timestamp", {"id": "first"}))
        outcomes = self.deliver(call("POST", "/u", {"id": "a"}))
        self.assertEqual(outcomes, [DELIVERED])
        self.assertEqual([row["id"] for row in self.rows("u")], ["a"])

    def test_too_many_columns(self) -> None:
        """A body with more keys than SQLite allows columns is rejected alone."""
        body = {f"k{number}": number for number in range(2100)}
        self.assert_isolated(call("POST", "/kept", body), "too_many_columns", "2000")
        self.assertNotIn("k5", self.column_types("kept"))

    def test_database_refusing_a_row(self) -> None:
        """A row the database itself refuses (a constraint) is rejected alone."""
        connection = sqlite3.connect(self.path)
        connection.execute(
            "CREATE TABLE checked (id TEXT PRIMARY KEY, _rpf_last_updated_idx"
            " INTEGER, _rpf_id INTEGER, n INTEGER CHECK (n > 0))"
        )
        connection.commit()
        connection.close()
        self.assert_isolated(
            call("POST", "/checked", {"n": -1}), "db_error", "CHECK constraint"
        )

    def test_bad_table_names(self) -> None:
        """Paths that do not name a table are rejected; the rest is stored."""
        for path in ["/", "/bad name", '/t";DROP TABLE t;--', "/a/b", "/é"]:
            self.assert_isolated(call("POST", path, {"id": "x"}), "bad_table", "")
        self.assertEqual(table_from_path("/rpf-db/my-table_2"), "my-table_2")
        self.assertRaises(DropEvent, table_from_path, "/rpf-db/")

    def test_unusable_events(self) -> None:
        """Events that are not call objects, or not writes, are rejected."""
        for event, reason in [
            ("not json", "unparseable"),
            (json.dumps(["a list"]), "unparseable"),
            (call("GET", "/t", {"id": "x"}), "unsupported_method"),
            (call("POST", "/t", "[1, 2]"), "bad_body"),
            (call("POST", "/t", "[" * 100_000), "bad_body"),
        ]:
            self.assert_isolated(event, reason, "")

    def test_only_method_path_and_body_are_read(self) -> None:
        """
        The sink stores calls without replaying them: headers and params it
        never uses do not refuse a call, while a method, path or body that
        is not what the specification says still does.
        """
        stored = self.deliver(
            call("POST", "/t", {"id": "h"}, headers={"bad name": "x"}),
            call("POST", "/t", {"id": "p"}, params={"q": 1}),
            json.dumps(
                {
                    "method": "PUT",
                    "path": "/t",
                    "body": base64.b64encode(b'{"id": "b64"}').decode(),
                    "bodyEncoding": "base64",
                }
            ),
        )
        self.assertEqual(stored, [DELIVERED] * 3)
        self.assertEqual(sorted(row["id"] for row in self.rows("t")), ["b64", "h", "p"])
        for event in [
            call("POST BAD", "/t", {"id": "x"}),
            json.dumps({"method": "POST", "path": 3, "body": "{}"}),
            json.dumps(
                {
                    "method": "POST",
                    "path": "/t",
                    "body": "e30=",
                    "bodyEncoding": "rot13",
                }
            ),
            json.dumps({"method": "POST", "path": "/t", "body": {"id": "x"}}),
        ]:
            self.assert_isolated(event, "unparseable", "")

    def test_storage_failure_fails_the_batch(self) -> None:
        """
        When the storage itself refuses writes (read-only, full), the whole
        delivery fails, nothing of it stays, and delivering it again works.
        """
        self.deliver(call("POST", "/t", {"id": "before"}))
        [connection] = self.sink._pool.connections.values()
        events = queued(
            call("POST", "/fresh", {"id": "a", "v": 1}),
            call("POST", "/t", {}),
            first=100,
        )
        for breaking, mending in [
            ("PRAGMA query_only = 1", "PRAGMA query_only = 0"),
            ("PRAGMA max_page_count = 1", "PRAGMA max_page_count = 1000000"),
        ]:
            connection.execute(breaking)
            failure = self.failureResultOf(self.sink.deliver(events))
            self.assertIsInstance(failure.value, sqlite3.OperationalError)
            self.assertEqual(self.column_types("fresh"), {})
            connection.execute(mending)
        self.assertEqual(
            self.successResultOf(self.sink.deliver(events)), [DELIVERED] * 2
        )
        self.assertEqual([row["v"] for row in self.rows("fresh")], [1])
        self.assertEqual(len(self.rows("t")), 2)


class DbSinkQueueMarkTests(DbSinkTestCase):
    """With a queue instance, a batch applied once is not applied again."""

    queue_instance = "queue-a"

    def test_batch_offered_again_is_not_applied_twice(self) -> None:
        """
        Events with ids already applied (a crash between the sink's commit
        and the queue's) are answered delivered without a second write.
        """
        events = queued(call("POST", "/t", {"v": 1}), call("POST", "/t", {"v": 2}))
        self.successResultOf(self.sink.deliver(events))
        again = [*events, QueuedEvent(3, call("POST", "/t", {"v": 3}))]
        self.assertEqual(
            self.successResultOf(self.sink.deliver(again)), [DELIVERED] * 3
        )
        self.assertEqual([row["v"] for row in self.rows("t")], [1, 2, 3])

    def test_mark_survives_a_restart(self) -> None:
        """The mark is in the database: a new sink on the file respects it."""
        self.successResultOf(self.sink.deliver(queued(call("POST", "/t", {"v": 1}))))
        self.successResultOf(self.sink.stop())
        self.sink = self.make_sink()
        self.successResultOf(self.sink.deliver(queued(call("POST", "/t", {"v": 1}))))
        self.assertEqual(len(self.rows("t")), 1)

    def test_other_queue_file_ignores_the_mark(self) -> None:
        """Ids of a queue file made afresh are not judged by the old mark."""
        self.successResultOf(self.sink.deliver(queued(call("POST", "/t", {"v": 1}))))
        self.successResultOf(self.sink.stop())
        self.queue_instance = "queue-b"
        self.sink = self.make_sink()
        self.successResultOf(self.sink.deliver(queued(call("POST", "/t", {"v": 2}))))
        self.assertEqual([row["v"] for row in self.rows("t")], [1, 2])
        connection = sqlite3.connect(self.path)
        self.addCleanup(connection.close)
        marks = connection.execute("SELECT * FROM _rpf_queue_marks").fetchall()
        self.assertEqual(marks, [("store", "queue-b", 1)])


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
