"""
Tests for L{replayforge.logs}: levels, repeats, secrets and JSON lines.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from replayforge.logs import (
    DaemonLogFilter,
    LogSettings,
    TwistdChoice,
    daemon_level,
    json_line,
    json_observer,
    mask_text,
    mask_value,
    route_twistd_logging,
    twistd_observer,
)
from replayforge.logthrottle import ThrottlingObserver
from replayforge.lua import LuaScript
from tests.log_support import capture_log

TOKEN = "s3cr3t-token-value"


def event(text: str, at: float, level: LogLevel = LogLevel.info) -> LogEvent:
    """A log event whose message is C{text}, logged at C{at}."""
    return {
        "log_format": "{text}",
        "text": text,
        "log_time": at,
        "log_level": level,
        "log_namespace": "tests",
    }


class LevelTests(SynchronousTestCase):
    """Each daemon reads its level where the specification says."""

    def test_relay_and_player_read_log_level(self) -> None:
        """C{LOG_LEVEL} sets the relay's and the player's level."""
        for kind in ("relay", "player"):
            self.assertEqual(
                daemon_level(kind, {"LOG_LEVEL": "warn"}), (LogLevel.warn, None)
            )
            self.assertEqual(
                daemon_level(kind, {"RPF_LOG_LEVEL": "error"}), (LogLevel.info, None)
            )

    def test_proxy_reads_its_variable_then_config(self) -> None:
        """
        The proxy takes C{RPF_LOG_LEVEL}, else its C{verbosityLevel}, else
        C{info}.
        """
        self.assertEqual(
            daemon_level("proxy", {"RPF_LOG_LEVEL": "error"}, "debug"),
            (LogLevel.error, None),
        )
        self.assertEqual(daemon_level("proxy", {}, "warn"), (LogLevel.warn, None))
        self.assertEqual(daemon_level("proxy", {}, ""), (LogLevel.info, None))

    def test_names(self) -> None:
        """C{trace} shows what C{debug} shows; names ignore case."""
        self.assertEqual(
            daemon_level("relay", {"LOG_LEVEL": "TRACE"})[0], LogLevel.debug
        )
        self.assertEqual(
            daemon_level("relay", {"LOG_LEVEL": "Error"})[0], LogLevel.error
        )

    def test_unknown_name(self) -> None:
        """An unknown name falls back to C{info}, with a warning naming it."""
        level, warning = daemon_level("relay", {"LOG_LEVEL": "loud"})
        self.assertEqual(level, LogLevel.info)
        assert warning is not None
        self.assertIn("'loud'", warning)
        self.assertIn("LOG_LEVEL", warning)


class DaemonLogFilterTests(SynchronousTestCase):
    """What reaches a daemon's log output."""

    def setUp(self) -> None:
        self.settings = LogSettings()
        self.written: list[LogEvent] = []
        self.filter = DaemonLogFilter(self.written.append, self.settings)

    def lines(self) -> list[str]:
        """The text of what was written."""
        return [formatEvent(written) for written in self.written]

    def test_level(self) -> None:
        """Events below the level are left out."""
        self.settings.level = LogLevel.warn
        self.filter(event("detail", 0, LogLevel.debug))
        self.filter(event("started", 0, LogLevel.info))
        self.filter(event("slow relay", 0, LogLevel.warn))
        self.filter(event("lost data", 0, LogLevel.error))
        self.assertEqual(self.lines(), ["slow relay", "lost data"])

    def test_repeats_held_back_then_counted(self) -> None:
        """
        The same line is written once per 30 seconds; the next one written
        tells how many were held back.
        """
        for second in range(5):
            self.filter(event("relay down", second))
        self.filter(event("relay down", 30))
        self.assertEqual(
            self.lines(), ["relay down", "relay down (4 more since last logged)"]
        )

    def test_count_written_by_a_later_line(self) -> None:
        """
        A line that does not come again has its count written once the
        interval is over and any other line is logged.
        """
        self.filter(event("script failed", 0))
        self.filter(event("script failed", 1))
        self.filter(event("something else", 31))
        self.assertEqual(
            self.lines(),
            [
                "script failed",
                "something else",
                "script failed (1 more since last logged)",
            ],
        )

    def test_levels_apart(self) -> None:
        """The same text at two levels is two lines."""
        self.filter(event("x", 0, LogLevel.warn))
        self.filter(event("x", 0, LogLevel.error))
        self.assertEqual(self.lines(), ["x", "x"])

    def test_counts(self) -> None:
        """Warnings and errors are counted, held back or not, shown or not."""
        self.settings.level = LogLevel.error
        for second in range(3):
            self.filter(event("warned", second, LogLevel.warn))
        self.filter(event("failed", 0, LogLevel.error))
        self.filter(event("failed", 1, LogLevel.error))
        self.assertEqual((self.settings.warnings, self.settings.errors), (3, 2))
        self.assertEqual(self.lines(), ["failed"])

    def test_secrets_masked(self) -> None:
        """Tokens in a message's fields and in the registered secrets are masked."""
        self.settings.add_secrets([TOKEN, "ab"])
        logged = {
            **event("", 0),
            "log_format": "calling {url} with {headers} as {token}",
            "url": "http://user:hunter2@relay.example/record-batch",
            "headers": {"Authorization": [f"Bearer {TOKEN}"], "RF-BUCKET": ["ab"]},
            "token": TOKEN,
        }
        self.filter(logged)
        [line] = self.lines()
        self.assertNotIn(TOKEN, line)
        self.assertNotIn("hunter2", line)
        self.assertIn("http://user:***@relay.example/record-batch", line)
        # Too short to look for literally: the bucket name stays readable.
        self.assertIn("'ab'", line)

    def test_failure_masked(self) -> None:
        """A failure whose message holds a secret is written masked."""
        self.settings.add_secrets([TOKEN])
        try:
            raise ValueError(f"refused Bearer {TOKEN}")
        except ValueError:
            failure = Failure()
        self.filter({**event("request failed", 0), "log_failure": failure})
        [written] = self.written
        self.assertNotIn("log_failure", written)
        self.assertIn("ValueError: refused Bearer ***", formatEvent(written))
        self.assertNotIn(TOKEN, formatEvent(written))

    def test_lua_helper_lines(self) -> None:
        """
        A script logging the same line for every event is written once per
        interval.
        """
        folder = Path(tempfile.mkdtemp(prefix="rf-logs-"))
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        path = folder / "source.lua"
        path.write_text(
            'function Process(content, emit)\n  info("saw an event")\nend\n'
        )
        script = LuaScript(path, "source:web")
        logged = capture_log(self)
        for _ in range(10):
            script.process("x")
        scripted = [item for item in logged if "saw an event" in formatEvent(item)]
        self.assertEqual(len(scripted), 10)
        for second, item in enumerate(scripted):
            self.filter({**item, "log_time": float(second)})
        self.assertEqual(self.lines(), ["[source:web] saw an event"])


