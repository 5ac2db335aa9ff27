"""
JSON and times written byte for byte as the Go programs wrote them.

Go's C{encoding/json} sorts the keys of maps, writes no spaces, escapes
C{<}, C{>}, C{&}, U+2028 and U+2029, and prints a float without a
fraction when it is whole (C{5}, not C{5.0}).  Events that the Go proxy
made (log lines, system figures, PostgreSQL results) keep that form, so
scripts and dashboards written for it see the same text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any

GO_ZERO_TIME = "0001-01-01T00:00:00Z"

_HTML_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def _refuse(value: Any) -> Any:
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _make_plain_encoder() -> Callable[[Any], str]:
    """
    Encode floatless values with sorted keys and no spaces, fast.

    C{json.dumps} builds its C encoder anew at each call, which costs more
    than encoding a small object; this one is built once.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        encoder = json.JSONEncoder(
            ensure_ascii=False, separators=(",", ":"), sort_keys=True
        )
        return encoder.encode
    encode = make(None, _refuse, encode_basestring, None, ":", ",", True, False, False)

    def plain(value: Any) -> str:
        return "".join(encode(value, 0))

    return plain


_encode_plain = _make_plain_encoder()


def _escaped(quoted: str) -> str:
    """Escape what Go escapes and Python's encoder leaves as it is."""
    if (
        "<" in quoted
        or ">" in quoted
        or "&" in quoted
        or "\u2028" in quoted
        or "\u2029" in quoted
    ):
        for raw, escaped in _HTML_ESCAPES.items():
            quoted = quoted.replace(raw, escaped)
    return quoted


def go_float(value: float) -> str:
    """
    Format C{value} as Go's C{encoding/json} formats a C{float64}.

    @raise ValueError: for NaN and infinities, which Go refuses too.
    """
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    magnitude = abs(value)
    if value.is_integer() and magnitude < 2**53:
        return str(int(value))
    # Go writes the shortest digits that read back as the same float, as
    # repr does, but without an exponent from 1e-6 up to 1e21.
    text = repr(value)
    if 1e-6 <= magnitude < 1e21 and "e" in text:
        return format(Decimal(text), "f")
    return text.removesuffix(".0")


def go_string(text: str) -> str:
    """Quote C{text} as a JSON string the way Go does."""
    return _escaped(encode_basestring(text))


def dumps(value: Any) -> str:
    """
    Serialize C{value} as Go's C{json.Marshal} would.

    Mappings are written with sorted keys, floats as Go writes them.

    @raise TypeError: for a value JSON cannot hold.
    @raise ValueError: for NaN and infinities.
    """
    if _plain(value):
        return _escaped(_encode_plain(value))
    if isinstance(value, dict):
        items = sorted(((str(key), item) for key, item in value.items()), key=_first)
        return (
            "{"
            + ",".join(go_string(key) + ":" + dumps(item) for key, item in items)
            + "}"
        )
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, str):
        return go_string(str(value))
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def rfc3339_nano(moment: datetime) -> str:
    """
    Format C{moment} as Go's C{time.RFC3339Nano}: trailing zeros of the
    fraction dropped, C{Z} for UTC.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += "." + f"{moment.microsecond:06d}".rstrip("0")
    offset = moment.utcoffset() or timedelta(0)
    if not offset:
        return text + "Z"
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{text}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _plain(value: Any) -> bool:
    """Tell whether C{value} holds no float and no mapping with other keys."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return False
            if type(item) is not str and not _plain(item):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:
            if type(item) is not str and not _plain(item):
                return False
        return True
    return kind is str or kind is int or kind is bool or value is None


def local_rfc3339_nano(seconds: float) -> str:
    """Format the Unix time C{seconds} in the machine's time zone, as Go did."""
    return rfc3339_nano(datetime.fromtimestamp(seconds).astimezone())


def _first(pair: tuple[str, Any]) -> str:
    return pair[0]
