"""
Drain one sink's queue: take events in order, deliver, settle, repeat.

Each sink has its own worker, so a slow or failing sink holds back only its
own queue.  After a delivery the worker settles every event in one
transaction: delivered and rejected events leave the queue (rejected ones
for the dead-letter table), events worth another try keep their attempt
count, and one that fails more than C{maxRetries} times is given up
(C{sink_gave_up}) and dead-lettered.  After a retry the worker waits, with
exponential backoff and jitter or as long as the target's C{Retry-After}
asked, then tries the oldest event again, so order is kept.  A sink that
cannot work at all (disk full, database locked) gets the same batch again
after a backoff, for as long as it takes: that is not the events' fault.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from replayforge.backoff import Backoff
from replayforge.logthrottle import ThrottledLog
from replayforge.player.loop import StoppableLoop
from replayforge.player.queue import DeadLetter, PlayerQueue
from replayforge.player.sinks.base import (
    Delivered,
    Outcome,
    QueuedEvent,
    Rejected,
    Retry,
    Sink,
)

log = Logger()

GAVE_UP = "sink_gave_up"


class SinkWorker(StoppableLoop):
    """The delivery loop of one sink."""

    def __init__(
        self,
        sink: Sink,
        queue: PlayerQueue,
        clock: IReactorTime,
        backoff: Backoff | None = None,
        failure_backoff: Backoff | None = None,
    ) -> None:
        super().__init__()
        self.sink = sink
        self._queue = queue
        self._clock = clock
        self._backoff = backoff or sink.retry_policy.backoff()
        self._failure_backoff = failure_backoff or Backoff()
        self._dead_letter_log = ThrottledLog(log, clock)

    def _log_ended(self, failure: Failure) -> None:
        log.failure("sink {sink}: delivery loop ended", failure, sink=self.sink.name)

    async def _run(self) -> None:
        failures = 0
        while self._running:
            try:
                pause = await self.drain_once()
            except CancelledError:
                if not self._running:
                    return
                raise
            except Exception:
                failures += 1
                self.sink.stats.failures += 1
                delay = self._failure_backoff.delay(failures)
                log.failure(
                    "sink {sink}: delivery failed; trying again in {delay:.1f}s",
                    sink=self.sink.name,
                    delay=delay,
                )
                await deferLater(self._clock, delay)
                continue
            if failures:
                log.info("sink {sink}: delivering again", sink=self.sink.name)
            failures = 0
            if pause > 0:
                await deferLater(self._clock, pause)

    async def drain_once(self) -> float:
        """
        Deliver the next batch and settle it; wait for events if none.

        @return: how long to wait before the next batch.
        @raise Exception: when the queue or the sink could not work.
        """
        name = self.sink.name
        generation = self._queue.generation(name)
        events = await self._queue.take(name, self.sink.batch_size)
        if not events:
            await self._queue.wait_for_events(name, generation)
            return 0.0
        started = self._clock.seconds()
        outcomes = await self.sink.deliver(events)
        self.sink.stats.batch_done(len(events), self._clock.seconds() - started)
        return await self.settle(events, outcomes)

    async def settle(
        self, events: Sequence[QueuedEvent], outcomes: Sequence[Outcome]
    ) -> float:
        """
        Record what became of C{events}; return the wait a retry asks for.
        """
        stats = self.sink.stats
        policy = self.sink.retry_policy
        delivered: list[int] = []
        dead: list[DeadLetter] = []
        retried: list[tuple[int, int]] = []
        pause = 0.0
        last_delivered: str | None = None
        for event, outcome in zip(events, outcomes, strict=True):
            if isinstance(outcome, Delivered):
                delivered.append(event.id)
                last_delivered = event.content
            elif isinstance(outcome, Rejected):
                dead.append(
                    DeadLetter(
                        event, outcome.reason, outcome.detail, event.attempts + 1
                    )
                )
            elif isinstance(outcome, Retry):
                attempts = event.attempts + 1
                if attempts > policy.max_retries:
                    dead.append(
                        DeadLetter(
                            event,
                            GAVE_UP,
                            f"after {attempts} attempts: {outcome.reason}",
                            attempts,
                        )
                    )
                    continue
                retried.append((event.id, attempts))
                wait = outcome.retry_after
                if wait is None:
                    wait = self._backoff.delay(attempts)
                pause = max(pause, wait)
                log.debug(
                    "sink {sink}: event {event_id} failed ({reason}); "
                    "retry {attempt} in {delay:.2f}s",
                    sink=self.sink.name,
                    event_id=event.id,
                    reason=outcome.reason,
                    attempt=attempts,
                    delay=wait,
                )

        await self._queue.settle(self.sink.name, delivered, dead, retried)
        stats.delivered_events(len(delivered), self._clock.seconds(), last_delivered)
        stats.retries += len(retried)
        for letter in dead:
            stats.drop(letter.reason)
            # One line per reason and interval, however many events share it.
            self._dead_letter_log.warn(
                "sink {sink}: event {event_id} dead-lettered ({reason}): {detail}",
                key=letter.reason,
                sink=self.sink.name,
                event_id=letter.event.id,
                reason=letter.reason,
                detail=letter.detail,
            )
        return pause
