"""
Tests for a proxy sink's script: the forwarder runs C{TransformBatch} on
each batch and honours the path and headers it sets; a failing script keeps
the batch for a retry.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import attrs
from twisted.logger import formatEvent

import tests.test_forwarder as forwarder_tests
from replayforge.backoff import Backoff
from replayforge.lua import LuaScript
from replayforge.proxy.config import ProxySinkConfig
from replayforge.proxy.forwarder import Forwarder
from tests.log_support import capture_log

DATADOG = """
function TransformBatch(messages, request)
  local out = {}
  for i, message in ipairs(messages) do
    out[i] = json_encode({message = message, ddsource = "replayforge"})
  end
  request.path = "/api/v2/logs"
  request.headers["DD-API-KEY"] = "dd-key"
  request.headers["content-type"] = "application/json; charset=utf-8"
  return out, request
end
"""

FAILS_FIRST = """
calls = 0
function TransformBatch(messages, request)
  calls = calls + 1
  if calls == 1 then
    local missing = nil
    return missing.field
  end
  return messages, request
end
"""


class TransformBatchTests(forwarder_tests.ForwarderTestCase):
    """The forwarder with a sink script."""

    def script(self, code: str) -> LuaScript:
        """Load C{code} as the sink's script."""
        folder = Path(tempfile.mkdtemp(prefix="replayforge-sink-"))
        self.addCleanup(shutil.rmtree, folder, True)
        path = folder / "sink.lua"
        path.write_text(code, encoding="utf-8")
        return LuaScript(path, "sink:relay")

    def start_with(self, code: str, config: ProxySinkConfig | None = None) -> Forwarder:
        """Start a forwarder whose sink runs the script C{code}."""
        forwarder = Forwarder(
            config or forwarder_tests.sink_config(max_events=2),
            self.buffer,
            self.relay,
            self.clock,
            self.stats,
            "prod",
            "edge-1",
            rng=forwarder_tests.always(0.0),
            transform=self.script(code),
        )
        forwarder.start()
        self.addCleanup(forwarder.stop)
        return forwarder

    def test_messages_replaced(self) -> None:
        """The messages the script returns are what is sent."""
        self.start_with(
            "function TransformBatch(messages, request)\n"
            "  for i, m in ipairs(messages) do messages[i] = m .. '!' end\n"
            "  return messages, request\n"
            "end\n"
        )
        self.buffer.add("a", "b")
        self.assertEqual(self.relay.sent(), [["a!", "b!"]])
        self.assertEqual(self.buffer.contents(), [])
        self.assertEqual(self.stats.forwarded_events, 2)

    def test_without_path_record_batch(self) -> None:
        """A script that sets no path sends to C{url + "record-batch"}."""
        self.start_with("function TransformBatch(m, r) return m, r end\n")
        self.buffer.add("a", "b")
        self.assertEqual(self.relay.posts[0].url, "http://relay.test:8081/record-batch")

    def test_path_honoured(self) -> None:
        """
        C{request.path} replaces C{record-batch}: the sink's URL without its
        trailing slash, a slash, the path without its leading slash.
        """
        self.start_with(DATADOG)
        self.buffer.add("a", "b")
        [post] = self.relay.posts
        self.assertEqual(post.url, "http://relay.test:8081/api/v2/logs")
        self.assertEqual(
            post.events(),
            [
                '{"ddsource":"replayforge","message":"a"}',
                '{"ddsource":"replayforge","message":"b"}',
            ],
        )

    def test_path_under_base_url(self) -> None:
        """A sink URL with a path keeps it in front of the script's path."""
        config = attrs.evolve(
            forwarder_tests.sink_config(max_events=1), url="https://intake.test/base/"
        )
        self.start_with(
            "function TransformBatch(m, r) r.path = 'logs' return m, r end\n", config
        )
        self.buffer.add("a")
        self.assertEqual(self.relay.posts[0].url, "https://intake.test/base/logs")

    def test_headers_added_and_replaced(self) -> None:
        """
        C{request.headers} are added to the request; one named like ours, in
        any case, replaces ours.
        """
        self.start_with(DATADOG)
        self.buffer.add("a", "b")
        [post] = self.relay.posts
        self.assertEqual(post.header("DD-API-KEY"), "dd-key")
        self.assertEqual(post.header("content-type"), "application/json; charset=utf-8")
        self.assertIsNone(post.header("Content-Type"))
        self.assertEqual(post.header("RF-BUCKETS"), "events,audit")
        self.assertEqual(post.header("Authorization"), "Bearer sink-token")

    def test_failure_keeps_batch(self) -> None:
        """
        When C{TransformBatch} fails nothing is sent and nothing deleted; it
        is counted, and the batch is tried again after the backoff.
        """
        self.start_with(FAILS_FIRST)
        self.buffer.add("a", "b")

        self.assertEqual(self.relay.posts, [])
        self.assertEqual(self.buffer.contents(), ["a", "b"])
        self.assertEqual(self.stats.script_errors, 1)
        self.assertEqual(self.stats.retries, 1)
        self.assertEqual(self.stats.dropped, {})

        self.clock.advance(Backoff(rng=forwarder_tests.always(0.0)).delay(1))

        self.assertEqual(self.relay.sent(), [["a", "b"]])
        self.assertEqual(self.buffer.contents(), [])

    def test_failure_logged_once(self) -> None:
        """A script failing on every try is logged once per 30 seconds."""
        events = capture_log(self)
        self.start_with(
            "function TransformBatch(m, r)\n  assert(false, 'always')\nend\n"
        )
        self.buffer.add("a", "b")
        for _ in range(4):
            self.clock.advance(5)

        failures = [
            formatEvent(event)
            for event in events
            if "TransformBatch failed" in event.get("log_format", "")
        ]
        self.assertEqual(len(failures), 1, failures)
        self.assertIn("sink.lua:2: always", failures[0])
        self.assertGreater(self.stats.script_errors, 1)
        self.assertEqual(self.buffer.contents(), ["a", "b"])

    def test_nothing_kept(self) -> None:
        """A script that keeps no message drops the batch, counted."""
        self.start_with("function TransformBatch(m, r) return {}, r end\n")
        self.buffer.add("a", "b")
        self.assertEqual(self.relay.posts, [])
        self.assertEqual(self.buffer.contents(), [])
        self.assertEqual(self.stats.dropped, {"filtered_by_script": 2})

    def test_values_not_strings_counted(self) -> None:
        """Values that are not strings are left out and counted."""
        self.start_with(
            "function TransformBatch(m, r) return {m[1], {}, true}, r end\n"
        )
        self.buffer.add("a", "b")
        self.assertEqual(self.relay.sent(), [["a"]])
        self.assertEqual(self.stats.dropped, {"invalid_message": 2})

    def test_refused_batch_split_and_transformed_again(self) -> None:
        """
        A batch the target refuses as too large (413) is split, and each
        half goes through the script again.
        """
        self.relay.answers = [413]
        self.start_with(
            "function TransformBatch(m, r)\n"
            "  m[#m + 1] = 'count=' .. #m return m, r\n"
            "end\n"
        )
        self.buffer.add("a", "b")
        self.assertEqual(
            self.relay.sent(),
            [["a", "b", "count=2"], ["a", "count=1"], ["b", "count=1"]],
        )
        self.assertEqual(self.buffer.contents(), [])
