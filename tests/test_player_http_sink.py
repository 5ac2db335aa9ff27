"""
Tests for the player's C{http} sink, L{replayforge.player.sinks.http} and
L{replayforge.player.sinks.webcall}, replaying to a real twisted.web server
on a free loopback port.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from replayforge.callobject import capture, encode
from replayforge.config import Section
from replayforge.player.sinks.base import DELIVERED, POSTPONED, Rejected, Retry
from replayforge.player.sinks.callobject import parse_call_object
from replayforge.player.sinks.http import HttpSink, replay_headers, replay_url
from replayforge.player.sinks.settings import (
    DEFAULT_RETRY_STATUS_CODES,
    HttpSinkSettings,
    RetryPolicy,
    read_retry_policy,
)
from replayforge.player.sinks.webcall import retry_after
from tests.player_support import RecordingTarget, listen, queued, sink_config


def call(**fields: Any) -> str:
    """Encode a call object."""
    return json.dumps({"method": "POST", "path": "/in", "body": "", **fields})


class HttpSinkTestCase(TestCase):
    """A recording target on a free port."""

    def setUp(self) -> None:
        self.target = RecordingTarget()
        self.port = listen(self.target)
        self.addCleanup(self.port.stopListening)

    def make_sink(
        self,
        port: int | None = None,
        concurrency: int = 1,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
    ) -> HttpSink:
        number = port if port is not None else self.port.getHost().port
        settings = HttpSinkSettings(
            target_host=f"http://127.0.0.1:{number}",
            timeout_seconds=timeout,
            retry=retry or RetryPolicy(),
            max_concurrency=concurrency,
        )
        sink = HttpSink(sink_config("web", settings, "http"), reactor)
        self.addCleanup(sink.stop)
        return sink


class HttpSinkTests(HttpSinkTestCase):
    """Replaying call objects to a live target."""

    async def test_replay_is_byte_exact(self) -> None:
        """
        Method, path, query, headers and a binary body arrive as captured;
        hop-by-hop headers do not, and the length is computed again.
        """
        body = bytes(range(256)) * 3
        sink = self.make_sink()
        outcomes = await sink.deliver(
            queued(
                call(
                    method="PUT",
                    path="/api/v1/items/a b",
                    params={"q": ["x y", "z&"], "one": "1"},
                    headers={
                        "X-Custom": ["first", "second"],
                        "Content-Type": "application/octet-stream",
                        "Connection": ["keep-alive, X-Hop"],
                        "X-Hop": ["named by Connection"],
                        "Keep-Alive": ["timeout=5"],
                        "Transfer-Encoding": ["chunked"],
                        "TE": ["trailers"],
                        "Trailer": ["X-Sum"],
                        "Upgrade": ["h2c"],
                        "Content-Length": ["3"],
                        "Host": ["original.example"],
                        "Accept-Encoding": ["identity"],
                    },
                    body=base64.b64encode(body).decode(),
                    bodyEncoding="base64",
                )
            )
        )
        self.assertEqual(outcomes, [DELIVERED])
        [seen] = self.target.seen
        self.assertEqual(seen.method, b"PUT")
        self.assertEqual(seen.uri, b"/api/v1/items/a%20b?q=x%20y&q=z%26&one=1")
        self.assertEqual(seen.body, body)
        self.assertEqual(seen.headers[b"x-custom"], [b"first", b"second"])
        self.assertEqual(seen.headers[b"content-type"], [b"application/octet-stream"])
        self.assertEqual(seen.headers[b"content-length"], [str(len(body)).encode()])
        self.assertEqual(seen.headers[b"accept-encoding"], [b"identity"])
        self.assertEqual(
            seen.headers[b"host"], [f"127.0.0.1:{self.port.getHost().port}".encode()]
        )
        for hop in [b"transfer-encoding", b"x-hop", b"keep-alive", b"te", b"upgrade"]:
            self.assertNotIn(hop, seen.headers)
        self.assertNotIn(b"trailer", seen.headers)

    async def test_separators_kept_as_sent(self) -> None:
        """
        A C{;} inside a value is sent as C{;}, not escaped; an C{&} or C{=}
        that belongs to a value stays part of it.
        """
        sink = self.make_sink()
        await sink.deliver(
            queued(call(params={"a": ["1;b=2"], "q": ["x&y=z"], "k;v": [""]}))
        )
        [seen] = self.target.seen
        self.assertEqual(seen.uri, b"/in?a=1;b=2&q=x%26y=z&k;v=")

    async def test_text_body_and_order(self) -> None:
        """Text bodies go out as UTF-8, one call after the other, in order."""
        sink = self.make_sink()
        await sink.deliver(
            queued(
                *[call(path=f"/n/{index}", body=f"héllo {index}") for index in range(5)]
            )
        )
        self.assertEqual(
            [seen.uri for seen in self.target.seen],
            [f"/n/{index}".encode() for index in range(5)],
        )
        self.assertEqual(self.target.seen[2].body, "héllo 2".encode())

    async def test_answers_judged(self) -> None:
        """
        2xx delivers, a retryable code asks for a retry (with its
        C{Retry-After}), any other 4xx rejects; a retry postpones the calls
        after it, which are not sent.
        """
        self.target.codes = [201, 404, 503]
        self.target.headers = {b"Retry-After": b"7"}
        sink = self.make_sink()
        outcomes = await sink.deliver(
            queued(*[call(path=f"/{index}") for index in range(5)])
        )
        self.assertEqual(
            outcomes,
            [
                DELIVERED,
                Rejected("rejected", "answered 404"),
                Retry("answered 503", 7.0),
                POSTPONED,
                POSTPONED,
            ],
        )
        self.assertEqual(len(self.target.seen), 3)

    async def test_configured_retry_codes(self) -> None:
        """Retryable codes come from the sink's policy."""
        self.target.codes = [503, 418]
        sink = self.make_sink(retry=RetryPolicy(status_codes=frozenset({418})))
        outcomes = await sink.deliver(queued(call(path="/a"), call(path="/b")))
        self.assertEqual(
            outcomes, [Rejected("rejected", "answered 503"), Retry("answered 418")]
        )

    async def test_unparseable(self) -> None:
        """An event that is not a call object is rejected; the rest go out."""
        sink = self.make_sink()
        outcomes = await sink.deliver(
            queued("plain text", json.dumps({"body": 5}), call(path="/ok"))
        )
        self.assertEqual([type(outcome) for outcome in outcomes[:2]], [Rejected] * 2)
        self.assertEqual(outcomes[2], DELIVERED)
        self.assertEqual([s.uri for s in self.target.seen], [b"/ok"])

    async def test_connection_refused(self) -> None:
        """A target that is not listening asks for a retry."""
        closed = listen(Resource())
        number = closed.getHost().port
        await closed.stopListening()
        sink = self.make_sink(port=number)
        [outcome] = await sink.deliver(queued(call(path="/nobody")))
        self.assertIsInstance(outcome, Retry)
        self.assertIn("refused", outcome.reason)

    async def test_bounded_concurrency(self) -> None:
        """At most C{maxConcurrency} calls are in flight at once."""
        self.target.hold = True
        sink = self.make_sink(concurrency=3)
        delivery = sink.deliver(queued(*[call(path=f"/{n}") for n in range(7)]))
        released = 0
        while released < 7:
            await self.wait_for(lambda: len(self.target.holding) > 0)
            self.assertLessEqual(len(self.target.holding), 3)
            for request in self.target.holding:
                request.write(b"ok")
                request.finish()
                released += 1
            self.target.holding = []
        self.assertEqual(await delivery, [DELIVERED] * 7)
        self.assertEqual(len(self.target.seen), 7)

    async def wait_for(self, condition: Any) -> None:
        for _ in range(500):
            if condition():
                return
            pause: Deferred[None] = Deferred()
            reactor.callLater(0.01, pause.callback, None)  # type: ignore[attr-defined]
            await pause
        self.fail("the condition never held")

    async def test_timeout(self) -> None:
        """A call without an answer in C{timeoutSecs} asks for a retry."""
        self.target.hold = True
        sink = self.make_sink(timeout=0.1)
        [outcome] = await sink.deliver(queued(call(path="/slow")))
        self.assertEqual(outcome, Retry("no answer in time"))
        for request in self.target.holding:
            request.finish()


