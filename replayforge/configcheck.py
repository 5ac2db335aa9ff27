"""
Check a daemon's configuration file and show it as the daemon would run it.

The file goes through the loader the daemon uses at start-up, so every value
the daemon would refuse is refused here, with the same one-line message
(scripts are not run and listeners not opened: those wait for the daemon;
listener endpoints are parsed, their key and certificate files read).
The result is rendered as plain data, every default filled in, with every
secret masked: the fields the config records
keep out of their C{repr} (tokens, passwords, connection strings), values
under names that look secret (C{Authorization} headers, C{apiKey} metadata),
the password part of any URL or libpq connection string, and the values of
secret-looking URL query parameters (C{?api_key=...}).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

from replayforge.config import ConfigError, Section, load_document
from replayforge.logs import mask_urls
from replayforge.player.config import parse_player_config
from replayforge.proxy.config import parse_proxy_config
from replayforge.relay.config import parse_relay_config

MASK = "********"

PARSERS: dict[str, Callable[[Section], Any]] = {
    "relay": parse_relay_config,
    "proxy": parse_proxy_config,
    "player": parse_player_config,
}

_SECRET_NAME = re.compile(
    r"auth|bearer|password|passwd|secret|token|api[-_]?key|cookie|credential",
    re.IGNORECASE,
)
# libpq separates its keywords by spaces: a "password=" inside a URL's query
# is left to the URL masking, which keeps the parameters after it.
_CONNINFO_PASSWORD = re.compile(r"((?<!\S)password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


def detect_daemon(document: Section) -> str:
    """
    Tell which daemon a configuration document is written for.

    A player names its C{relayUrl}, a relay maps its C{buckets}, a proxy
    lists its C{sinks}.

    @raise ConfigError: when the document has none of these keys.
    """
    if document.has("relayUrl"):
        return "player"
    if document.has("buckets"):
        return "relay"
    if document.has("sinks") or document.has("sources"):
        return "proxy"
    raise ConfigError(
        document.source,
        "",
        "cannot tell which daemon this file configures (no relayUrl, buckets "
        "or sinks); name it with --daemon relay, proxy or player",
    )


def load_for_check(path: str | Path, daemon: str | None = None) -> tuple[str, Any]:
    """
    Load the configuration at C{path} with its daemon's own loader.

    @param daemon: C{relay}, C{proxy} or C{player}; guessed when L{None}.
    @return: the daemon's name and its config record.
    @raise ConfigError: for a file the daemon would refuse.
    """
    document = load_document(path)
    kind = daemon or detect_daemon(document)
    return kind, PARSERS[kind](document)


def mask_text(text: str) -> str:
    """
    Mask the password of a libpq C{key=value} string, and the password and
    secret query parameters of every URL (L{replayforge.logs.mask_url}).
    """
    text = _CONNINFO_PASSWORD.sub(lambda match: match.group(1) + MASK, text)
    return mask_urls(text, MASK)


def _masked_secret(value: Any) -> Any:
    """Mask a secret, keeping whether it was set at all."""
    if value is None or value in ("", b""):
        return None if value is None else ""
    return MASK


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _secret_named(name: Any, value: Any) -> bool:
    return _SECRET_NAME.search(str(name)) is not None and _is_scalar(value)


def plain(value: Any) -> Any:
    """
    Turn a config record into JSON-ready data, with its secrets masked.

    Fields declared with C{repr=False} are secrets; a connection string
    among them keeps everything but its password.
    """
    if attrs.has(type(value)):
        result = {}
        for field in attrs.fields(type(value)):
            item = getattr(value, field.name)
            if field.repr is False:
                has_password = isinstance(item, str) and bool(
                    _CONNINFO_PASSWORD.search(item)
                )
                result[field.name] = (
                    mask_text(item) if has_password else _masked_secret(item)
                )
            elif field.name == "headers":
                result[field.name] = _headers(item)
            else:
                result[field.name] = plain(item)
        return result
    if isinstance(value, Mapping):
        return {str(key): _named(key, item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, set | frozenset):
        return sorted(plain(item) for item in value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, str):
        return mask_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return mask_text(str(value))


def _named(name: Any, item: Any) -> Any:
    """Render the value of a key or header C{name}, masked if it looks secret."""
    return _masked_secret(item) if _secret_named(name, item) else plain(item)


def _headers(value: Any) -> Any:
    """Render C{(name, value)} header pairs, masking credentials."""
    if not isinstance(value, list | tuple):
        return plain(value)
    return [
        [plain(pair[0]), _named(*pair)]
        if isinstance(pair, list | tuple) and len(pair) == 2
        else plain(pair)
        for pair in value
    ]


def render(daemon: str, source: str, record: Any, as_json: bool = False) -> str:
    """Render a loaded config, secrets masked, as YAML (or JSON)."""
    data = plain(record)
    if as_json:
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    header = f"# {daemon} configuration from {source}, defaults filled in, "
    header += "secrets masked\n"
    return header + yaml.safe_dump(
        data, sort_keys=False, allow_unicode=True, default_flow_style=False
    )
