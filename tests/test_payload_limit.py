"""
Tests of a sink's C{maxPayloadBytes} at the source: an event the relay
request could never carry is never buffered.

L{replayforge.proxy.payload} measures events as the forwarder does; the
HTTP source refuses such a request whole with 413 (L{CaptureResource} over
the real L{SourcePipeline} and L{SinkBuffer}s); other sources drop the
event alone.  Every refusal is counted as C{payload_too_large}.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from replayforge.lua import LuaScript
from replayforge.proxy.buffer import BufferFull, SinkBuffer
from replayforge.proxy.config import ProxySourceConfig, load_proxy_config
from replayforge.proxy.forwarder import Forwarder
from replayforge.proxy.http_source import CaptureResource
from replayforge.proxy.payload import encode_event, fits_alone
from replayforge.proxy.pipeline import SourcePipeline
from replayforge.proxy.stats import SinkStats, SourceStats
from replayforge.proxy.tap import ProxyService
from tests.stub_support import settle
from tests.test_forwarder import FakeRelay, always, sink_config, wait_until

MIB = 1024 * 1024

# A limit small enough that tests need no big bodies.
LIMIT = 100

# Each emits the request's body: the event is the body, byte for byte.
ROUTE_SCRIPT = """
function Process(content, emit)
  local call = json_decode(content)
  if call.path == "/both" then
    emit("main", call.body)
    emit("small", call.body)
    return
  end
  emit("small", call.body)
end
"""


def forwarder_fits(content: str, limit: int) -> bool:
    """Whether the forwarder would send C{content}: its own measure."""
    return len(encode_event(content)) <= limit - 2


class FitsAloneTests(SynchronousTestCase):
    """L{fits_alone} agrees with the forwarder's measure."""

    def test_boundary_of_plain_text(self) -> None:
        """
        Plain text fits up to the limit less its quotes and the array's
        brackets, not one byte more.
        """
        self.assertTrue(fits_alone("x" * (LIMIT - 4), LIMIT))
        self.assertFalse(fits_alone("x" * (LIMIT - 3), LIMIT))

    def test_escapes_and_non_ascii_count(self) -> None:
        """
        Escaped characters count as their escapes and non-ASCII ones as
        their UTF-8 bytes, exactly as the forwarder counts them, around the
        limit and far below it.
        """
        for unit in ('"', "\\", "\n", "\x01", "é", "€", "😀", "a"):
            for limit in (LIMIT, 64, 4096):
                for count in range(limit + 1):
                    content = unit * count
                    self.assertEqual(
                        fits_alone(content, limit),
                        forwarder_fits(content, limit),
                        (unit, limit, count),
                    )


class PipelineTestCase(TestCase):
    """Sinks C{main} (large limit) and C{small} (L{LIMIT}) over real buffers."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="rf-payload-"))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        self.clock = Clock()
        self.stats = SourceStats()
        self.sink_stats = {"main": SinkStats(), "small": SinkStats()}
        self.limits = {"main": MIB, "small": LIMIT}

    async def pipeline(
        self, kind: str, script: str | None, target_sink: str | None = None
    ) -> SourcePipeline:
        """A pipeline of a C{kind} source with C{script} over both sinks."""
        self.buffers: dict[str, SinkBuffer] = {}
        for sink_id in ("main", "small"):
            buffer = SinkBuffer(
                self.folder / f"{sink_id}-sink.sqlite3", 10 * MIB, reactor, self.clock
            )
            await buffer.open()
            self.addCleanup(buffer.close)
            self.buffers[sink_id] = buffer
        lua = None
        if script is not None:
            path = self.folder / "route.lua"
            path.write_text(script, encoding="utf-8")
            lua = LuaScript(path, "source")
        config = ProxySourceConfig(
            id="source",
            type=kind,
            transform_script=None if target_sink else "route.lua",
            target_sink=target_sink,
            hook_interval=1.0,
            listen=None,
            max_body_bytes=MIB,
        )
        return SourcePipeline(
            config,
            lua,
            self.buffers,
            self.stats,
            self.sink_stats,
            self.clock,
            payload_limits=self.limits,
        )

    async def stored(self, sink: str) -> list[str]:
        """The contents committed to C{sink}'s buffer, oldest first."""
        return [event.content for event in await self.buffers[sink].oldest(100)]


