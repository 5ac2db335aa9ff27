"""
Tests for L{replayforge.web} and L{replayforge.periodic}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from replayforge.periodic import PeriodicTask
from replayforge.web import bearer_matches, endpoint_description, make_site

LIMIT = 1024


class BearerMatchesTests(SynchronousTestCase):
    """
    L{bearer_matches} accepts exactly C{Authorization: Bearer <token>}.
    """

    def test_matching_token(self) -> None:
        """
        The configured token after C{Bearer } matches.
        """
        self.assertTrue(bearer_matches(b"Bearer s3cret", "s3cret"))

    def test_scheme_is_case_insensitive(self) -> None:
        """
        The scheme name is matched without regard to case, as HTTP wants.
        """
        self.assertTrue(bearer_matches(b"bearer s3cret", "s3cret"))
        self.assertTrue(bearer_matches(b"BEARER s3cret", "s3cret"))

    def test_surrounding_spaces_ignored(self) -> None:
        """
        Extra spaces around the token do not prevent a match.
        """
        self.assertTrue(bearer_matches(b"Bearer   s3cret  ", "s3cret"))

    def test_wrong_token(self) -> None:
        """
        A different token, a prefix of the token or a longer one never match.
        """
        self.assertFalse(bearer_matches(b"Bearer other", "s3cret"))
        self.assertFalse(bearer_matches(b"Bearer s3cr", "s3cret"))
        self.assertFalse(bearer_matches(b"Bearer s3cret2", "s3cret"))

    def test_token_is_case_sensitive(self) -> None:
        """
        Tokens are compared byte for byte.
        """
        self.assertFalse(bearer_matches(b"Bearer S3CRET", "s3cret"))

    def test_other_scheme(self) -> None:
        """
        The right token under another scheme does not match.
        """
        self.assertFalse(bearer_matches(b"Basic s3cret", "s3cret"))
        self.assertFalse(bearer_matches(b"Token s3cret", "s3cret"))

    def test_bare_token(self) -> None:
        """
        A header holding only the token, without a scheme, does not match.
        """
        self.assertFalse(bearer_matches(b"s3cret", "s3cret"))

    def test_missing_header(self) -> None:
        """
        No C{Authorization} header, or an empty one, never matches.
        """
        self.assertFalse(bearer_matches(None, "s3cret"))
        self.assertFalse(bearer_matches(b"", "s3cret"))

    def test_scheme_without_token(self) -> None:
        """
        C{Bearer} alone matches no token.
        """
        self.assertFalse(bearer_matches(b"Bearer", "s3cret"))
        self.assertFalse(bearer_matches(b"Bearer ", "s3cret"))

    def test_empty_configured_token_never_matches(self) -> None:
        """
        An empty configured token opens nothing, not even C{Bearer }.
        """
        self.assertFalse(bearer_matches(b"Bearer ", ""))
        self.assertFalse(bearer_matches(b"Bearer", ""))

    def test_non_ascii_token(self) -> None:
        """
        A token outside ASCII matches its UTF-8 encoding.
        """
        self.assertTrue(bearer_matches("Bearer clé".encode(), "clé"))
        self.assertFalse(bearer_matches(b"Bearer cle", "clé"))


class EndpointDescriptionTests(SynchronousTestCase):
    """
    L{endpoint_description} turns C{listen} or a port into an endpoint string.
    """

    def test_listen_wins(self) -> None:
        """
        An endpoint string is used as it is, whatever the port says.
        """
        self.assertEqual(
            endpoint_description("tcp:9000:interface=127.0.0.1", 8081),
            "tcp:9000:interface=127.0.0.1",
        )

    def test_port(self) -> None:
        """
        Without an endpoint string a port becomes C{tcp:PORT}.
        """
        self.assertEqual(endpoint_description("", 8081), "tcp:8081")
        self.assertEqual(endpoint_description(None, 8081), "tcp:8081")

    def test_off(self) -> None:
        """
        Port 0 or no port, without an endpoint string, turns the listener off.
        """
        self.assertIsNone(endpoint_description("", 0))
        self.assertIsNone(endpoint_description(None, None))


class _RecordingResource(Resource):
    """
    Answer every POST with C{ok}, remembering what the handler saw.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []
        self.args: list[dict[bytes, list[bytes]]] = []

    def render_POST(self, request: IRequest) -> bytes:
        self.bodies.append(request.content.read())
        self.args.append(dict(request.args))
        return b"ok"


