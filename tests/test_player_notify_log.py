"""
Tests for the player's C{notification} sink
(L{replayforge.player.sinks.notification}) against a real twisted.web
target, and its C{log} sink (L{replayforge.player.sinks.logfile}) on real
files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from replayforge.config import ConfigError, Section
from replayforge.player.sinks.base import DELIVERED, Rejected, Retry
from replayforge.player.sinks.logfile import LogSink, event_line
from replayforge.player.sinks.notification import (
    NotificationSink,
    Unusable,
    build_payload,
    read_message,
)
from replayforge.player.sinks.settings import (
    LogSinkSettings,
    RetryPolicy,
    read_notification_settings,
)
from tests.player_support import (
    RecordingTarget,
    SynchronousReactor,
    listen,
    queued,
    sink_config,
    temp_folder,
)


def params(raw: dict[str, Any]) -> Section:
    return Section(raw, "player.json", "sinks[0].params", Path("."))


class NotificationMessageTests(SynchronousTestCase):
    """Where a notification's message comes from, and what is sent."""

    def test_from_call_object(self) -> None:
        """A POST call object's JSON body gives the message and subject."""
        event = json.dumps(
            {
                "method": "POST",
                "path": "/",
                "body": json.dumps({"message": "disk full", "subject": "db1"}),
            }
        )
        self.assertEqual(read_message(event), ("db1", "disk full"))

    def test_body_not_json(self) -> None:
        """A body that is not JSON is the message, as in the Go player."""
        event = json.dumps({"method": "POST", "body": "plain words"})
        self.assertEqual(read_message(event), ("", "plain words"))

    def test_plain_event_and_message_object(self) -> None:
        """Ours: a plain text event, or an object with a message, works too."""
        self.assertEqual(read_message("just text"), ("", "just text"))
        self.assertEqual(read_message('{"message": "m"}'), ("", "m"))

    def test_unusable(self) -> None:
        """No message in a JSON body, or a method other than POST, is refused."""
        for event, reason in [
            (json.dumps({"method": "POST", "body": '{"text": "x"}'}), "bad_body"),
            (
                json.dumps({"method": "GET", "body": '{"message": "x"}'}),
                "unsupported_method",
            ),
            ('{"subject": "no message"}', "bad_body"),
        ]:
            with self.assertRaises(Unusable) as caught:
                read_message(event)
            self.assertEqual(caught.exception.reason, reason)

    def test_build_payload_escapes(self) -> None:
        """Template values are escaped for a JSON string, backslashes too."""
        payload = build_payload(
            '{"text": "{{subject}}: {{message}}"}', 'a"b', "line\\1\nline 2"
        )
        self.assertEqual(json.loads(payload), {"text": 'a"b: line\\1\nline 2'})
        self.assertEqual(build_payload("", "s", "m"), "m")

    def test_settings(self) -> None:
        """Webhooks are read by name; a bad method or content type stops."""
        settings = read_notification_settings(
            params(
                {
                    "webhooks": {
                        "slack": {
                            "url": "https://hooks.example/x",
                            "contentType": "json",
                            "header": {"X-Token": "t"},
                        }
                    },
                    "maxRetries": 1,
                }
            )
        )
        [hook] = settings.webhooks
        self.assertEqual((hook.name, hook.method, hook.json), ("slack", "POST", True))
        self.assertEqual(hook.headers, (("X-Token", "t"),))
        self.assertEqual(settings.retry.max_retries, 1)
        for bad in [
            {"webhooks": {}},
            {"webhooks": {"a": {"url": "ftp://x"}}},
            {"webhooks": {"a": {"url": "http://x", "method": "BREW"}}},
            {"webhooks": {"a": {"url": "http://x", "contentType": "xml"}}},
        ]:
            self.assertRaises(ConfigError, read_notification_settings, params(bad))


