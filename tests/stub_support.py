"""
Waiting on a L{StubTreq} whose resource works through real threads (the
SQLite buffers), so the stub must be flushed until the answer arrives.
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.python.failure import Failure


async def settle(client: StubTreq, result: Deferred[Any]) -> Any:
    """
    Wait, a few seconds at most, for C{result}, flushing C{client}.

    @raise AssertionError: no answer came within 5 seconds.
    """
    outcome: list[Any] = []
    result.addBoth(outcome.append)
    for _ in range(500):
        client.flush()
        if outcome:
            break
        await deferLater(reactor, 0.01, lambda: None)
    if len(outcome) != 1:
        raise AssertionError("no answer within 5 seconds")
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]