class ChunkedCapture(Resource):
    """Capture each request as the proxy's http source does."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def render(self, request: Any) -> bytes:
        self.calls.append(encode(capture(request, request.content.read())))
        return b"captured"


class _RawClient(Protocol):
    def __init__(self, payload: bytes, done: Deferred[bytes]) -> None:
        self._payload = payload
        self._done = done
        self._answer = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self._payload)

    def dataReceived(self, data: bytes) -> None:
        self._answer += data
        if b"captured" in self._answer:
            assert self.transport is not None
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if not self._done.called:
            self._done.callback(self._answer)


class ReplayFidelityTests(HttpSinkTestCase):
    """A chunked POST with a query string, captured then replayed."""

    async def test_chunked_post_with_query(self) -> None:
        """
        What the target receives is the method, path, query, headers and
        body the client sent, the body now with a length instead of chunks.
        """
        capturing = ChunkedCapture()
        capture_port = listen(capturing)
        self.addCleanup(capture_port.stopListening)
        body = b'{"order": 17, "note": "chunked \xc3\xa9"}'
        request = (
            b"POST /hooks/orders;v=2?shop=s1&tag=a%26b&path=/x;y HTTP/1.1\r\n"
            b"Host: shop.example\r\n"
            b"Content-Type: application/json\r\n"
            b"X-Signature: abc123\r\n"
            b"Transfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n"
            + b"%x\r\n%s\r\n" % (10, body[:10])
            + b"%x\r\n%s\r\n" % (len(body) - 10, body[10:])
            + b"0\r\n\r\n"
        )
        answered: Deferred[bytes] = Deferred()
        factory = ClientFactory.forProtocol(lambda: _RawClient(request, answered))
        reactor.connectTCP(  # type: ignore[attr-defined]
            "127.0.0.1", capture_port.getHost().port, factory
        )
        self.assertIn(b"200 OK", await answered)
        [captured] = capturing.calls

        sink = self.make_sink()
        self.assertEqual(await sink.deliver(queued(captured)), [DELIVERED])
        [seen] = self.target.seen
        self.assertEqual(seen.method, b"POST")
        self.assertEqual(seen.uri, b"/hooks/orders;v=2?shop=s1&tag=a%26b&path=/x;y")
        self.assertEqual(seen.body, body)
        self.assertEqual(seen.headers[b"content-length"], [str(len(body)).encode()])
        self.assertEqual(seen.headers[b"x-signature"], [b"abc123"])
        self.assertEqual(seen.headers[b"content-type"], [b"application/json"])
        self.assertNotIn(b"transfer-encoding", seen.headers)


class ReplayRulesTests(SynchronousTestCase):
    """The pure parts: URLs, headers, retry answers and policies."""

    def test_url_keeps_escapes(self) -> None:
        """Escapes already in a path are kept; stray characters are escaped."""
        parsed = parse_call_object(json.dumps({"path": "/a%2Fb/100%/ü", "params": {}}))
        self.assertEqual(
            replay_url("http://t", parsed), b"http://t/a%2Fb/100%25/%C3%BC"
        )

    def test_headers_named_by_connection_dropped(self) -> None:
        """Headers that C{Connection} names are hop-by-hop too."""
        parsed = parse_call_object(
            json.dumps({"headers": {"Connection": "X-A, x-b", "X-A": "1", "X-B": "2"}})
        )
        self.assertEqual(list(replay_headers(parsed).getAllRawHeaders()), [])

    def test_default_retry_codes(self) -> None:
        """408, 425, 429 and 5xx but 501 are retried by default."""
        policy = RetryPolicy()
        retried = [code for code in range(100, 600) if policy.retries(code)]
        self.assertEqual(retried, [408, 425, 429, 500, *range(502, 600)])

    def test_retry_policy_read(self) -> None:
        """Codes and classes are read from C{retryStatusCodes}."""
        params = Section(
            {"maxRetries": 2, "retryStatusCodes": [429, "5xx"]},
            "p.json",
            "p",
            base=None,
        )  # type: ignore[arg-type]
        policy = read_retry_policy(params)
        self.assertEqual(policy.max_retries, 2)
        self.assertEqual(policy.status_codes, frozenset({429, *range(500, 600)}))
        self.assertTrue(DEFAULT_RETRY_STATUS_CODES < frozenset(range(100, 600)))

    def test_retry_after_forms(self) -> None:
        """C{Retry-After} in seconds or as an HTTP date; bad ones ignored."""

        @attrs.frozen
        class Answer:
            headers: Headers

        def after(value: str | None, now: float = 0.0) -> float | None:
            headers = Headers()
            if value is not None:
                headers.addRawHeader("Retry-After", value)
            return retry_after(Answer(headers), now)  # type: ignore[arg-type]

        self.assertEqual(after("12"), 12.0)
        self.assertEqual(after("Thu, 01 Jan 1970 00:01:00 GMT", now=30.0), 30.0)
        self.assertEqual(after("-5"), 0.0)
        self.assertEqual(after("999999"), 3600.0)
        self.assertIsNone(after("soon"))
        self.assertIsNone(after(None))
