"""
The C{params} of the pulled source types, read from the configuration.

Go-era keys keep their meaning: C{filePath}, C{fingerprintLines},
C{removeAfterSecs} and C{httpPath} (logfile), C{interval} in milliseconds
(repeatfile), C{intervalSeconds} (system-stats, pgcall), and pgcall's
C{host}, C{user}, C{password}, C{database}, C{connString}, C{calls} and
C{path}.  Ours: logfile's C{flushPartialAfterSecs}, C{maxLineBytes},
C{fingerprintBytes} and C{positionPath}; pgcall's C{port} and
C{statementTimeoutSecs}.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from replayforge.config import Section

MIB = 1024 * 1024
DEFAULT_FLUSH_PARTIAL_AFTER_SECONDS = 5.0
DEFAULT_MAX_LINE_BYTES = MIB
DEFAULT_FINGERPRINT_BYTES = 1024
DEFAULT_REPEAT_INTERVAL_MS = 1000
DEFAULT_SYSTEM_STATS_INTERVAL_SECONDS = 60
DEFAULT_STATEMENT_TIMEOUT_SECONDS = 30.0
# A truncation marker and a code point cut in two must still fit.
MIN_MAX_LINE_BYTES = 64


@attrs.frozen
class LogFileSettings:
    """
    How a C{logfile} source follows its file.

    @ivar fingerprint_lines: when above 0, the file is recognised by its
        first that many lines instead of its first C{fingerprint_bytes}.
    @ivar remove_after_seconds: truncate the file once it was read to its
        end and this long passed since the last truncation; 0 never does.
    @ivar position_path: the SQLite file keeping the read position.
    """

    file_path: Path
    http_path: str
    fingerprint_lines: int
    fingerprint_bytes: int
    remove_after_seconds: float
    flush_partial_after_seconds: float
    max_line_bytes: int
    position_path: Path


@attrs.frozen
class RepeatFileSettings:
    """A C{repeatfile} source: every line of a file, every C{interval}."""

    file_path: Path
    interval_seconds: float


@attrs.frozen
class SystemStatsSettings:
    """A C{system-stats} source: the machine's figures every interval."""

    interval_seconds: int


@attrs.frozen
class PgCall:
    """One named SQL statement a C{pgcall} source runs."""

    name: str
    sql: str


@attrs.frozen
class PgCallSettings:
    """
    A C{pgcall} source: SQL calls against PostgreSQL every interval.

    @ivar conninfo: the libpq connection string (C{connString}, or one
        built from C{host}, C{port}, C{user}, C{password}, C{database}).
    """

    interval_seconds: int
    conninfo: str = attrs.field(repr=False)
    calls: list[PgCall]
    path: str
    statement_timeout_seconds: float


SourceSettings = (
    LogFileSettings | RepeatFileSettings | SystemStatsSettings | PgCallSettings
)


def read_source_settings(
    kind: str, source_id: str, params: Section, hook_interval: float, source: Section
) -> SourceSettings | None:
    """
    Read the C{params} of a source of type C{kind}.

    @param source: the source's own section, for errors about its keys.
    @return: the settings, or L{None} for a type without any (C{http}).
    @raise replayforge.config.ConfigError: for a value that cannot be used.
    """
    if kind == "logfile":
        if hook_interval <= 0:
            raise source.error(
                "hookInterval", "expected a polling period above 0 for a logfile"
            )
        return _logfile(source_id, params)
    if kind == "repeatfile":
        return RepeatFileSettings(
            file_path=_path(params, "filePath"),
            interval_seconds=params.integer(
                "interval", DEFAULT_REPEAT_INTERVAL_MS, minimum=1
            )
            / 1000,
        )
    if kind == "system-stats":
        return SystemStatsSettings(
            interval_seconds=params.integer(
                "intervalSeconds", DEFAULT_SYSTEM_STATS_INTERVAL_SECONDS, minimum=1
            )
        )
    if kind == "pgcall":
        return _pgcall(params)
    return None


def _path(params: Section, key: str) -> Path:
    text = params.text(key)
    if not text:
        raise params.error(key, "expected a file path")
    return Path(text)


def _logfile(source_id: str, params: Section) -> LogFileSettings:
    http_path = params.text("httpPath", "/") or "/"
    position = params.text("positionPath", "") or f"{source_id}-source.sqlite3"
    return LogFileSettings(
        file_path=_path(params, "filePath"),
        http_path=http_path,
        fingerprint_lines=params.integer("fingerprintLines", 0, minimum=0),
        fingerprint_bytes=params.integer(
            "fingerprintBytes", DEFAULT_FINGERPRINT_BYTES, minimum=1
        ),
        remove_after_seconds=params.number("removeAfterSecs", 0, minimum=0),
        flush_partial_after_seconds=params.number(
            "flushPartialAfterSecs", DEFAULT_FLUSH_PARTIAL_AFTER_SECONDS, minimum=0
        ),
        max_line_bytes=params.integer(
            "maxLineBytes", DEFAULT_MAX_LINE_BYTES, minimum=MIN_MAX_LINE_BYTES
        ),
        position_path=Path(position),
    )


def _conninfo_value(value: str) -> str:
    """Quote a value for a libpq C{key=value} connection string."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _pgcall(params: Section) -> PgCallSettings:
    conninfo = params.text("connString", "")
    if not conninfo:
        parts = {
            "host": params.text("host", ""),
            "port": params.text("port", ""),
            "user": params.text("user", ""),
            "password": params.text("password", ""),
            "dbname": params.text("database", ""),
        }
        conninfo = " ".join(
            f"{key}={_conninfo_value(value)}" for key, value in parts.items() if value
        )
        # The Go proxy never asked for TLS; a server that offers it is used.
        conninfo += " sslmode=prefer"
    calls = []
    for index, call in enumerate(params.sections("calls")):
        calls.append(PgCall(name=call.text("name"), sql=call.text("sql")))
        call.finish()
        if not calls[-1].name:
            raise params.error(f"calls[{index}].name", "expected a name")
    if not calls:
        raise params.error("calls", "expected at least one call")
    names = [call.name for call in calls]
    if len(set(names)) != len(names):
        raise params.error("calls", f"expected distinct names, got {names}")
    return PgCallSettings(
        interval_seconds=params.integer("intervalSeconds", minimum=1),
        conninfo=conninfo.strip(),
        calls=calls,
        path=params.text("path", "/") or "/",
        statement_timeout_seconds=params.number(
            "statementTimeoutSecs", DEFAULT_STATEMENT_TIMEOUT_SECONDS, minimum=0
        ),
    )