class MaskTests(SynchronousTestCase):
    """L{mask_text} and L{mask_value} hide credentials, and only them."""

    def test_text(self) -> None:
        """Each kind of credential is masked; the rest is kept."""
        cases = {
            "Authorization: Bearer abc.def": "Authorization: *** ***",
            "sent Bearer abc to relay": "sent Bearer *** to relay",
            "Basic dXNlcjpwYXNz header": "Basic *** header",
            "https://u:p4ss@host:8443/x": "https://u:***@host:8443/x",
            '{"authBearer": "xyz", "id": "a"}': '{"authBearer": ***, "id": "a"}',
            "relayAuthenticationBearer=xyz next": "relayAuthenticationBearer=*** next",
            "httpPassword: pw": "httpPassword: ***",
            "bucket logs stored 3 events": "bucket logs stored 3 events",
            "GET http://h/x?api_key=k3y&page=2 failed": (
                "GET http://h/x?api_key=***&page=2 failed"
            ),
            "'https://u:pw@h/?Sig=abc#f' sent": "'https://u:***@h/?Sig=***#f' sent",
            "author=ann": "author=ann",
        }
        for text, expected in cases.items():
            self.assertEqual(mask_text(text), expected, text)

    def test_value(self) -> None:
        """Strings under secret-named keys are masked whole, nested too."""
        document: dict[str, Any] = {
            "sinks": [{"url": "http://a:b@relay/", "authBearer": "t0ken"}],
            "auth": "",
            "count": 3,
        }
        self.assertEqual(
            mask_value(document),
            {
                "sinks": [{"url": "http://a:***@relay/", "authBearer": "***"}],
                "auth": "",
                "count": 3,
            },
        )