class HTTPSourceTests(PipelineTestCase):
    """The HTTP source answers 413 for an event over its sink's limit."""

    async def serve(self, script: str | None, target_sink: str | None = None) -> None:
        """Serve an C{http} source over the pipeline."""
        pipeline = await self.pipeline("http", script, target_sink)
        self.client = StubTreq(CaptureResource(pipeline))

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """Post C{body} to C{path}; return the answer's code and body."""
        answer = await settle(
            self.client, self.client.post(f"http://proxy.test{path}", data=body)
        )
        return answer.code, await settle(self.client, answer.content())

    async def test_oversized_event_refused(self) -> None:
        """
        An event over its sink's C{maxPayloadBytes} gets 413 naming the sink
        and the limit; nothing is buffered and the drop is counted.
        """
        await self.serve(ROUTE_SCRIPT)

        code, body = await self.post("/one", b"x" * (LIMIT - 3))

        self.assertEqual(code, 413)
        self.assertIn(b"sink small", body)
        self.assertIn(b"%d bytes" % LIMIT, body)
        self.assertEqual(await self.stored("small"), [])
        self.assertEqual(await self.stored("main"), [])
        self.assertEqual(self.stats.dropped["payload_too_large"], 1)
        self.assertEqual(self.sink_stats["small"].dropped["payload_too_large"], 1)
        self.assertEqual(self.stats.emitted, 0)

    async def test_target_sink_measures_call_object(self) -> None:
        """
        Without a script the call object itself is measured against the
        C{targetSink}'s limit.
        """
        await self.serve(None, target_sink="small")

        code, _ = await self.post("/hook", b"short")

        self.assertEqual(code, 413)
        self.assertEqual(await self.stored("small"), [])
        self.assertEqual(self.stats.dropped["payload_too_large"], 1)

    async def test_refused_whole_when_one_sink_too_small(self) -> None:
        """
        An event for two sinks, too large for one of them only, is refused
        whole: neither buffer stores it.
        """
        await self.serve(ROUTE_SCRIPT)

        code, body = await self.post("/both", b"x" * LIMIT)

        self.assertEqual(code, 413)
        self.assertIn(b"sink small", body)
        self.assertNotIn(b"sink main", body)
        self.assertEqual(await self.stored("main"), [])
        self.assertEqual(await self.stored("small"), [])
        self.assertEqual(self.stats.dropped["payload_too_large"], 2)
        self.assertEqual(self.sink_stats["small"].dropped["payload_too_large"], 1)
        self.assertEqual(self.sink_stats["main"].dropped["payload_too_large"], 0)

    async def test_refusal_leaves_next_request_alone(self) -> None:
        """A refused request does not affect the next one."""
        await self.serve(ROUTE_SCRIPT)

        refused, _ = await self.post("/one", b"x" * LIMIT)
        accepted, _ = await self.post("/one", b"fine")

        self.assertEqual((refused, accepted), (413, 200))
        self.assertEqual(await self.stored("small"), ["fine"])

    async def test_just_under_limit_accepted_and_forwarded(self) -> None:
        """
        Events that just fit the limit, with escapes counted, get 200 and
        are then sent by the forwarder, which drops none of them.
        """
        await self.serve(ROUTE_SCRIPT)
        plain = "x" * (LIMIT - 4)
        quoted = '"' * ((LIMIT - 4) // 2)

        codes = [
            (await self.post("/one", text.encode()))[0] for text in (plain, quoted)
        ]
        escaped_over, _ = await self.post("/one", b'"' * ((LIMIT - 4) // 2 + 1))

        self.assertEqual((codes, escaped_over), ([200, 200], 413))
        relay = FakeRelay()
        stats = SinkStats()
        forwarder = Forwarder(
            sink_config(max_payload_bytes=LIMIT),
            self.buffers["small"],
            relay,
            self.clock,
            stats,
            "prod",
            "edge-1",
            rng=always(0.0),
        )
        forwarder.start()
        self.addCleanup(forwarder.stop)
        await wait_until(lambda: self.buffers["small"].pending_events == 0)

        self.assertEqual(relay.sent(), [[plain], [quoted]])
        self.assertEqual(stats.dropped["payload_too_large"], 0)


class PulledSourceTests(PipelineTestCase):
    """Sources without a client drop the oversized event alone."""

    async def test_oversized_line_dropped_others_stored(self) -> None:
        """
        Events read together keep all but the oversized one, which is
        dropped and counted for the source and its sink.
        """
        pipeline = await self.pipeline("logfile", None, target_sink="small")

        stored = await pipeline.submit_many(["a", "x" * LIMIT, "b"])

        self.assertEqual(stored, 2)
        self.assertEqual(await self.stored("small"), ["a", "b"])
        self.assertEqual(self.stats.dropped["payload_too_large"], 1)
        self.assertEqual(self.sink_stats["small"].dropped["payload_too_large"], 1)

    async def test_only_oversized(self) -> None:
        """A batch of oversized events alone stores nothing and counts them."""
        pipeline = await self.pipeline("logfile", None, target_sink="small")

        stored = await pipeline.submit_many(["x" * LIMIT, "y" * LIMIT])

        self.assertEqual(stored, 0)
        self.assertEqual(self.stats.dropped["payload_too_large"], 2)

    async def test_counted_once_across_a_full_buffer(self) -> None:
        """
        A batch refused for a full buffer is submitted again by its source:
        its oversized event is counted when the batch is committed, once.
        """
        pipeline = await self.pipeline("logfile", None, target_sink="small")
        cap = self.buffers["small"].max_bytes
        self.buffers["small"].max_bytes = self.buffers["small"].used_bytes
        batch = ["a", "x" * LIMIT]

        with self.assertRaises(BufferFull):
            await pipeline.submit_many(batch)
        self.assertEqual(self.stats.dropped["payload_too_large"], 0)
        self.buffers["small"].max_bytes = cap
        await pipeline.submit_many(batch)

        self.assertEqual(await self.stored("small"), ["a"])
        self.assertEqual(self.stats.dropped["payload_too_large"], 1)
        self.assertEqual(self.stats.dropped["buffer_full"], 0)


class ProxyServiceTests(SynchronousTestCase):
    """The proxy gives each source its sinks' limits."""

    def test_timer_emit_over_limit_dropped(self) -> None:
        """
        An event a C{TimerHandler} emits over the configured
        C{maxPayloadBytes} is dropped and shows in C{/statusz}.
        """
        folder = Path(tempfile.mkdtemp(prefix="rf-payload-service-"))
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        script = folder / "timer.lua"
        script.write_text(
            "function Process(c, emit) end\n"
            'function TimerHandler(emit) emit("main", string.rep("x", 100)) end\n'
        )
        document = {
            "sources": [
                {
                    "id": "hook",
                    "type": "http",
                    "transformScript": str(script),
                    "params": {"listen": "tcp:0:interface=127.0.0.1"},
                }
            ],
            "sinks": [
                {
                    "id": "main",
                    "url": "http://127.0.0.1:1/",
                    "buckets": ["b"],
                    "databasePath": str(folder / "main-sink.sqlite3"),
                    "config": {"maxPayloadBytes": 64},
                }
            ],
        }
        path = folder / "proxy.json"
        path.write_text(json.dumps(document))
        clock = MemoryReactorClock()
        proxy = ProxyService(load_proxy_config(path), clock)
        self.addCleanup(lambda: [buffer.close() for buffer in proxy.buffers.values()])

        proxy.getServiceNamed("timer hook").startService()
        clock.advance(1)

        status = proxy.status()
        self.assertEqual(status["sources"]["hook"]["dropped"], {"payload_too_large": 1})
        self.assertEqual(status["sinks"]["main"]["dropped"], {"payload_too_large": 1})
