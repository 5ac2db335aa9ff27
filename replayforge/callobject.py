"""
The call object: how a captured HTTP request travels as an event.

See the specification's "Event: the call object".  A body that is valid
UTF-8 travels as text; any other body as base64 with
C{"bodyEncoding": "base64"}, so binary uploads survive the trip.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs, unquote

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.web.iweb import IRequest

STRIPPED_HEADERS = frozenset({"connection", "cookie"})


def _client_address(request: IRequest) -> str:
    address = request.getClientAddress()
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, UNIXAddress):
        return "unix"
    return str(address)


def capture(request: IRequest, body: bytes) -> dict[str, Any]:
    """Build the call object of C{request} with its C{body}."""
    raw_path, _, query = request.uri.partition(b"?")
    params: dict[str, list[str]] = {}
    if query:
        params = parse_qs(query.decode("utf-8", "replace"), keep_blank_values=True)
    headers: dict[str, list[str]] = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        text = name.decode("latin-1")
        if text.lower() in STRIPPED_HEADERS:
            continue
        # Clients send UTF-8 in header values far more often than Latin-1.
        headers[text] = [value.decode("utf-8", "replace") for value in values]

    call: dict[str, Any] = {
        "method": request.method.decode("ascii", "replace"),
        "path": unquote(raw_path.decode("utf-8", "replace")),
        "params": params,
        "headers": headers,
        "ip": _client_address(request),
    }
    try:
        call["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        call["body"] = base64.b64encode(body).decode("ascii")
        call["bodyEncoding"] = "base64"
    return call


def encode(call: dict[str, Any]) -> str:
    """Serialize a call object as the event string."""
    return json.dumps(call, ensure_ascii=False, separators=(",", ":"))
