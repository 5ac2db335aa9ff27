"""
The HTTP query API of a C{db} sink.

It is served at the root of the sink's own listener under C{/<sink id>/},
and through the player's exposed port at the same path.  For now it lists
a table's rows (C{GET /rpf-db/<table>}); the other routes of the Go
player's query API belong beside it.
"""

from __future__ import annotations

from typing import cast

from klein import Klein
from twisted.enterprise import adbapi
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from replayforge.player.sinks.dbquery import NoSuchTable, list_rows
from replayforge.store import run_interaction
from replayforge.web import json_body


class DbQueryAPI:
    """The Klein application answering queries on one sink's database."""

    app = Klein()

    def __init__(self, pool: adbapi.ConnectionPool) -> None:
        self._pool = pool

    @app.handle_errors(NoSuchTable)
    def _no_such_table(self, request: IRequest, failure: Failure) -> bytes:
        # handle_errors(NoSuchTable) sends only those here.
        error = cast(NoSuchTable, failure.value)
        return json_body(request, 404, {"error": str(error)})

    @app.route("/rpf-db/<table>", methods=["GET"])
    async def rpf_db(self, request: IRequest, table: str) -> bytes:
        """List the rows of C{table} as a JSON array of objects."""
        result = await run_interaction(self._pool, list_rows, table)
        request.setHeader(b"X-SQL-Query", result.sql.encode("utf-8"))
        return json_body(request, 200, result.rows)
