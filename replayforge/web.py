"""
What the three daemons' HTTP listeners share.

Listeners are described by Twisted endpoint strings, so TLS is one line of
configuration; a Go-era port number becomes C{tcp:PORT}.  Connections carry
the bounds of L{replayforge.httplimits} (body size, head size, time), and
bearer tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from twisted.application import strports
from twisted.application.service import IService
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger
from twisted.web.http import Request as HTTPRequest
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Site

from replayforge.httplimits import (
    DEFAULT_IDLE_TIMEOUT_SECONDS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADER_COUNT,
    DEFAULT_RECEIVE_TIMEOUT_SECONDS,
    LimitedChannel,
    LimitedRequest,
)

log = Logger()


def endpoint_description(listen: str | None, port: int | None) -> str | None:
    """
    Choose a listener's endpoint string: C{listen} wins, else C{tcp:PORT}.

    @return: L{None} when neither is set or the port is 0 (listener off).
    """
    if listen:
        return listen
    if port:
        return f"tcp:{port}"
    return None


def listening_service(description: str, site: Site, reactor: IReactorCore) -> IService:
    """Make a service that listens on C{description} while it runs."""
    service: IService = strports.service(description, site, reactor=reactor)
    return service


def bearer_matches(authorization: bytes | None, token: str) -> bool:
    """
    Tell whether an C{Authorization} header carries C{Bearer token}.

    The comparison takes the same time whatever the header holds; an empty
    configured token never matches.
    """
    if not token or not authorization:
        return False
    scheme, _, presented = authorization.partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(presented.strip(), token.encode("utf-8"))


def header_text(request: IRequest, name: bytes) -> str:
    """Return a request header as text, or C{""} when absent."""
    value: bytes | None = request.getHeader(name)
    if value is None:
        return ""
    return value.decode("utf-8", "replace").strip()


def json_body(request: IRequest, code: int, value: Any) -> bytes:
    """Set C{code} and a JSON content type; return C{value} encoded."""
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def text_body(request: IRequest, code: int, message: str) -> bytes:
    """Set C{code} and a plain text content type; return C{message}."""
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return message.encode("utf-8")


def make_site(
    resource: IResource,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    access_log: bool = False,
    decode_gzip: bool = False,
    reactor: IReactorTime | None = None,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_SECONDS,
    receive_timeout: float | None = DEFAULT_RECEIVE_TIMEOUT_SECONDS,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    max_header_count: int = DEFAULT_MAX_HEADER_COUNT,
) -> Site:
    """
    Wrap C{resource} in a L{Site} whose connections carry the limits of
    L{replayforge.httplimits}.

    Form bodies are left unparsed: handlers see the raw bytes, and a
    malformed multipart body is theirs to judge, not refused with a 400.

    @param decode_gzip: inflate C{Content-Encoding: gzip} bodies before the
        handler sees them, the limit applying to the inflated size.
    @param reactor: the clock of the timeouts; the global reactor if
        L{None}, as for any L{Site}.
    @param idle_timeout: seconds a connection may stay silent.
    @param receive_timeout: seconds from a request's first byte to the end
        of its body, or L{None} for no bound.
    """

    class Limited(LimitedRequest):
        pass

    Limited.max_body_bytes = max_body_bytes
    Limited.decode_gzip = decode_gzip

    class Channel(LimitedChannel):
        pass

    Channel.max_header_bytes = max_header_bytes
    Channel.max_header_count = max_header_count
    Channel.receive_timeout = receive_timeout

    # Request.__init__ copies this flag from the site over any class attribute.
    site = Site(
        resource,
        requestFactory=Limited,
        parsePOSTFormSubmission=False,
        timeout=idle_timeout,
        reactor=reactor,
    )
    # The channel itself, without Twisted's HTTP/2-negotiating wrapper: no
    # listener offers HTTP/2.
    site.protocol = Channel  # type: ignore[assignment]  # a channel, not the wrapper
    if not access_log:
        site.log = _no_access_log  # type: ignore[method-assign]  # this site only
    return site


def _no_access_log(request: HTTPRequest) -> None:
    """Skip the per-request access log line; counters tell the story."""
