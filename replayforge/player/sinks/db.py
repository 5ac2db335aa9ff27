"""
The C{db} sink: keep the latest version of each record in SQLite tables.

Each event is a call object; its path names the table and its JSON body the
row (see L{replayforge.player.sinks.dbwrite}).  A whole delivery is one
transaction on the file's single writer connection, so the puller
acknowledges the batch only once it is on disk.  The sink serves its query
API (L{replayforge.player.sinks.dbapi}) and, with C{row_ttl_sec}, forgets
rows not written for that long.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource

from replayforge.periodic import PeriodicTask
from replayforge.player.config import PlayerSinkConfig
from replayforge.player.sinks.base import Sink
from replayforge.player.sinks.dbapi import DbQueryAPI
from replayforge.player.sinks.dbwrite import (
    RPF_UPDATED,
    TableWriter,
    WriteOutcome,
    quote_identifier,
    table_columns,
)
from replayforge.player.sinks.settings import DbSinkSettings
from replayforge.store import open_pool, run_interaction

log = Logger()

MAX_EXPIRY_INTERVAL_SECONDS = 60.0


class DbSink(Sink):
    """
    One SQLite database fed with call objects.

    @param pool: the database's writer pool; by default one is opened on
        C{settings.database}.  Tests pass a pool that runs synchronously.
    """

    def __init__(
        self,
        config: PlayerSinkConfig,
        reactor: Any,
        pool: adbapi.ConnectionPool | None = None,
    ) -> None:
        super().__init__(config)
        assert isinstance(config.settings, DbSinkSettings)
        self.settings: DbSinkSettings = config.settings
        self._clock: IReactorTime = reactor
        self._pool = pool or open_pool(self.settings.database, reactor)
        self._writer = TableWriter()
        self._api = DbQueryAPI(self._pool)
        self._expiry: PeriodicTask | None = None
        if self.settings.row_ttl_seconds:
            self._expiry = PeriodicTask(
                f"{self.name}-row-ttl",
                min(float(self.settings.row_ttl_seconds), MAX_EXPIRY_INTERVAL_SECONDS),
                self.expire_rows,
                self._clock,
            )

    def start(self) -> Deferred[None]:
        """Start forgetting expired rows, when a time to live is set."""
        if self._expiry is not None:
            self._expiry.startService()
        log.info(
            "sink {sink}: writing to {database}",
            sink=self.name,
            database=str(self.settings.database),
        )
        return succeed(None)

    def stop(self) -> Deferred[None]:
        """Stop the expiry task and close the database."""
        stopped: Deferred[Any] = succeed(None)
        if self._expiry is not None and self._expiry.running:
            # An expiry run in progress ends before the pool closes.
            stopped = maybeDeferred(self._expiry.stopService)

        def close(_: object) -> None:
            self._pool.close()

        return stopped.addBoth(close)

    def deliver(self, events: list[str]) -> Deferred[None]:
        """Apply C{events} in one transaction; fire once it is committed."""
        now = int(self._clock.seconds())
        done = run_interaction(self._pool, self._writer.write_batch, events, now)

        def committed(outcome: WriteOutcome) -> None:
            self.stats.received += len(events)
            self.stats.delivered += outcome.applied
            for reason, count in outcome.dropped.items():
                self.stats.drop(reason, count)
            if outcome.dropped:
                log.warn(
                    "sink {sink}: dropped {count} of {total} events ({problems})",
                    sink=self.name,
                    count=sum(outcome.dropped.values()),
                    total=len(events),
                    problems="; ".join(outcome.problems),
                )

        def failed(failure: Failure) -> Failure:
            self.stats.failures += 1
            return failure

        return done.addCallbacks(committed, failed)

    def resource(self) -> IResource:
        """Return the query API."""
        resource: IResource = self._api.app.resource()
        return resource

    def listen_description(self) -> str | None:
        """Return the endpoint of the sink's own query listener, if any."""
        return self.settings.listen

    async def expire_rows(self) -> None:
        """Delete the rows not written for C{row_ttl_sec} seconds."""
        cutoff = int(self._clock.seconds()) - self.settings.row_ttl_seconds
        expired = await run_interaction(self._pool, _delete_older_rows, cutoff)
        if expired:
            self.stats.expired += expired
            log.info(
                "sink {sink}: {count} rows expired after {ttl}s",
                sink=self.name,
                count=expired,
                ttl=self.settings.row_ttl_seconds,
            )


def _delete_older_rows(cursor: sqlite3.Cursor, cutoff: int) -> int:
    tables = cursor.execute(
        "SELECT name FROM sqlite_master"
        " WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
    ).fetchall()
    expired = 0
    for (table,) in tables:
        if RPF_UPDATED in table_columns(cursor, table):
            cursor.execute(
                f"DELETE FROM {quote_identifier(table)} WHERE {RPF_UPDATED} < ?",
                (cutoff,),
            )
            expired += cursor.rowcount
    return expired
