"""
Tests for L{replayforge.proxy.http_source}: every request becomes an event,
answered only once the event is committed.

L{CaptureResource} is driven in memory by L{StubTreq}.  The tests of the call
object and of the answers use a pipeline we fire by hand; those of scripts,
full buffers and several sinks use the real L{SourcePipeline} over real
L{SinkBuffer}s.
"""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from replayforge.lua import LuaScript
from replayforge.proxy.buffer import BufferFull, SinkBuffer
from replayforge.proxy.config import ProxySourceConfig
from replayforge.proxy.http_source import RETRY_AFTER_SECONDS, CaptureResource
from replayforge.proxy.pipeline import SourcePipeline
from replayforge.proxy.stats import SinkStats, SourceStats
from tests.stub_support import settle

MIB = 1024 * 1024


def source_config(target_sink: str | None = "main") -> ProxySourceConfig:
    """Make the configuration of an C{http} source called C{capture}."""
    return ProxySourceConfig(
        id="capture",
        type="http",
        transform_script=None if target_sink else "route.lua",
        target_sink=target_sink,
        hook_interval=1.0,
        listen=None,
        max_body_bytes=MIB,
    )


class ManualPipeline:
    """
    A pipeline that records each event and settles it when the test says.

    @ivar submitted: the events, in order.
    @ivar results: the L{Deferred} of each submission, for the test to fire.
    """

    def __init__(self) -> None:
        self.config = source_config()
        self.submitted: list[str] = []
        self.results: list[Deferred[int]] = []

    def submit(self, content: str) -> Deferred[int]:
        self.submitted.append(content)
        result: Deferred[int] = Deferred()
        self.results.append(result)
        return result

    def calls(self) -> list[dict[str, Any]]:
        """The submitted events, decoded as call objects."""
        return [json.loads(content) for content in self.submitted]


