"""
Send one HTTP request for a sink and judge the answer.

The C{http} and C{notification} sinks share this: a persistent connection
pool per sink, byte-exact requests (twisted.web's L{Agent}: no
decompression, no redirects followed), a timeout on the answer and on its
body, and one verdict per request.  A 2xx or 3xx delivers; a network
failure, a timeout or a status of the sink's retry list asks for another
try (with the target's C{Retry-After}, in seconds or as an HTTP date, when
it sent one); any other status rejects the event for good.
"""

from __future__ import annotations

import math
from email.utils import parsedate_to_datetime
from io import BytesIO
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectionLost, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Cooperator
from twisted.python.failure import Failure
from twisted.web.client import (
    FileBodyProducer,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse

from replayforge.outgoing import OutgoingSettings, client_pool, make_agent
from replayforge.player.sinks.base import DELIVERED, Outcome, Rejected, Retry
from replayforge.player.sinks.settings import RetryPolicy

MAX_RETRY_AFTER_SECONDS = 3600.0

_RETRIABLE_ERRORS = (
    ConnectError,
    DNSLookupError,
    ConnectionLost,
    ResponseFailed,
    RequestTransmissionFailed,
    defer.TimeoutError,
)


class _Discard(Protocol):
    """Read a response body to its end and keep none of it."""

    def __init__(self, finished: Deferred[None]) -> None:
        self._finished = finished

    def dataReceived(self, data: bytes) -> None:
        """Forget C{data}."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Fire once the body ended, or failed."""
        if self._finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(None)
        else:
            self._finished.errback(reason)


def drain_body(response: IResponse) -> Deferred[None]:
    """
    Read C{response}'s body to its end without keeping it, so its
    connection can serve the next call; cancelling stops the transfer.
    """
    protocol: _Discard | None = None

    def cancel(finished: Deferred[None]) -> None:
        # The body's transport is a producer: stopping it drops the
        # connection instead of reading on.
        stop = getattr(protocol and protocol.transport, "stopProducing", None)
        if stop is not None:
            stop()

    finished: Deferred[None] = Deferred(cancel)
    protocol = _Discard(finished)
    response.deliverBody(protocol)
    return finished


def retry_after(response: IResponse, now: float) -> float | None:
    """
    Return the wait a response's C{Retry-After} asks for, in seconds, at
    most L{MAX_RETRY_AFTER_SECONDS}; L{None} when it asks for none.
    """
    values = response.headers.getRawHeaders(b"Retry-After")
    if not values:
        return None
    text = values[0].decode("latin-1").strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(text).timestamp() - now
        except (TypeError, ValueError, IndexError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


class WebCaller:
    """Requests to one sink's targets, over a pool of kept-alive connections."""

    def __init__(
        self,
        reactor: Any,
        timeout: float,
        connections: int = 2,
        outgoing: OutgoingSettings | None = None,
        name: str = "sink",
    ) -> None:
        self._clock: IReactorTime = reactor
        self.timeout = timeout
        self._pool = client_pool(reactor)
        self._pool.maxPersistentPerHost = max(2, connections)
        self._agent = make_agent(
            reactor, outgoing or OutgoingSettings(), name, self._pool, timeout
        )
        self._cooperator = Cooperator(scheduler=lambda work: reactor.callLater(0, work))
        self._in_flight: set[Deferred[Outcome]] = set()

    def close(self) -> Deferred[None]:
        """Cancel the requests in flight and close the idle connections."""
        for call in list(self._in_flight):
            call.cancel()
        self._cooperator.stop()
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed

    def call(
        self,
        method: bytes,
        url: bytes,
        headers: Headers,
        body: bytes | None,
        policy: RetryPolicy,
    ) -> Deferred[Outcome]:
        """Send one request; fire with its verdict."""
        call = Deferred.fromCoroutine(self._call(method, url, headers, body, policy))
        self._in_flight.add(call)

        def settled(result: object) -> object:
            self._in_flight.discard(call)
            return result

        return call.addBoth(settled)

    async def _call(
        self,
        method: bytes,
        url: bytes,
        headers: Headers,
        body: bytes | None,
        policy: RetryPolicy,
    ) -> Outcome:
        deadline = self._clock.seconds() + self.timeout
        producer: IBodyProducer | None = None
        if body is not None:
            producer = cast(
                IBodyProducer,
                FileBodyProducer(BytesIO(body), cooperator=self._cooperator),
            )
        try:
            request = self._agent.request(method, url, headers, producer)
            response: IResponse = await request.addTimeout(
                self.timeout, self._clock, onTimeoutCancel=_timed_out
            )
        except CancelledError:
            raise
        except _RETRIABLE_ERRORS as error:
            return Retry(describe(error))
        except Exception as error:
            return Rejected("sink_error", describe(error))

        # Read the answer so the connection can serve the next call; its
        # content does not matter, and a broken body does not undo the status.
        remaining = max(deadline - self._clock.seconds(), 0.001)
        try:
            await drain_body(response).addTimeout(remaining, self._clock)
        except _RETRIABLE_ERRORS:
            pass

        code = response.code
        if policy.retries(code):
            return Retry(
                f"answered {code}", retry_after(response, self._clock.seconds())
            )
        if code >= 400:
            return Rejected("rejected", f"answered {code}")
        return DELIVERED


def _timed_out(result: object, timeout: float) -> Failure:
    """Tell a request cancelled by its timeout from one failing on its own."""
    return Failure(defer.TimeoutError(f"no answer in {timeout:g}s"))


def describe(error: Exception) -> str:
    """Say in a few words why a request failed."""
    if isinstance(error, ResponseFailed) and error.reasons:
        return "; ".join(
            str(reason.value) or type(reason.value).__name__ for reason in error.reasons
        )
    if isinstance(error, defer.TimeoutError):
        return "no answer in time"
    return str(error) or type(error).__name__
