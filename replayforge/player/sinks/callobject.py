"""
Read the call objects that sinks receive as events.

A call object is the JSON form of one HTTP call (see the specification):
C{method}, C{path}, C{params} (name to list of strings), C{headers} (name to
list of strings, or a string), C{body} (text, or base64 with
C{"bodyEncoding": "base64"}).  Sinks that replay or store calls parse each
event here and count what does not fit.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import attrs

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class NotACallObject(ValueError):
    """An event that is not a usable call object; the message says why."""


@attrs.frozen
class CallObject:
    """One HTTP call, as a sink replays or stores it."""

    method: str
    path: str
    params: tuple[tuple[str, str], ...]
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """Return the first value of header C{name} (any case), if present."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


def parse_call_object(text: str) -> CallObject:
    """
    Parse one event as a call object.

    A missing C{method} means C{GET} and a missing C{path} means C{/}, as in
    the Go player.

    @raise NotACallObject: when the text is not a JSON object of that shape.
    """
    document = _document(text)
    method, path = _target(document)
    headers = _pairs(document, "headers")
    for name, _ in headers:
        if not _TOKEN.match(name):
            raise NotACallObject(f"invalid header name {name!r}")

    return CallObject(
        method=method,
        path=path,
        params=_pairs(document, "params"),
        headers=headers,
        body=_body(document),
    )


def parse_call_target(text: str) -> tuple[str, str, str | bytes]:
    """
    Parse only the method, path and body of one event's call object.

    For sinks that store calls rather than replay them: the C{headers} and
    C{params} they never use are not read, so they cost nothing and a
    malformed one does not refuse the call.  The body stays text unless
    C{bodyEncoding} says it is base64.

    @return: the upper-case method, the path, the body.
    @raise NotACallObject: when the text is not a JSON object, or one of
        those three members is not what the specification says.
    """
    document = _document(text)
    method, path = _target(document)
    if document.get("bodyEncoding") is None:
        return method, path, _optional_text(document, "body")
    return method, path, _body(document)


def _document(text: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except ValueError as error:
        raise NotACallObject(f"not JSON ({error})") from None
    if not isinstance(document, dict):
        raise NotACallObject("not a JSON object")
    return document


def _target(document: dict[str, Any]) -> tuple[str, str]:
    method = _optional_text(document, "method") or "GET"
    if not _TOKEN.match(method):
        raise NotACallObject(f"invalid method {method!r}")
    path = _optional_text(document, "path") or "/"
    if not path.startswith("/"):
        path = "/" + path
    return method.upper(), path


def _optional_text(document: dict[str, Any], key: str) -> str:
    value = document.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise NotACallObject(f"{key!r} is not a string")
    return value


def _pairs(document: dict[str, Any], key: str) -> tuple[tuple[str, str], ...]:
    mapping = document.get(key)
    if mapping is None:
        return ()
    if not isinstance(mapping, dict):
        raise NotACallObject(f"{key!r} is not an object")
    pairs: list[tuple[str, str]] = []
    for name, values in mapping.items():
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not all(
            isinstance(value, str) for value in values
        ):
            raise NotACallObject(f"{key}.{name} is not a string or list of strings")
        pairs.extend((name, value) for value in values)
    return tuple(pairs)


def _body(document: dict[str, Any]) -> bytes:
    body = _optional_text(document, "body")
    encoding = _optional_text(document, "bodyEncoding")
    if not encoding:
        return body.encode("utf-8")
    if encoding != "base64":
        raise NotACallObject(f"unknown bodyEncoding {encoding!r}")
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error:
        raise NotACallObject("body is not valid base64") from None
