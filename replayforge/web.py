"""
What the three daemons' HTTP listeners share.

Listeners are described by Twisted endpoint strings, so TLS is one line of
configuration; a Go-era port number becomes C{tcp:PORT}.  Requests carry a
body limit enforced before the body is held in memory, and bearer tokens are
compared in constant time.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from twisted.application import strports
from twisted.application.service import IService
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.http import Request as HTTPRequest
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

log = Logger()

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


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


class LimitedRequest(Request):
    """
    A request that refuses a body over C{max_body_bytes} with 413.

    The check runs on the announced C{Content-Length} before any byte of the
    body is read, and on the running total of a chunked body; the connection
    is closed after the answer, so the rest of the body is never buffered.
    """

    max_body_bytes = DEFAULT_MAX_BODY_BYTES
    _received = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body_bytes:
            self._refuse_oversized()
            return
        super().gotLength(length)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.max_body_bytes:
            self._refuse_oversized()
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def _refuse_oversized(self) -> None:
        self._refused = True
        # Without this the channel would still invite the body with 100.
        self.requestHeaders.removeHeader(b"Expect")
        message = f"request body over the limit of {self.max_body_bytes} bytes\n"
        body = message.encode("ascii")
        transport = self.channel.transport
        # The channel is connected: it is reading this request's body.
        assert transport is not None
        transport.write(
            b"HTTP/1.1 413 Content Too Large\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (len(body), body)
        )
        transport.loseConnection()


def make_site(
    resource: IResource,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    access_log: bool = False,
) -> Site:
    """
    Wrap C{resource} in a L{Site} whose requests carry a body limit.

    Form bodies are left unparsed: handlers see the raw bytes, and a
    malformed multipart body is theirs to judge, not refused with a 400.
    """

    class Limited(LimitedRequest):
        pass

    Limited.max_body_bytes = max_body_bytes
    # Request.__init__ copies this flag from the site over any class attribute.
    site = Site(resource, requestFactory=Limited, parsePOSTFormSubmission=False)
    if not access_log:
        site.log = _no_access_log  # type: ignore[method-assign]  # this site only
    return site


def _no_access_log(request: HTTPRequest) -> None:
    """Skip the per-request access log line; counters tell the story."""


class _QuietClientFactory(_HTTP11ClientFactory):
    """A client connection factory that does not log each connection."""

    noisy = False


def client_pool(reactor: IReactorCore) -> HTTPConnectionPool:
    """
    Make a persistent client connection pool for one daemon's HTTP clients.

    Twisted logs "Starting factory" and "Stopping factory" for every new
    connection otherwise, which drowns a daemon's own log lines.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool._factory = _QuietClientFactory
    return pool