class NotificationSinkTests(TestCase):
    """Calling webhooks."""

    def setUp(self) -> None:
        self.target = RecordingTarget()
        self.port = listen(self.target)
        self.addCleanup(self.port.stopListening)
        base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.settings = read_notification_settings(
            params(
                {
                    "webhooks": {
                        "chat": {
                            "url": base + "/chat",
                            "contentType": "json",
                            "buildPayload": '{"text": "{{subject}} {{message}}"}',
                            "header": {"Authorization": "Bearer hook"},
                        },
                        "pager": {"url": base + "/pager", "method": "PUT"},
                    }
                }
            )
        )
        self.sink = NotificationSink(
            sink_config("alerts", self.settings, "notification"), reactor
        )
        self.addCleanup(self.sink.stop)

    async def test_each_webhook_called(self) -> None:
        """Every webhook gets the message, shaped and labelled as configured."""
        event = json.dumps(
            {"method": "POST", "body": json.dumps({"message": "m1", "subject": "s"})}
        )
        self.assertEqual(await self.sink.deliver(queued(event)), [DELIVERED])
        chat, pager = self.target.seen
        self.assertEqual((chat.method, chat.uri), (b"POST", b"/chat"))
        self.assertEqual(json.loads(chat.body), {"text": "s m1"})
        self.assertEqual(chat.headers[b"content-type"], [b"application/json"])
        self.assertEqual(chat.headers[b"authorization"], [b"Bearer hook"])
        self.assertEqual((pager.method, pager.body), (b"PUT", b"m1"))
        self.assertEqual(pager.headers[b"content-type"], [b"text/plain"])

    async def test_retry_calls_only_the_failed_webhook(self) -> None:
        """A webhook that took the message is not called again on a retry."""
        self.target.codes = [200, 503]
        [outcome] = await self.sink.deliver(queued("alert!"))
        self.assertEqual(outcome, Retry("pager: answered 503"))
        [outcome] = await self.sink.deliver(queued("alert!"))
        self.assertEqual(outcome, DELIVERED)
        self.assertEqual(
            [seen.uri for seen in self.target.seen], [b"/chat", b"/pager", b"/pager"]
        )

    async def test_rejected(self) -> None:
        """A 4xx rejects the event; an event without a message too."""
        self.target.codes = [400]
        outcomes = await self.sink.deliver(
            queued("x", json.dumps({"method": "DELETE", "body": "y"}))
        )
        self.assertEqual(outcomes[0], Rejected("rejected", "chat: answered 400"))
        self.assertEqual(outcomes[1].reason, "unsupported_method")  # type: ignore[union-attr]
        self.assertEqual(RetryPolicy().max_retries, self.sink.retry_policy.max_retries)


class LogSinkTests(SynchronousTestCase):
    """Appending events to a file."""

    def setUp(self) -> None:
        self.folder = temp_folder(self, "rf-player-log-")
        self.path = self.folder / "logs" / "events.log"
        self.reactor = SynchronousReactor()

    def make_sink(self, max_bytes: int = 0, backups: int = 2) -> LogSink:
        settings = LogSinkSettings(self.path, max_bytes, backups)
        sink = LogSink(sink_config("trail", settings, "log"), self.reactor)
        self.addCleanup(sink.stop)
        return sink

    def test_one_line_per_event(self) -> None:
        """Each event is one line; one with line breaks becomes a JSON string."""
        sink = self.make_sink()
        outcomes = self.successResultOf(
            sink.deliver(queued('{"a": 1}', "two\nlines", "tab\there"))
        )
        self.assertEqual(outcomes, [DELIVERED] * 3)
        lines = self.path.read_text().splitlines()
        self.assertEqual(lines, ['{"a": 1}', '"two\\nlines"', "tab\there"])
        self.assertEqual(json.loads(lines[1]), "two\nlines")
        self.assertEqual(event_line("x\r"), '"x\\r"\n')

    def test_reopen_after_rotation(self) -> None:
        """After a reopen, lines go to a new file at the path (logrotate)."""
        sink = self.make_sink()
        self.successResultOf(sink.deliver(queued("before")))
        moved = self.path.with_name("events.log.rotated")
        self.path.rename(moved)
        self.successResultOf(sink.deliver(queued("still old")))
        sink.reopen_files()
        self.successResultOf(sink.deliver(queued("after")))
        self.assertEqual(moved.read_text(), "before\nstill old\n")
        self.assertEqual(self.path.read_text(), "after\n")

    def test_size_rotation(self) -> None:
        """Past C{maxFileBytes} the file is rotated, keeping C{maxBackups}."""
        sink = self.make_sink(max_bytes=10, backups=2)
        for word in ["first-line", "second-line", "third-line", "fourth"]:
            self.successResultOf(sink.deliver(queued(word)))
        self.assertEqual(self.path.read_text(), "fourth\n")
        self.assertEqual(
            self.path.with_name("events.log.1").read_text(), "third-line\n"
        )
        self.assertEqual(
            self.path.with_name("events.log.2").read_text(), "second-line\n"
        )
        self.assertFalse(self.path.with_name("events.log.3").exists())

    def test_unwritable_file_fails_the_delivery(self) -> None:
        """A file that cannot be written fails the batch, to be offered again."""
        self.path.parent.parent.joinpath("logs").write_text("a file, not a folder")
        sink = self.make_sink()
        self.failureResultOf(sink.deliver(queued("x")), OSError)

    def test_without_a_file(self) -> None:
        """Without C{logFilePath} each event goes to the player's log."""
        settings = LogSinkSettings(None)
        sink = LogSink(sink_config("trail", settings, "log"), self.reactor)
        self.assertEqual(self.successResultOf(sink.deliver(queued("x"))), [DELIVERED])
