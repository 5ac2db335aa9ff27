"""
The C{repeatfile} source: every line of a file, again every C{interval}.

Each round reads the whole file (in a thread, at most 16 MiB) and submits
its lines raw, as the Go proxy did: no call object around them.  A round
that meets a full sink buffer is not dropped: the lines it has left are
submitted at the next tick, before a new round starts.
"""

from __future__ import annotations

from pathlib import Path

from twisted.application.service import IService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from replayforge.logthrottle import ThrottledLog
from replayforge.periodic import PeriodicTask
from replayforge.proxy.buffer import BufferFull
from replayforge.proxy.pipeline import SourcePipeline
from replayforge.proxy.sources.blocking import BlockingRunner
from replayforge.proxy.sources.settings import RepeatFileSettings

log = Logger()

MAX_FILE_BYTES = 16 * 1024 * 1024
BATCH_LINES = 1000


def read_lines(path: Path, limit: int = MAX_FILE_BYTES) -> tuple[list[str], bool]:
    """
    Read the lines of C{path}: newline and a trailing CR removed, invalid
    UTF-8 replaced.  Blocking.

    @return: the lines, and whether the file was longer than C{limit}
        (its lines past the limit are left out).
    @raise OSError: when the file cannot be read.
    """
    with path.open("rb") as file:
        data = file.read(limit + 1)
    cut = len(data) > limit
    if cut:
        data = data[: data.rfind(b"\n", 0, limit) + 1]
    raw_lines = data.split(b"\n")
    if raw_lines and not raw_lines[-1]:
        raw_lines.pop()
    return [
        (raw[:-1] if raw.endswith(b"\r") else raw).decode("utf-8", "replace")
        for raw in raw_lines
    ], cut


class RepeatFileSource:
    """Submit the lines of one file, round after round."""

    def __init__(
        self,
        source_id: str,
        settings: RepeatFileSettings,
        pipeline: SourcePipeline,
        run_blocking: BlockingRunner,
        clock: IReactorTime,
    ) -> None:
        self.source_id = source_id
        self.settings = settings
        self._pipeline = pipeline
        self._run = run_blocking
        self._log = ThrottledLog(log, clock)
        self._left: list[str] = []

    async def tick(self) -> None:
        """Start a round, or finish the one a full buffer interrupted."""
        if not self._left:
            path = self.settings.file_path
            try:
                self._left, cut = await self._run(lambda: read_lines(path))
            except OSError as error:
                self._log.warn(
                    "repeatfile source {source}: cannot read {path}: {error}",
                    source=self.source_id,
                    path=str(path),
                    error=str(error),
                )
                return
            if cut:
                self._log.warn(
                    "repeatfile source {source}: {path} is over {limit} bytes; "
                    "only its lines before that are sent",
                    source=self.source_id,
                    path=str(path),
                    limit=MAX_FILE_BYTES,
                )
        while self._left:
            batch = self._left[:BATCH_LINES]
            try:
                await self._pipeline.submit_many(batch)
            except BufferFull as full:
                self._log.warn(
                    "repeatfile source {source}: sink buffer full ({sinks}); "
                    "the round goes on once it has room",
                    source=self.source_id,
                    sinks=str(full),
                )
                return
            del self._left[: len(batch)]


def repeat_file_service(source: RepeatFileSource, clock: IReactorTime) -> IService:
    """Run C{source} at once, then every C{interval}."""
    return PeriodicTask(
        f"repeatfile {source.source_id}",
        source.settings.interval_seconds,
        source.tick,
        clock,
        now=True,
    )
