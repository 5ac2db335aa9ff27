"""
Where each C{logfile} source stands in its files, kept in SQLite.

One row per file a source read lately, keyed by the source, the file's
device and inode, with the fingerprint of its first bytes that tells a new
file in a reused inode from the old one.  The source saves a position only
after the events of the lines before it were committed to the sink
buffers: a crash between the two repeats that one batch, and never skips
a line.  The file (C{<id>-source.sqlite3} by default, the name the Go proxy
gave every source) is separate from the sink buffers because a script may
send one line's events to any of them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore

from replayforge.proxy.sources.identity import Fingerprint, Identity, Position
from replayforge.store import open_pool, prepare_now, run_interaction

# Enough for a file, the copies of its last rotations and a few replaced.
KEPT_ROWS = 16

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS file_positions ("
    " source TEXT NOT NULL,"
    " device INTEGER NOT NULL,"
    " inode INTEGER NOT NULL,"
    " fingerprint_length INTEGER NOT NULL,"
    " fingerprint TEXT NOT NULL,"
    " offset INTEGER NOT NULL,"
    " skipping INTEGER NOT NULL,"
    " path TEXT NOT NULL,"
    " updated_at REAL NOT NULL,"
    " PRIMARY KEY (source, device, inode))",
)


class PositionStore:
    """The saved positions of one source's files."""

    def __init__(self, path: str | Path, source_id: str, reactor: IReactorCore) -> None:
        self.path = Path(path)
        self.source_id = source_id
        self._pool = open_pool(self.path, reactor)

    def load(self) -> list[Position]:
        """
        Create the schema if needed and read the saved positions, oldest
        first.  At start-up, before the reactor runs.

        @raise replayforge.store.StoreUnavailable: when the file cannot be
            opened.
        """
        return prepare_now(self.path, self._load)

    def _load(self, cursor: sqlite3.Cursor) -> list[Position]:
        for statement in _SCHEMA:
            cursor.execute(statement)
        rows = cursor.execute(
            "SELECT device, inode, fingerprint_length, fingerprint, offset,"
            " skipping, path FROM file_positions WHERE source = ?"
            " ORDER BY updated_at",
            (self.source_id,),
        ).fetchall()
        return [
            Position(
                device=device,
                inode=inode,
                fingerprint=Fingerprint(length, digest),
                offset=offset,
                skipping=bool(skipping),
                path=path,
            )
            for device, inode, length, digest, offset, skipping, path in rows
        ]

    def save(
        self,
        position: Position | None,
        forgotten: Sequence[Identity],
        now: float,
    ) -> Deferred[None]:
        """Store C{position} and drop the rows of C{forgotten} files, at once."""
        return run_interaction(self._pool, self._save, position, forgotten, now)

    def _save(
        self,
        cursor: sqlite3.Cursor,
        position: Position | None,
        forgotten: Sequence[Identity],
        now: float,
    ) -> None:
        for device, inode in forgotten:
            cursor.execute(
                "DELETE FROM file_positions"
                " WHERE source = ? AND device = ? AND inode = ?",
                (self.source_id, device, inode),
            )
        if position is None:
            return
        cursor.execute(
            "INSERT OR REPLACE INTO file_positions (source, device, inode,"
            " fingerprint_length, fingerprint, offset, skipping, path, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self.source_id,
                position.device,
                position.inode,
                position.fingerprint.length,
                position.fingerprint.digest,
                position.offset,
                int(position.skipping),
                position.path,
                now,
            ),
        )
        cursor.execute(
            "DELETE FROM file_positions WHERE source = ? AND rowid NOT IN ("
            " SELECT rowid FROM file_positions WHERE source = ?"
            " ORDER BY updated_at DESC LIMIT ?)",
            (self.source_id, self.source_id, KEPT_ROWS),
        )

    def close(self) -> None:
        """Close the file."""
        self._pool.close()
