"""
The C{logfile} source: the lines of a file, delivered at least once.

Every C{hookInterval} the source reads what was added to its file since the
last tick, in batches of at most 2,048 lines or one read window (1 MiB),
each read in a thread.  A batch's lines become call objects
(L{replayforge.proxy.logline.wrap_line}), go through the source's script
together, and are committed to the sink buffers in one transaction per
sink; only then is the new position saved (L{PositionStore}).  The next
batch is read while one is being committed.  A restart,
even after kill -9, resumes from the saved position: nothing is lost, and
at most the one batch in flight is delivered twice.

A full sink buffer pauses the source; the lines wait in the file and are
read again once the forwarder has made room.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from replayforge.logthrottle import ThrottledLog
from replayforge.periodic import PeriodicTask
from replayforge.proxy.buffer import BufferFull
from replayforge.proxy.logline import wrap_line
from replayforge.proxy.pipeline import SourcePipeline
from replayforge.proxy.sources.blocking import BlockingRunner
from replayforge.proxy.sources.positions import PositionStore
from replayforge.proxy.sources.settings import LogFileSettings
from replayforge.proxy.sources.tail import (
    DEFAULT_BATCH_MAX_LINES,
    FileTail,
    Notice,
    TailBatch,
)
from replayforge.status import rfc3339

log = Logger()

_NOTICES = {
    "opened": "logfile source {source}: reading {path} from byte {offset}",
    "rotated": "logfile source {source}: {path} was renamed away; reading the "
    "rest of it before the new file",
    "removed": "logfile source {source}: {path} was removed; reading the rest "
    "of the open file",
    "truncated": "logfile source {source}: {path} was truncated or rewritten "
    "(it was read to byte {offset}); reading it again from the start",
    "replaced": "logfile source {source}: {path} is a new file in the inode of "
    "an old one; reading it from the start",
    "draining": "logfile source {source}: reading the rest of {path} from "
    "byte {offset}",
}


class LogFileSource:
    """
    Follow one log file into a source's pipeline.

    @param drain_grace: how long a file renamed away must stay quiet
        before the new file is read (the polling period).
    """

    def __init__(
        self,
        source_id: str,
        settings: LogFileSettings,
        pipeline: SourcePipeline,
        positions: PositionStore,
        run_blocking: BlockingRunner,
        clock: IReactorTime,
        drain_grace: float,
    ) -> None:
        self.source_id = source_id
        self.settings = settings
        self._pipeline = pipeline
        self._positions = positions
        self._run = run_blocking
        self._clock = clock
        self._log = ThrottledLog(log, clock)
        self._tail = FileTail(
            settings.file_path,
            fingerprint_bytes=settings.fingerprint_bytes,
            fingerprint_lines=settings.fingerprint_lines,
            max_line_bytes=settings.max_line_bytes,
            flush_partial_after=settings.flush_partial_after_seconds,
            drain_grace=drain_grace,
            known=positions.load(),
        )
        self._max_lines = DEFAULT_BATCH_MAX_LINES
        self._paused_since: float | None = None
        self._last_removal = clock.seconds()
        self._stopping = False

    async def poll(self) -> None:
        """Deliver every complete line the file has now: one tick."""
        read: tuple[TailBatch, list[str]] | None = None
        while not self._stopping:
            if read is None:
                now = self._clock.seconds()
                read = await self._run(partial(self._read, now, self._max_lines))
            batch, contents = read
            self._report(batch.notices)
            # What follows is read while this batch is committed.
            ahead = self._run(partial(self._read_ahead, batch, self._max_lines))
            try:
                delivered = await self._deliver(batch, contents)
            finally:
                read = await _unless_failed(ahead)
            if not delivered:
                return
            if batch.caught_up:
                break
        if self._tail.missing:
            self._log.warn(
                "logfile source {source}: {path} does not exist or cannot be "
                "read; looking again every tick",
                source=self.source_id,
                path=str(self.settings.file_path),
            )
        if not self._stopping:
            await self._remove_if_due()

    async def _deliver(self, batch: TailBatch, contents: list[str]) -> bool:
        """
        Commit the events of C{batch}, then its position.

        @return: whether they were committed; a full buffer pauses the
            source instead.
        """
        if contents:
            try:
                await self._pipeline.submit_many(contents)
            except BufferFull as full:
                self._pause(str(full))
                return False
            self._resume()
        position = self._tail.commit(batch)
        if position is not None or batch.forgotten:
            await self._positions.save(position, batch.forgotten, self._clock.seconds())
        return True

    def _read(self, now: float, max_lines: int) -> tuple[TailBatch, list[str]]:
        """Read a batch and make its events, in a worker thread."""
        return self._events(self._tail.read(now, max_lines))

    def _read_ahead(
        self, after: TailBatch, max_lines: int
    ) -> tuple[TailBatch, list[str]] | None:
        """Read the batch after C{after}, if it can be, in a worker thread."""
        batch = self._tail.read_ahead(after, max_lines)
        return self._events(batch) if batch is not None else None

    def _events(self, batch: TailBatch) -> tuple[TailBatch, list[str]]:
        http_path = self.settings.http_path
        return batch, [wrap_line(line, http_path) for line in batch.lines]

    def _report(self, notices: list[Notice]) -> None:
        for notice in notices:
            text = _NOTICES[notice.kind]
            if notice.kind == "truncated":
                log.warn(
                    text, source=self.source_id, path=notice.path, offset=notice.offset
                )
            else:
                log.info(
                    text, source=self.source_id, path=notice.path, offset=notice.offset
                )

    def _pause(self, sinks: str) -> None:
        """A sink buffer is full: read smaller batches, later."""
        if self._paused_since is None:
            self._paused_since = self._clock.seconds()
        self._max_lines = max(1, self._max_lines // 2)
        self._log.warn(
            "logfile source {source}: sink buffer full ({sinks}); reading "
            "paused until it has room, nothing is dropped",
            source=self.source_id,
            sinks=sinks,
        )

    def _resume(self) -> None:
        if self._paused_since is not None:
            log.info(
                "logfile source {source}: sink buffer has room again; reading",
                source=self.source_id,
            )
        self._paused_since = None
        self._max_lines = DEFAULT_BATCH_MAX_LINES

    async def _remove_if_due(self) -> None:
        """Truncate the file read to its end, every C{removeAfterSecs}."""
        every = self.settings.remove_after_seconds
        now = self._clock.seconds()
        if not every or now - self._last_removal < every:
            return
        position = await self._run(self._tail.truncate_if_read)
        if position is None:
            return
        self._last_removal = now
        await self._positions.save(position, [], now)
        log.info(
            "logfile source {source}: {path} was read to its end and truncated "
            "(removeAfterSecs)",
            source=self.source_id,
            path=str(self.settings.file_path),
        )

    def stop(self) -> None:
        """Finish the batch in hand, then read no more."""
        self._stopping = True

    def close(self) -> None:
        """Close the file and the position store."""
        self._tail.close()
        self._positions.close()

    def status(self) -> dict[str, Any]:
        """The file's part of the source's C{/statusz} entry."""
        file = self._tail.status()
        since = file.pop("partialLineSince", None)
        if "partialLineBytes" in file:
            file["partialLineSince"] = rfc3339(since)
        file["paused"] = self._paused_since is not None
        file["pausedSince"] = rfc3339(self._paused_since)
        return {"file": file}


class LogFileService(MultiService):
    """Run a L{LogFileSource} every polling period while the proxy runs."""

    def __init__(
        self, source: LogFileSource, interval: float, clock: IReactorTime
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self._source = source
        PeriodicTask(  # type: ignore[no-untyped-call]  # unannotated in Twisted
            f"logfile {source.source_id}", interval, source.poll, clock, now=True
        ).setServiceParent(self)

    def stopService(self) -> Deferred[Any]:
        self._source.stop()
        stopped: Deferred[Any] = maybeDeferred(super().stopService)

        def close(result: object) -> object:
            self._source.close()
            return result

        return stopped.addBoth(close)


async def _unless_failed(
    ahead: Deferred[tuple[TailBatch, list[str]] | None],
) -> tuple[TailBatch, list[str]] | None:
    """Wait for a read ahead; one that failed is simply read again later."""
    try:
        return await ahead
    except OSError:
        return None
