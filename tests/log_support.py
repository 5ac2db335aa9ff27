"""
Read what the code under test logged.
"""

from __future__ import annotations

from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase


def capture_log(test: SynchronousTestCase) -> list[LogEvent]:
    """
    Collect every log event emitted until C{test} ends.

    @return: a list that fills as events are logged.
    """
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    test.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def warnings_in(events: list[LogEvent]) -> list[str]:
    """Return the text of the warnings among C{events}, in order."""
    return [
        formatEvent(event)
        for event in events
        if event.get("log_level") == LogLevel.warn
    ]