class JSONLinesTests(SynchronousTestCase):
    """The JSON output journald and log shippers read."""

    def test_one_object_per_line(self) -> None:
        """Each event is one JSON object on one line, with its fields."""
        out = io.StringIO()
        observer = json_observer(out)
        log = Logger(namespace="replayforge.relay", observer=observer)
        log.warn("bucket {bucket} is full\nsecond line", bucket="logs")
        [line] = out.getvalue().splitlines()
        record = json.loads(line)
        self.assertEqual(record["level"], "warn")
        self.assertEqual(record["namespace"], "replayforge.relay")
        self.assertEqual(record["message"], "bucket logs is full\nsecond line")
        self.assertEqual(record["bucket"], "logs")
        self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT.*Z$")

    def test_failure(self) -> None:
        """A failure's traceback is a field of its line."""
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            line = json_line({**event("boom", 0), "log_failure": Failure()})
        self.assertIn("ZeroDivisionError", json.loads(line)["traceback"])


class TwistdRoutingTests(SynchronousTestCase):
    """L{route_twistd_logging} puts the filter before twistd's output."""

    def test_default(self) -> None:
        """Without C{--logger}, twistd's own observer is built and wrapped."""
        choice = TwistdChoice()
        options: dict[str, Any] = {
            "logger": None,
            "logfile": "-",
            "nodaemon": True,
            "syslog": False,
            "prefix": "twisted",
        }
        route_twistd_logging(options, choice)
        self.assertEqual(options["logger"], "replayforge.logs.twistd_observer")
        self.assertIsInstance(twistd_observer(choice), DaemonLogFilter)

    def test_ours_kept(self) -> None:
        """C{--logger} naming one of ours is left as it is."""
        for name in (
            "replayforge.logs.json_observer",
            "replayforge.logs.text_observer",
        ):
            choice = TwistdChoice()
            options: dict[str, Any] = {"logger": name}
            route_twistd_logging(options, choice)
            self.assertEqual(options["logger"], name)
            self.assertIsNone(choice.options)

    def test_other_wrapped(self) -> None:
        """Another C{--logger} factory's observer is built and wrapped."""
        choice = TwistdChoice()
        options: dict[str, Any] = {"logger": f"{__name__}.collecting_observer"}
        route_twistd_logging(options, choice)
        observer = twistd_observer(choice)
        observer(event("a", 0, LogLevel.debug))
        observer(event("b", 0))
        self.assertEqual([formatEvent(item) for item in COLLECTED], ["b"])


COLLECTED: list[LogEvent] = []


def collecting_observer() -> ILogObserver:
    """A C{--logger} factory of someone else's: it collects events."""
    del COLLECTED[:]
    return cast(ILogObserver, COLLECTED.append)


class ThrottlingObserverTests(SynchronousTestCase):
    """The throttle works on events' own times."""

    def test_flush(self) -> None:
        """L{ThrottlingObserver.flush} writes what was held back."""
        written: list[LogEvent] = []
        throttle = ThrottlingObserver(written.append)
        throttle(event("a", 0))
        throttle(event("a", 1))
        throttle.flush()
        self.assertEqual(
            [formatEvent(item) for item in written],
            ["a", "a (1 more since last logged)"],
        )
