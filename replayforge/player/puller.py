"""
Pull one relay bucket: fetch a batch, process it, queue it, acknowledge it.

The loop asks the relay for the oldest records (C{first-batch}, holding the
request open up to C{pollWaitSecs} on a relay of ours), runs each through
the source's processor, and commits what was emitted to the sinks' durable
queue (L{replayforge.player.queue}) together with a mark of each record.
Only then does it delete the batch from the relay (C{acknowledge-batch}),
and once the relay confirms, it forgets the marks.  A player stopped
anywhere before that pulls the same records again: those already queued
are recognised by their marks and acknowledged without being processed or
queued a second time.  Relay failures back off exponentially with jitter.

A bucket whose sinks' queues are full waits before pulling more, leaving
the records on the relay.
"""

from __future__ import annotations

from collections.abc import Collection

import attrs
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from replayforge.backoff import Backoff
from replayforge.logthrottle import ThrottledLog
from replayforge.lua import Emitted, ScriptFailure
from replayforge.player.config import PlayerConfig, PlayerSourceConfig
from replayforge.player.loop import StoppableLoop
from replayforge.player.processing import EventProcessor, FanOut
from replayforge.player.queue import PlayerQueue, record_digest
from replayforge.player.relay_client import (
    BucketClient,
    HTTPClient,
    PulledRecord,
    RelayError,
)
from replayforge.player.stats import SourceStats

log = Logger()

FULL_QUEUE_CHECK_SECONDS = 1.0


@attrs.define
class ProcessedBatch:
    """
    A batch after its script ran.

    @ivar ids: every record id to acknowledge, recognised ones included.
    @ivar marks: the new records' ids and digests, to commit with the events.
    @ivar events: (sink name, text) in the order they were emitted.
    """

    ids: list[int] = attrs.field(factory=list)
    marks: list[tuple[int, bytes]] = attrs.field(factory=list)
    events: list[tuple[str, str]] = attrs.field(factory=list)


class BucketPuller(StoppableLoop):
    """
    The pull loop of one source.

    @ivar stats: what this bucket received, emitted, acknowledged, dropped.
    """

    def __init__(
        self,
        config: PlayerConfig,
        source: PlayerSourceConfig,
        processor: EventProcessor,
        sink_names: Collection[str],
        queue: PlayerQueue,
        client: HTTPClient,
        clock: IReactorTime,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self._relay = BucketClient(config, source, client, clock)
        self._processor = processor
        self._sink_names = frozenset(sink_names)
        self._queue = queue
        self._clock = clock
        # A failing script would otherwise write a line per record.
        self._script_log = ThrottledLog(log, clock)
        self._backoff = backoff or Backoff()
        self.stats = SourceStats()
        # The sinks this bucket feeds, as far as is known: a full queue
        # among them pauses the pull.
        self._targets: set[str] = (
            set(processor.sink_names) if isinstance(processor, FanOut) else set()
        )

    @property
    def bucket(self) -> str:
        """The relay bucket this loop pulls."""
        return self.source.name

    def _log_ended(self, failure: Failure) -> None:
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
        Fetch, process, queue and acknowledge one batch.

        @return: how long to wait before the next fetch.
        @raise RelayError: when the relay failed.
        """
        full = self._queue.full(self._targets)
        if full:
            self.stats.paused += 1
            self._script_log.warn(
                "bucket {bucket}: the queues of {sinks} are full; waiting before "
                "pulling more",
                bucket=self.bucket,
                sinks=", ".join(full),
            )
            return FULL_QUEUE_CHECK_SECONDS

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
        if batch.marks or batch.events:
            await self._queue.commit(self.bucket, batch.marks, batch.events)
            self.stats.emitted += len(batch.events)
        if not await self._relay.acknowledge(batch.ids):
            log.info(
                "bucket {bucket}: {count} records were already acknowledged",
                bucket=self.bucket,
                count=len(batch.ids),
            )
        self.stats.acknowledged += len(batch.ids)
        await self._queue.forget(self.bucket, batch.ids)
        log.debug(
            "bucket {bucket}: acknowledged {count} records",
            bucket=self.bucket,
            count=len(batch.ids),
        )
        return 0.0

    def process(self, records: list[PulledRecord]) -> ProcessedBatch:
        """Run every new record through the processor; collect the emits."""
        batch = ProcessedBatch()
        unknown: dict[str, int] = {}
        now = self._clock.seconds()
        for record in records:
            batch.ids.append(record.id)
            if self._queue.recognise(self.bucket, record.id, record.content):
                self.stats.redelivered += 1
                continue
            self.stats.saw(record.content or "", now)
            batch.marks.append((record.id, record_digest(record.content)))
            if record.content is None:
                self.stats.drop("invalid_record")
                continue
            try:
                emitted = self._processor.process(record.content)
            except ScriptFailure as failure:
                self.stats.drop("script_error")
                self._script_log.warn(
                    "bucket {bucket}: script failed, event dropped: {error}",
                    bucket=self.bucket,
                    error=str(failure),
                    record_id=record.id,
                )
                continue
            self._route(emitted, batch.events, unknown)
        self._drop_unknown(unknown)
        return batch

    def _route(
        self,
        emitted: Emitted,
        events: list[tuple[str, str]],
        unknown: dict[str, int],
    ) -> None:
        for target, text in emitted:
            if target in self._sink_names:
                events.append((target, text))
                self._targets.add(target)
            else:
                unknown[target] = unknown.get(target, 0) + 1

    def _drop_unknown(self, unknown: dict[str, int]) -> None:
        for target, count in unknown.items():
            self.stats.drop("unknown_sink", count)
            self._script_log.warn(
                "bucket {bucket}: {count} events emitted to unknown sink {target} "
                "were dropped",
                bucket=self.bucket,
                count=count,
                target=target,
            )

    async def run_timer(self) -> None:
        """Run the script's C{TimerHandler(emit)} and queue what it emits."""
        try:
            emitted = self._processor.timer()
        except ScriptFailure as failure:
            self.stats.drop("script_error")
            self._script_log.warn(
                "bucket {bucket}: TimerHandler failed: {error}",
                bucket=self.bucket,
                error=str(failure),
            )
            return
        events: list[tuple[str, str]] = []
        unknown: dict[str, int] = {}
        self._route(emitted, events, unknown)
        self._drop_unknown(unknown)
        if events:
            await self._queue.commit(self.bucket, [], events)
            self.stats.emitted += len(events)
