"""
Read the C{db} sink's tables for its query API.

Every function here takes a cursor and runs on the pool's connection
thread.  Table names are checked against the file's schema before they
reach a statement, and values are bound as parameters.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import attrs

from replayforge.player.sinks.dbwrite import (
    RPF_ID,
    TABLE_NAME,
    quote_identifier,
    table_columns,
)

DEFAULT_ROW_LIMIT = 10_000


class NoSuchTable(Exception):
    """A query named a table the database does not have."""

    def __init__(self, table: str) -> None:
        super().__init__(f"no table named {table!r}")
        self.table = table


@attrs.frozen
class QueryResult:
    """Rows as JSON objects, and the statement that read them."""

    sql: str
    rows: list[dict[str, Any]]


def json_value(value: Any) -> Any:
    """Convert a stored value to one JSON can carry."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def existing_table(cursor: sqlite3.Cursor, table: str) -> dict[str, str]:
    """
    Return the columns of C{table}.

    @raise NoSuchTable: when the name is not a valid table name, names one
        of SQLite's own tables, or the database has no such table.
    """
    if not TABLE_NAME.match(table) or table.lower().startswith("sqlite_"):
        raise NoSuchTable(table)
    columns = table_columns(cursor, table)
    if not columns:
        raise NoSuchTable(table)
    return columns


def list_rows(
    cursor: sqlite3.Cursor, table: str, limit: int = DEFAULT_ROW_LIMIT
) -> QueryResult:
    """Return the rows of C{table} in the order they were last written."""
    columns = existing_table(cursor, table)
    order = RPF_ID if RPF_ID in columns else "rowid"
    sql = f"SELECT * FROM {quote_identifier(table)} ORDER BY {order} LIMIT ?"
    cursor.execute(sql, (limit,))
    names = [description[0] for description in cursor.description]
    rows = [
        dict(zip(names, map(json_value, row), strict=True)) for row in cursor.fetchall()
    ]
    return QueryResult(sql=sql, rows=rows)
