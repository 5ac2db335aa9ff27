"""
The C{db} sink: keep the latest version of each record in SQLite tables.

Each event is a call object; its path names the table and its JSON body the
row (see L{replayforge.player.sinks.dbwrite}).  A whole delivery is one
transaction on the file's single writer connection, each event in its own
savepoint, so one bad event costs only itself.  The query API
(L{replayforge.player.sinks.dbapi}) reads through a separate read-only pool.
With C{row_ttl_sec}, rows not written for that long are deleted by a
periodic task.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import IResource

from replayforge.periodic import PeriodicTask
from replayforge.player.config import PlayerSinkConfig
from replayforge.player.sinks.base import Outcome, QueuedEvent, Sink
from replayforge.player.sinks.dbapi import DbQueryAPI
from replayforge.player.sinks.dbschema import (
    RPF_UPDATED,
    quote_identifier,
    table_columns,
    user_tables,
)
from replayforge.player.sinks.dbwrite import TableWriter
from replayforge.player.sinks.settings import DbSinkSettings
from replayforge.store import open_pool, open_read_pool, prepare_now, run_interaction

log = Logger()

MAX_EXPIRY_INTERVAL_SECONDS = 60.0
DB_BATCH_SIZE = 500


class DbSink(Sink):
    """
    One SQLite database fed with call objects.

    @param pool: the database's writer pool; by default one is opened on
        C{settings.database}.  Tests pass a pool that runs synchronously.
    @param read_pool: the pool the query API reads through; by default a
        read-only one on the same file.
    @param queue_instance: the name of the queue file the events come from
        (see L{replayforge.player.queue.PlayerQueue.instance}).
    """

    batch_size = DB_BATCH_SIZE

    def __init__(
        self,
        config: PlayerSinkConfig,
        reactor: Any,
        pool: adbapi.ConnectionPool | None = None,
        read_pool: adbapi.ConnectionPool | None = None,
        queue_instance: str = "",
    ) -> None:
        super().__init__(config)
        assert isinstance(config.settings, DbSinkSettings)
        self.settings: DbSinkSettings = config.settings
        self._clock: IReactorTime = reactor
        # The file exists, in WAL mode, before anyone opens it read-only.
        prepare_now(self.settings.database, lambda cursor: None)
        self._pool = pool or open_pool(self.settings.database, reactor)
        self._read_pool = read_pool or open_read_pool(self.settings.database, reactor)
        self._open_pools = [self._read_pool, self._pool]
        self._writer = TableWriter(self.name, queue_instance)
        self._api = DbQueryAPI(self._read_pool, self.settings.static_dir)
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
        """Stop the expiry task and close the database (once)."""
        stopped: Deferred[Any] = succeed(None)
        if self._expiry is not None and self._expiry.running:
            # An expiry run in progress ends before the pool closes.
            stopped = maybeDeferred(self._expiry.stopService)

        def close(_: object) -> None:
            pools, self._open_pools = self._open_pools, []
            for pool in pools:
                pool.close()

        return stopped.addBoth(close)

    def deliver(self, events: Sequence[QueuedEvent]) -> Deferred[list[Outcome]]:
        """Apply C{events} in one transaction; fire once it is committed."""
        now = int(self._clock.seconds())
        return run_interaction(self._pool, self._writer.write_batch, events, now)

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
    expired = 0
    for table in user_tables(cursor):
        if RPF_UPDATED in table_columns(cursor, table):
            cursor.execute(
                f"DELETE FROM {quote_identifier(table)} WHERE {RPF_UPDATED} < ?",
                (cutoff,),
            )
            expired += cursor.rowcount
    return expired
