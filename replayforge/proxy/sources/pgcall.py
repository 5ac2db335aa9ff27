"""
The C{pgcall} source: named SQL calls against PostgreSQL, on an interval.

Every C{intervalSeconds} (the first time one interval after start, as in
Go) each call runs in a transaction of its own, through one psycopg
connection in an C{adbapi} thread, bounded by C{statementTimeoutSecs}.
The results travel as one event in the Go proxy's shape: a C{POST} to
C{path} whose body maps each call's name to C{{"success", "error",
"data", "update_time", "update_timestamp"}}.  A call that fails reports
its error there; the others still run.

Values become JSON as the Go proxy made them, except where it was lossy:
C{numeric} is a number (Go sent base64 of its text), C{json}/C{jsonb} and
arrays are JSON values; C{bytea} is base64 and times are RFC 3339.  A
round that meets a full sink buffer is dropped and counted.
"""

from __future__ import annotations

import base64
import datetime
import math
from decimal import Decimal
from typing import Any

import psycopg
from twisted.enterprise import adbapi
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger

from replayforge import gojson
from replayforge.logthrottle import ThrottledLog
from replayforge.periodic import PeriodicTask
from replayforge.proxy.buffer import BufferFull
from replayforge.proxy.pipeline import SourcePipeline
from replayforge.proxy.sources.settings import PgCall, PgCallSettings
from replayforge.proxy.stats import SourceStats
from replayforge.store import run_interaction

log = Logger()

CONNECT_TIMEOUT_SECONDS = 10


def json_value(value: Any) -> Any:
    """Turn a value psycopg read into what the event's JSON holds."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, datetime.datetime):
        return gojson.rfc3339_nano(value)
    if isinstance(value, datetime.date):
        midnight = datetime.datetime(value.year, value.month, value.day)
        return gojson.rfc3339_nano(midnight)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    return str(value)


def run_call(cursor: Any, sql: str) -> list[dict[str, Any]]:
    """Run C{sql} on C{cursor}; return its rows as column → value."""
    cursor.execute(sql)
    if cursor.description is None:
        return []
    names = [column.name for column in cursor.description]
    return [
        {name: json_value(value) for name, value in zip(names, row, strict=True)}
        for row in cursor.fetchall()
    ]


def _first_line(error: BaseException) -> str:
    return str(error).strip().split("\n", 1)[0]


class PgCallSource:
    """Run the configured calls and submit their results."""

    def __init__(
        self,
        source_id: str,
        settings: PgCallSettings,
        pipeline: SourcePipeline,
        stats: SourceStats,
        reactor: IReactorCore,
        clock: IReactorTime,
    ) -> None:
        self.source_id = source_id
        self.settings = settings
        self._pipeline = pipeline
        self._stats = stats
        self._clock = clock
        self._log = ThrottledLog(log, clock)
        self._closed = False
        self._pool = adbapi.ConnectionPool(
            "psycopg",
            settings.conninfo,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            cp_min=1,
            cp_max=1,
            cp_reconnect=True,
            cp_noisy=False,
            cp_openfun=self._prepare_connection,
            cp_reactor=reactor,
        )

    def _prepare_connection(self, connection: psycopg.Connection[Any]) -> None:
        milliseconds = int(self.settings.statement_timeout_seconds * 1000)
        connection.execute(f"SET statement_timeout = {milliseconds}")
        connection.commit()

    async def results(self) -> dict[str, Any]:
        """Run every call; map each name to its outcome."""
        outcomes = {}
        for call in self.settings.calls:
            outcomes[call.name] = await self._outcome(call)
        return outcomes

    async def _outcome(self, call: PgCall) -> dict[str, Any]:
        try:
            rows = await run_interaction(self._pool, run_call, call.sql)
        except (psycopg.Error, adbapi.ConnectionLost) as error:
            self._log.warn(
                "pgcall source {source}: call {call} failed: {error}",
                source=self.source_id,
                call=call.name,
                error=_first_line(error),
            )
            return {
                "success": False,
                "error": _first_line(error),
                "update_time": gojson.GO_ZERO_TIME,
            }
        now = self._clock.seconds()
        outcome: dict[str, Any] = {
            "success": True,
            "update_time": gojson.local_rfc3339_nano(now),
            "update_timestamp": int(now),
        }
        if rows:
            outcome["data"] = rows
        return outcome

    async def tick(self) -> None:
        """Run the calls and submit their results as one event."""
        content = gojson.dumps(
            {
                "body": gojson.dumps(await self.results()),
                "headers": {},
                "method": "POST",
                "params": {},
                "path": self.settings.path,
            }
        )
        try:
            await self._pipeline.submit_many([content])
        except BufferFull as full:
            self._stats.drop("buffer_full")
            self._log.warn(
                "pgcall source {source}: sink buffer full ({sinks}); results dropped",
                source=self.source_id,
                sinks=str(full),
            )

    def close(self) -> None:
        """Close the connection, once."""
        if not self._closed:
            self._closed = True
            self._pool.close()


class PgCallService(PeriodicTask):
    """Run a L{PgCallSource} every C{intervalSeconds}; close it at stop."""

    def __init__(self, source: PgCallSource, clock: IReactorTime) -> None:
        super().__init__(
            f"pgcall {source.source_id}",
            source.settings.interval_seconds,
            source.tick,
            clock,
        )
        self._source = source

    def stopService(self) -> Any:
        stopped = super().stopService()
        if stopped is None:
            self._source.close()
            return None

        def close(result: object) -> object:
            self._source.close()
            return result

        return stopped.addBoth(close)
