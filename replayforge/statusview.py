"""
Read a relay's C{/statusz} and show it as tables a person can scan.

Used by C{replayforge status URL}.  The fetch is one blocking request with a
short timeout: this is a command-line tool, never code inside a reactor.
Only the Go relay's field names are read, so a Go relay can be shown too.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from replayforge.status import GO_ZERO_TIME, parse_rfc3339

DEFAULT_TIMEOUT_SECONDS = 5.0
MAX_STATUS_BYTES = 16 * 1024 * 1024


class StatusUnavailable(Exception):
    """The status could not be read; the message is one line."""


def statusz_url(url: str) -> str:
    """
    Turn a relay's status base URL into its C{/statusz} URL.

    A URL that already ends in C{/statusz} is kept.

    @raise StatusUnavailable: for anything but an http or https URL.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise StatusUnavailable(f"expected an http:// or https:// URL, got {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/statusz"):
        path += "/statusz"
    return urlunsplit(parts._replace(path=path, fragment=""))


def fetch_status(url: str, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> dict[str, Any]:
    """
    Fetch and decode a relay's status document.

    @raise StatusUnavailable: when the relay cannot be reached, answers an
        error, or answers something that is not a relay's status.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (scheme checked)
            body = response.read(MAX_STATUS_BYTES + 1)
    except urllib.error.HTTPError as error:
        raise StatusUnavailable(f"{url} answered {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise StatusUnavailable(f"cannot reach {url}: {error.reason}") from None
    except (OSError, ValueError) as error:
        raise StatusUnavailable(f"cannot reach {url}: {error}") from None
    if len(body) > MAX_STATUS_BYTES:
        raise StatusUnavailable(f"{url} answered more than {MAX_STATUS_BYTES} bytes")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise StatusUnavailable(f"{url} did not answer JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("buckets"), dict):
        raise StatusUnavailable(f"{url} did not answer a relay's status (no buckets)")
    return document


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: Any) -> float | None:
    """A finite number of the document, or L{None} for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _count(value: Any) -> str:
    number = _number(value)
    return "-" if number is None else f"{round(number):,}"


def _percent(value: Any) -> str:
    number = _number(value)
    return "-" if number is None else f"{number:.1f}%"


def _size(value: Any) -> str:
    size = _number(value)
    if size is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _age(text: Any, now: float) -> str:
    moment = parse_rfc3339(text)
    if moment is None:
        # A text that is not a time is shown as it is.
        if isinstance(text, str) and text and text != GO_ZERO_TIME:
            return text
        return "never"
    seconds = max(0.0, now - moment)
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Align C{rows} under C{headers}; the first column left, the rest right."""
    widths = [len(header) for header in headers]
    for row in rows:
        widths = [
            max(width, len(text)) for width, text in zip(widths, row, strict=True)
        ]

    def line(cells: Sequence[str]) -> str:
        parts = [
            text.ljust(width) if index == 0 else text.rjust(width)
            for index, (text, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)]) + "\n"


# The in, out, received and sent columns of every bucket and traffic row.
COUNT_FIELDS = (
    "rxMessagesByMinute",
    "txMessageByMinute",
    "rxMessagesSinceStart",
    "txMessagesSinceStart",
)


def _counts(entry: Mapping[str, Any]) -> list[str]:
    return [_count(entry.get(field)) for field in COUNT_FIELDS]


def _bucket_rows(buckets: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for name, raw in buckets.items():
        bucket = _mapping(raw)
        cap_kb = bucket.get("databaseMaxSizeKb")
        cap = _size(cap_kb * 1024) if isinstance(cap_kb, int) and cap_kb else "none"
        size_kb = bucket.get("databaseSizeKb")
        size = _size(size_kb * 1024) if isinstance(size_kb, int) else "-"
        dropped = _mapping(bucket.get("dropped"))
        rows.append(
            [
                str(name),
                *_counts(bucket),
                f"{size} / {cap}",
                _count(sum(v for v in dropped.values() if isinstance(v, int))),
            ]
        )
    return rows


def _traffic_rows(entries: Mapping[str, Any], now: float) -> list[list[str]]:
    rows = []
    for name, raw in sorted(entries.items()):
        entry = _mapping(raw)
        rows.append(
            [
                str(name),
                *_counts(entry),
                _age(entry.get("rxLastMessageDate"), now),
                _age(entry.get("txLastAccess"), now),
            ]
        )
    return rows


def _node_rows(nodes: Mapping[str, Any], now: float) -> list[list[str]]:
    rows = []
    for name, raw in sorted(nodes.items()):
        node = _mapping(raw)
        env = node.get("envName")
        rows.append(
            [
                str(name),
                env if isinstance(env, str) and env else "-",
                _age(node.get("lastUpdated"), now),
                _size(node.get("memoryProcess")),
                _percent(node.get("memoryHostUsedPct")),
                _percent(node.get("cpuPercentHost")),
                _count(node.get("warnCount")),
                _count(node.get("errorCount")),
            ]
        )
    return rows


def render_status(document: Mapping[str, Any], now: float) -> str:
    """
    Render a relay's status document as text tables.

    @param now: the Unix time ages are counted from.
    """
    buckets = _mapping(document.get("buckets"))
    hosts = _mapping(document.get("hostnames"))
    envs = _mapping(document.get("envs"))
    nodes = _mapping(document.get("nodeInfo"))
    traffic_headers = ["IN/MIN", "OUT/MIN", "RECEIVED", "SENT", "LAST IN", "LAST OUT"]
    parts = [
        f"relay up {document.get('uptime', '?')}: {len(buckets)} buckets, "
        f"{len(envs)} environments, {len(hosts)} hosts, {len(nodes)} node reports\n",
        "\n",
        table(
            [
                "BUCKET",
                "IN/MIN",
                "OUT/MIN",
                "RECEIVED",
                "SENT",
                "SIZE / CAP",
                "DROPPED",
            ],
            _bucket_rows(buckets),
        ),
    ]
    if envs:
        parts += [
            "\n",
            table(["ENVIRONMENT", *traffic_headers], _traffic_rows(envs, now)),
        ]
    if hosts:
        parts += ["\n", table(["HOST", *traffic_headers], _traffic_rows(hosts, now))]
    if nodes:
        parts += [
            "\n",
            table(
                ["NODE", "ENV", "REPORTED", "MEMORY", "HOST MEM", "CPU", "WARN", "ERR"],
                _node_rows(nodes, now),
            ),
        ]
    return "".join(parts)
