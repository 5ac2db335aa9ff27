"""
The path of an event inside the proxy: source, script, sink buffers.

A L{SourcePipeline} runs the source's script on each event (or passes it to
the C{targetSink} when there is none), then appends what was emitted to the
named sinks' buffers.  Either every emitted event of a call is committed or,
when a buffer is full, none is: the caller then answers 503 and the sender's
retry cannot double what was already stored.

An emitted event larger than its sink's C{maxPayloadBytes} could never be
sent to the relay, so it is never buffered.  A call with a client to answer
(L{SourcePipeline.submit}) is then refused whole, and its client told so
(413); for the other sources the event alone is dropped.  Both are counted
as C{payload_too_large}.  The event is measured as the forwarder measures
it, before any sink C{TransformBatch}: the forwarder keeps its own check
for what a script makes of a batch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

from twisted.internet.defer import gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from replayforge.logthrottle import ThrottledLog
from replayforge.lua import Emitted, LuaScript, ScriptFailure
from replayforge.proxy.buffer import BufferFull, SinkBuffer
from replayforge.proxy.config import ProxySourceConfig
from replayforge.proxy.payload import fits_alone, largest_surely_fitting
from replayforge.proxy.stats import SinkStats, SourceStats

log = Logger()


class PayloadTooLarge(Exception):
    """
    An emitted event is larger than its sink's C{maxPayloadBytes}; nothing
    of the call was stored.

    @ivar limits: each sink refusing, with its C{maxPayloadBytes}.
    """

    def __init__(self, limits: Sequence[tuple[str, int]]) -> None:
        self.limits = list(limits)
        super().__init__(
            ", ".join(
                f"sink {sink} takes events of at most {limit} bytes (maxPayloadBytes)"
                for sink, limit in self.limits
            )
        )


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
        payload_limits: Mapping[str, int] | None = None,
    ) -> None:
        """
        @param payload_limits: each sink's C{maxPayloadBytes}; a sink not
            named takes events of any size.
        """
        self.config = config
        self.script = script
        self._buffers = buffers
        self._stats = stats
        self._sink_stats = sink_stats
        self._clock = clock
        self._log = ThrottledLog(log, clock)
        self._payload_limits = dict(payload_limits or {})

    async def submit(self, content: str) -> int:
        """
        Process one captured event and commit what it emits.

        @return: how many events were buffered (0 when the script dropped
            the event or emitted nothing).
        @raise PayloadTooLarge: an emitted event is larger than its sink's
            C{maxPayloadBytes}; nothing was stored.
        @raise BufferFull: a target buffer is full; nothing was stored.
        """
        self._stats.saw(content, self._clock.seconds())
        return await self._store(self._transform(content), whole=True)

    async def submit_many(self, contents: Sequence[str]) -> int:
        """
        Process events read together (lines of a file) and commit all they
        emit at once: one append, one transaction, per sink.

        A refusal is not counted as a loss: the caller keeps the events and
        submits them again once the buffer has room.  An emitted event larger
        than its sink's C{maxPayloadBytes} is dropped, and counted once the
        others are committed.

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

    async def _store(
        self, emitted: Emitted, refusal_is_loss: bool = True, whole: bool = False
    ) -> int:
        """
        Commit C{emitted} to the sinks' buffers: all that fits its sink, or
        none.

        @param refusal_is_loss: count the events of a refused call as lost.
        @param whole: refuse the call when one event is too large for its
            sink, rather than drop that event alone.
        """
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

        oversized = self._remove_oversized(by_sink)
        if oversized and whole:
            self._refuse_oversized(by_sink, oversized)
        by_sink = {sink: texts for sink, texts in by_sink.items() if texts}

        full = [
            sink
            for sink, texts in by_sink.items()
            if self._buffers[sink].would_overflow(texts)
        ]
        if full and not refusal_is_loss:
            raise BufferFull(", ".join(full))
        self._dropped_oversized(oversized)
        if full:
            count = sum(len(texts) for texts in by_sink.values())
            self._stats.drop("buffer_full", count)
            for sink in full:
                self._sink_stats[sink].drop("buffer_full", len(by_sink[sink]))
            raise BufferFull(", ".join(full))
        if not by_sink:
            return 0
        # Nothing ran since the check above, so no append below can refuse.
        if len(by_sink) == 1:
            # The usual case, without the cost of a DeferredList.
            [(sink, texts)] = by_sink.items()
            await self._buffers[sink].append(texts)
        else:
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

    def _remove_oversized(self, by_sink: dict[str, list[str]]) -> dict[str, int]:
        """
        Take out of C{by_sink} the events larger than their sink's
        C{maxPayloadBytes}.

        @return: how many were taken out, for each sink that had some.
        """
        removed: dict[str, int] = {}
        for sink, texts in by_sink.items():
            limit = self._payload_limits.get(sink)
            if limit is None:
                continue
            surely = largest_surely_fitting(limit)
            kept = [
                text for text in texts if len(text) <= surely or fits_alone(text, limit)
            ]
            if len(kept) < len(texts):
                removed[sink] = len(texts) - len(kept)
                by_sink[sink] = kept
        return removed

    def _refuse_oversized(
        self, by_sink: dict[str, list[str]], oversized: dict[str, int]
    ) -> None:
        """
        Count every event of a call as lost to C{payload_too_large}, then
        refuse the call.

        @param by_sink: the events that fit, for each sink.
        @param oversized: how many did not, for each sink that had some.
        @raise PayloadTooLarge: always.
        """
        kept = sum(len(texts) for texts in by_sink.values())
        self._stats.drop("payload_too_large", kept + sum(oversized.values()))
        for sink, count in oversized.items():
            self._sink_stats[sink].drop("payload_too_large", count + len(by_sink[sink]))
        limits = [(sink, self._payload_limits[sink]) for sink in oversized]
        self._log.warn(
            "source {source}: request refused, an event is over the "
            "maxPayloadBytes of {sinks}",
            source=self.config.id,
            sinks=", ".join(f"sink {sink} ({limit} bytes)" for sink, limit in limits),
        )
        raise PayloadTooLarge(limits)

    def _dropped_oversized(self, oversized: dict[str, int]) -> None:
        """Count and log the events L{_remove_oversized} took out."""
        for sink, count in oversized.items():
            self._stats.drop("payload_too_large", count)
            self._sink_stats[sink].drop("payload_too_large", count)
            self._log.warn(
                "source {source}: event over the maxPayloadBytes of sink {sink} "
                "({limit} bytes) dropped",
                source=self.config.id,
                sink=sink,
                limit=self._payload_limits[sink],
            )
