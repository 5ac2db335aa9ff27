"""
The C{params} of each player sink type, read and checked at start-up.

Each type's settings are a frozen record built from the sink's C{params}
mapping, so a bad value stops the player with the key path
(C{sinks[2].params.targetHost}) before anything runs.  Adding a sink type
means adding its record and reader here and registering it in L{READERS}.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import attrs

from replayforge.config import Section

DEFAULT_HTTP_TIMEOUT_SECONDS = 30.0
DEFAULT_HTTP_MAX_RETRIES = 5
DEFAULT_DB_LISTEN_HOST = "127.0.0.1"


@attrs.frozen
class HttpSinkSettings:
    """Where an C{http} sink replays calls, and how patiently."""

    target_host: str
    timeout_seconds: float
    max_retries: int


@attrs.frozen
class DbSinkSettings:
    """The SQLite file of a C{db} sink and the listener of its query API."""

    database: Path
    listen: str | None
    static_dir: Path | None
    row_ttl_seconds: int


SinkSettings = HttpSinkSettings | DbSinkSettings


def read_http_settings(params: Section) -> HttpSinkSettings:
    """Read an C{http} sink's C{targetHost}, C{timeoutSecs}, C{maxRetries}."""
    target = params.text("targetHost")
    if not target.startswith(("http://", "https://")):
        raise params.error(
            "targetHost", f"expected an http:// or https:// URL, got {target!r}"
        )
    return HttpSinkSettings(
        target_host=target.rstrip("/"),
        timeout_seconds=params.number(
            "timeoutSecs", DEFAULT_HTTP_TIMEOUT_SECONDS, minimum=0.001
        ),
        max_retries=params.integer("maxRetries", DEFAULT_HTTP_MAX_RETRIES, minimum=0),
    )


def read_db_settings(params: Section) -> DbSinkSettings:
    """
    Read a C{db} sink's C{database}, C{listen_port}, C{listen_host},
    C{static_dir} and C{row_ttl_sec}.

    The Go player wanted C{listen_port} as a string; a number is accepted
    too, and ours, C{listen} (a Twisted endpoint string), wins over both
    port keys.  Without either the query API is reachable only through the
    player's exposed port.
    """
    database = params.text("database")
    if not database:
        raise params.error("database", "expected the path of a SQLite file")
    port = params.integer("listen_port", 0, minimum=0)
    host = params.text("listen_host", DEFAULT_DB_LISTEN_HOST)
    listen = params.text("listen", "") or None
    if listen is None and port:
        listen = f"tcp:{port}:interface={_escape_endpoint(host)}"
    static_dir = params.text("static_dir", "")
    return DbSinkSettings(
        database=Path(database),
        listen=listen,
        static_dir=Path(static_dir) if static_dir else None,
        row_ttl_seconds=params.integer("row_ttl_sec", 0, minimum=0),
    )


def _escape_endpoint(value: str) -> str:
    """Escape the colons of an IPv6 address inside an endpoint string."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


READERS: dict[str, Callable[[Section], SinkSettings]] = {
    "http": read_http_settings,
    "db": read_db_settings,
}
