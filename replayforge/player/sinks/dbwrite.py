"""
Apply call objects to the C{db} sink's SQLite file, one batch per transaction.

The tables keep the Go player's layout, so its databases carry on: C{id TEXT
PRIMARY KEY}, C{_rpf_id} (a sequence over the whole file, renewed by every
write) and C{_rpf_last_updated_idx} (Unix seconds of the last write), then
one column per key ever seen (named as L{replayforge.player.sinks.dbschema}
says), typed by its first non-null value.  A POST or PUT replaces the row
with the same C{id} by the JSON body; a DELETE removes it.

A batch is one transaction.  An event refused before it writes anything
(not a call object, a reserved table name, too many columns) is rejected
with its reason and the batch goes on.  When an event fails after it
wrote (the database refused its row), the transaction is rolled back and
the batch applied again with each event in its own savepoint, so that
event is undone and rejected alone while the rest is kept.  An error of
the storage itself (disk full, I/O, locked, read-only) fails the whole
batch, to be offered again.

The highest queue id applied is kept in the same transaction
(C{_rpf_queue_marks}), so a batch offered again after a crash between this
commit and the queue's is recognised and not applied twice.

A L{TableWriter} runs only on the pool's single connection thread.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from replayforge.player.sinks.base import (
    DELIVERED,
    Outcome,
    QueuedEvent,
    Rejected,
)
from replayforge.player.sinks.callobject import NotACallObject, parse_call_target
from replayforge.player.sinks.dbschema import (
    RESERVED_TABLE_PREFIXES,
    RPF_ID,
    RPF_UPDATED,
    TABLE_NAME,
    column_names,
    quote_identifier,
    schema_object,
    table_columns,
    table_name_problem,
    user_tables,
)
from replayforge.player.sinks.dbvalues import column_type, id_text, sql_value
from replayforge.player.sinks.timestamps import normalize_timestamp

MARKS_TABLE = "_rpf_queue_marks"
# SQLite's default SQLITE_MAX_COLUMN.
MAX_COLUMNS = 2000
# Primary result codes of errors that are the storage's, not an event's:
# busy, locked, no memory, read-only, interrupted, I/O, corrupt, full,
# cannot open, protocol, schema changed, misuse, no large files, auth, not
# a database.
_STORAGE_CODES = frozenset({5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 17, 21, 22, 23, 26})


class _Isolate(Exception):
    """An event failed after writing: its batch needs savepoints."""


class DropEvent(Exception):
    """An event the sink cannot apply; C{reason} is how it is counted."""

    def __init__(self, reason: str, problem: str) -> None:
        super().__init__(problem)
        self.reason = reason
        self.problem = problem


def is_storage_error(error: sqlite3.Error) -> bool:
    """Tell whether C{error} is the storage's fault rather than an event's."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is None:
        return not isinstance(
            error, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.InterfaceError
        )
    return (code & 0xFF) in _STORAGE_CODES


def table_from_path(path: str) -> str:
    """
    Read the table name of a call's path: C{/rpf-db/<table>} or C{/<table>}.

    @raise DropEvent: when the name is empty, reserved or holds characters
        other than letters, digits, C{_} and C{-}.
    """
    table = path.removeprefix("/rpf-db/").removeprefix("/")
    if not TABLE_NAME.match(table) or table.lower().startswith(RESERVED_TABLE_PREFIXES):
        raise DropEvent("bad_table", f"invalid table name {table[:80]!r}")
    return table


@functools.lru_cache(maxsize=4096)
def _replace_statement(table: str, names: tuple[str, ...]) -> str:
    # The row with the same id is replaced whole, as the Go player did.
    return (
        f"INSERT OR REPLACE INTO {quote_identifier(table)}"
        f" ({', '.join(map(quote_identifier, names))})"
        f" VALUES ({', '.join('?' * len(names))})"
    )


def wants_index(column: str) -> bool:
    """Tell whether a new column gets an index (the Go player's rule)."""
    return (
        column.endswith(("idx", "index", "id"))
        or "fk" in column
        or column in ("timestamp", "status")
    )