class CaptureTestCase(SynchronousTestCase):
    """Serve a L{CaptureResource} over a L{ManualPipeline}."""

    def setUp(self) -> None:
        self.pipeline = ManualPipeline()
        self.client = StubTreq(CaptureResource(self.pipeline))

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        """Make a request and deliver everything that can be delivered."""
        response = self.client.request(method, url, **kwargs)
        self.client.flush()
        return response

    def capture(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        """Make a request, let the pipeline store it, return its call object."""
        response = self.request(method, url, **kwargs)
        self.assertEqual(len(self.pipeline.submitted), 1)
        self.pipeline.results[0].callback(1)
        self.client.flush()
        self.assertEqual(self.successResultOf(response).code, 200)
        return self.pipeline.calls()[0]


class CallObjectTests(CaptureTestCase):
    """What a captured request becomes: the call object of the spec."""

    def test_method_and_path(self) -> None:
        """The method is kept; the path is percent-decoded, without the query."""
        call = self.capture("PATCH", "http://proxy.test/hooks/a%20b/%C3%A9?x=1")

        self.assertEqual(call["method"], "PATCH")
        self.assertEqual(call["path"], "/hooks/a b/é")

    def test_any_method_and_path(self) -> None:
        """Every method on every path is captured."""
        for method in ("GET", "PUT", "DELETE", "OPTIONS"):
            self.request(method, "http://proxy.test/any/where")

        self.assertEqual(
            [(call["method"], call["path"]) for call in self.pipeline.calls()],
            [
                ("GET", "/any/where"),
                ("PUT", "/any/where"),
                ("DELETE", "/any/where"),
                ("OPTIONS", "/any/where"),
            ],
        )

    def test_params_as_lists(self) -> None:
        """
        Query parameters are lists of strings: repeated names keep every
        value in order, blank values and bare names are kept as empty strings,
        and values are decoded.
        """
        call = self.capture(
            "GET", "http://proxy.test/search?q=a&q=b&empty=&flag&text=caf%C3%A9+au+lait"
        )

        self.assertEqual(
            call["params"],
            {"q": ["a", "b"], "empty": [""], "flag": [""], "text": ["café au lait"]},
        )

    def test_no_query_no_params(self) -> None:
        """A request without a query has an empty C{params} object."""
        call = self.capture("GET", "http://proxy.test/")

        self.assertEqual(call["params"], {})

    def test_headers_as_lists(self) -> None:
        """
        Headers are lists of strings; a repeated header keeps every value in
        order.
        """
        call = self.capture(
            "POST",
            "http://proxy.test/",
            headers={"X-Signature": ["one", "two"], "Content-Type": ["text/plain"]},
            data=b"x",
        )

        self.assertEqual(call["headers"]["X-Signature"], ["one", "two"])
        self.assertEqual(call["headers"]["Content-Type"], ["text/plain"])

    def test_header_values_utf8(self) -> None:
        """
        Header values are read as UTF-8, as clients send them; bytes that are
        not UTF-8 become replacement characters instead of failing.
        """
        call = self.capture(
            "POST",
            "http://proxy.test/",
            headers={"X-Name": ["Zoë".encode()], "X-Raw": [b"\xff!"]},
            data=b"x",
        )

        self.assertEqual(call["headers"]["X-Name"], ["Zoë"])
        self.assertEqual(call["headers"]["X-Raw"], ["\ufffd!"])

    def test_header_names_canonical(self) -> None:
        """
        Header names arrive capitalized word by word, as the Go proxy gave
        them to scripts, however the client spelled them.
        """
        call = self.capture(
            "GET", "http://proxy.test/", headers={"x-request-id": ["abc"]}
        )

        self.assertEqual(call["headers"]["X-Request-Id"], ["abc"])
        self.assertNotIn("x-request-id", call["headers"])

    def test_connection_and_cookie_removed(self) -> None:
        """C{Connection} and C{Cookie} headers are removed at capture."""
        call = self.capture(
            "GET",
            "http://proxy.test/",
            headers={
                "Connection": ["keep-alive"],
                "Cookie": ["session=secret"],
                "X-Kept": ["yes"],
            },
        )

        names = {name.lower() for name in call["headers"]}
        self.assertNotIn("connection", names)
        self.assertNotIn("cookie", names)
        self.assertEqual(call["headers"]["X-Kept"], ["yes"])
        self.assertNotIn("session=secret", json.dumps(call))

    def test_text_body(self) -> None:
        """A UTF-8 body travels as text, with no C{bodyEncoding}."""
        call = self.capture(
            "POST", "http://proxy.test/", data='{"name": "Zoë"}'.encode()
        )

        self.assertEqual(call["body"], '{"name": "Zoë"}')
        self.assertNotIn("bodyEncoding", call)

    def test_form_body_kept_raw(self) -> None:
        """A form body is captured as its raw text."""
        call = self.capture(
            "POST",
            "http://proxy.test/form",
            headers={"Content-Type": ["application/x-www-form-urlencoded"]},
            data=b"a=1&b=%20",
        )

        self.assertEqual(call["body"], "a=1&b=%20")

    def test_binary_body_base64(self) -> None:
        """
        A body that is not valid UTF-8 travels as base64 with
        C{"bodyEncoding": "base64"}, and decodes to the exact bytes sent.
        """
        raw = b"\x89PNG\r\n\x1a\n\x00\xff\xfe"

        call = self.capture("PUT", "http://proxy.test/upload", data=raw)

        self.assertEqual(call["bodyEncoding"], "base64")
        self.assertEqual(base64.b64decode(call["body"]), raw)

    def test_empty_body(self) -> None:
        """A request without a body has an empty C{body}."""
        call = self.capture("GET", "http://proxy.test/")

        self.assertEqual(call["body"], "")

    def test_ip(self) -> None:
        """C{ip} is the client's address and port."""
        call = self.capture("GET", "http://proxy.test/")

        host, _, port = call["ip"].rpartition(":")
        self.assertEqual(host, "127.0.0.1")
        self.assertTrue(port.isdigit(), call["ip"])

    def test_only_call_object_keys(self) -> None:
        """A call object has the keys of the spec, and no others."""
        call = self.capture("GET", "http://proxy.test/")

        self.assertEqual(
            set(call), {"method", "path", "params", "headers", "body", "ip"}
        )


class AnswerTests(CaptureTestCase):
    """The client's answer waits for the commit and tells what happened."""

    def test_no_answer_before_commit(self) -> None:
        """
        The client gets no answer until the pipeline has committed the event;
        then 200 C{Request received}.
        """
        response = self.request("POST", "http://proxy.test/", data=b"x")
        self.assertNoResult(response)
        self.client.flush()
        self.assertNoResult(response)

        self.pipeline.results[0].callback(1)
        self.client.flush()

        answer = self.successResultOf(response)
        self.assertEqual(answer.code, 200)
        self.assertEqual(self.successResultOf(answer.content()), b"Request received")

    def test_buffer_full_503(self) -> None:
        """
        When a buffer is full the client gets 503 with C{Retry-After}, so it
        sends again later.
        """
        response = self.request("POST", "http://proxy.test/", data=b"x")

        self.pipeline.results[0].errback(BufferFull("main"))
        self.client.flush()

        answer = self.successResultOf(response)
        self.assertEqual(answer.code, 503)
        self.assertEqual(
            answer.headers.getRawHeaders("Retry-After"), [str(RETRY_AFTER_SECONDS)]
        )
        self.assertGreater(RETRY_AFTER_SECONDS, 0)

    def test_storage_error_500(self) -> None:
        """
        Any other failure to store answers 500 and is logged; the next
        request is served normally.
        """
        first = self.request("POST", "http://proxy.test/", data=b"x")
        self.pipeline.results[0].errback(OSError("disk I/O error"))
        self.client.flush()
        second = self.request("POST", "http://proxy.test/", data=b"y")
        self.pipeline.results[1].callback(1)
        self.client.flush()

        self.assertEqual(self.successResultOf(first).code, 500)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(self.successResultOf(second).code, 200)

    def test_requests_answered_independently(self) -> None:
        """
        A request whose commit is slow does not hold back a later one that
        committed.
        """
        slow = self.request("POST", "http://proxy.test/slow", data=b"x")
        fast = self.request("POST", "http://proxy.test/fast", data=b"y")

        self.pipeline.results[1].callback(1)
        self.client.flush()

        self.assertNoResult(slow)
        self.assertEqual(self.successResultOf(fast).code, 200)


ROUTE_SCRIPT = """
function Process(content, emit)
  local call = json_decode(content)
  -- error() is the spec's logging function here; assert raises.
  assert(call.path ~= "/boom", "cannot route " .. call.path)
  if call.path == "/both" then
    emit("main", call.body)
    emit("small", call.body)
    return
  end
  if call.path == "/astray" then
    emit("nowhere", call.body)
  end
  emit("main", call.body)
end
"""


class PipelineCaptureTests(TestCase):
    """
    The HTTP source over the real pipeline and SQLite buffers: what the
    client's answer means for what is stored.
    """

    def setUp(self) -> None:
        folder = tempfile.TemporaryDirectory(prefix="rf-http-source-")
        self.addCleanup(folder.cleanup)
        self.folder = Path(folder.name)
        self.clock = Clock()
        self.stats = SourceStats()
        self.sink_stats = {"main": SinkStats(), "small": SinkStats()}

    async def start(
        self, script: str | None, small_max_bytes: int = 10 * MIB
    ) -> dict[str, SinkBuffer]:
        """
        Serve the source, with C{script} (or straight to C{main}), over sinks
        C{main} and C{small}, the latter capped at C{small_max_bytes}.
        """
        buffers = {}
        for sink_id, cap in (("main", 10 * MIB), ("small", small_max_bytes)):
            buffer = SinkBuffer(
                self.folder / f"{sink_id}-sink.sqlite3", cap, reactor, self.clock
            )
            await buffer.open()
            self.addCleanup(buffer.close)
            buffers[sink_id] = buffer
        lua = None
        if script is not None:
            path = self.folder / "route.lua"
            path.write_text(script, encoding="utf-8")
            lua = LuaScript(path, "capture")
        pipeline = SourcePipeline(
            source_config(None if script else "main"),
            lua,
            buffers,
            self.stats,
            self.sink_stats,
            self.clock,
        )
        self.client = StubTreq(CaptureResource(pipeline))
        return buffers

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """
        Post C{body} to C{path}; let the SQLite thread and the in-memory
        connection run until the answer is complete.
        """
        response = self.client.post(f"http://proxy.test{path}", data=body)
        answer = await settle(self.client, response)
        content = await settle(self.client, answer.content())
        return answer.code, content

    async def stored(self, buffer: SinkBuffer) -> list[str]:
        """The contents committed to C{buffer}, oldest first."""
        return [event.content for event in await buffer.oldest(100)]

    async def test_target_sink_stores_call_object(self) -> None:
        """
        Without a script the call object goes to C{targetSink}, committed
        before the client hears 200.
        """
        buffers = await self.start(None)

        code, body = await self.post("/hook?a=1", b"payload")

        self.assertEqual((code, body), (200, b"Request received"))
        (stored,) = await self.stored(buffers["main"])
        call = json.loads(stored)
        self.assertEqual(
            (call["path"], call["params"], call["body"]),
            ("/hook", {"a": ["1"]}, "payload"),
        )
        self.assertEqual(self.stats.received, 1)
        self.assertEqual(self.stats.emitted, 1)
        self.assertEqual(self.sink_stats["main"].buffered, 1)

    async def test_full_buffer_503_nothing_stored(self) -> None:
        """
        A full target buffer answers 503 with C{Retry-After}; nothing is
        stored and the drop is counted for the source and the sink.
        """
        buffers = await self.start(None)
        buffers["main"].max_bytes = buffers["main"].used_bytes

        response = self.client.post("http://proxy.test/hook", data=b"payload")
        answer = await settle(self.client, response)

        self.assertEqual(answer.code, 503)
        self.assertEqual(
            answer.headers.getRawHeaders("Retry-After"), [str(RETRY_AFTER_SECONDS)]
        )
        self.assertEqual(await self.stored(buffers["main"]), [])
        self.assertEqual(self.stats.dropped["buffer_full"], 1)
        self.assertEqual(self.sink_stats["main"].dropped["buffer_full"], 1)

    async def test_script_routes_events(self) -> None:
        """The script's C{Process} decides what each sink stores."""
        buffers = await self.start(ROUTE_SCRIPT)

        code, _ = await self.post("/both", b"to both")

        self.assertEqual(code, 200)
        self.assertEqual(await self.stored(buffers["main"]), ["to both"])
        self.assertEqual(await self.stored(buffers["small"]), ["to both"])

    async def test_script_error_drops_only_that_event(self) -> None:
        """
        An event the script fails on is dropped and counted as
        C{script_error}; its client is still answered, and the next event is
        stored as usual.
        """
        buffers = await self.start(ROUTE_SCRIPT)

        failed, _ = await self.post("/boom", b"lost")
        code, _ = await self.post("/fine", b"kept")

        self.assertEqual((failed, code), (200, 200))
        self.assertEqual(await self.stored(buffers["main"]), ["kept"])
        self.assertEqual(self.stats.dropped["script_error"], 1)
        self.assertEqual(self.stats.received, 2)

    async def test_unknown_sink_counted(self) -> None:
        """
        An emit to a sink that does not exist is dropped and counted as
        C{unknown_sink}; the emits to real sinks of the same event are stored.
        """
        buffers = await self.start(ROUTE_SCRIPT)

        code, _ = await self.post("/astray", b"half")

        self.assertEqual(code, 200)
        self.assertEqual(await self.stored(buffers["main"]), ["half"])
        self.assertEqual(self.stats.dropped["unknown_sink"], 1)

    async def test_all_or_nothing_across_sinks(self) -> None:
        """
        When one of the sinks an event goes to is full, nothing is stored in
        any of them, so the client's retry cannot double what was stored.
        """
        buffers = await self.start(ROUTE_SCRIPT, small_max_bytes=64 * 1024)
        buffers["small"].max_bytes = buffers["small"].used_bytes

        code, _ = await self.post("/both", b"to both")

        self.assertEqual(code, 503)
        self.assertEqual(await self.stored(buffers["main"]), [])
        self.assertEqual(await self.stored(buffers["small"]), [])
        self.assertEqual(buffers["main"].pending_events, 0)
        self.assertEqual(self.sink_stats["small"].dropped["buffer_full"], 1)
        self.assertEqual(self.sink_stats["main"].dropped["buffer_full"], 0)
