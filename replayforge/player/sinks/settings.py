"""
The C{params} of each player sink type, read and checked at start-up.

Each type's settings are a frozen record built from the sink's C{params}
mapping, so a bad value stops the player with the key path
(C{sinks[2].params.targetHost}) before anything runs.  Adding a sink type
means adding its record and reader here and registering it in L{READERS}.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from replayforge.backoff import Backoff
from replayforge.config import Section
from replayforge.outgoing import OutgoingSettings, read_outgoing_settings

DEFAULT_HTTP_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_RETRIES = 5
DEFAULT_RETRY_INITIAL_SECONDS = 0.5
DEFAULT_RETRY_MAXIMUM_SECONDS = 60.0
DEFAULT_RETRY_STATUS_CODES = frozenset({408, 425, 429, 500, *range(502, 600)})
DEFAULT_HTTP_CONCURRENCY = 1
MAX_HTTP_CONCURRENCY = 64
DEFAULT_DB_LISTEN_HOST = "127.0.0.1"
DEFAULT_LOG_BACKUPS = 5
WEBHOOK_METHODS = frozenset(
    {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"}
)


@attrs.frozen
class RetryPolicy:
    """
    When and how patiently a sink tries a failed event again.

    @ivar max_retries: retries after the first attempt; an event failing
        once more is given up and dead-lettered.
    @ivar status_codes: the HTTP answers worth another try.
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    initial_seconds: float = DEFAULT_RETRY_INITIAL_SECONDS
    maximum_seconds: float = DEFAULT_RETRY_MAXIMUM_SECONDS
    status_codes: frozenset[int] = DEFAULT_RETRY_STATUS_CODES

    def retries(self, code: int) -> bool:
        """Tell whether an answer with status C{code} is worth another try."""
        return code in self.status_codes

    def backoff(self, rng: Callable[[], float] = random.random) -> Backoff:
        """Return the exponential backoff, with jitter, between attempts."""
        return Backoff(self.initial_seconds, self.maximum_seconds, rng)


@attrs.frozen
class HttpSinkSettings:
    """Where an C{http} sink replays calls, and how patiently."""

    target_host: str
    timeout_seconds: float = DEFAULT_HTTP_TIMEOUT_SECONDS
    retry: RetryPolicy = RetryPolicy()
    max_concurrency: int = DEFAULT_HTTP_CONCURRENCY
    outgoing: OutgoingSettings = attrs.field(factory=OutgoingSettings)


@attrs.frozen
class DbSinkSettings:
    """The SQLite file of a C{db} sink and the listener of its query API."""

    database: Path
    listen: str | None
    static_dir: Path | None
    row_ttl_seconds: int


@attrs.frozen
class LogSinkSettings:
    """
    Where a C{log} sink appends its lines.

    @ivar path: the file, or L{None} to write each event to the player's log.
    @ivar max_bytes: rotate the file once it passes this size (0: never).
    @ivar backups: how many rotated files (C{path.1}, C{path.2}, ...) to keep.
    """

    path: Path | None
    max_bytes: int = 0
    backups: int = DEFAULT_LOG_BACKUPS


@attrs.frozen
class WebhookSettings:
    """One named webhook of a C{notification} sink."""

    name: str
    url: str
    method: str = "POST"
    json: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    build_payload: str = ""


@attrs.frozen
class NotificationSinkSettings:
    """The webhooks a C{notification} sink calls for each message."""

    webhooks: tuple[WebhookSettings, ...]
    timeout_seconds: float = DEFAULT_HTTP_TIMEOUT_SECONDS
    retry: RetryPolicy = RetryPolicy()
    outgoing: OutgoingSettings = attrs.field(factory=OutgoingSettings)


SinkSettings = (
    HttpSinkSettings | DbSinkSettings | LogSinkSettings | NotificationSinkSettings
)


def read_retry_policy(params: Section) -> RetryPolicy:
    """
    Read C{maxRetries}, C{retryInitialSecs}, C{retryMaxSecs} and
    C{retryStatusCodes}.

    C{retryStatusCodes} lists codes (C{503}) and classes (C{"5xx"}); the
    default is 408, 425, 429 and every 5xx but 501.
    """
    initial = params.number(
        "retryInitialSecs", DEFAULT_RETRY_INITIAL_SECONDS, minimum=0.001
    )
    maximum = params.number("retryMaxSecs", DEFAULT_RETRY_MAXIMUM_SECONDS, minimum=0)
    if maximum < initial:
        raise params.error(
            "retryMaxSecs",
            f"expected at least retryInitialSecs ({initial:g}), got {maximum:g}",
        )
    codes = params.plain("retryStatusCodes", None)
    return RetryPolicy(
        max_retries=params.integer("maxRetries", DEFAULT_MAX_RETRIES, minimum=0),
        initial_seconds=initial,
        maximum_seconds=maximum,
        status_codes=(
            DEFAULT_RETRY_STATUS_CODES
            if codes is None
            else _status_codes(params, "retryStatusCodes", codes)
        ),
    )


