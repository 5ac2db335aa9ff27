"""
Tests for the player's C{http} sink, L{replayforge.player.sinks.http},
replaying to a real twisted.web server on a free loopback port.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from replayforge.backoff import Backoff
from replayforge.player.config import PlayerSinkConfig
from replayforge.player.sinks.callobject import parse_call_object
from replayforge.player.sinks.http import HttpSink, replay_url, should_retry
from replayforge.player.sinks.settings import HttpSinkSettings


@attrs.frozen
class Seen:
    """One request as the target received it."""

    method: bytes
    uri: bytes
    headers: dict[bytes, list[bytes]]
    body: bytes


class RecordingTarget(Resource):
    """A target that records every request and answers scripted codes."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Seen] = []
        self.codes: list[int] = []

    def render(self, request: Any) -> bytes:
        self.seen.append(
            Seen(
                method=request.method,
                uri=request.uri,
                headers={
                    name.lower(): values
                    for name, values in request.requestHeaders.getAllRawHeaders()
                },
                body=request.content.read(),
            )
        )
        request.setResponseCode(self.codes.pop(0) if self.codes else 200)
        return b"answered"


def call(**fields: Any) -> str:
    """Encode a call object."""
    return json.dumps({"method": "POST", "path": "/in", "body": "", **fields})


class HttpSinkTests(TestCase):
    """Replaying call objects to a live target."""

    def setUp(self) -> None:
        self.target = RecordingTarget()
        site = Site(self.target)
        site.log = lambda request: None  # type: ignore[method-assign]
        self.port: IListeningPort = reactor.listenTCP(  # type: ignore[attr-defined]
            0, site, interface="127.0.0.1"
        )
        self.addCleanup(self.port.stopListening)

    def make_sink(self, port: int | None = None, max_retries: int = 3) -> HttpSink:
        number = port if port is not None else self.port.getHost().port
        config = PlayerSinkConfig(
            name="web",
            id="web",
            type="http",
            settings=HttpSinkSettings(
                target_host=f"http://127.0.0.1:{number}",
                timeout_seconds=5.0,
                max_retries=max_retries,
            ),
            metadata={},
            key_path="sinks[0]",
        )
        sink = HttpSink(
            config, reactor, backoff=Backoff(initial=0.01, maximum=0.02, rng=lambda: 0)
        )
        self.addCleanup(sink.stop)
        return sink

    async def test_replay_is_byte_exact(self) -> None:
        """
        Method, path, query, headers and a binary body arrive as captured;
        hop-by-hop headers do not, and the length is computed again.
        """
        body = bytes(range(256)) * 3
        sink = self.make_sink()
        await sink.deliver(
            [
                call(
                    method="PUT",
                    path="/api/v1/items/a b",
                    params={"q": ["x y", "z&"], "one": "1"},
                    headers={
                        "X-Custom": ["first", "second"],
                        "Content-Type": "application/octet-stream",
                        "Connection": ["keep-alive"],
                        "Transfer-Encoding": ["chunked"],
                        "Content-Length": ["3"],
                        "Host": ["original.example"],
                        "Accept-Encoding": ["identity"],
                    },
                    body=base64.b64encode(body).decode(),
                    bodyEncoding="base64",
                )
            ]
        )
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
        self.assertNotIn(b"transfer-encoding", seen.headers)
        self.assertEqual(sink.stats.delivered, 1)

    async def test_text_body_and_order(self) -> None:
        """Text bodies go out as UTF-8, one call after the other, in order."""
        sink = self.make_sink()
        await sink.deliver(
            [call(path=f"/n/{index}", body=f"héllo {index}") for index in range(5)]
        )
        self.assertEqual(
            [seen.uri for seen in self.target.seen],
            [f"/n/{index}".encode() for index in range(5)],
        )
        self.assertEqual(self.target.seen[2].body, "héllo 2".encode())

    async def test_retry_then_success(self) -> None:
        """A 503 is retried after a backoff; the next 200 delivers it."""
        self.target.codes = [503, 502]
        sink = self.make_sink()
        await sink.deliver([call(path="/retry")])
        self.assertEqual(len(self.target.seen), 3)
        self.assertEqual(sink.stats.delivered, 1)
        self.assertEqual(sum(sink.stats.dropped.values()), 0)

    async def test_give_up_after_max_retries(self) -> None:
        """After C{maxRetries} retries the call is dropped as C{sink_gave_up}."""
        self.target.codes = [500] * 3
        sink = self.make_sink(max_retries=2)
        await sink.deliver([call(path="/down"), call(path="/next")])
        self.assertEqual([s.uri for s in self.target.seen].count(b"/down"), 3)
        self.assertEqual(sink.stats.dropped["sink_gave_up"], 1)
        # The next call still went out, after the first was given up.
        self.assertIn(b"/next", [s.uri for s in self.target.seen])

    async def test_rejected_not_retried(self) -> None:
        """A 4xx other than 408, 425 and 429 is dropped at once as rejected."""
        self.target.codes = [404]
        sink = self.make_sink()
        await sink.deliver([call(path="/missing")])
        self.assertEqual(len(self.target.seen), 1)
        self.assertEqual(sink.stats.dropped["rejected"], 1)

    async def test_unparseable(self) -> None:
        """An event that is not a call object is counted; the rest go out."""
        sink = self.make_sink()
        await sink.deliver(["plain text", json.dumps({"body": 5}), call(path="/ok")])
        self.assertEqual(sink.stats.dropped["unparseable"], 2)
        self.assertEqual([s.uri for s in self.target.seen], [b"/ok"])

    async def test_connection_refused(self) -> None:
        """A target that is not listening is retried, then given up."""
        closed = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")  # type: ignore[attr-defined]
        number = closed.getHost().port
        await closed.stopListening()
        sink = self.make_sink(port=number, max_retries=1)
        await sink.deliver([call(path="/nobody")])
        self.assertEqual(sink.stats.dropped["sink_gave_up"], 1)


class SilentTarget(Resource):
    """A target that never answers."""

    isLeaf = True

    def render(self, request: Any) -> Any:
        return NOT_DONE_YET


class HttpSinkTimeoutTests(TestCase):
    """A target that takes too long."""

    async def test_timeout(self) -> None:
        """A call without an answer in C{timeoutSecs} is retried, then dropped."""
        port = reactor.listenTCP(0, Site(SilentTarget()), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        config = PlayerSinkConfig(
            name="slow",
            id="slow",
            type="http",
            settings=HttpSinkSettings(
                target_host=f"http://127.0.0.1:{port.getHost().port}",
                timeout_seconds=0.1,
                max_retries=1,
            ),
            metadata={},
            key_path="sinks[0]",
        )
        sink = HttpSink(config, reactor, backoff=Backoff(initial=0.01, rng=lambda: 0))
        self.addCleanup(sink.stop)
        await sink.deliver([call(path="/slow")])
        self.assertEqual(sink.stats.dropped["sink_gave_up"], 1)


class ReplayRulesTests(SynchronousTestCase):
    """The pure parts: URLs and which answers are retried."""

    def test_url_keeps_escapes(self) -> None:
        """Escapes already in a path are kept; stray characters are escaped."""
        parsed = parse_call_object(json.dumps({"path": "/a%2Fb/100%/ü", "params": {}}))
        self.assertEqual(
            replay_url("http://t", parsed), b"http://t/a%2Fb/100%25/%C3%BC"
        )

    def test_retry_codes(self) -> None:
        """408, 425, 429 and 5xx but 501 are retried."""
        retried = [code for code in range(100, 600) if should_retry(code)]
        self.assertEqual(retried, [408, 425, 429, 500, *range(502, 600)])
