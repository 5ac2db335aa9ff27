"""
Tests for L{replayforge.httplimits}: the bounds every listener puts on body
size, head size and receive time, driven through an in-memory transport
and a L{Clock}.
"""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from replayforge.httplimits import LimitedChannel
from replayforge.web import make_site

LIMIT = 1024
IDLE = 60.0
RECEIVE = 10.0


class _RecordingResource(Resource):
    """Answer every request with C{ok}, remembering body and headers."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []
        self.headers: list[dict[bytes, list[bytes]]] = []

    def render(self, request: IRequest) -> bytes:
        self.bodies.append(request.content.read())
        self.headers.append(
            {
                name.lower(): values
                for name, values in request.requestHeaders.getAllRawHeaders()
            }
        )
        return b"ok"


def _head(*headers: str, method: str = "POST") -> bytes:
    lines = [f"{method} /hook HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


class _Connection:
    """One client connection to a limited site, in memory."""

    def __init__(self, case: LimitsTestCase, **site_options: object) -> None:
        options: dict[str, object] = {
            "max_body_bytes": LIMIT,
            "idle_timeout": IDLE,
            "receive_timeout": RECEIVE,
            **site_options,
        }
        site = make_site(case.resource, reactor=case.clock, **options)  # type: ignore[arg-type]
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert isinstance(self.channel, LimitedChannel)
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000)
        )
        self.channel.makeConnection(self.transport)
        case.addCleanup(self._close)

    def send(self, data: bytes) -> None:
        """Deliver C{data} from the client."""
        self.channel.dataReceived(data)

    @property
    def answer(self) -> bytes:
        """Every byte the server wrote so far."""
        return self.transport.value()

    @property
    def closed(self) -> bool:
        """Whether the server asked for the connection to close."""
        return bool(self.transport.disconnecting)

    def status(self) -> bytes:
        """The status code of the server's first answer."""
        return self.answer.split(b"\r\n", 1)[0][len(b"HTTP/1.1 ") :][:3]

    def _close(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        if self.channel.transport is not None:
            self.channel.connectionLost(Failure(ConnectionDone()))


class LimitsTestCase(SynchronousTestCase):
    """A recording resource and a clock for each test."""

    def setUp(self) -> None:
        self.resource = _RecordingResource()
        self.clock = Clock()

    def connect(self, **site_options: object) -> _Connection:
        """Open a connection to a site with the test limits."""
        return _Connection(self, **site_options)


class HeadLimitTests(LimitsTestCase):
    """
    Request heads over their bounds are answered 431 or 414 with a message,
    not closed silently or with a bare 400.
    """

    def test_header_line_over_the_limit(self) -> None:
        """
        One header line longer than the head limit gets 431 naming the
        limit, and the handler never runs.
        """
        connection = self.connect(max_header_bytes=4096)
        connection.send(_head("X-Big: " + "a" * 5000))

        self.assertEqual(connection.status(), b"431")
        self.assertIn(b"request head over 4096 bytes", connection.answer)
        self.assertIn(b"Connection: close", connection.answer)
        self.assertTrue(connection.closed)
        self.assertEqual(self.resource.bodies, [])

    def test_header_line_over_16k_with_defaults(self) -> None:
        """
        A 20 KiB header line, which Twisted alone answers by closing the
        connection, is within the default head limit and reaches the
        handler; a 70 KiB one gets 431.
        """
        connection = self.connect()
        connection.send(_head("X-Token: " + "a" * 20000, "Content-Length: 0"))
        self.assertEqual(connection.status(), b"200")

        big = self.connect()
        big.send(_head("X-Token: " + "a" * 70000))
        self.assertEqual(big.status(), b"431")

    def test_line_without_end_over_the_limit(self) -> None:
        """
        A header line still being sent when it passes the limit is refused
        then, not buffered until its end.
        """
        connection = self.connect(max_header_bytes=4096)
        connection.send(b"POST / HTTP/1.1\r\nX-Big: " + b"a" * 5000)

        self.assertEqual(connection.status(), b"431")
        self.assertTrue(connection.closed)

    def test_head_over_the_limit(self) -> None:
        """
        Many header lines, each small, that add up past the limit get 431.
        """
        connection = self.connect(max_header_bytes=4096)
        connection.send(_head(*[f"X-H{i}: {'b' * 100}" for i in range(50)]))

        self.assertEqual(connection.status(), b"431")
        self.assertIn(b"request head over 4096 bytes", connection.answer)

    def test_too_many_headers(self) -> None:
        """
        More header lines than the count limit get 431 naming the count.
        """
        connection = self.connect(max_header_count=20)
        connection.send(_head(*[f"X-H{i}: v" for i in range(21)]))

        self.assertEqual(connection.status(), b"431")
        self.assertIn(b"more than 20 header lines", connection.answer)
        self.assertEqual(self.resource.bodies, [])

    def test_headers_at_the_count_limit(self) -> None:
        """
        Exactly as many header lines as allowed reach the handler.
        """
        connection = self.connect(max_header_count=20)
        connection.send(_head(*[f"X-H{i}: v" for i in range(18)], "Content-Length: 0"))

        # Host, 18 others and Content-Length: 20 lines.
        self.assertEqual(connection.status(), b"200")

    def test_request_line_over_the_limit(self) -> None:
        """
        A request line alone over the limit gets 414.
        """
        connection = self.connect(max_header_bytes=4096)
        connection.send(b"GET /" + b"p" * 5000 + b" HTTP/1.1\r\n\r\n")

        self.assertEqual(connection.status(), b"414")
        self.assertIn(b"request line over 4096 bytes", connection.answer)


class ReceiveTimeoutTests(LimitsTestCase):
    """
    A request must arrive whole within the receive timeout, however steadily
    its bytes trickle in; a silent connection is closed after the idle
    timeout.
    """

    def test_head_one_byte_a_second(self) -> None:
        """
        A client sending its head one byte a second keeps resetting the idle
        timeout, yet gets 408 once the receive timeout has passed.
        """
        connection = self.connect()
        head = _head("Content-Length: 0") * 10
        sent = 0
        while not connection.closed and sent < len(head):
            connection.send(head[sent : sent + 1])
            sent += 1
            self.clock.advance(1)

        self.assertTrue(connection.closed)
        self.assertEqual(connection.status(), b"408")
        self.assertIn(b"request not received within 10 seconds", connection.answer)
        self.assertEqual(sent, RECEIVE)
        self.assertEqual(self.resource.bodies, [])

    def test_body_that_never_ends(self) -> None:
        """
        A body announced longer than what keeps trickling in gets 408 at the
        receive timeout; the handler never runs.
        """
        connection = self.connect()
        connection.send(_head(f"Content-Length: {LIMIT}"))
        for _ in range(100):
            if connection.closed:
                break
            connection.send(b"x")
            self.clock.advance(1)

        self.assertEqual(connection.status(), b"408")
        self.assertEqual(self.resource.bodies, [])

    def test_chunked_body_that_never_ends(self) -> None:
        """
        A chunked body whose last chunk never comes gets 408 as well.
        """
        connection = self.connect()
        connection.send(_head("Transfer-Encoding: chunked"))
        for _ in range(100):
            if connection.closed:
                break
            connection.send(b"1\r\nx\r\n")
            self.clock.advance(1)

        self.assertEqual(connection.status(), b"408")

    def test_client_that_ignores_the_answer_is_aborted(self) -> None:
        """
        A refused client that does not let the connection close is cut off
        after the channel's abort timeout.
        """
        connection = self.connect()
        connection.send(b"POST")
        self.clock.advance(RECEIVE)
        self.assertEqual(connection.status(), b"408")
        self.assertFalse(connection.transport.disconnected)

        self.clock.advance(connection.channel.abortTimeout)
        self.assertTrue(connection.transport.disconnected)

    def test_timeout_restarts_for_each_request(self) -> None:
        """
        On a kept-alive connection each request has its own receive
        timeout: time spent on earlier ones does not count.
        """
        connection = self.connect()
        for _ in range(3):
            connection.send(_head("Content-Length: 0"))
            self.clock.advance(RECEIVE * 0.9)

        self.assertFalse(connection.closed)
        self.assertEqual(len(self.resource.bodies), 3)
        self.assertNotIn(b"408", connection.answer)

    def test_idle_connection_closed(self) -> None:
        """
        A connection that sends nothing is closed after the idle timeout,
        with no answer.
        """
        connection = self.connect()
        self.clock.advance(IDLE - 1)
        self.assertFalse(connection.closed)

        self.clock.advance(1)
        self.assertTrue(connection.closed)
        self.assertEqual(connection.answer, b"")


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6)