class _RawHTTPClient(Protocol):
    """
    Send one raw request and collect every byte until the server closes.
    """

    def __init__(self, request: bytes) -> None:
        self._request = request
        self._received: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self._received.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done.callback(b"".join(self._received))


def _request(headers: list[str], body: bytes = b"") -> bytes:
    """Build a raw HTTP/1.1 POST to C{/} with C{headers} and C{body}."""
    head = ["POST / HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


def _chunked(*chunks: bytes) -> bytes:
    """Encode C{chunks} as a chunked transfer body with its last chunk."""
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    return encoded + b"0\r\n\r\n"


class LimitedRequestTests(TestCase):
    """
    A site from L{make_site} refuses bodies over its limit with 413 before the
    handler runs, over a real loopback connection.
    """

    timeout = 15

    async def _exchange(self, raw_request: bytes) -> bytes:
        """
        Serve a L{_RecordingResource} on a free loopback port, send
        C{raw_request} and return all the server answered before closing.
        """
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            make_site(self.resource, max_body_bytes=LIMIT)
        )
        self.addCleanup(port.stopListening)
        client = _RawHTTPClient(raw_request)
        endpoint = TCP4ClientEndpoint(
            reactor, "127.0.0.1", port.getHost().port, timeout=5
        )
        await connectProtocol(endpoint, client)
        return await client.done

    def setUp(self) -> None:
        self.resource = _RecordingResource()

    def assertStatus(self, response: bytes, status: bytes) -> None:
        """Assert that C{response} starts with the status line C{status}."""
        status_line = response.split(b"\r\n", 1)[0]
        self.assertEqual(status_line[: len(b"HTTP/1.1 ") + 3], b"HTTP/1.1 " + status)

    async def test_oversized_content_length(self) -> None:
        """
        A request announcing a body over the limit is answered 413 and closed
        without the handler running, before the body is sent.
        """
        response = await self._exchange(
            _request([f"Content-Length: {LIMIT + 1}"], b"x" * 100)
        )

        self.assertStatus(response, b"413")
        self.assertIn(b"Connection: close", response)
        self.assertIn(b"over the limit of 1024 bytes", response)
        self.assertEqual(self.resource.bodies, [])

    async def test_oversized_content_length_expecting_continue(self) -> None:
        """
        A client asking C{Expect: 100-continue} for a body over the limit gets
        413 and no invitation to send the body.
        """
        response = await self._exchange(
            _request([f"Content-Length: {LIMIT * 10}", "Expect: 100-continue"])
        )

        self.assertStatus(response, b"413")
        self.assertNotIn(b"100 Continue", response)
        self.assertEqual(self.resource.bodies, [])

    async def test_oversized_chunked_body(self) -> None:
        """
        A chunked body whose chunks add up to more than the limit is answered
        413 without the handler running, though no chunk alone is too big.
        """
        chunk = b"y" * (LIMIT // 2 + 1)
        response = await self._exchange(
            _request(["Transfer-Encoding: chunked"], _chunked(chunk, chunk))
        )

        self.assertStatus(response, b"413")
        self.assertEqual(self.resource.bodies, [])

    async def test_body_at_the_limit(self) -> None:
        """
        A body of exactly the limit reaches the handler whole.
        """
        body = b"z" * LIMIT
        response = await self._exchange(
            _request([f"Content-Length: {LIMIT}", "Connection: close"], body)
        )

        self.assertStatus(response, b"200")
        self.assertTrue(response.endswith(b"\r\n\r\nok"))
        self.assertEqual(self.resource.bodies, [body])

    async def test_chunked_body_under_the_limit(self) -> None:
        """
        A chunked body under the limit reaches the handler reassembled.
        """
        response = await self._exchange(
            _request(
                ["Transfer-Encoding: chunked", "Connection: close"],
                _chunked(b"hello ", b"world"),
            )
        )

        self.assertStatus(response, b"200")
        self.assertEqual(self.resource.bodies, [b"hello world"])

    async def test_form_body_left_unparsed(self) -> None:
        """
        A URL-encoded form body reaches the handler as raw bytes and does not
        leak into the query arguments.
        """
        response = await self._exchange(
            _request(
                [
                    "Content-Type: application/x-www-form-urlencoded",
                    "Content-Length: 7",
                    "Connection: close",
                ],
                b"a=1&b=2",
            )
        )

        self.assertStatus(response, b"200")
        self.assertEqual(self.resource.bodies, [b"a=1&b=2"])
        self.assertEqual(self.resource.args, [{}])

    async def test_malformed_multipart_body_reaches_handler(self) -> None:
        """
        A body labelled multipart that is not is the handler's to judge: it is
        not refused by the web server with a 400.
        """
        body = b"this is not multipart"
        response = await self._exchange(
            _request(
                [
                    "Content-Type: multipart/form-data; boundary=xyz",
                    f"Content-Length: {len(body)}",
                    "Connection: close",
                ],
                body,
            )
        )

        self.assertStatus(response, b"200")
        self.assertEqual(self.resource.bodies, [body])


class PeriodicTaskTests(SynchronousTestCase):
    """
    L{PeriodicTask} calls its work on its clock's schedule and survives errors.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.calls: list[float] = []

    def start(self, work: Any, interval: float = 10.0, now: bool = False) -> Any:
        """Start a task named C{purge} running C{work}; stop it in cleanup."""
        task = PeriodicTask("purge", interval, work, self.clock, now=now)
        task.startService()
        self.addCleanup(lambda: task.running and task.stopService())
        return task

    def record(self) -> None:
        """Work that notes the time it ran."""
        self.calls.append(self.clock.seconds())

    def test_runs_every_interval(self) -> None:
        """
        The work runs once per interval of the clock, the first time one
        interval after the start.
        """
        self.start(self.record)

        self.clock.advance(9)
        self.assertEqual(self.calls, [])
        self.clock.pump([1, 10, 10])
        self.assertEqual(self.calls, [10, 20, 30])

    def test_now(self) -> None:
        """
        With C{now} the first call comes at the start.
        """
        self.start(self.record, now=True)
        self.assertEqual(self.calls, [0])

    def test_survives_exception(self) -> None:
        """
        Work that raises once is logged with the task's name and still runs on
        the next tick.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def work() -> None:
            self.record()
            if len(self.calls) == 1:
                raise RuntimeError("disk on fire")

        self.start(work)
        self.clock.pump([10, 10, 10])

        self.assertEqual(self.calls, [10, 20, 30])
        errors = self.flushLoggedErrors(RuntimeError)
        self.assertEqual(len(errors), 1)
        failures = [event for event in events if "log_failure" in event]
        self.assertEqual(len(failures), 1)
        self.assertEqual(failures[0]["task"], "purge")

    def test_survives_failed_deferred(self) -> None:
        """
        Work whose L{Deferred} fails is logged and still runs on the next tick.
        """

        def work() -> Deferred[None]:
            self.record()
            if len(self.calls) == 1:
                return fail(ValueError("bad row"))
            return succeed(None)

        self.start(work)
        self.clock.pump([10, 10])

        self.assertEqual(self.calls, [10, 20])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_calls_never_overlap(self) -> None:
        """
        While one call's L{Deferred} is pending no other call starts; the next
        comes on the schedule once it fired.
        """
        pending: list[Deferred[None]] = []

        def work() -> Deferred[None]:
            self.record()
            pending.append(Deferred())
            return pending[-1]

        self.start(work)
        self.clock.pump([10, 10, 10])
        self.assertEqual(self.calls, [10])

        pending[0].callback(None)
        self.clock.advance(10)
        self.assertEqual(self.calls, [10, 40])

    def test_stop(self) -> None:
        """
        Stopping the service ends the calls and fires once the loop stopped.
        """
        task = self.start(self.record)
        self.clock.advance(10)

        stopped = task.stopService()
        self.clock.pump([10, 10])

        self.successResultOf(stopped)
        self.assertEqual(self.calls, [10])
        self.assertFalse(task.running)
