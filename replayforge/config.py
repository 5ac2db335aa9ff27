"""
Read a daemon's configuration file: JSON or YAML, with environment variables.

Every daemon builds its frozen config records through L{Section}, which reads
one mapping of the raw document, converts each value, and on the first bad
value raises L{ConfigError} naming the file, the key path (C{sinks[0].buckets})
and what was expected.  Keys nobody read are warned about, never fatal, so a
config written for a newer or older release still starts.

Listener endpoint strings are parsed when the file is read, against a
reactor that opens nothing (L{Section.endpoint}): a malformed string, or
the missing or unreadable key and certificate of an C{ssl:} listener, is a
config error rather than a failure at start.  The URLs of servers a daemon
calls may not carry a user and password (L{Section.url}): no client of the
daemons would send them.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml
from OpenSSL import SSL, crypto
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger

from replayforge.logs import mask_url

log = Logger()

T = TypeVar("T")
_MISSING: Any = object()

MAX_PORT = 65535

_ENV_REFERENCE = re.compile(
    r"\\\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)"
)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


class ConfigError(Exception):
    """
    A configuration value that cannot be used.

    Its text is one line: C{file: key.path: what was expected}.
    """

    def __init__(self, source: str, key_path: str, problem: str) -> None:
        self.source = source
        self.key_path = key_path
        self.problem = problem
        where = f"{source}: {key_path}" if key_path else source
        super().__init__(f"{where}: {problem}")


def substitute_environment(
    text: str, environ: Mapping[str, str], unset: set[str]
) -> str:
    """
    Replace C{$NAME} and C{${NAME}} in C{text} by the environment's values.

    C{\\$} stands for a literal C{$}.  An unset variable becomes the empty
    string and its name is added to C{unset} so the caller can warn once.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "\\$":
            return "$"
        name = match.group(1) or match.group(2)
        if name not in environ:
            unset.add(name)
            return ""
        return environ[name]

    return _ENV_REFERENCE.sub(replace, text)


def _substitute_tree(value: Any, environ: Mapping[str, str], unset: set[str]) -> Any:
    if isinstance(value, str):
        return substitute_environment(value, environ, unset)
    if isinstance(value, list):
        return [_substitute_tree(item, environ, unset) for item in value]
    if isinstance(value, dict):
        return {
            key: _substitute_tree(item, environ, unset) for key, item in value.items()
        }
    return value


def parse_duration(value: Any) -> float:
    """
    Convert a Go duration string (C{"300ms"}, C{"1m30s"}) or a number of
    seconds to seconds.

    @raise ValueError: when C{value} is neither.
    """
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int | float):
        if not 0 <= value < math.inf:
            raise ValueError(value)
        return float(value)
    if not isinstance(value, str):
        raise ValueError(value)
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not 0 <= seconds < math.inf:
            raise ValueError(value)
        return seconds
    position = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            raise ValueError(value)
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(text):
        raise ValueError(value)
    return total


def load_document(
    path: str | Path, environ: Mapping[str, str] | None = None
) -> Section:
    """
    Read a JSON or YAML file, substitute environment variables in its strings,
    and return its top-level mapping as a L{Section}.

    @raise ConfigError: when the file cannot be read or parsed, or is not a
        mapping at the top.
    """
    source = str(path)
    if environ is None:
        environ = os.environ
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(source, "", f"cannot read the file ({error})") from None

    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".json":
            raw = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            raw = yaml.safe_load(text)
        else:
            raise ConfigError(
                source, "", "expected a file ending in .json, .yaml or .yml"
            )
    except json.JSONDecodeError as error:
        raise ConfigError(
            source, "", f"invalid JSON at line {error.lineno}: {error.msg}"
        ) from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(source, "", f"invalid YAML{line}: {problem}") from None

    if not isinstance(raw, dict):
        raise ConfigError(source, "", "expected a mapping of keys at the top level")

    unset: set[str] = set()
    raw = _substitute_tree(raw, environ, unset)
    for name in sorted(unset):
        log.warn(
            "{source}: environment variable {name} is not set; using an empty string",
            source=source,
            name=name,
        )
    return Section(raw, source, "", base=Path(path).resolve().parent)


