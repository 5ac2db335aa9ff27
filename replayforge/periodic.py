"""
Periodic maintenance that survives its own errors.

A bare L{LoopingCall} whose callable raises once stops for good; a
L{PeriodicTask} logs the failure and keeps its schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


class PeriodicTask(Service):
    """
    Call C{work} every C{interval} seconds while the service runs.

    A call that fails, or returns a L{Deferred} that fails, is logged with
    the task's name; the next call comes on time all the same.  Calls never
    overlap: a slow one delays the next.
    """

    def __init__(
        self,
        name: str,
        interval: float,
        work: Callable[[], Any],
        clock: IReactorTime,
        now: bool = False,
    ) -> None:
        self.setName(name)  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self.interval = interval
        self._work = work
        self._now = now
        self._loop = LoopingCall(self._run_once)
        self._loop.clock = clock
        self._stopped: Deferred[Any] | None = None

    def _run_once(self) -> Deferred[Any]:
        def failed(failure: Failure) -> None:
            log.failure(
                "periodic task {task} failed; it will run again in {interval}s",
                failure,
                task=self.name,
                interval=self.interval,
            )

        return maybeDeferred(self._work).addErrback(failed)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self._stopped = self._loop.start(self.interval, now=self._now)

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        if self._loop.running:
            self._loop.stop()
        return self._stopped
