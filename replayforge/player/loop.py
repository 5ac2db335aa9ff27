"""
The start and stop of the player's endless loops (pull, delivery).
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.python.failure import Failure


class StoppableLoop:
    """
    Run L{_run} from L{start} until L{stop} cancels whatever it awaits.

    L{_run} loops while C{self._running}; a subclass logs, in
    L{_log_ended}, a loop that ended other than by L{stop}.
    """

    def __init__(self) -> None:
        self._running = False
        self._loop: Deferred[None] | None = None

    def start(self) -> None:
        """Start the loop."""
        self._running = True
        self._loop = Deferred.fromCoroutine(self._run())
        self._loop.addErrback(self._ended)

    def stop(self) -> Deferred[None]:
        """Stop the loop: cancel the request, wait or delivery in progress."""
        self._running = False
        loop, self._loop = self._loop, None
        if loop is None:
            return succeed(None)
        loop.cancel()
        return loop

    def _ended(self, failure: Failure) -> None:
        if failure.check(CancelledError) and not self._running:
            return
        self._log_ended(failure)

    async def _run(self) -> None:
        """Loop while C{self._running}; defined by each loop."""
        raise NotImplementedError

    def _log_ended(self, failure: Failure) -> None:
        """Log a loop that ended by itself; defined by each loop."""
        raise NotImplementedError
