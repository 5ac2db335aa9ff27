"""
Apply call objects to the C{db} sink's SQLite file, one batch per transaction.

The tables keep the Go player's layout, so its databases carry on: C{id TEXT
PRIMARY KEY}, C{_rpf_id} (a sequence over the whole file, renewed by every
write) and C{_rpf_last_updated_idx} (Unix seconds of the last write), then
one column per key ever seen.  A POST or PUT replaces the row with the same
C{id} by the JSON body; a DELETE removes it.

Identifiers never come from a request unchecked: a table name is letters,
digits, C{_} and C{-}; a column name is what L{snake_case} leaves, letters,
digits and C{_}; both are quoted, and the schema is read back from the file
(C{PRAGMA table_info}).  Values are always bound as parameters.

A L{TableWriter} runs only on the pool's single connection thread.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from typing import Any

import attrs

from replayforge.player.sinks.callobject import NotACallObject, parse_call_object
from replayforge.player.sinks.timestamps import normalize_timestamp

RPF_ID = "_rpf_id"
RPF_UPDATED = "_rpf_last_updated_idx"
MAX_PROBLEMS_KEPT = 5

TABLE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_NOT_IDENTIFIER = re.compile(r"[^A-Za-z0-9_]")
_WORD_BOUNDARY = re.compile(r"([a-z0-9])([A-Z])")
_INT64 = range(-(2**63), 2**63)


class DropEvent(Exception):
    """An event the sink cannot apply; C{reason} is how it is counted."""

    def __init__(self, reason: str, problem: str) -> None:
        super().__init__(problem)
        self.reason = reason
        self.problem = problem


@attrs.define
class WriteOutcome:
    """What one batch did: events applied, events dropped by reason."""

    applied: int = 0
    dropped: Counter[str] = attrs.field(factory=Counter)
    problems: list[str] = attrs.field(factory=list)

    def drop(self, reason: str, problem: str) -> None:
        """Count one dropped event, keeping the first few explanations."""
        self.dropped[reason] += 1
        if len(self.problems) < MAX_PROBLEMS_KEPT:
            self.problems.append(f"{reason}: {problem}")


def quote_identifier(name: str) -> str:
    """Quote a table or column name for SQL."""
    return '"' + name.replace('"', '""') + '"'


def snake_case(key: str) -> str:
    """
    Turn a JSON key into a column name, as the Go player did.

    Characters other than letters, digits and C{_} are removed, a capital
    after a small letter or digit starts a new word, and the result is
    lower case: C{createdAt} → C{created_at}, C{userID} → C{user_id},
    C{first-name} → C{firstname}.
    """
    return _WORD_BOUNDARY.sub(r"\1_\2", _NOT_IDENTIFIER.sub("", key)).lower()


def table_from_path(path: str) -> str:
    """
    Read the table name of a call's path: C{/rpf-db/<table>} or C{/<table>}.

    @raise DropEvent: when the name is empty, reserved or holds characters
        other than letters, digits, C{_} and C{-}.
    """
    table = path.removeprefix("/rpf-db/").removeprefix("/")
    if not TABLE_NAME.match(table) or table.lower().startswith("sqlite_"):
        raise DropEvent("bad_table", f"invalid table name {table[:80]!r}")
    return table


def column_type(value: Any) -> str:
    """The SQL type of a new column, from the first value it receives."""
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "INTEGER" if value in _INT64 else "TEXT"
    if isinstance(value, float):
        return "REAL"
    return "TEXT"


def sql_value(value: Any) -> Any:
    """Convert a JSON value to what SQLite stores for it."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value not in _INT64:
        return str(value)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value


