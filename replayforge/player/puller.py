"""
Pull one relay bucket: fetch a batch, process it, deliver it, acknowledge it.

The loop asks the relay for the oldest records (C{first-batch}, holding the
request open up to C{pollWaitSecs} on a relay of ours), runs each through
the source's processor, hands what was emitted to the sinks, and deletes the
batch from the relay (C{acknowledge-batch}) only once every sink has fired
its delivery: a crash anywhere before that leaves the records on the relay,
to be pulled again.  Relay failures back off exponentially with jitter; a
sink that fails gets the same events again after a backoff, without running
the script twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from replayforge.backoff import Backoff
from replayforge.lua import ScriptFailure
from replayforge.player.config import PlayerConfig, PlayerSourceConfig
from replayforge.player.processing import EventProcessor
from replayforge.player.relay_client import (
    BucketClient,
    HTTPClient,
    PulledRecord,
    RelayError,
)
from replayforge.player.sinks.base import Sink
from replayforge.player.stats import SourceStats

log = Logger()


@attrs.define
class ProcessedBatch:
    """A batch after its script ran: the ids to acknowledge, events by sink."""

    ids: list[int] = attrs.field(factory=list)
    events: dict[str, list[str]] = attrs.field(factory=dict)


class BucketPuller:
    """
    The pull loop of one source.

    @ivar stats: what this bucket received, emitted, acknowledged, dropped.
    """

    def __init__(
        self,
        config: PlayerConfig,
        source: PlayerSourceConfig,
        processor: EventProcessor,
        sinks: Mapping[str, Sink],
        client: HTTPClient,
        clock: IReactorTime,
        backoff: Backoff | None = None,
    ) -> None:
        self.source = source
        self._relay = BucketClient(config, source, client, clock)
        self._processor = processor
        self._sinks = sinks
        self._clock = clock
        self._backoff = backoff or Backoff()
        self.stats = SourceStats()
        self._running = False
        self._stopping = False
        self._loop: Deferred[None] | None = None
        # XXX: the last delivered but unconfirmed id lives in memory only, so
        # a player restarted between delivering and acknowledging delivers
        # that batch again.  A durable copy must still be forgotten once the
        # acknowledgement is confirmed: a Go relay reuses ids once its table
        # is empty, and a stale mark would skip new records.
        self._delivered_through: int | None = None

    @property
    def bucket(self) -> str:
        """The relay bucket this loop pulls."""
        return self.source.name

    def start(self) -> None:
        """Start pulling."""
        self._running = True
        self._loop = Deferred.fromCoroutine(self._run())
        self._loop.addErrback(self._loop_ended)

    def stop(self) -> Deferred[None]:
        """Stop pulling: cancel the request, delivery or wait in progress."""
        self._running = False
        self._stopping = True
        loop, self._loop = self._loop, None
        if loop is None:
            return defer.succeed(None)
        loop.cancel()
        return loop

    def _loop_ended(self, failure: Failure) -> None:
        if failure.check(CancelledError) and not self._running:
            return
        log.failure("bucket {bucket}: pull loop ended", failure, bucket=self.bucket)

    async def _run(self) -> None:
        failures = 0
        while self._running:
            try:
                pause = await self.pull_once()
            except Exception as error:
                # Stopping cancels whatever was awaited, which then fails in
                # its own way: leave without backing off.
                if not self._running:
                    return
                failures += 1
                if isinstance(error, RelayError):
                    reason = str(error)
                elif isinstance(error, CancelledError):
                    reason = "a request was cancelled"
                else:
                    reason = f"unexpected {type(error).__name__}: {error}"
                    log.failure("bucket {bucket}: pull failed", bucket=self.bucket)
            else:
                if failures:
                    log.info(
                        "bucket {bucket}: relay reachable again", bucket=self.bucket
                    )
                failures = 0
                if pause > 0:
                    await deferLater(self._clock, pause)
                continue

            self.stats.pull_errors += 1
            delay = self._backoff.delay(failures)
            log.warn(
                "bucket {bucket}: {reason}; retrying in {delay:.1f}s",
                bucket=self.bucket,
                reason=reason,
                delay=delay,
            )
            await deferLater(self._clock, delay)

    async def pull_once(self) -> float:
        """
        Fetch, process, deliver and acknowledge one batch.

        @return: how long to wait before the next fetch.
        @raise RelayError: when the relay failed; nothing was acknowledged.
        """
        started = self._clock.seconds()
        pulled = await self._relay.first_batch()
        self.stats.last_pull = self._clock.seconds()
        if pulled.unusable:
            self.stats.drop("invalid_record", pulled.unusable)
            log.warn(
                "bucket {bucket}: the relay sent {count} records without a usable "
                "id; they cannot be acknowledged",
                bucket=self.bucket,
                count=pulled.unusable,
            )
        records = pulled.records
        if not records:
            # A relay that does not hold the request open answered at once:
            # wait out the hook interval instead of asking again right away.
            elapsed = self._clock.seconds() - started
            return max(0.0, self.source.hook_interval - elapsed)

        batch = self.process(records)
        await self.deliver(batch.events)
        self._delivered_through = max(batch.ids)
        if not await self._relay.acknowledge(batch.ids):
            log.info(
                "bucket {bucket}: {count} records were already acknowledged",
                bucket=self.bucket,
                count=len(batch.ids),
            )
        self._delivered_through = None
        self.stats.acknowledged += len(batch.ids)
        log.debug(
            "bucket {bucket}: acknowledged {count} records",
            bucket=self.bucket,
            count=len(batch.ids),
        )
        return 0.0

    def process(self, records: list[PulledRecord]) -> ProcessedBatch:
        """Run every new record through the processor; group emits by sink."""
        batch = ProcessedBatch()
        unknown: dict[str, int] = {}
        for record in records:
            batch.ids.append(record.id)
            if (
                self._delivered_through is not None
                and record.id <= self._delivered_through
            ):
                self.stats.redelivered += 1
                continue
            self.stats.received += 1
            if record.content is None:
                self.stats.drop("invalid_record")
                continue
            try:
                emitted = self._processor.process(record.content)
            except ScriptFailure as failure:
                self.stats.drop("script_error")
                log.warn(
                    "bucket {bucket}: script failed, event dropped: {error}",
                    bucket=self.bucket,
                    error=str(failure),
                    record_id=record.id,
                )
                continue
            for target, text in emitted:
                if target in self._sinks:
                    batch.events.setdefault(target, []).append(text)
                    self.stats.emitted += 1
                else:
                    unknown[target] = unknown.get(target, 0) + 1
        for target, count in unknown.items():
            self.stats.drop("unknown_sink", count)
            log.warn(
                "bucket {bucket}: {count} events emitted to unknown sink {target} "
                "were dropped",
                bucket=self.bucket,
                count=count,
                target=target,
            )
        return batch

    async def deliver(self, events: dict[str, list[str]]) -> None:
        """
        Hand each sink its events; give the ones that failed theirs again
        after a backoff, until every sink has them.
        """
        pending = dict(events)
        attempt = 0
        while pending:
            names = list(pending)
            outcomes: list[tuple[bool, Any]] = await DeferredList(
                [self._sinks[name].deliver(pending[name]) for name in names],
                consumeErrors=True,
            )
            if self._stopping:
                raise CancelledError("the player is stopping")
            for name, (succeeded, result) in zip(names, outcomes, strict=True):
                if succeeded:
                    del pending[name]
                else:
                    log.failure(
                        "bucket {bucket}: sink {sink} failed to take {count} events",
                        result,
                        bucket=self.bucket,
                        sink=name,
                        count=len(pending[name]),
                    )
            if pending:
                attempt += 1
                self.stats.pull_errors += 1
                delay = self._backoff.delay(attempt)
                log.warn(
                    "bucket {bucket}: delivering again to {sinks} in {delay:.1f}s",
                    bucket=self.bucket,
                    sinks=", ".join(pending),
                    delay=delay,
                )
                await deferLater(self._clock, delay)

    async def run_timer(self) -> None:
        """Run the script's C{TimerHandler(emit)} and deliver what it emits."""
        try:
            emitted = self._processor.timer()
        except ScriptFailure as failure:
            self.stats.drop("script_error")
            log.warn(
                "bucket {bucket}: TimerHandler failed: {error}",
                bucket=self.bucket,
                error=str(failure),
            )
            return
        events: dict[str, list[str]] = {}
        for target, text in emitted:
            if target in self._sinks:
                events.setdefault(target, []).append(text)
                self.stats.emitted += 1
            else:
                self.stats.drop("unknown_sink")
        await self.deliver(events)