def endpoint_problem(description: str) -> str | None:
    """
    Say why the server endpoint string C{description} cannot be listened
    on, or L{None} when it parses (see L{Section.check_endpoint}).
    """
    kind = description.partition(":")[0].strip().lower()
    if kind == "systemd" and "LISTEN_FDS" not in os.environ:
        return None
    try:
        endpoint = serverFromString(MemoryReactor(), description)
    except OSError as error:
        return f"cannot read {error.filename or 'a file'}: {error.strerror or error}"
    except (TypeError, ValueError, IndexError, KeyError) as error:
        return (
            f"{error or type(error).__name__}; expected an endpoint string such "
            'as "tcp:8081:interface=127.0.0.1"'
        )
    except (SSL.Error, crypto.Error) as error:
        return f"invalid key or certificate ({error})"
    except Exception as error:
        # An endpoint plugin's parser may raise anything for a bad argument.
        return f"{type(error).__name__}: {error}"
    # Twisted checks the port number only when it binds.
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not 0 <= port <= MAX_PORT:
        return f"expected a port number from 0 to {MAX_PORT}, got {port}"
    return None


class Section:
    """
    One mapping of a configuration document, read key by key.

    Each reader method converts one key and raises L{ConfigError} with the
    full key path when the value does not fit.  L{finish} warns about every
    key that no reader asked for.
    """

    def __init__(self, raw: dict[str, Any], source: str, path: str, base: Path) -> None:
        self.raw = raw
        self.source = source
        self.path = path
        self.base = base
        self._read: set[str] = set()

    def key_path(self, key: str) -> str:
        """Return the dotted path of C{key} inside this section."""
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, problem: str) -> ConfigError:
        """Make a L{ConfigError} about C{key} of this section."""
        return ConfigError(self.source, self.key_path(key), problem)

    def has(self, key: str) -> bool:
        """Tell whether C{key} is present and not null."""
        return self.raw.get(key) is not None

    def _get(self, key: str, default: Any) -> Any:
        self._read.add(key)
        value = self.raw.get(key)
        if value is None:
            if default is _MISSING:
                raise self.error(key, "is required")
            return default
        return value

    def _convert(
        self,
        key: str,
        default: T,
        convert: Callable[[Any], T],
        expected: str,
    ) -> T:
        value = self._get(key, _MISSING if default is _MISSING else None)
        if value is None:
            return default
        try:
            return convert(value)
        except (TypeError, ValueError):
            raise self.error(key, f"expected {expected}, got {value!r}") from None

    def text(self, key: str, default: str = _MISSING) -> str:
        """Read a string; numbers are accepted and turned into text."""

        def convert(value: Any) -> str:
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise TypeError(value)
            return str(value)

        return self._convert(key, default, convert, "a string")

    def integer(
        self, key: str, default: int = _MISSING, minimum: int | None = None
    ) -> int:
        """Read a whole number (a numeric string too), at least C{minimum}."""

        def convert(value: Any) -> int:
            if isinstance(value, bool):
                raise TypeError(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            number = int(value)
            if minimum is not None and number < minimum:
                raise ValueError(value)
            return number

        bound = f" of at least {minimum}" if minimum is not None else ""
        return self._convert(key, default, convert, f"a whole number{bound}")

    def number(
        self, key: str, default: float = _MISSING, minimum: float | None = None
    ) -> float:
        """Read a number (a numeric string too), at least C{minimum}."""

        def convert(value: Any) -> float:
            if isinstance(value, bool):
                raise TypeError(value)
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(value)
            if minimum is not None and number < minimum:
                raise ValueError(value)
            return number

        bound = f" of at least {minimum}" if minimum is not None else ""
        return self._convert(key, default, convert, f"a number{bound}")

    def boolean(self, key: str, default: bool = _MISSING) -> bool:
        """Read C{true} or C{false} (or the strings C{"true"}/C{"false"})."""

        def convert(value: Any) -> bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise TypeError(value)

        return self._convert(key, default, convert, "true or false")

    def duration(self, key: str, default: float = _MISSING) -> float:
        """Read a duration in seconds: C{"300ms"}, C{"1m30s"} or a number."""
        return self._convert(
            key,
            default,
            parse_duration,
            'a duration such as "300ms", "1m30s" or a number of seconds',
        )

    def port(self, key: str, default: int = _MISSING) -> int:
        """Read a TCP port number, 0 to 65535 (a Go-era C{port} key)."""

        def convert(value: Any) -> int:
            if isinstance(value, bool):
                raise TypeError(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            number = int(value)
            if not 0 <= number <= MAX_PORT:
                raise ValueError(value)
            return number

        return self._convert(
            key, default, convert, f"a port number from 0 to {MAX_PORT}"
        )

    def endpoint(self, key: str) -> str:
        """
        Read a listener's Twisted endpoint string (C{"tcp:8081"}), or C{""}
        when the key is absent, checked by L{check_endpoint}.
        """
        description = self.text(key, "")
        if description:
            self.check_endpoint(key, description)
        return description

    def check_endpoint(self, key: str, description: str) -> None:
        """
        Parse the endpoint string C{description}, read from or made of
        C{key}, as the daemon will when it starts listening.

        Parsing an C{ssl:} endpoint reads its key and certificate, so a
        missing or invalid file is found here.  A C{systemd:} endpoint
        is checked only where systemd passed the daemon its sockets.

        @raise ConfigError: naming C{key} when the endpoint cannot be used.
        """
        problem = endpoint_problem(description)
        if problem is not None:
            raise self.error(key, f"cannot listen on {description!r}: {problem}")

    def url(self, key: str, credentials_hint: str = "") -> str:
        """
        Read the C{http://} or C{https://} URL of a server the daemon calls.

        @param credentials_hint: where credentials go instead, said when the
            URL carries a user or password (C{"use authBearer"}).
        """
        value = self.text(key)
        if not value.startswith(("http://", "https://")):
            shown = mask_url(value)
            raise self.error(key, f"expected an http:// or https:// URL, got {shown!r}")
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - reading the port checks it
        except ValueError as error:
            raise self.error(key, f"expected a valid URL ({error})") from None
        if not parts.hostname:
            raise self.error(key, "expected a host name or address in the URL")
        if "@" in parts.netloc:
            problem = "user and password in the URL are not supported"
            if credentials_hint:
                problem += f"; {credentials_hint}"
            raise self.error(key, problem)
        return value

    def text_list(self, key: str, default: list[str] = _MISSING) -> list[str]:
        """Read a list of strings; a comma-separated string is accepted too."""

        def convert(value: Any) -> list[str]:
            if isinstance(value, str):
                return [part.strip() for part in value.split(",") if part.strip()]
            if not isinstance(value, list) or not all(
                isinstance(item, str) for item in value
            ):
                raise TypeError(value)
            return [item.strip() for item in value]

        return self._convert(key, default, convert, "a list of strings")

    def section(self, key: str, required: bool = False) -> Section:
        """Read a nested mapping; an absent one reads as empty."""
        value = self._get(key, _MISSING if required else {})
        if not isinstance(value, dict):
            raise self.error(key, f"expected a mapping, got {value!r}")
        return Section(value, self.source, self.key_path(key), self.base)

    def sections(self, key: str, default: Any = _MISSING) -> list[Section]:
        """Read a list of mappings."""
        value = self._get(key, default)
        if not isinstance(value, list):
            raise self.error(key, f"expected a list, got {value!r}")
        result = []
        for index, item in enumerate(value):
            path = f"{self.key_path(key)}[{index}]"
            if not isinstance(item, dict):
                raise ConfigError(
                    self.source, path, f"expected a mapping, got {item!r}"
                )
            result.append(Section(item, self.source, path, self.base))
        return result

    def named_sections(self, key: str) -> Iterator[tuple[str, Section]]:
        """Read a mapping of names to mappings, in file order."""
        mapping = self.section(key)
        for name in mapping.raw:
            yield name, mapping.section(name, required=True)

    def plain(self, key: str, default: Any = _MISSING) -> Any:
        """Read a value as the document has it (for free-form params)."""
        return self._get(key, default)

    def finish(self) -> None:
        """Warn about every key of this section that nobody read."""
        for key in self.raw:
            if key not in self._read:
                log.warn(
                    "{source}: {key_path}: unknown key, ignored",
                    source=self.source,
                    key_path=self.key_path(key),
                )
