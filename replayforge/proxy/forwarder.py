"""
Move a sink's buffered events to the relay, in order, deleting only what the
relay has stored.

One batch is in flight at a time, and the next leaves once it is settled
and the batch is worth sending: full (C{batchMaxEvents} events or
C{batchGoalBytes} bytes), or its oldest event has waited C{batchLingerMs}
(ours, 20 ms by default; never more than C{batchTimeoutSecs}, the Go-era
bound).  Events that arrive while a batch is in flight go together in the
next, so batches grow with the load by themselves; the linger keeps a
steady trickle from costing one request per event.  A
batch never exceeds C{maxPayloadBytes}; an event larger than that alone is
dropped and counted.  Sources already keep such events out of the buffer
(L{replayforge.proxy.pipeline}); this check stays as the last line, for
events buffered while the sink's limit was larger.  Failures back off
exponentially with jitter and retry the same batch under the same
C{RF-BATCH-ID}, so a relay that stored it before the answer was lost stores
it only once.

A sink with a C{transformScript} runs its C{TransformBatch(messages,
request)} on each batch before each attempt: the messages it returns are
sent instead, to C{url} + C{request.path} when the script set one, with
C{request.headers} added to (or replacing) ours.  A batch whose script call
fails stays in the buffer and is tried again after the same backoff; a
script that returns no message at all drops the batch, counted as
C{filtered_by_script}.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from replayforge.backoff import Backoff
from replayforge.logthrottle import ThrottledLog
from replayforge.lua import ScriptFailure, TransformedBatch
from replayforge.proxy.buffer import BufferedEvent, SinkBuffer
from replayforge.proxy.config import ProxySinkConfig
from replayforge.proxy.payload import (
    encode_event,
    fit_payload,
    largest_encoded_event,
    up_to_goal,
)
from replayforge.proxy.stats import SinkStats

log = Logger()

REQUEST_TIMEOUT_SECONDS = 30.0


class HTTPClient(Protocol):
    """The part of treq's client the forwarder uses (treq or StubTreq)."""

    def post(
        self,
        url: str,
        /,
        *,
        data: bytes,
        headers: dict[bytes | str, list[bytes | str]],
        timeout: float,
    ) -> Deferred[Any]:
        """Send a request; fire with a treq response."""
        ...


class BatchTransform(Protocol):
    """A sink script's C{TransformBatch}, as the forwarder calls it."""

    def transform_batch(
        self, messages: Sequence[str], path: str = ""
    ) -> TransformedBatch:
        """
        Return what the script made of C{messages}.

        @raise ScriptFailure: when the script failed.
        """
        ...


@attrs.frozen
class OutgoingBatch:
    """What one relay request carries: events, each already JSON-encoded."""

    events: list[BufferedEvent]
    encoded: list[bytes]
    url: str
    headers: dict[str, str]

    def body(self) -> bytes:
        """The request body: a JSON array of the events' strings."""
        return b"[" + b",".join(self.encoded) + b"]"


class SendFailed(Exception):
    """
    The relay did not store a batch; it will be sent again.

    @ivar code: the relay's HTTP status, or L{None} when none came.
    """

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.code = code


class EventRate:
    """
    At most C{per_minute} events a minute, as a token bucket.

    A sink with C{maxMessagesPerMinute} keeps its backlog in its buffer
    rather than send faster; the buffer's cap then pushes back on sources.
    """

    def __init__(self, per_minute: int, clock: IReactorTime) -> None:
        self._per_second = per_minute / 60.0
        self._capacity = float(per_minute)
        self._tokens = float(per_minute)
        self._clock = clock
        self._updated = clock.seconds()

    def _refill(self) -> None:
        now = self._clock.seconds()
        self._tokens = min(
            self._capacity, self._tokens + (now - self._updated) * self._per_second
        )
        self._updated = now

    def allowance(self) -> int:
        """How many events may be sent now."""
        self._refill()
        return int(self._tokens)

    def seconds_until_one(self) -> float:
        """How long until one more event may be sent."""
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self._per_second)

    def spend(self, count: int) -> None:
        """Count C{count} events sent."""
        self._refill()
        self._tokens -= count