def _status_codes(params: Section, key: str, value: Any) -> frozenset[int]:
    if not isinstance(value, list):
        raise params.error(
            key, f'expected a list of codes such as [429, "5xx"], got {value!r}'
        )
    codes: set[int] = set()
    for item in value:
        text = str(item).strip().lower()
        if isinstance(item, bool) or not isinstance(item, int | str):
            text = ""
        if len(text) == 3 and text[0] in "12345" and text[1:] == "xx":
            start = int(text[0]) * 100
            codes.update(range(start, start + 100))
        elif text.isdigit() and 100 <= int(text) <= 599:
            codes.add(int(text))
        else:
            raise params.error(
                key, f'expected HTTP status codes or classes like "5xx", got {item!r}'
            )
    return frozenset(codes)


def read_http_settings(params: Section) -> HttpSinkSettings:
    """
    Read an C{http} sink's C{targetHost}, C{timeoutSecs},
    C{maxConcurrency}, retry policy and TLS keys (C{caFile}, C{clientCert},
    C{clientKey}, C{insecureSkipVerify}).
    """
    target = params.url("targetHost")
    concurrency = params.integer("maxConcurrency", DEFAULT_HTTP_CONCURRENCY, minimum=1)
    if concurrency > MAX_HTTP_CONCURRENCY:
        raise params.error(
            "maxConcurrency",
            f"expected at most {MAX_HTTP_CONCURRENCY}, got {concurrency}",
        )
    return HttpSinkSettings(
        target_host=target.rstrip("/"),
        timeout_seconds=params.number(
            "timeoutSecs", DEFAULT_HTTP_TIMEOUT_SECONDS, minimum=0.001
        ),
        retry=read_retry_policy(params),
        max_concurrency=concurrency,
        outgoing=read_outgoing_settings(params),
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
    port = params.port("listen_port", 0)
    host = params.text("listen_host", DEFAULT_DB_LISTEN_HOST)
    listen = params.endpoint("listen") or None
    if listen is None and port:
        listen = f"tcp:{port}:interface={_escape_endpoint(host)}"
    static_dir = params.text("static_dir", "")
    return DbSinkSettings(
        database=Path(database),
        listen=listen,
        static_dir=Path(static_dir) if static_dir else None,
        row_ttl_seconds=params.integer("row_ttl_sec", 0, minimum=0),
    )


def read_log_settings(params: Section) -> LogSinkSettings:
    """
    Read a C{log} sink's C{logFilePath}, C{maxFileBytes} and C{maxBackups}.

    The Go player's C{logLevel} is accepted and has no effect.
    """
    path = params.text("logFilePath", "")
    params.text("logLevel", "")
    return LogSinkSettings(
        path=Path(path) if path else None,
        max_bytes=params.integer("maxFileBytes", 0, minimum=0),
        backups=params.integer("maxBackups", DEFAULT_LOG_BACKUPS, minimum=1),
    )


def read_notification_settings(params: Section) -> NotificationSinkSettings:
    """
    Read a C{notification} sink's C{webhooks} (name to C{url}, C{method},
    C{contentType}, C{header}, C{buildPayload}), C{timeoutSecs}, retry
    policy and TLS keys (C{caFile}, C{clientCert}, C{clientKey},
    C{insecureSkipVerify}: one set for all its webhooks).
    """
    webhooks = []
    for name, hook in params.named_sections("webhooks"):
        url = hook.url("url", "put credentials in an Authorization header")
        method = hook.text("method", "POST").upper() or "POST"
        if method not in WEBHOOK_METHODS:
            raise hook.error(
                "method", f"expected one of {', '.join(sorted(WEBHOOK_METHODS))}"
            )
        content_type = hook.text("contentType", "plain")
        if content_type not in ("plain", "json"):
            raise hook.error(
                "contentType", f'expected "plain" or "json", got {content_type!r}'
            )
        header = hook.section("header")
        headers = tuple((key, header.text(key)) for key in header.raw)
        header.finish()
        webhooks.append(
            WebhookSettings(
                name=name,
                url=url,
                method=method,
                json=content_type == "json",
                headers=headers,
                build_payload=hook.text("buildPayload", ""),
            )
        )
        hook.finish()
    if not webhooks:
        raise params.error("webhooks", "expected at least one named webhook")
    return NotificationSinkSettings(
        webhooks=tuple(webhooks),
        timeout_seconds=params.number(
            "timeoutSecs", DEFAULT_HTTP_TIMEOUT_SECONDS, minimum=0.001
        ),
        retry=read_retry_policy(params),
        outgoing=read_outgoing_settings(params),
    )


def _escape_endpoint(value: str) -> str:
    """Escape the colons of an IPv6 address inside an endpoint string."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


READERS: dict[str, Callable[[Section], SinkSettings]] = {
    "http": read_http_settings,
    "db": read_db_settings,
    "log": read_log_settings,
    "notification": read_notification_settings,
}
