"""
What a daemon's log output goes through: level, repeats, secrets, format.

Every line a daemon writes, its own or Twisted's, passes one filter
(L{DaemonLogFilter}): lines below the configured level are left out, the
same line is written at most once per 30 seconds followed by a count of
what was held back (L{replayforge.logthrottle}), and tokens and passwords
are masked (L{mask_text}).  Warnings and errors are counted for the node
reports a daemon sends its relay.

The level comes from C{LOG_LEVEL} (relay, player) or C{RPF_LOG_LEVEL}, else
the configuration's C{verbosityLevel} (proxy): C{trace}, C{debug}, C{info}
(the default), C{warn} or C{error}.  Twisted has no trace level: C{trace}
shows what C{debug} shows.

The daemons' options put the filter in front of whatever twistd would log
to (L{route_twistd_logging}); C{twistd --logger=replayforge.logs.json_observer}
writes one JSON object per line to standard output instead, which journald
and log shippers read as they are.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from typing import IO, Any
from urllib.parse import unquote_plus

import attrs
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    LogEvent,
    LogLevel,
    formatEvent,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from twisted.python.reflect import namedAny
from zope.interface import implementer

from replayforge.logthrottle import DEFAULT_INTERVAL_SECONDS, ThrottlingObserver
from replayforge.status import rfc3339

LEVELS = {
    "trace": LogLevel.debug,
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
}

LEVEL_VARIABLES = {
    "relay": "LOG_LEVEL",
    "player": "LOG_LEVEL",
    "proxy": "RPF_LOG_LEVEL",
}

MASK = "***"

# Secrets shorter than this are not looked for literally: masking every
# "ab" in every line would make logs unreadable and protect nothing.
MIN_LITERAL_SECRET = 4

_SCHEME_TOKEN = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]+")
_URL = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+")
# Substrings of query parameter names whose values are masked: they also
# cover apikey, api_key, passwd, access_token, signature and the like.
_SECRET_QUERY_NAME = re.compile(r"(?i)token|key|secret|password|passwd|pwd|auth|sig")
_SECRET_FIELD = re.compile(
    r"(?i)(?<![A-Za-z0-9_])([\"']?(?:authBearer|relayAuthenticationBearer|"
    r"httpPassword|password|passwd|auth|token|secret|authorization)[\"']?"
    r"\s*[:=]\s*)(\[[^\]]*\]|\"[^\"]*\"|'[^']*'|[^\s,;&}]+)"
)


@attrs.define
class LogSettings:
    """
    The log level, the secrets to mask and the warning and error counts of
    one daemon.
    """

    level: LogLevel = LogLevel.info
    secrets: set[str] = attrs.field(factory=set)
    warnings: int = 0
    errors: int = 0

    def add_secrets(self, values: Iterable[str]) -> None:
        """Mask C{values} wherever they appear in a line."""
        self.secrets.update(
            value for value in values if len(value) >= MIN_LITERAL_SECRET
        )


# One daemon runs per process: its options and makeService set this up
# before twistd starts logging.
DAEMON = LogSettings()


def parse_level(text: str) -> LogLevel | None:
    """Return the level named by C{text}, or L{None} for an unknown name."""
    return LEVELS.get(text.strip().lower())


def daemon_level(
    kind: str, environ: Mapping[str, str], configured: str = ""
) -> tuple[LogLevel, str | None]:
    """
    Choose a daemon's log level: its environment variable, else
    C{configured} (the proxy's C{verbosityLevel}), else C{info}.

    @return: the level, and a warning to log when a name was not known.
    """
    variable = LEVEL_VARIABLES.get(kind, "LOG_LEVEL")
    for origin, text in [
        (variable, environ.get(variable, "")),
        ("verbosityLevel", configured),
    ]:
        if not text.strip():
            continue
        level = parse_level(text)
        if level is not None:
            return level, None
        return LogLevel.info, (
            f"unknown log level {text!r} in {origin}: expected one of "
            f"{', '.join(sorted(LEVELS))}; using info"
        )
    return LogLevel.info, None


def configure_daemon(
    kind: str,
    secrets: Iterable[str] = (),
    configured_level: str = "",
    environ: Mapping[str, str] | None = None,
    settings: LogSettings = DAEMON,
) -> str | None:
    """
    Set the daemon's level and the secrets its output must never show.

    @return: a warning to log when the level name was not known.
    """
    level, warning = daemon_level(
        kind, os.environ if environ is None else environ, configured_level
    )
    settings.level = level
    settings.add_secrets(secrets)
    return warning


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """
    Replace tokens and passwords in C{text} with C{***}: bearer and basic
    credentials, the password and secret query parameters of a URL, values
    of secret-named fields, and every literal in C{secrets}.
    """
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _SCHEME_TOKEN.sub(rf"\1\2{MASK}", text)
    text = mask_urls(text)
    return _SECRET_FIELD.sub(rf"\1{MASK}", text)


def mask_url(url: str, mask: str = MASK) -> str:
    """
    Mask the secrets of one URL: its password, and the value of each query
    parameter whose name looks secret (C{token}, C{api_key}, C{sig}, ...).

    The rest of the URL stays as it was written.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    ends = [rest.find(mark) for mark in "/?#" if mark in rest]
    authority_end = min(ends, default=len(rest))
    authority, tail = rest[:authority_end], rest[authority_end:]
    userinfo, at, host = authority.rpartition("@")
    if at and ":" in userinfo:
        authority = f"{userinfo.partition(':')[0]}:{mask}@{host}"
    before_fragment, hash_mark, fragment = tail.partition("#")
    path, question_mark, query = before_fragment.partition("?")
    if question_mark:
        query = "&".join(
            _mask_parameter(parameter, mask) for parameter in query.split("&")
        )
    return f"{scheme}://{authority}{path}{question_mark}{query}{hash_mark}{fragment}"


def mask_urls(text: str, mask: str = MASK) -> str:
    """Mask the secrets of every URL in C{text} (see L{mask_url})."""
    return _URL.sub(lambda match: mask_url(match.group(0), mask), text)


def _mask_parameter(parameter: str, mask: str) -> str:
    name, equals, value = parameter.partition("=")
    if value and _SECRET_QUERY_NAME.search(unquote_plus(name)):
        return f"{name}{equals}{mask}"
    return parameter


def mask_value(value: Any, secrets: Iterable[str] = ()) -> Any:
    """
    Mask every string in a JSON-like C{value}; a string under a
    secret-named key is masked whole.
    """
    secrets = tuple(secrets)
    if isinstance(value, str):
        return mask_text(value, secrets)
    if isinstance(value, list):
        return [mask_value(item, secrets) for item in value]
    if isinstance(value, dict):
        masked = {}
        for key, item in value.items():
            if isinstance(item, str) and item and _is_secret_name(str(key)):
                masked[key] = MASK
            else:
                masked[key] = mask_value(item, secrets)
        return masked
    return value


def _is_secret_name(name: str) -> bool:
    return _SECRET_FIELD.fullmatch(f"{name}=x") is not None


_PLAIN = (int, float, bool, type(None), type(LogLevel.info))


def mask_event(event: LogEvent, secrets: Iterable[str] = ()) -> LogEvent:
    """
    Return C{event} with its message, fields and failure masked; the same
    event when nothing needed masking.
    """
    secrets = tuple(secrets)
    changes: dict[str, Any] = {}
    for key, value in event.items():
        if key.startswith("log_") and key not in ("log_format", "log_text"):
            continue
        if isinstance(value, _PLAIN):
            continue
        text = value if isinstance(value, str) else _safe_str(value)
        masked = mask_text(text, secrets)
        if masked != text:
            changes[key] = masked
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        traceback = failure.getTraceback()
        masked = mask_text(traceback, secrets)
        if masked != traceback:
            # The failure itself would be rendered unmasked: keep its text.
            changes["log_failure"] = None
            changes["log_format"] = (
                str(changes.get("log_format", event.get("log_format") or ""))
                + "\n{masked_traceback}"
            )
            changes["masked_traceback"] = masked
    if not changes:
        return event
    masked_event = {**event, **changes}
    if masked_event.get("log_failure") is None:
        masked_event.pop("log_failure", None)
    return masked_event


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return ""


@implementer(ILogObserver)
class DaemonLogFilter:
    """
    Pass to C{observer} the events at or above the daemon's level, each
    distinct line at most once per interval, with secrets masked.
    """

    def __init__(
        self,
        observer: ILogObserver,
        settings: LogSettings = DAEMON,
        interval: float = DEFAULT_INTERVAL_SECONDS,
    ) -> None:
        self._settings = settings
        self._observer = observer
        self.throttle = ThrottlingObserver(self._masked, interval)

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level", LogLevel.info)
        if level >= LogLevel.error:
            self._settings.errors += 1
        elif level >= LogLevel.warn:
            self._settings.warnings += 1
        if level < self._settings.level:
            return
        self.throttle(event)

    def _masked(self, event: LogEvent) -> None:
        self._observer(mask_event(event, self._settings.secrets))


def json_line(event: LogEvent) -> str:
    """
    Render C{event} as one JSON object on one line: time, level, namespace,
    message, the failure's traceback if any, and its plain fields.
    """
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": _event_time(event.get("log_time")),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        record["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key in record or key == "masked_traceback":
            continue
        if isinstance(value, str | int | float | bool) or value is None:
            record[key] = value
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"


def _event_time(seconds: Any) -> str:
    return rfc3339(seconds) if isinstance(seconds, int | float) else ""


def json_observer(out: IO[Any] | None = None) -> ILogObserver:
    """
    Make the daemon's filtered observer writing one JSON object per line,
    to standard output by default.

    The factory for C{twistd --logger=replayforge.logs.json_observer}.
    """
    return DaemonLogFilter(FileLogObserver(out or sys.stdout, json_line))


def text_observer(out: IO[Any] | None = None) -> ILogObserver:
    """
    Make the daemon's filtered observer writing twistd's usual text lines,
    to standard output by default.

    The factory for C{twistd --logger=replayforge.logs.text_observer}.
    """
    return DaemonLogFilter(textFileLogObserver(out or sys.stdout))


@attrs.define
class TwistdChoice:
    """
    What twistd was asked to log to: its options (C{--logfile},
    C{--syslog}, C{--nodaemon}) and the C{--logger} factory named, if any.
    """

    options: Any = None
    factory_name: str | None = None


# Filled in by the daemon's options, read when twistd starts logging.
TWISTD = TwistdChoice()

OWN_FACTORIES = frozenset(
    f"{__name__}.{name}"
    for name in ("json_observer", "text_observer", "twistd_observer")
)


def route_twistd_logging(server_options: Any, choice: TwistdChoice = TWISTD) -> None:
    """
    Put the daemon filter in front of the observer twistd will log to.

    twistd builds its observer from the factory its C{logger} option names
    (C{--logger}), or else from C{--logfile}, C{--syslog} and
    C{--nodaemon}; it reads the option once the command line is parsed, so
    a daemon's options name L{twistd_observer} there, which builds that
    same observer behind the filter.  A factory of this module filters
    already and is left as it is.

    @param server_options: twistd's own options, the parent of the
        daemon's.
    """
    chosen: str | None = server_options.get("logger")
    if chosen in OWN_FACTORIES:
        return
    choice.options = server_options
    choice.factory_name = chosen
    server_options["logger"] = f"{__name__}.twistd_observer"


def twistd_observer(choice: TwistdChoice = TWISTD) -> ILogObserver:
    """
    Make the observer twistd was asked for, behind the daemon filter.

    The factory L{route_twistd_logging} names for twistd.
    """
    if choice.factory_name:
        inner = namedAny(choice.factory_name)()
    else:
        inner = _twistd_observer(choice.options)
    if not ILogObserver.providedBy(inner):
        inner = LegacyLogObserverWrapper(inner)
    return DaemonLogFilter(inner)


def _twistd_observer(server_options: Any) -> Any:
    """The observer twistd itself would log to, given its options."""
    from twisted.scripts._twistd_unix import UnixAppLogger

    # twistd's own choice of file, stdout or syslog, rotation on SIGUSR1
    # included; it offers no public way to build only the observer.
    return UnixAppLogger(server_options)._getLogObserver()
