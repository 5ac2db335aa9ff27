"""
Read the C{db} sink's tables for its query API.

Every function here takes a cursor of the read-only pool and runs on its
thread, one short statement at a time.  Table and column names reach SQL
only once found in the file's live schema (L{find_table},
C{PRAGMA table_info}), quoted, spelled as the schema spells them; every
value is bound as a parameter.  A request naming anything else fails with
L{NoSuchTable}, L{NoSuchColumn} or L{BadParameter}, before any SQL runs.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from replayforge.player.sinks.dbfilters import BadParameter, RowQuery, parse_row_query
from replayforge.player.sinks.dbschema import (
    RPF_ID,
    RPF_UPDATED,
    column_order,
    find_table,
    quote_identifier,
    table_columns,
    user_tables,
)

MAX_DISTINCT_VALUES = 10_000

__all__ = [
    "BadParameter",
    "NoSuchColumn",
    "NoSuchTable",
    "QueryResult",
    "all_columns",
    "distinct_values",
    "find_row",
    "list_columns",
    "list_tables",
    "query_rows",
]


class NoSuchTable(Exception):
    """A request named a table the database does not have."""

    def __init__(self, table: str) -> None:
        super().__init__(f"no table named {table[:200]!r}")
        self.table = table


class NoSuchColumn(Exception):
    """A request named a column its table does not have."""

    def __init__(self, table: str, column: str) -> None:
        super().__init__(f"no column named {column[:200]!r} in table {table!r}")


@attrs.frozen
class QueryResult:
    """Rows as JSON objects, and the statement that read them."""

    sql: str
    rows: list[dict[str, Any]]


def json_value(value: Any) -> Any:
    """Convert a stored value to one JSON can carry."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _table(cursor: sqlite3.Cursor, name: str) -> str:
    table = find_table(cursor, name)
    if table is None:
        raise NoSuchTable(name)
    return table


def _rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [description[0] for description in cursor.description]
    return [
        dict(zip(names, map(json_value, row), strict=True)) for row in cursor.fetchall()
    ]


def query_rows(
    cursor: sqlite3.Cursor, table: str, args: Mapping[str, Sequence[str]]
) -> QueryResult:
    """
    Return the rows of C{table} that match the filters in C{args}.

    @raise NoSuchTable: when there is no such table.
    @raise BadParameter: when a parameter is not understood.
    """
    table = _table(cursor, table)
    names = column_order(cursor, table)
    query = parse_row_query(args, names, table_columns(cursor, table))
    sql, parameters = build_select(table, names, query)
    cursor.execute(sql, parameters)
    return QueryResult(sql=sql, rows=_rows(cursor))


def build_select(
    table: str, names: Sequence[str], query: RowQuery
) -> tuple[str, list[Any]]:
    """Write the statement of C{query} on C{table} and its parameters."""
    sql = f"SELECT * FROM {quote_identifier(table)}"
    conditions = []
    parameters: list[Any] = []
    for condition in query.conditions:
        column = quote_identifier(condition.column)
        if condition.operator == "LIKE":
            conditions.append(f"{column} LIKE ? ESCAPE '\\'")
        else:
            conditions.append(f"{column} {condition.operator} ?")
        parameters.append(condition.value)
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    lowered = {name.lower() for name in names}
    order = query.order or (RPF_ID if RPF_ID in lowered else "rowid")
    direction = "DESC" if query.descending else "ASC"
    sql += f" ORDER BY {quote_identifier(order)} {direction} LIMIT ?"
    parameters.append(query.limit)
    return sql, parameters


def find_row(cursor: sqlite3.Cursor, table: str, row_id: str) -> dict[str, Any] | None:
    """Return the row of C{table} whose C{id} is C{row_id}, if there is one."""
    table = _table(cursor, table)
    if "id" not in table_columns(cursor, table):
        return None
    cursor.execute(
        f"SELECT * FROM {quote_identifier(table)} WHERE id = ? LIMIT 1", (row_id,)
    )
    rows = _rows(cursor)
    return rows[0] if rows else None


def list_tables(cursor: sqlite3.Cursor) -> list[str]:
    """Return the names of the tables holding user data."""
    return user_tables(cursor)


def list_columns(cursor: sqlite3.Cursor, table: str) -> list[str]:
    """Return the column names of C{table}, in order."""
    return column_order(cursor, _table(cursor, table))


def all_columns(cursor: sqlite3.Cursor) -> dict[str, list[str]]:
    """Return every user table with its column names."""
    return {table: column_order(cursor, table) for table in user_tables(cursor)}


def distinct_values(cursor: sqlite3.Cursor, table: str, column: str) -> list[Any]:
    """Return the distinct values of C{column} in C{table} (a bounded number)."""
    table = _table(cursor, table)
    spelled = {name.lower(): name for name in column_order(cursor, table)}
    name = spelled.get(column.lower())
    if name is None:
        raise NoSuchColumn(table, column)
    cursor.execute(
        f"SELECT DISTINCT {quote_identifier(name)} FROM {quote_identifier(table)}"
        " LIMIT ?",
        (MAX_DISTINCT_VALUES,),
    )
    return [json_value(row[0]) for row in cursor.fetchall()]


def time_analytics(
    cursor: sqlite3.Cursor, table: str, start: int, stop: int, step: int
) -> list[dict[str, Any]]:
    """
    Count the rows of C{table} last written in each C{step}-second slot
    from C{start} through C{stop}, per C{status} when the table has one.

    Every slot is listed, empty ones with a count of 0 (and the status
    C{unknown}), as the Go player answered.

    @raise BadParameter: naming C{table} when it has no such table or
        lacks the C{_rpf_} columns.
    """
    found = find_table(cursor, table)
    if found is None:
        raise BadParameter("table", f"no table named {table[:200]!r}")
    columns = table_columns(cursor, found)
    if RPF_UPDATED not in columns or RPF_ID not in columns:
        raise BadParameter("table", f"{found!r} has no {RPF_UPDATED} column")
    with_status = "status" in columns
    slots = (stop - start) // step + 1
    status = ", status" if with_status else ""
    cursor.execute(
        f"SELECT ({RPF_UPDATED} - ?) / ? AS slot{status}, COUNT({RPF_ID})"
        f" FROM {quote_identifier(found)}"
        f" WHERE {RPF_UPDATED} >= ? AND {RPF_UPDATED} <= ?"
        f" GROUP BY slot{status} ORDER BY slot{status}",
        (start, step, start, stop),
    )
    counted: dict[int, list[tuple[Any, int]]] = {}
    for row in cursor.fetchall():
        slot = int(row[0])
        if 0 <= slot < slots:
            counted.setdefault(slot, []).append(
                (row[1], row[2]) if with_status else (None, row[1])
            )
    result: list[dict[str, Any]] = []
    for slot in range(slots):
        bucket = start + slot * step
        for value, count in counted.get(slot, [(None, 0)]):
            entry: dict[str, Any] = {"count": count}
            if with_status:
                entry["status"] = "unknown" if value is None else json_value(value)
            entry["time_bucket"] = bucket
            result.append(entry)
    return result
