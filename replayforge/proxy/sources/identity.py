"""
How a followed file is known: its device, its inode, and a fingerprint of
its first bytes that tells a new file in a reused inode from the old one;
and where its rotated copies are looked for: beside it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import attrs

# Enough for the first lines of most logs; a fingerprint never reads more.
FINGERPRINT_HEAD_BYTES = 64 * 1024
# How many files beside the followed one are looked at for a rotated copy.
SIBLING_LIMIT = 64

Identity = tuple[int, int]


@attrs.frozen
class Fingerprint:
    """A digest of a file's first C{length} bytes."""

    length: int
    digest: str

    @classmethod
    def of(cls, head: bytes) -> Fingerprint:
        """Fingerprint the bytes C{head}."""
        return cls(len(head), hashlib.sha256(head).hexdigest())


EMPTY_FINGERPRINT = Fingerprint.of(b"")


@attrs.frozen
class Position:
    """
    How far the lines of one file were delivered.

    @ivar offset: the first byte not yet delivered.
    @ivar skipping: the bytes at C{offset} are the rest of a line already
        delivered truncated; they are skipped up to the next newline.
    """

    device: int
    inode: int
    fingerprint: Fingerprint
    offset: int
    skipping: bool
    path: str

    @property
    def identity(self) -> Identity:
        """The device and inode that tell the file apart."""
        return (self.device, self.inode)


def matches(fd: int, size: int, fingerprint: Fingerprint) -> bool:
    """Tell whether the file at C{fd}, of C{size} bytes, has C{fingerprint}."""
    if fingerprint.length == 0:
        return True
    if size < fingerprint.length:
        return False
    head = os.pread(fd, fingerprint.length, 0)
    return Fingerprint.of(head) == fingerprint


def grown_fingerprint(
    fd: int,
    size: int,
    fingerprint: Fingerprint,
    fingerprint_bytes: int,
    fingerprint_lines: int,
) -> Fingerprint:
    """
    Extend C{fingerprint} as the file grows: up to its first
    C{fingerprint_lines} lines when that is above 0, else up to its first
    C{fingerprint_bytes} bytes.
    """
    if fingerprint_lines:
        if fingerprint.length >= FINGERPRINT_HEAD_BYTES:
            return fingerprint
        head = os.pread(fd, min(size, FINGERPRINT_HEAD_BYTES), 0)
        end = -1
        for _ in range(fingerprint_lines):
            end = head.find(b"\n", end + 1)
            if end < 0:
                break
        length = end + 1 if end >= 0 else len(head)
    else:
        if fingerprint.length >= fingerprint_bytes:
            return fingerprint
        length = min(size, fingerprint_bytes)
        head = b""
    if length <= fingerprint.length:
        return fingerprint
    if len(head) < length:
        head = os.pread(fd, length, 0)
    return Fingerprint.of(head[:length])


def open_regular(path: Path) -> tuple[int, os.stat_result] | None:
    """Open the regular file at C{path} to read; L{None} when it cannot be."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    return fd, info


def siblings(path: Path) -> list[Path]:
    """
    The files beside C{path} whose names start as its does (C{app.log.1},
    C{app-2024-12-10.log}), newest first: where rotated copies go.
    """
    prefix = path.name.split(".", 1)[0] or path.name
    try:
        entries = [
            entry
            for entry in os.scandir(path.parent)
            if entry.name != path.name
            and entry.name.startswith(prefix)
            and entry.is_file(follow_symlinks=False)
        ]
    except OSError:
        return []
    entries.sort(key=_modified, reverse=True)
    return [Path(entry.path) for entry in entries[:SIBLING_LIMIT]]


def _modified(entry: os.DirEntry[str]) -> float:
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return 0.0
