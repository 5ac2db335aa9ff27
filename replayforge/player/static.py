"""
Serve files from one folder, and nothing outside it.

A request's path segments (already percent-decoded by twisted.web) are
checked one by one: C{..}, a segment holding C{/}, C{\\} or NUL (an encoded
slash or an absolute path in disguise) and undecodable bytes are refused;
the file found is then resolved, symbolic links included, and served only
if it still lies inside the folder.  A folder is served as its
C{index.html}; there are no directory listings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from twisted.web.iweb import IRequest
from twisted.web.pages import notFound
from twisted.web.resource import IResource
from twisted.web.static import File

_FORBIDDEN_IN_SEGMENT = ("/", "\\", "\x00")


def resolve_static(root: Path, segments: Sequence[bytes]) -> Path | None:
    """
    Return the file under C{root} that C{segments} name, or L{None} when
    they name none or try to leave C{root}.
    """
    parts = []
    for raw in segments:
        try:
            part = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if part in ("", "."):
            continue
        if part == ".." or any(mark in part for mark in _FORBIDDEN_IN_SEGMENT):
            return None
        parts.append(part)
    try:
        base = root.resolve(strict=True)
        candidate = base.joinpath(*parts).resolve()
        if candidate.is_dir():
            candidate = (candidate / "index.html").resolve()
        if not candidate.is_relative_to(base) or not candidate.is_file():
            return None
    except (OSError, RuntimeError, ValueError):
        return None
    return candidate


def static_file(request: IRequest, root: Path, segments: Sequence[bytes]) -> IResource:
    """Return the resource serving what C{segments} name under C{root}."""
    found = resolve_static(root, segments)
    if found is None:
        return notFound("No such file", "")
    # The file answers the request itself: nothing is left to traverse.
    request.postpath = []
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    resource: IResource = File(str(found), defaultType="application/octet-stream")
    return resource