class Forwarder:
    """The loop that empties one sink's buffer into the relay."""

    def __init__(
        self,
        config: ProxySinkConfig,
        buffer: SinkBuffer,
        http: HTTPClient,
        clock: IReactorTime,
        stats: SinkStats,
        env_name: str,
        host_name: str,
        rng: Callable[[], float] = random.random,
        transform: BatchTransform | None = None,
    ) -> None:
        self.config = config
        self._buffer = buffer
        self._http = http
        self._clock = clock
        self._stats = stats
        self._env_name = env_name
        self._host_name = host_name
        self._backoff = Backoff(rng=rng)
        self._rate = (
            EventRate(config.max_messages_per_minute, clock)
            if config.max_messages_per_minute
            else None
        )
        self._running: Deferred[None] | None = None
        self._sleeping: Deferred[Any] | None = None
        self._stopping = False
        self._transform = transform
        self._script_log = ThrottledLog(log, clock)

    @property
    def client(self) -> HTTPClient:
        """The client this sink calls its relay with."""
        return self._http

    def start(self) -> None:
        """Start forwarding; the loop runs until L{stop}."""
        self._stopping = False
        self._running = ensureDeferred(self._run())
        self._running.addErrback(self._crashed)

    def stop(self) -> Deferred[None]:
        """Stop after the batch in flight, if any, is settled."""
        self._stopping = True
        if self._sleeping is not None:
            self._sleeping.cancel()
        running, self._running = self._running, None
        return running if running is not None else succeed(None)

    def _crashed(self, failure: Failure) -> None:
        if failure.check(CancelledError) or self._stopping:
            return
        log.failure(
            "sink {sink}: forwarder stopped by an unexpected error",
            failure,
            sink=self.config.id,
        )

    async def _sleep(self, waiting: Deferred[Any]) -> bool:
        """Wait for C{waiting}; return C{False} when the loop is stopping."""
        self._sleeping = waiting
        if self._stopping:
            # stop() came while no wait was there to cancel.
            waiting.cancel()
        try:
            await waiting
        except CancelledError:
            pass
        finally:
            self._sleeping = None
        return not self._stopping

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                batch = await self._next_batch()
                if batch is None:
                    return
                await self._deliver(batch)
            except Exception:
                # A buffer that failed once (disk full, I/O error) must not
                # end forwarding for good: wait, then read it again.
                if self._stopping:
                    return
                failures += 1
                delay = self._backoff.delay(failures)
                log.failure(
                    "sink {sink}: forwarding failed; trying again in {delay:.1f}s",
                    level=LogLevel.error,
                    sink=self.config.id,
                    delay=delay,
                )
                if not await self._sleep(deferLater(self._clock, delay, _pass)):
                    return
            else:
                failures = 0

    async def _next_batch(self) -> OutgoingBatch | None:
        """
        Wait until a batch is worth sending, then return it.

        The forwarder is free only when no batch is in flight, so what
        gathered during the last send goes at once if it is full or its
        oldest event has lingered long enough; otherwise it waits for the
        rest of the linger, or until the buffer holds a full batch.
        """
        batching = self.config.batching
        while not self._stopping:
            if self._buffer.pending_events == 0:
                if not await self._sleep(self._buffer.when_pending(1, 1)):
                    return None
                continue
            events = await self._buffer.oldest(batching.max_events)
            if not events:
                continue
            encoded = [encode_event(event.content) for event in events]
            events, encoded = await self._drop_oversized(events, encoded)
            if not events:
                continue
            read = len(events)
            events, encoded = fit_payload(events, encoded, batching.max_payload_bytes)
            events, encoded = up_to_goal(events, encoded, batching.goal_bytes)
            age = self._clock.seconds() - events[0].created_at
            full = (
                len(events) < read
                or read >= batching.max_events
                or sum(len(item) for item in encoded) >= batching.goal_bytes
            )
            if not full and age < batching.linger:
                # Not full, and young: give the batch a moment for company.
                fuller = self._buffer.when_pending(
                    batching.max_events, batching.goal_bytes
                )
                if not await self._sleep(
                    _first_of(fuller, batching.linger - age, self._clock)
                ):
                    return None
                continue
            if self._rate is not None:
                allowed = self._rate.allowance()
                if allowed < 1:
                    wait = deferLater(
                        self._clock, self._rate.seconds_until_one(), _pass
                    )
                    if not await self._sleep(wait):
                        return None
                    continue
                events, encoded = events[:allowed], encoded[:allowed]
            return self._outgoing(events, encoded)
        return None

    async def _drop_oversized(
        self, events: list[BufferedEvent], encoded: list[bytes]
    ) -> tuple[list[BufferedEvent], list[bytes]]:
        """
        Delete and count the events too large to leave even alone; return
        the others with their encodings.
        """
        limit = largest_encoded_event(self.config.batching.max_payload_bytes)
        oversized = [
            event
            for event, item in zip(events, encoded, strict=True)
            if len(item) > limit
        ]
        if not oversized:
            return events, encoded
        await self._buffer.delete(oversized)
        self._stats.drop("payload_too_large", len(oversized))
        log.error(
            "sink {sink}: dropped {count} events larger than maxPayloadBytes "
            "({limit} bytes)",
            sink=self.config.id,
            count=len(oversized),
            limit=self.config.batching.max_payload_bytes,
        )
        kept = [
            (event, item)
            for event, item in zip(events, encoded, strict=True)
            if len(item) <= limit
        ]
        return [event for event, _ in kept], [item for _, item in kept]

    def _outgoing(
        self, events: list[BufferedEvent], encoded: list[bytes]
    ) -> OutgoingBatch:
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.config.auth_bearer}",
            "RF-BUCKETS": ",".join(self.config.buckets),
            "RF-HOSTNAME": self._host_name,
            "RF-BATCH-ID": (
                f"{self._buffer.instance_id}:{events[0].id}-{events[-1].id}"
            ),
        }
        if self._env_name:
            headers["RF-ENV-NAME"] = self._env_name
        return OutgoingBatch(
            events=events,
            encoded=encoded,
            url=self.config.url + "record-batch",
            headers=headers,
        )

    async def _deliver(self, batch: OutgoingBatch) -> None:
        """Send C{batch} until the relay stores it, then delete it here."""
        attempt = 0
        while not self._stopping:
            try:
                request = self._transformed(batch)
            except ScriptFailure as failure:
                attempt += 1
                delay = self._backoff.delay(attempt)
                self._stats.retries += 1
                self._stats.script_errors += 1
                self._script_log.warn(
                    "sink {sink}: TransformBatch failed; batch of {count} events "
                    "kept for a retry: {error}",
                    sink=self.config.id,
                    count=len(batch.events),
                    error=str(failure),
                )
                if not await self._sleep(deferLater(self._clock, delay, _pass)):
                    return
                continue
            if request is None:
                await self._buffer.delete(batch.events)
                self._stats.drop("filtered_by_script", len(batch.events))
                log.debug(
                    "sink {sink}: TransformBatch kept none of {count} events",
                    sink=self.config.id,
                    count=len(batch.events),
                )
                return
            try:
                await self._send(request)
            except SendFailed as failure:
                if failure.code == 413:
                    await self._split_refused(batch)
                    return
                attempt += 1
                delay = self._backoff.delay(attempt)
                self._stats.retries += 1
                log.warn(
                    "sink {sink}: relay did not store batch of {count} events "
                    "({reason}); retry {attempt} in {delay:.1f}s",
                    sink=self.config.id,
                    count=len(batch.events),
                    reason=failure,
                    attempt=attempt,
                    delay=delay,
                )
                if not await self._sleep(deferLater(self._clock, delay, _pass)):
                    return
                continue
            await self._buffer.delete(batch.events)
            self._stats.forwarded(len(batch.events), self._clock.seconds())
            if self._rate is not None:
                self._rate.spend(len(batch.events))
            return

    def _transformed(self, batch: OutgoingBatch) -> OutgoingBatch | None:
        """
        Run the sink's script on C{batch}: its messages, path and headers.

        @return: the request to send, or L{None} when the script kept no
            message.
        @raise ScriptFailure: when the script failed.
        """
        if self._transform is None:
            return batch
        result = self._transform.transform_batch(
            [event.content for event in batch.events]
        )
        if result.skipped:
            self._stats.drop("invalid_message", result.skipped)
            self._script_log.warn(
                "sink {sink}: TransformBatch returned {count} values that are "
                "not strings; they were left out",
                sink=self.config.id,
                count=result.skipped,
            )
        if not result.messages:
            return None
        headers = dict(batch.headers)
        for name, value in result.headers:
            for same in [key for key in headers if key.lower() == name.lower()]:
                del headers[same]
            headers[name] = value
        url = batch.url
        if result.path:
            url = self.config.url.rstrip("/") + "/" + result.path.lstrip("/")
        return OutgoingBatch(
            events=batch.events,
            encoded=[encode_event(message) for message in result.messages],
            url=url,
            headers=headers,
        )

    async def _split_refused(self, batch: OutgoingBatch) -> None:
        """
        The relay found C{batch} too large (413): send it in halves, and drop
        an event the relay refuses on its own.
        """
        count = len(batch.events)
        if count == 1:
            await self._buffer.delete(batch.events)
            self._stats.drop("payload_too_large")
            log.error(
                "sink {sink}: relay refused an event of {size} bytes as too "
                "large; dropped",
                sink=self.config.id,
                size=len(batch.encoded[0]),
            )
            return
        middle = count // 2
        for part in (slice(None, middle), slice(middle, None)):
            await self._deliver(self._outgoing(batch.events[part], batch.encoded[part]))

    async def _send(self, batch: OutgoingBatch) -> None:
        body = batch.body()
        started = self._clock.seconds()
        try:
            response = await self._http.post(
                batch.url,
                data=body,
                headers={key: [value] for key, value in batch.headers.items()},
                timeout=REQUEST_TIMEOUT_SECONDS,
            )
            # treq's timeout covers only the wait for the response headers.
            answer = await response.content().addTimeout(
                REQUEST_TIMEOUT_SECONDS, self._clock
            )
        except CancelledError:
            raise
        except Exception as error:
            raise SendFailed(f"{type(error).__name__}: {error}") from None
        self._stats.bytes_sent += len(body)
        self._stats.bytes_received += len(answer)
        if not 200 <= response.code < 300:
            text = answer[:200].decode("utf-8", "replace").strip()
            raise SendFailed(f"HTTP {response.code}: {text}", response.code)
        self._stats.batch_sent(len(batch.events), self._clock.seconds() - started)


def _pass() -> None:
    """Nothing: what a plain timed wait calls."""


def _first_of(
    waiter: Deferred[None], seconds: float, clock: IReactorTime
) -> Deferred[None]:
    """Fire when C{waiter} does or after C{seconds}; cancel the loser."""
    timer: IDelayedCall = clock.callLater(max(seconds, 0.0), waiter.cancel)

    def settle(result: Failure | None) -> None:
        if timer.active():
            timer.cancel()
        if isinstance(result, Failure):
            result.trap(CancelledError)

    return waiter.addBoth(settle)
