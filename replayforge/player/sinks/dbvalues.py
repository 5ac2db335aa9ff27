"""
What the C{db} sink stores for a JSON value, and the type of a new column.

A column is typed by the first non-null value it receives: C{BOOLEAN},
C{INTEGER} (when it fits 64 bits; larger integers are kept as text),
C{REAL}, else C{TEXT}.  Objects and arrays are stored as their compact JSON
text, booleans as 0 or 1.  A row's C{id} is always text: a number's JSON
spelling (C{5}, not the Go player's C{5.0}).
"""

from __future__ import annotations

import json
from typing import Any

_INT64 = range(-(2**63), 2**63)


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
    # Values come from json.loads: their exact types are known, and this
    # runs for every column of every row.
    kind = type(value)
    if kind is str or kind is float or value is None:
        return value
    if kind is bool:
        return int(value)
    if kind is int:
        return value if value in _INT64 else str(value)
    if kind is dict or kind is list:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value


def id_text(value: Any) -> str:
    """The text stored in the C{id} column for a body's C{id}."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
