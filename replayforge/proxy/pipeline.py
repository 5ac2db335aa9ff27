"""
The path of an event inside the proxy: source, script, sink buffers.

A L{SourcePipeline} runs the source's script on each event (or passes it to
the C{targetSink} when there is none), then appends what was emitted to the
named sinks' buffers.  Either every emitted event of a call is committed or,
when a buffer is full, none is: the caller then answers 503 and the sender's
retry cannot double what was already stored.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from twisted.internet.defer import gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from replayforge.logthrottle import ThrottledLog
from replayforge.lua import Emitted, LuaScript, ScriptFailure
from replayforge.proxy.buffer import BufferFull, SinkBuffer
from replayforge.proxy.config import ProxySourceConfig
from replayforge.proxy.stats import SinkStats, SourceStats

log = Logger()


class SourcePipeline:
    """
    Transform one source's events and buffer them in their sinks.

    A script failure costs its event (or its timer tick) only: it is
    counted as C{script_error} and logged at most once per 30 seconds for
    each distinct message.
    """

    def __init__(
        self,
        config: ProxySourceConfig,
        script: LuaScript | None,
        buffers: dict[str, SinkBuffer],
        stats: SourceStats,
        sink_stats: dict[str, SinkStats],
        clock: IReactorTime,
    ) -> None:
        self.config = config
        self.script = script
        self._buffers = buffers
        self._stats = stats
        self._sink_stats = sink_stats
        self._clock = clock
        self._log = ThrottledLog(log, clock)

    async def submit(self, content: str) -> int:
        """
        Process one captured event and commit what it emits.

        @return: how many events were buffered (0 when the script dropped
            the event or emitted nothing).
        @raise BufferFull: a target buffer is full; nothing was stored.
        """
        self._stats.saw(content, self._clock.seconds())
        return await self._store(self._transform(content))

    async def submit_many(self, contents: Sequence[str]) -> int:
        """
        Process events read together (lines of a file) and commit all they
        emit at once: one append, one transaction, per sink.

        A refusal is not counted as a loss: the caller keeps the events and
        submits them again once the buffer has room.

        @return: how many events were buffered.
        @raise BufferFull: a target buffer is full; nothing was stored.
        """
        emitted = [item for content in contents for item in self._transform(content)]
        stored = await self._store(emitted, refusal_is_loss=False)
        now = self._clock.seconds()
        for content in contents:
            self._stats.saw(content, now)
        return stored

    async def run_timer(self) -> int:
        """Run the script's C{TimerHandler} and commit what it emits."""
        if self.script is None:
            return 0
        return await self._store(
            self._guarded(
                self.script.timer, "source {source}: TimerHandler failed: {error}"
            )
        )

    def _transform(self, content: str) -> Emitted:
        """Run C{Process} on one event, or pass it to the C{targetSink}."""
        if self.script is None:
            assert self.config.target_sink is not None
            return [(self.config.target_sink, content)]
        return self._guarded(
            self.script.process,
            "source {source}: script failed, event dropped: {error}",
            content,
        )

    def _guarded(
        self, call: Callable[..., Emitted], message: str, *arguments: str
    ) -> Emitted:
        """
        Call into the script; a failure costs only this call's emits and is
        counted as C{script_error} and logged (at most once per 30 s).
        """
        try:
            return call(*arguments)
        except ScriptFailure as failure:
            self._stats.drop("script_error")
            self._log.warn(message, source=self.config.id, error=str(failure))
            return []

    async def _store(self, emitted: Emitted, refusal_is_loss: bool = True) -> int:
        by_sink: dict[str, list[str]] = defaultdict(list)
        for target, text in emitted:
            if target in self._buffers:
                by_sink[target].append(text)
            else:
                self._stats.drop("unknown_sink")
                self._log.warn(
                    "source {source}: emit to unknown sink {sink}; event dropped",
                    source=self.config.id,
                    sink=target,
                )
        if not by_sink:
            return 0

        full = [
            sink
            for sink, texts in by_sink.items()
            if self._buffers[sink].would_overflow(texts)
        ]
        if full:
            if refusal_is_loss:
                count = sum(len(texts) for texts in by_sink.values())
                self._stats.drop("buffer_full", count)
                for sink in full:
                    self._sink_stats[sink].drop("buffer_full", len(by_sink[sink]))
            raise BufferFull(", ".join(full))

        # Nothing ran since the check above, so no append below can refuse.
        await gatherResults(
            [self._buffers[sink].append(texts) for sink, texts in by_sink.items()],
            consumeErrors=True,
        )
        stored = 0
        for sink, texts in by_sink.items():
            self._sink_stats[sink].stored(len(texts), texts[-1])
            stored += len(texts)
        self._stats.emitted += stored
        return stored