class GzipBodyTests(LimitsTestCase):
    """
    On a site that decodes gzip, the handler sees the inflated body and
    headers that no longer claim an encoding; the body limit applies to
    the inflated size, and a bomb is never inflated past it.
    """

    def post(self, body: bytes, *headers: str, **site_options: object) -> _Connection:
        """Send C{body} gzip-encoded in one request; return the connection."""
        connection = self.connect(decode_gzip=True, **site_options)
        connection.send(
            _head(
                "Content-Encoding: gzip",
                f"Content-Length: {len(body)}",
                *headers,
            )
            + body
        )
        return connection

    def test_inflated_for_the_handler(self) -> None:
        """
        The handler reads the inflated text; C{Content-Encoding} is gone and
        C{Content-Length} gives the inflated size.
        """
        text = b'["one","two"]' * 10
        connection = self.post(_gzip(text))

        self.assertEqual(connection.status(), b"200")
        self.assertEqual(self.resource.bodies, [text])
        headers = self.resource.headers[0]
        self.assertNotIn(b"content-encoding", headers)
        self.assertEqual(headers[b"content-length"], [b"%d" % len(text)])

    def test_chunked_gzip(self) -> None:
        """
        A gzip body sent in chunks is inflated across chunk boundaries.
        """
        text = bytes(range(256)) * 3
        packed = _gzip(text)
        connection = self.connect(decode_gzip=True)
        connection.send(_head("Content-Encoding: gzip", "Transfer-Encoding: chunked"))
        for start in range(0, len(packed), 7):
            piece = packed[start : start + 7]
            connection.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        connection.send(b"0\r\n\r\n")

        self.assertEqual(connection.status(), b"200")
        self.assertEqual(self.resource.bodies, [text])

    def test_concatenated_members(self) -> None:
        """
        Two gzip members one after the other inflate to both texts, as
        C{gzip -d} reads them.
        """
        connection = self.post(_gzip(b"first ") + _gzip(b"second"))

        self.assertEqual(self.resource.bodies, [b"first second"])
        self.assertEqual(connection.status(), b"200")

    def test_inflated_at_the_limit(self) -> None:
        """
        A body inflating to exactly the limit is accepted.
        """
        connection = self.post(_gzip(b"z" * LIMIT))

        self.assertEqual(connection.status(), b"200")
        self.assertEqual(self.resource.bodies, [b"z" * LIMIT])

    def test_inflated_over_the_limit(self) -> None:
        """
        A small compressed body inflating past the limit gets 413.
        """
        connection = self.post(_gzip(b"z" * (LIMIT + 1)))

        self.assertEqual(connection.status(), b"413")
        self.assertIn(b"over the limit of 1024 bytes", connection.answer)
        self.assertEqual(self.resource.bodies, [])

    def test_bomb_never_inflated(self) -> None:
        """
        A gzip bomb (64 MiB of zeros in about 64 KiB) gets 413 while the
        memory it made the server hold stays a small fraction of its
        inflated size.
        """
        inflated = 64 * 1024 * 1024
        compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        block = bytes(1024 * 1024)
        bomb = b"".join(compressor.compress(block) for _ in range(64))
        bomb += compressor.flush()
        self.assertLess(len(bomb), inflated // 500)

        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        tracemalloc.reset_peak()
        connection = self.post(bomb, max_body_bytes=1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()

        self.assertEqual(connection.status(), b"413")
        self.assertLess(peak, 8 * 1024 * 1024)
        self.assertEqual(self.resource.bodies, [])

    def test_invalid_gzip(self) -> None:
        """
        A body that is not gzip at all, though labelled so, gets 400.
        """
        connection = self.post(b"this is not gzip")

        self.assertEqual(connection.status(), b"400")
        self.assertIn(b"invalid gzip body", connection.answer)
        self.assertEqual(self.resource.bodies, [])

    def test_truncated_gzip(self) -> None:
        """
        A gzip body cut short gets 400 saying so.
        """
        connection = self.post(_gzip(b"some text that is cut")[:-6])

        self.assertEqual(connection.status(), b"400")
        self.assertIn(b"ends early", connection.answer)

    def test_oversized_expecting_continue(self) -> None:
        """
        A gzip body announced over the limit with C{Expect: 100-continue}
        gets 413 and no invitation to send it.
        """
        connection = self.connect(decode_gzip=True)
        connection.send(
            _head(
                "Content-Encoding: gzip",
                f"Content-Length: {LIMIT + 1}",
                "Expect: 100-continue",
            )
        )

        self.assertEqual(connection.status(), b"413")
        self.assertNotIn(b"100 Continue", connection.answer)

    def test_not_decoded_unless_asked(self) -> None:
        """
        A site that does not decode gzip hands the body over as it came,
        with its header.
        """
        packed = _gzip(b"raw")
        connection = self.connect()
        connection.send(
            _head("Content-Encoding: gzip", f"Content-Length: {len(packed)}") + packed
        )

        self.assertEqual(self.resource.bodies, [packed])
        self.assertEqual(self.resource.headers[0][b"content-encoding"], [b"gzip"])
        self.assertEqual(connection.status(), b"200")

    def test_other_encoding_left_alone(self) -> None:
        """
        An encoding other than gzip is not touched: body and header stay.
        """
        connection = self.connect(decode_gzip=True)
        connection.send(
            _head("Content-Encoding: br", "Content-Length: 4") + b"\x0b\x01\x80\x03"
        )

        self.assertEqual(self.resource.bodies, [b"\x0b\x01\x80\x03"])
        self.assertEqual(self.resource.headers[0][b"content-encoding"], [b"br"])
        self.assertEqual(connection.status(), b"200")
