"""
Names in a C{db} sink's SQLite file: what a path or a JSON key becomes, and
which tables and columns really exist.

A table name comes from a call's path: letters, digits, C{_} and C{-}.  A
name SQLite keeps for itself (C{sqlite_*}), a built-in table-valued function
(C{pragma_*}, C{json_each}, C{dbstat}, ...), our own bookkeeping tables
(C{_rpf_*}) and the name of an existing index, view or trigger are refused.

A column name comes from a JSON key, by the Go player's rule
(L{snake_case}: C{createdAt} → C{created_at}, C{first-name} →
C{firstname}), extended so that no value is lost or overwritten:

 - a key that leaves nothing (C{é}, C{!!!}) becomes C{k_} and the hex of
   its UTF-8 bytes (C{k_c3a9}), or of their digest when long;
 - keys of one body that land on the same column (C{userID} and
   C{user_id}, C{Name} and C{NAME}) share it this way: the key already
   spelled as the column keeps it, or else the smallest key by code point;
   each other key gets the column name followed by C{_} and eight hex
   digits of its own digest (C{user_id_6c0f0e5c}), the same in every event;
 - a key landing on one of our columns (C{_rpf_id}, C{_rpf_last_updated_idx})
   is renamed the same way, and a column name past 64 characters is cut to
   48 and given the digest suffix.

Every identifier is quoted when it reaches SQL, and the query API accepts
only names read back from the file's live schema.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sqlite3
from collections.abc import Iterable

RPF_ID = "_rpf_id"
RPF_UPDATED = "_rpf_last_updated_idx"
INTERNAL_PREFIX = "_rpf_"
RESERVED_COLUMNS = frozenset({RPF_ID, RPF_UPDATED})
RESERVED_TABLE_PREFIXES = ("sqlite_", "pragma_", INTERNAL_PREFIX)
MAX_COLUMN_CHARS = 64
_CUT_COLUMN_CHARS = 48
_HEX_NAME_MAX_BYTES = 24

TABLE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_NOT_IDENTIFIER = re.compile(r"[^A-Za-z0-9_]")
_WORD_BOUNDARY = re.compile(r"([a-z0-9])([A-Z])")


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


def _digest(key: str, chars: int = 8) -> str:
    data = key.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).hexdigest()[:chars]


@functools.lru_cache(maxsize=65536)
def base_column(key: str) -> str:
    """The column a key would get on its own, before collisions."""
    column = snake_case(key)
    if not column:
        data = key.encode("utf-8", "surrogatepass")
        if len(data) <= _HEX_NAME_MAX_BYTES:
            return "k_" + data.hex()
        return "k_" + _digest(key, 16)
    if len(column) > MAX_COLUMN_CHARS:
        return f"{column[:_CUT_COLUMN_CHARS]}_{_digest(key)}"
    return column


def column_names(keys: Iterable[str]) -> dict[str, str]:
    """
    Map each key of one JSON body to its column, no two keys to the same.

    See the module's documentation for the rule.
    """
    return dict(_column_names(tuple(keys)))


@functools.lru_cache(maxsize=4096)
def _column_names(keys: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    # Bodies of one kind share their keys: their mapping is worked out once.
    claims: dict[str, list[str]] = {}
    for key in keys:
        claims.setdefault(base_column(key), []).append(key)
    taken = set(claims)
    mapping: dict[str, str] = {}
    for column, claimants in claims.items():
        winner: str | None = None
        if column not in RESERVED_COLUMNS:
            winner = column if column in claimants else min(claimants)
        for key in claimants:
            if key == winner:
                mapping[key] = column
                continue
            chars = 8
            renamed = f"{column}_{_digest(key, chars)}"
            while renamed in taken and chars < 32:
                chars += 8
                renamed = f"{column}_{_digest(key, chars)}"
            taken.add(renamed)
            mapping[key] = renamed
    return tuple((key, mapping[key]) for key in keys)


def table_columns(cursor: sqlite3.Cursor, table: str) -> dict[str, str]:
    """Return the live columns of C{table} (lower-case name → declared type)."""
    rows = cursor.execute(f"PRAGMA table_info({quote_identifier(table)})")
    return {row[1].lower(): row[2] for row in rows.fetchall()}


def column_order(cursor: sqlite3.Cursor, table: str) -> list[str]:
    """Return the column names of C{table} as declared, in order."""
    rows = cursor.execute(f"PRAGMA table_info({quote_identifier(table)})")
    return [row[1] for row in rows.fetchall()]


def user_tables(cursor: sqlite3.Cursor) -> list[str]:
    """Return the tables holding user data, in the order they were made."""
    rows = cursor.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        " AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
        " AND name NOT LIKE '\\_rpf\\_%' ESCAPE '\\'"
        " ORDER BY rowid"
    ).fetchall()
    return [row[0] for row in rows]


def find_table(cursor: sqlite3.Cursor, name: str) -> str | None:
    """
    Return the name of the user table called C{name} (SQLite names ignore
    case), as the schema spells it, or L{None} when there is none.
    """
    if not TABLE_NAME.match(name) or name.lower().startswith(RESERVED_TABLE_PREFIXES):
        return None
    lowered = name.lower()
    for table in user_tables(cursor):
        if table.lower() == lowered:
            return table
    return None


def schema_object(cursor: sqlite3.Cursor, name: str) -> str | None:
    """Return the type of the schema object called C{name}, if any."""
    row = cursor.execute(
        "SELECT type FROM sqlite_master WHERE lower(name) = lower(?)", (name,)
    ).fetchone()
    return None if row is None else str(row[0])


def table_name_problem(cursor: sqlite3.Cursor, name: str) -> str | None:
    """
    Say why the sink may not write a table called C{name}, or return
    L{None} when it may.
    """
    if not TABLE_NAME.match(name):
        return (
            f"invalid table name {name[:80]!r}: expected 1 to 128 letters, "
            "digits, '_' or '-'"
        )
    if name.lower().startswith(RESERVED_TABLE_PREFIXES):
        return f"table name {name!r} is reserved"
    kind = schema_object(cursor, name)
    if kind == "table":
        return None
    if kind is not None:
        return f"{name!r} is the name of an existing {kind}"
    if table_columns(cursor, name):
        return f"{name!r} is the name of a table built into SQLite"
    return None
