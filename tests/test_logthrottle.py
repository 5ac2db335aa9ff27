"""
Tests for L{replayforge.logthrottle.ThrottledLog}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import LogEvent, Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from replayforge.logthrottle import ThrottledLog


class ThrottledLogTests(SynchronousTestCase):
    """The same message at most once per interval, with a count of repeats."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[LogEvent] = []
        self.log = ThrottledLog(Logger(observer=self.events.append), self.clock)

    def lines(self) -> list[str]:
        """The text of every event written so far."""
        return [formatEvent(event) for event in self.events]

    def test_first_written(self) -> None:
        """A message is written the first time, with its level and fields."""
        self.assertTrue(self.log.warn("script {name} failed", name="a.lua"))
        self.assertEqual(self.lines(), ["script a.lua failed"])
        self.assertEqual(self.events[0]["log_level"], LogLevel.warn)
        self.assertEqual(self.events[0]["name"], "a.lua")

    def test_repeat_held_back(self) -> None:
        """The same message within the interval is not written."""
        self.log.warn("script {name} failed", name="a.lua")
        self.clock.advance(29)
        self.assertFalse(self.log.warn("script {name} failed", name="a.lua"))
        self.assertEqual(self.lines(), ["script a.lua failed"])

    def test_repeat_after_interval_counts(self) -> None:
        """
        Once the interval has passed the message is written again, with how
        many times it was held back.
        """
        for _ in range(4):
            self.log.error("boom {n}", n=1)
        self.clock.advance(30)
        self.assertTrue(self.log.error("boom {n}", n=1))
        self.assertEqual(self.lines(), ["boom 1", "boom 1 (3 more since last logged)"])
        self.assertEqual(self.events[1]["suppressed_count"], 3)
        self.assertEqual(self.events[1]["log_level"], LogLevel.error)

    def test_new_window_after_writing(self) -> None:
        """The interval counts again from each time the message is written."""
        self.log.warn("x")
        self.clock.advance(30)
        self.log.warn("x")
        self.clock.advance(10)
        self.assertFalse(self.log.warn("x"))
        self.clock.advance(20)
        self.assertTrue(self.log.warn("x"))
        self.assertEqual(self.lines(), ["x", "x", "x (1 more since last logged)"])

    def test_distinct_messages(self) -> None:
        """Messages that render differently are throttled separately."""
        self.log.warn("line {line}", line=1)
        self.log.warn("line {line}", line=2)
        self.log.warn("line {line}", line=1)
        self.assertEqual(self.lines(), ["line 1", "line 2"])

    def test_key(self) -> None:
        """Messages given the same key count as one."""
        self.log.warn("record {id} failed", key="k", id=1)
        self.assertFalse(self.log.warn("record {id} failed", key="k", id=2))
        self.assertEqual(self.lines(), ["record 1 failed"])

    def test_flush(self) -> None:
        """L{ThrottledLog.flush} writes what was held back, and forgets."""
        self.log.info("a")
        self.log.info("a")
        self.log.info("b")
        self.log.flush()
        self.assertEqual(self.lines(), ["a", "b", "a (1 more since last logged)"])
        self.assertTrue(self.log.info("a"))

    def test_bounded_memory(self) -> None:
        """
        Past C{max_messages} distinct messages the oldest is forgotten,
        its held-back count written first.
        """
        log = ThrottledLog(Logger(observer=self.events.append), self.clock, 30, 2)
        log.warn("a")
        log.warn("a")
        log.warn("b")
        log.warn("c")
        self.assertEqual(self.lines(), ["a", "b", "a (1 more since last logged)", "c"])
        self.assertTrue(log.warn("a"))
