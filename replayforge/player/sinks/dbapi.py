"""
The HTTP query API of a C{db} sink.

It is served under C{/<sink id>/} on the sink's own listener, and through
the player's exposed port at the same path.  Routes, as the Go player had
them: C{rpf-db/<table>} and C{query-table/<table>} (rows, filtered as
L{replayforge.player.sinks.dbfilters} says), C{find/<table>/<id>},
C{list}, C{columns/<table>}, C{all-columns/},
C{distinct-values/<table>/<column>}, C{time-analytics/} and C{static/}
(files of C{static_dir}).

Reads go through the sink's read-only pool, one short statement each, so
they never hold the writer back.  An unknown table or column in the path
answers 404, a query parameter that does not fit 400; both with a JSON
C{{"error": ...}} naming what was wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from klein import Klein
from twisted.enterprise import adbapi
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.pages import notFound
from twisted.web.resource import IResource

from replayforge.player.sinks import dbquery
from replayforge.player.sinks.dbfilters import BadParameter, parse_time_analytics
from replayforge.player.static import static_file
from replayforge.store import run_interaction
from replayforge.web import json_body


def query_args(request: IRequest) -> dict[str, list[str]]:
    """
    Return the request's query parameters as text.

    Only C{&} separates parameters (twisted.web also splits at C{;}, and
    drops an item without C{=}; here C{;} belongs to the value, and an item
    without a value is a parameter with an empty one).

    @raise BadParameter: when a name or value is not UTF-8.
    """
    query = request.uri.partition(b"?")[2]
    decoded: dict[str, list[str]] = {}
    for raw_name, raw_value in parse_qsl(query, keep_blank_values=True):
        name = raw_name.decode("utf-8", "replace")
        try:
            value = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadParameter(name, "value is not UTF-8") from None
        decoded.setdefault(name, []).append(value)
    return decoded


class DbQueryAPI:
    """The Klein application answering queries on one sink's database."""

    app = Klein()

    def __init__(self, pool: adbapi.ConnectionPool, static_dir: Path | None) -> None:
        self._pool = pool
        self._static_dir = static_dir

    @app.handle_errors(dbquery.NoSuchTable, dbquery.NoSuchColumn)
    def _not_found(self, request: IRequest, failure: Failure) -> bytes:
        return json_body(request, 404, {"error": str(failure.value)})

    @app.handle_errors(BadParameter)
    def _bad_parameter(self, request: IRequest, failure: Failure) -> bytes:
        return json_body(request, 400, {"error": str(failure.value)})

    async def _rows(self, request: IRequest, table: str) -> bytes:
        result = await run_interaction(
            self._pool, dbquery.query_rows, table, query_args(request)
        )
        request.setHeader(b"X-SQL-Query", result.sql.encode("utf-8"))
        return json_body(request, 200, result.rows)

    @app.route("/rpf-db/<table>", methods=["GET"])
    async def rpf_db(self, request: IRequest, table: str) -> bytes:
        """List the rows of C{table} that match the query's filters."""
        return await self._rows(request, table)

    @app.route("/query-table/<table>", methods=["GET"])
    async def query_table(self, request: IRequest, table: str) -> bytes:
        """The same as C{rpf-db/<table>}."""
        return await self._rows(request, table)

    @app.route("/find/<table>/<row_id>", methods=["GET"])
    async def find(self, request: IRequest, table: str, row_id: str) -> bytes:
        """Answer the row of C{table} whose C{id} is C{row_id}."""
        row = await run_interaction(self._pool, dbquery.find_row, table, row_id)
        if row is None:
            return json_body(request, 404, {"error": "Record not found"})
        return json_body(request, 200, row)

    @app.route("/list", methods=["GET"])
    async def list_tables(self, request: IRequest) -> bytes:
        """Answer the names of the tables."""
        tables = await run_interaction(self._pool, dbquery.list_tables)
        return json_body(request, 200, tables)

    @app.route("/columns/", methods=["GET"])
    def columns_without_table(self, request: IRequest) -> bytes:
        """Refuse a column listing without a table."""
        return json_body(request, 400, {"error": "Table name is required"})

    @app.route("/columns/<table>", methods=["GET"])
    async def columns(self, request: IRequest, table: str) -> bytes:
        """Answer the column names of C{table}."""
        names = await run_interaction(self._pool, dbquery.list_columns, table)
        return json_body(request, 200, names)

    @app.route("/all-columns/", methods=["GET"])
    @app.route("/all-columns", methods=["GET"])
    async def all_columns(self, request: IRequest) -> bytes:
        """Answer every table with its column names."""
        tables = await run_interaction(self._pool, dbquery.all_columns)
        return json_body(request, 200, tables)

    @app.route("/distinct-values/<table>/<column>", methods=["GET"])
    async def distinct_values(
        self, request: IRequest, table: str, column: str
    ) -> bytes:
        """Answer the distinct values of C{column} in C{table}."""
        values = await run_interaction(
            self._pool, dbquery.distinct_values, table, column
        )
        return json_body(request, 200, values)

    @app.route("/time-analytics/", methods=["GET"])
    @app.route("/time-analytics", methods=["GET"])
    async def time_analytics(self, request: IRequest) -> bytes:
        """Count rows per time slot (and per C{status}, if the table has one)."""
        query = parse_time_analytics(query_args(request))
        counts: list[dict[str, Any]] = await run_interaction(
            self._pool,
            dbquery.time_analytics,
            query.table,
            query.start,
            query.stop,
            query.step,
        )
        return json_body(request, 200, counts)

    @app.route("/static/", branch=True, methods=["GET"])
    def static(self, request: IRequest) -> IResource:
        """Serve the files of C{static_dir}."""
        if self._static_dir is None:
            return notFound("No static files", "This sink serves no static files.")
        segments: list[bytes] = list(request.postpath or [])
        return static_file(request, self._static_dir, segments)