class TableWriter:
    """
    The schema the sink has seen, and the statements that change rows.

    @param queue_instance: the name of the queue file events come from;
        with it, the highest queue id applied is remembered per sink.
    """

    def __init__(self, sink_name: str = "", queue_instance: str = "") -> None:
        self._sink_name = sink_name
        self._queue_instance = queue_instance
        self._schemas: dict[str, dict[str, str]] = {}
        self._last_rpf_id: int | None = None
        self._applied_through: int | None = None
        self._writes = 0

    def forget_schemas(self) -> None:
        """Read every schema, the last C{_rpf_id} and the mark again."""
        self._schemas.clear()
        self._last_rpf_id = None
        self._applied_through = None

    def write_batch(
        self, cursor: sqlite3.Cursor, events: Sequence[QueuedEvent], now: int
    ) -> list[Outcome]:
        """
        Apply C{events} in one transaction; return one outcome per event.

        @raise sqlite3.Error: when the storage failed; nothing is applied.
        """
        try:
            outcomes = self._write_batch(cursor, events, now)
            # Committed here, so that a failing commit also clears the cache
            # of what this transaction did.
            cursor.connection.commit()
        except BaseException:
            # The transaction is rolled back: so are the tables, columns and
            # mark it changed, which must not stay in the cache.
            self.forget_schemas()
            raise
        return outcomes

    def _write_batch(
        self, cursor: sqlite3.Cursor, events: Sequence[QueuedEvent], now: int
    ) -> list[Outcome]:
        try:
            return self._apply_all(cursor, events, now, isolated=False)
        except _Isolate:
            # An event failed after it wrote: do the batch again with each
            # event in a savepoint, so that it can be undone alone.
            cursor.connection.rollback()
            self.forget_schemas()
            return self._apply_all(cursor, events, now, isolated=True)

    def _apply_all(
        self,
        cursor: sqlite3.Cursor,
        events: Sequence[QueuedEvent],
        now: int,
        isolated: bool,
    ) -> list[Outcome]:
        # Without an open transaction, releasing the first savepoint would
        # commit each event on its own.
        if not cursor.connection.in_transaction:
            cursor.execute("BEGIN IMMEDIATE")
        if self._last_rpf_id is None:
            self._last_rpf_id = self._highest_rpf_id(cursor)
        applied_through = self._read_mark(cursor)
        outcomes: list[Outcome] = []
        for event in events:
            if applied_through is not None and event.id <= applied_through:
                outcomes.append(DELIVERED)
            elif isolated:
                outcomes.append(self._apply_alone(cursor, event.content, now))
            else:
                outcomes.append(self._apply_together(cursor, event.content, now))
        if events and self._queue_instance:
            highest = max(event.id for event in events)
            cursor.execute(
                f"INSERT OR REPLACE INTO {MARKS_TABLE} (sink, queue, last_id)"
                " VALUES (?, ?, ?)",
                (self._sink_name, self._queue_instance, highest),
            )
            self._applied_through = highest
        return outcomes

    def _apply_together(self, cursor: sqlite3.Cursor, text: str, now: int) -> Outcome:
        """Apply one event without a savepoint of its own (the fast path)."""
        writes = self._writes
        try:
            self._apply(cursor, text, now)
        except DropEvent as drop:
            if self._writes == writes:
                return Rejected(drop.reason, drop.problem)
            raise _Isolate() from None
        except sqlite3.Error as error:
            if is_storage_error(error) or not cursor.connection.in_transaction:
                raise
            raise _Isolate() from None
        except (ValueError, TypeError, OverflowError, RecursionError):
            raise _Isolate() from None
        return DELIVERED

    def _apply_alone(self, cursor: sqlite3.Cursor, text: str, now: int) -> Outcome:
        """Apply one event in a savepoint, undone alone if it fails."""
        cursor.execute("SAVEPOINT rpf_event")
        try:
            self._apply(cursor, text, now)
        except DropEvent as drop:
            self._undo_event(cursor)
            return Rejected(drop.reason, drop.problem)
        except sqlite3.Error as error:
            if is_storage_error(error) or not cursor.connection.in_transaction:
                raise
            self._undo_event(cursor)
            return Rejected("db_error", str(error))
        except (ValueError, TypeError, OverflowError, RecursionError) as error:
            self._undo_event(cursor)
            return Rejected("db_error", f"{type(error).__name__}: {error}")
        cursor.execute("RELEASE rpf_event")
        return DELIVERED

    def _write(self, cursor: sqlite3.Cursor, sql: str, parameters: Any = ()) -> None:
        """Run a statement that changes the file, counting it."""
        self._writes += 1
        cursor.execute(sql, parameters)

    def _read_mark(self, cursor: sqlite3.Cursor) -> int | None:
        if not self._queue_instance:
            return None
        if self._applied_through is None:
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {MARKS_TABLE}"
                " (sink TEXT PRIMARY KEY, queue TEXT NOT NULL,"
                " last_id INTEGER NOT NULL)"
            )
            row = cursor.execute(
                f"SELECT queue, last_id FROM {MARKS_TABLE} WHERE sink = ?",
                (self._sink_name,),
            ).fetchone()
            # Ids of another queue file say nothing about this one's.
            self._applied_through = (
                int(row[1]) if row is not None and row[0] == self._queue_instance else 0
            )
        return self._applied_through

    def _undo_event(self, cursor: sqlite3.Cursor) -> None:
        cursor.execute("ROLLBACK TO rpf_event")
        cursor.execute("RELEASE rpf_event")
        # A rolled-back event may have added tables or columns.
        self._schemas.clear()

    def _apply(self, cursor: sqlite3.Cursor, text: str, now: int) -> None:
        try:
            method, path, raw_body = parse_call_target(text)
        except NotACallObject as error:
            raise DropEvent("unparseable", str(error)) from None
        table = table_from_path(path)
        if method not in ("POST", "PUT", "DELETE"):
            raise DropEvent(
                "unsupported_method",
                f"{method} {path}: expected POST, PUT or DELETE",
            )
        try:
            body = json.loads(raw_body)
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            raise DropEvent("bad_body", f"{path}: body is not a JSON object")
        if method == "DELETE":
            self._delete(cursor, table, body)
        else:
            self._replace(cursor, table, body, now)

    def _replace(
        self, cursor: sqlite3.Cursor, table: str, body: dict[str, Any], now: int
    ) -> None:
        row = {column: body[key] for key, column in column_names(body).items()}
        assert self._last_rpf_id is not None
        self._last_rpf_id += 1
        row[RPF_ID] = self._last_rpf_id
        row[RPF_UPDATED] = now
        row["id"] = (
            str(self._last_rpf_id) if row.get("id") is None else id_text(row["id"])
        )
        row["timestamp"] = normalize_timestamp(row.get("timestamp"), now)

        columns = self._schema(cursor, table, create=True)
        new = [
            column
            for column, value in row.items()
            if column not in columns and value is not None
        ]
        if len(columns) + len(new) > MAX_COLUMNS:
            # Refused before adding columns one by one for nothing.
            raise DropEvent(
                "too_many_columns",
                f"{table} would have {len(columns) + len(new)} columns; "
                f"SQLite allows {MAX_COLUMNS}",
            )
        for column in new:
            self._add_column(cursor, table, columns, column, column_type(row[column]))
        names = tuple(column for column in row if column in columns)
        self._write(
            cursor,
            _replace_statement(table, names),
            [sql_value(row[name]) for name in names],
        )

    def _delete(self, cursor: sqlite3.Cursor, table: str, body: dict[str, Any]) -> None:
        if body.get("id") is None:
            raise DropEvent("missing_id", f"DELETE on {table} without an id")
        if not self._schema(cursor, table, create=False):
            return
        self._write(
            cursor,
            f"DELETE FROM {quote_identifier(table)} WHERE id = ?",
            (id_text(body["id"]),),
        )

    def _schema(
        self, cursor: sqlite3.Cursor, table: str, create: bool
    ) -> dict[str, str]:
        """Return the columns of C{table}, created with its base columns."""
        key = table.lower()
        if key in self._schemas:
            return self._schemas[key]
        problem = table_name_problem(cursor, table)
        if problem is not None:
            raise DropEvent("bad_table", problem)
        columns = table_columns(cursor, table)
        if not columns:
            if not create:
                return columns
            self._write(
                cursor, f"CREATE TABLE {quote_identifier(table)} (id TEXT PRIMARY KEY)"
            )
            columns = {"id": "TEXT"}
        for name in (RPF_UPDATED, RPF_ID):
            if name not in columns:
                self._add_column(cursor, table, columns, name, "INTEGER")
        if "id" not in columns:
            self._add_column(cursor, table, columns, "id", "TEXT")
        self._schemas[key] = columns
        return columns

    def _add_column(
        self,
        cursor: sqlite3.Cursor,
        table: str,
        columns: dict[str, str],
        column: str,
        kind: str,
    ) -> None:
        quoted_table = quote_identifier(table)
        self._write(
            cursor,
            f"ALTER TABLE {quoted_table} ADD COLUMN {quote_identifier(column)} {kind}",
        )
        columns[column] = kind
        index = f"idx_{table}_{column}"
        # A name already taken (by an index, or a table a user wrote) keeps
        # its owner; the index only speeds up reads.
        if wants_index(column) and schema_object(cursor, index) is None:
            self._write(
                cursor,
                f"CREATE INDEX {quote_identifier(index)}"
                f" ON {quoted_table} ({quote_identifier(column)})",
            )

    @staticmethod
    def _highest_rpf_id(cursor: sqlite3.Cursor) -> int:
        highest = 0
        for table in user_tables(cursor):
            if RPF_ID in table_columns(cursor, table):
                found = cursor.execute(
                    f"SELECT MAX({RPF_ID}) FROM {quote_identifier(table)}"
                ).fetchone()[0]
                if isinstance(found, int) and found > highest:
                    highest = found
        return highest
