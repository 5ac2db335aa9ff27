"""
Tests for the C{db} sink's query API, L{replayforge.player.sinks.dbapi},
through L{treq.testing.StubTreq} against the real Klein resource, reading a
real SQLite file through the sink's read-only pool.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any
from urllib.parse import quote, urlencode

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from replayforge.player.sinks.dbfilters import MAX_ROW_LIMIT
from tests.player_support import (
    SynchronousReactor,
    call,
    make_db_sink,
    queued,
    temp_folder,
)

NOW = 1_700_000_000

# Fragments a caller might slip into any parameter to run SQL of its own.
SQL_FRAGMENTS = [
    "id; DROP TABLE users; --",
    'id" OR "1"="1',
    "id) OR (1=1",
    "1=1 OR id",
    "' OR '1'='1",
    "id UNION SELECT * FROM sqlite_master",
    "(SELECT name FROM sqlite_master)",
    "id/**/OR/**/1",
    "\x00id",
]


class DbQueryAPITests(SynchronousTestCase):
    """The routes of the query API, as a client sees them."""

    def setUp(self) -> None:
        folder = temp_folder(self, "rf-player-dbapi-")
        self.path = folder / "sink.sqlite3"
        self.static = folder / "static"
        self.static.mkdir()
        (self.static / "index.html").write_text("<h1>home</h1>")
        (self.static / "app.js").write_text("console.log(1)")
        (folder / "secret.txt").write_text("do not serve")
        self.reactor = SynchronousReactor()
        self.reactor.advance(NOW)
        self.sink = make_db_sink(
            self, self.reactor, self.path, static_dir=self.static, queue_instance="q"
        )
        self.stub = StubTreq(self.sink.resource())
        self.next_id = 1
        self.deliver(
            call(
                "POST", "/users", {"id": "d1", "name": "Ann", "age": 31, "score": 1.5}
            ),
            call("POST", "/users", {"id": "d2", "name": "Bob", "age": 25}),
            call("POST", "/users", {"id": "d3", "name": "Ann%_x", "age": 40}),
        )

    def deliver(self, *contents: str) -> None:
        events = queued(*contents, first=self.next_id)
        self.next_id += len(contents)
        self.successResultOf(self.sink.deliver(events))

    def get(self, path: str) -> tuple[int, Any, Any]:
        response = self.successResultOf(self.stub.get("http://sink" + path))
        body = self.successResultOf(self.stub.content(response))
        try:
            document = json.loads(body)
        except ValueError:
            document = body
        return response.code, document, response.headers

    def rows(self, table: str = "users", **params: str) -> tuple[int, Any]:
        query = "?" + urlencode(params) if params else ""
        code, document, _ = self.get(f"/rpf-db/{quote(table, safe='')}{query}")
        return code, document

    def ids(self, **params: str) -> list[str]:
        code, document = self.rows(**params)
        self.assertEqual(code, 200, document)
        return [row["id"] for row in document]

    def assert_intact(self) -> None:
        connection = sqlite3.connect(self.path)
        try:
            count = connection.execute("SELECT COUNT(*) FROM users").fetchone()[0]
        finally:
            connection.close()
        self.assertEqual(count, 3)

    def test_rows_and_query_header(self) -> None:
        """Both row routes answer every row, in write order, with the SQL used."""
        code, document, headers = self.get("/rpf-db/users")
        self.assertEqual(code, 200)
        self.assertEqual([row["id"] for row in document], ["d1", "d2", "d3"])
        self.assertEqual(document[0]["score"], 1.5)
        [sql] = headers.getRawHeaders(b"X-SQL-Query")
        self.assertIn(b'ORDER BY "_rpf_id" ASC LIMIT ?', sql)
        code, again, _ = self.get("/query-table/users")
        self.assertEqual((code, again), (200, document))

    def test_equality_filter(self) -> None:
        """C{col=v} keeps the rows whose column equals v."""
        self.assertEqual(self.ids(id="d1"), ["d1"])
        self.assertEqual(self.ids(name="Ann"), ["d1"])
        self.assertEqual(self.ids(age="25"), ["d2"])
        self.assertEqual(self.ids(name="Ann", age="40"), [])
        self.assertEqual(self.ids(NAME="Bob"), ["d2"])

    def test_contains_filter(self) -> None:
        """C{col_contains=v} matches substrings; % and _ are plain characters."""
        self.assertEqual(self.ids(name_contains="nn"), ["d1", "d3"])
        self.assertEqual(self.ids(name_contains="%_"), ["d3"])
        self.assertEqual(self.ids(name_contains="_"), ["d3"])

    def test_comparison_filters(self) -> None:
        """C{_gt} and C{_lt} compare numbers as numbers."""
        self.assertEqual(self.ids(age_gt="30"), ["d1", "d3"])
        self.assertEqual(self.ids(age_lt="31"), ["d2"])
        self.assertEqual(self.ids(age_gt="9"), ["d1", "d2", "d3"])
        self.assertEqual(self.ids(age_gt="26", age_lt="35"), ["d1"])

    def test_order_and_limit(self) -> None:
        """C{order} sorts by a column either way; C{limit} caps the rows."""
        self.assertEqual(self.ids(order="age"), ["d2", "d1", "d3"])
        self.assertEqual(self.ids(order="age:desc"), ["d3", "d1", "d2"])
        self.assertEqual(self.ids(order="age:ASC", limit="1"), ["d2"])
        self.assertEqual(self.ids(limit="2"), ["d1", "d2"])
        self.assertEqual(self.ids(limit=str(MAX_ROW_LIMIT)), ["d1", "d2", "d3"])

    def test_bad_parameters_named(self) -> None:
        """Unknown, repeated or unusable parameters answer 400 naming them."""
        for query, named in [
            ("nope=1", "nope"),
            ("nope_gt=1", "nope_gt"),
            ("id=d1&id=d2", "id"),
            ("limit=100000", "limit"),
            ("limit=0", "limit"),
            ("limit=-1", "limit"),
            ("limit=1e3", "limit"),
            ("limit=", "limit"),
            ("order=nope", "order"),
            ("order=age:sideways", "order"),
        ]:
            code, document, _ = self.get(f"/rpf-db/users?{query}")
            self.assertEqual(code, 400, query)
            self.assertTrue(document["error"].startswith(f"{named}: "), document)
        self.assert_intact()

    def test_sql_fragments_in_every_parameter(self) -> None:
        """
        SQL slipped into a filter name, a value, C{order} or C{limit} never
        runs: names answer 400, values are only compared; the data stays.
        """
        for fragment in SQL_FRAGMENTS:
            for params in [
                {fragment: "1"},
                {fragment + "_contains": "1"},
                {"order": fragment},
                {"order": "id:" + fragment},
                {"limit": fragment},
                {"limit": "1 OFFSET 1"},
            ]:
                code, document = self.rows(**params)
                self.assertEqual(code, 400, (params, document))
            for params in [
                {"id": fragment},
                {"name_contains": fragment},
                {"age_gt": fragment},
                {"age_lt": fragment},
            ]:
                code, document = self.rows(**params)
                self.assertEqual(code, 200, (params, document))
                self.assertLessEqual(len(document), 3)
                self.assertTrue(all(set(row) >= {"id", "name"} for row in document))
        self.assert_intact()

    def test_sql_fragments_in_paths(self) -> None:
        """Table and column names in the path must exist, or answer 404."""
        for fragment in [*SQL_FRAGMENTS, "users;", 'users"', "users --"]:
            encoded = quote(fragment, safe="")
            for path in [
                f"/rpf-db/{encoded}",
                f"/query-table/{encoded}",
                f"/columns/{encoded}",
                f"/find/{encoded}/d1",
                f"/distinct-values/{encoded}/name",
                f"/distinct-values/users/{encoded}",
            ]:
                code, _, _ = self.get(path)
                self.assertEqual(code, 404, path)
        self.assert_intact()

    def test_sqlite_internals_hidden(self) -> None:
        """SQLite's own tables and functions, and ours, are not tables here."""
        for table in [
            "pragma_database_list",
            "pragma_table_list",
            "pragma_compile_options",
            "pragma_function_list",
            "dbstat",
            "json_each",
            "sqlite_master",
            "sqlite_schema",
            "_rpf_queue_marks",
        ]:
            for path in [
                f"/rpf-db/{table}",
                f"/columns/{table}",
                f"/find/{table}/1",
                f"/distinct-values/{table}/name",
            ]:
                code, document, _ = self.get(path)
                self.assertEqual(code, 404, path)
                self.assertNotIn(str(self.path), json.dumps(document))
            code, _, _ = self.get(
                f"/time-analytics/?table={table}&start_time=0&stop_time=1&range=1s"
            )
            self.assertEqual(code, 400)
        code, tables, _ = self.get("/list")
        self.assertEqual(tables, ["users"])
        code, everything, _ = self.get("/all-columns/")
        self.assertEqual(list(everything), ["users"])

    def test_find(self) -> None:
        """C{find/<table>/<id>} answers one row, or 404."""
        code, row, _ = self.get("/find/users/d2")
        self.assertEqual((code, row["name"]), (200, "Bob"))
        code, document, _ = self.get("/find/users/nobody")
        self.assertEqual((code, document), (404, {"error": "Record not found"}))

    def test_columns(self) -> None:
        """C{columns/<table>} and C{all-columns/} list column names in order."""
        code, columns, _ = self.get("/columns/users")
        self.assertEqual(code, 200)
        self.assertEqual(columns[:3], ["id", "_rpf_last_updated_idx", "_rpf_id"])
        self.assertIn("score", columns)
        code, everything, _ = self.get("/all-columns")
        self.assertEqual(everything, {"users": columns})
        code, _, _ = self.get("/columns/")
        self.assertEqual(code, 400)

    def test_distinct_values(self) -> None:
        """C{distinct-values/<table>/<column>} lists each value once."""
        self.deliver(call("POST", "/users", {"id": "d4", "name": "Ann"}))
        code, values, _ = self.get("/distinct-values/users/name")
        self.assertEqual(code, 200)
        self.assertEqual(sorted(values), ["Ann", "Ann%_x", "Bob"])

    def test_time_analytics(self) -> None:
        """
        Rows are counted per slot of their last write, every slot listed,
        as the Go player answered; per status when the table has one.
        """
        self.reactor.advance(60)
        self.deliver(call("POST", "/jobs", {"status": "ok"}))
        self.deliver(call("POST", "/jobs", {"status": "failed"}))
        self.reactor.advance(150)
        self.deliver(call("POST", "/jobs", {"status": "ok"}))
        start = NOW + 60
        query = f"table=jobs&start_time={start}&stop_time={start + 299}&range=2m"
        code, slots, _ = self.get(f"/time-analytics/?{query}")
        self.assertEqual(code, 200, slots)
        self.assertEqual(
            slots,
            [
                {"count": 1, "status": "failed", "time_bucket": start},
                {"count": 1, "status": "ok", "time_bucket": start},
                {"count": 1, "status": "ok", "time_bucket": start + 120},
                {"count": 0, "status": "unknown", "time_bucket": start + 240},
            ],
        )
        code, slots, _ = self.get(
            f"/time-analytics?table=users&start_time={NOW}&stop_time={NOW + 1}"
            "&range_time=1s"
        )
        self.assertEqual(
            slots,
            [{"count": 3, "time_bucket": NOW}, {"count": 0, "time_bucket": NOW + 1}],
        )

    def test_time_analytics_parameters(self) -> None:
        """Missing or unusable time-analytics parameters answer 400 naming them."""
        for query, named in [
            ("start_time=0&stop_time=1&range=1s", "table"),
            ("table=users&stop_time=1&range=1s", "start_time"),
            ("table=users&start_time=0&range=1s", "stop_time"),
            ("table=users&start_time=0&stop_time=1", "range"),
            ("table=users&start_time=x&stop_time=1&range=1s", "start_time"),
            ("table=users&start_time=5&stop_time=1&range=1s", "stop_time"),
            ("table=users&start_time=0&stop_time=1&range=soon", "range"),
            ("table=users&start_time=0&stop_time=100000&range=1s", "range"),
            ("table=nope&start_time=0&stop_time=1&range=1s", "table"),
            ("table=users;--&start_time=0&stop_time=1&range=1s", "table"),
            ("table=users&start_time=0&stop_time=1&range=1s&x=1", "x"),
        ]:
            code, document, _ = self.get(f"/time-analytics/?{query}")
            self.assertEqual(code, 400, query)
            self.assertTrue(document["error"].startswith(f"{named}: "), document)
        self.assert_intact()

    def test_static_files_stay_inside(self) -> None:
        """
        C{static/} serves nothing outside C{static_dir} (files inside are
        served over a real connection in C{test_player_api}).
        """
        for path in [
            "/static/../secret.txt",
            "/static/%2e%2e/secret.txt",
            "/static/..%2fsecret.txt",
            "/static/%2Fetc%2Fpasswd",
            "/static//etc/passwd",
            "/static/nope.txt",
        ]:
            code, body, _ = self.get(path)
            self.assertEqual(code, 404, path)
            self.assertNotIn(b"do not serve", body)

    def test_write_methods_refused(self) -> None:
        """The query API reads only: other methods are not allowed."""
        response = self.successResultOf(self.stub.post("http://sink/rpf-db/users"))
        self.assertEqual(response.code, 405)
        self.assert_intact()
