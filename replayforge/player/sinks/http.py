"""
The C{http} sink: replay each call object to C{targetHost}.

A call is sent byte for byte as captured (no decompression, no redirects
followed), with its method, path, query and body; hop-by-hop headers are
left out and the length is computed again.  A call that fails on the way or
answers 408, 425, 429 or 5xx (but 501) is retried with backoff up to
C{maxRetries} times and then dropped as C{sink_gave_up}; any other 4xx is
dropped as C{rejected}.  Calls go out one at a time, in order.
"""

from __future__ import annotations

import math
import re
from io import BytesIO
from typing import Any, cast
from urllib.parse import quote, urlencode

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectionLost, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import Cooperator, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse

from replayforge.backoff import Backoff
from replayforge.player.config import PlayerSinkConfig
from replayforge.player.sinks.base import Sink
from replayforge.player.sinks.callobject import (
    CallObject,
    NotACallObject,
    parse_call_object,
)
from replayforge.player.sinks.settings import HttpSinkSettings

log = Logger()

HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "host",
        "proxy-connection",
    }
)
METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
MAX_RETRY_AFTER_SECONDS = 300.0

_RETRIABLE_ERRORS = (
    ConnectError,
    DNSLookupError,
    ConnectionLost,
    ResponseFailed,
    RequestTransmissionFailed,
    defer.TimeoutError,
)
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"


class _Retry(Exception):
    """One attempt failed in a way worth trying again."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _Rejected(Exception):
    """The target refused the call for good."""


def replay_url(target_host: str, call: CallObject) -> bytes:
    """
    Build the URL a call is replayed to.

    Percent escapes already in the path are kept; anything else a URL may
    not carry is escaped, so a decoded path and a raw one both arrive.
    """
    path = quote(_STRAY_PERCENT.sub("%25", call.path), safe=_PATH_SAFE)
    query = urlencode(call.params, quote_via=quote)
    url = target_host + path + ("?" + query if query else "")
    return url.encode("ascii")


def replay_headers(call: CallObject) -> Headers:
    """Return the call's headers without the hop-by-hop ones."""
    headers = Headers()
    for name, value in call.headers:
        if name.lower() not in HOP_BY_HOP_HEADERS:
            headers.addRawHeader(name, value)
    return headers


def should_retry(code: int) -> bool:
    """Tell whether an answer with status C{code} is worth another try."""
    return code in (408, 425, 429) or (500 <= code <= 599 and code != 501)


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


class HttpSink(Sink):
    """Replay call objects to one target, in order, with retries."""

    def __init__(
        self,
        config: PlayerSinkConfig,
        reactor: Any,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__(config)
        assert isinstance(config.settings, HttpSinkSettings)
        self.settings: HttpSinkSettings = config.settings
        self._clock: IReactorTime = reactor
        self._backoff = backoff or Backoff()
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._agent = Agent(
            reactor, pool=self._pool, connectTimeout=self.settings.timeout_seconds
        )
        self._cooperator = Cooperator(scheduler=lambda work: reactor.callLater(0, work))
        self._in_flight: set[Deferred[None]] = set()

    def stop(self) -> Deferred[None]:
        """Cancel the calls in flight and close the idle connections."""
        for delivery in list(self._in_flight):
            delivery.cancel()
        self._cooperator.stop()
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed

    def deliver(self, events: list[str]) -> Deferred[None]:
        """Replay C{events} one after the other; fire once all are settled."""
        delivery = Deferred.fromCoroutine(self._deliver(events))
        self._in_flight.add(delivery)

        def settled(result: object) -> object:
            self._in_flight.discard(delivery)
            return result

        return delivery.addBoth(settled)

    async def _deliver(self, events: list[str]) -> None:
        self.stats.received += len(events)
        for text in events:
            try:
                call = parse_call_object(text)
            except NotACallObject as error:
                self.stats.drop("unparseable")
                log.warn(
                    "sink {sink}: dropped an event that is not a call object: "
                    "{problem}",
                    sink=self.name,
                    problem=str(error),
                )
                continue
            try:
                await self._replay(call)
            except CancelledError:
                raise
            except Exception:
                self.stats.drop("sink_error")
                log.failure(
                    "sink {sink}: dropped {method} {path} after an unexpected error",
                    sink=self.name,
                    method=call.method,
                    path=call.path,
                )

    async def _replay(self, call: CallObject) -> None:
        attempt = 0
        while True:
            try:
                await self._attempt(call)
            except _Rejected as rejection:
                self.stats.drop("rejected")
                log.warn(
                    "sink {sink}: {method} {path} rejected: {reason}",
                    sink=self.name,
                    method=call.method,
                    path=call.path,
                    reason=str(rejection),
                )
                return
            except _Retry as failure:
                attempt += 1
                if attempt > self.settings.max_retries:
                    self.stats.drop("sink_gave_up")
                    log.warn(
                        "sink {sink}: gave up on {method} {path} after {attempts} "
                        "attempts: {reason}",
                        sink=self.name,
                        method=call.method,
                        path=call.path,
                        attempts=attempt,
                        reason=failure.reason,
                    )
                    return
                delay = failure.retry_after
                if delay is None:
                    delay = self._backoff.delay(attempt)
                log.debug(
                    "sink {sink}: {method} {path} failed ({reason}); "
                    "retry {attempt} in {delay:.2f}s",
                    sink=self.name,
                    method=call.method,
                    path=call.path,
                    reason=failure.reason,
                    attempt=attempt,
                    delay=delay,
                )
                await deferLater(self._clock, delay)
            else:
                self.stats.delivered += 1
                return

    async def _attempt(self, call: CallObject) -> None:
        timeout = self.settings.timeout_seconds
        deadline = self._clock.seconds() + timeout
        producer: IBodyProducer | None = None
        if call.body or call.method in METHODS_WITH_BODY:
            producer = cast(
                IBodyProducer,
                FileBodyProducer(BytesIO(call.body), cooperator=self._cooperator),
            )
        request = self._agent.request(
            call.method.encode("ascii"),
            replay_url(self.settings.target_host, call),
            replay_headers(call),
            producer,
        )
        try:
            response: IResponse = await request.addTimeout(timeout, self._clock)
        except _RETRIABLE_ERRORS as error:
            raise _Retry(_describe(error)) from None

        # Read the answer so the connection can serve the next call; its
        # content does not matter, and a broken body does not undo the status.
        remaining = max(deadline - self._clock.seconds(), 0.001)
        try:
            await drain_body(response).addTimeout(remaining, self._clock)
        except _RETRIABLE_ERRORS:
            pass

        code = response.code
        if should_retry(code):
            raise _Retry(f"answered {code}", _retry_after(response))
        if code >= 400:
            raise _Rejected(f"answered {code}")


def _retry_after(response: IResponse) -> float | None:
    if response.code not in (429, 503):
        return None
    values = response.headers.getRawHeaders(b"Retry-After")
    if not values:
        return None
    try:
        seconds = float(values[0])
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_SECONDS)


def _describe(error: Exception) -> str:
    if isinstance(error, ResponseFailed) and error.reasons:
        return "; ".join(str(reason.value) for reason in error.reasons)
    if isinstance(error, defer.TimeoutError):
        return "no answer in time"
    return str(error) or type(error).__name__