def id_text(value: Any) -> str:
    """The text stored in the C{id} column for a body's C{id}."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def wants_index(column: str) -> bool:
    """Tell whether a new column gets an index (the Go player's rule)."""
    return (
        column.endswith(("idx", "index", "id"))
        or "fk" in column
        or column in ("timestamp", "status")
    )


def table_columns(cursor: sqlite3.Cursor, table: str) -> dict[str, str]:
    """Return the live columns of C{table} (name → declared type)."""
    rows = cursor.execute(f"PRAGMA table_info({quote_identifier(table)})")
    return {row[1].lower(): row[2] for row in rows.fetchall()}


class TableWriter:
    """The schema the sink has seen, and the statements that change rows."""

    def __init__(self) -> None:
        self._schemas: dict[str, dict[str, str]] = {}
        self._last_rpf_id: int | None = None

    def write_batch(
        self, cursor: sqlite3.Cursor, events: list[str], now: int
    ) -> WriteOutcome:
        """
        Apply C{events} in one transaction.

        An event that cannot be applied is rolled back alone and counted;
        an error of the database itself (disk full, I/O) fails the batch.
        """
        try:
            return self._write_batch(cursor, events, now)
        except BaseException:
            # The transaction is rolled back: so are the tables and columns
            # it added, which must not stay in the cache.
            self.forget_schemas()
            raise

    def forget_schemas(self) -> None:
        """Read every schema and the last C{_rpf_id} again from the file."""
        self._schemas.clear()
        self._last_rpf_id = None

    def _write_batch(
        self, cursor: sqlite3.Cursor, events: list[str], now: int
    ) -> WriteOutcome:
        outcome = WriteOutcome()
        # Without an open transaction, releasing the first savepoint would
        # commit each event on its own.
        if not cursor.connection.in_transaction:
            cursor.execute("BEGIN IMMEDIATE")
        if self._last_rpf_id is None:
            self._last_rpf_id = self._highest_rpf_id(cursor)
        for text in events:
            cursor.execute("SAVEPOINT rpf_event")
            try:
                self._apply(cursor, text, now)
            except DropEvent as drop:
                self._undo_event(cursor)
                outcome.drop(drop.reason, drop.problem)
            except (
                sqlite3.IntegrityError,
                sqlite3.DataError,
                sqlite3.InterfaceError,
                OverflowError,
            ) as error:
                self._undo_event(cursor)
                outcome.drop("db_error", str(error))
            else:
                cursor.execute("RELEASE rpf_event")
                outcome.applied += 1
        return outcome

    def _undo_event(self, cursor: sqlite3.Cursor) -> None:
        cursor.execute("ROLLBACK TO rpf_event")
        cursor.execute("RELEASE rpf_event")
        # A rolled-back event may have added tables or columns.
        self._schemas.clear()

    def _apply(self, cursor: sqlite3.Cursor, text: str, now: int) -> None:
        try:
            call = parse_call_object(text)
        except NotACallObject as error:
            raise DropEvent("unparseable", str(error)) from None
        table = table_from_path(call.path)
        if call.method not in ("POST", "PUT", "DELETE"):
            raise DropEvent(
                "unsupported_method",
                f"{call.method} {call.path}: expected POST, PUT or DELETE",
            )
        try:
            body = json.loads(call.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise DropEvent("bad_body", f"{call.path}: body is not a JSON object")
        if call.method == "DELETE":
            self._delete(cursor, table, body)
        else:
            self._replace(cursor, table, body, now)

    def _replace(
        self, cursor: sqlite3.Cursor, table: str, body: dict[str, Any], now: int
    ) -> None:
        row: dict[str, Any] = {}
        for key, value in body.items():
            column = snake_case(key)
            if column:
                row[column] = value
        assert self._last_rpf_id is not None
        self._last_rpf_id += 1
        row[RPF_ID] = self._last_rpf_id
        row[RPF_UPDATED] = now
        row["id"] = (
            str(self._last_rpf_id) if row.get("id") is None else id_text(row["id"])
        )
        row["timestamp"] = normalize_timestamp(row.get("timestamp"), now)

        columns = self._schema(cursor, table, create=True)
        for column, value in row.items():
            if column not in columns and value is not None:
                self._add_column(cursor, table, columns, column, column_type(value))
        names = [column for column in row if column in columns]

        quoted = quote_identifier(table)
        cursor.execute(f"DELETE FROM {quoted} WHERE id = ?", (row["id"],))
        cursor.execute(
            f"INSERT INTO {quoted} ({', '.join(map(quote_identifier, names))})"
            f" VALUES ({', '.join('?' * len(names))})",
            [sql_value(row[column]) for column in names],
        )

    def _delete(self, cursor: sqlite3.Cursor, table: str, body: dict[str, Any]) -> None:
        if body.get("id") is None:
            raise DropEvent("missing_id", f"DELETE on {table} without an id")
        if not self._schema(cursor, table, create=False):
            return
        cursor.execute(
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
        columns = table_columns(cursor, table)
        if not columns:
            if not create:
                return columns
            cursor.execute(
                f"CREATE TABLE {quote_identifier(table)} (id TEXT PRIMARY KEY)"
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
        cursor.execute(
            f"ALTER TABLE {quoted_table} ADD COLUMN {quote_identifier(column)} {kind}"
        )
        columns[column] = kind
        if wants_index(column):
            index = quote_identifier(f"idx_{table}_{column}")
            cursor.execute(
                f"CREATE INDEX IF NOT EXISTS {index}"
                f" ON {quoted_table} ({quote_identifier(column)})"
            )

    @staticmethod
    def _highest_rpf_id(cursor: sqlite3.Cursor) -> int:
        tables = cursor.execute(
            "SELECT name FROM sqlite_master"
            " WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
        ).fetchall()
        highest = 0
        for (table,) in tables:
            if RPF_ID in table_columns(cursor, table):
                found = cursor.execute(
                    f"SELECT MAX({RPF_ID}) FROM {quote_identifier(table)}"
                ).fetchone()[0]
                if isinstance(found, int) and found > highest:
                    highest = found
        return highest
