"""
What every player sink offers the rest of the player.

Events reach a sink from its durable queue (L{replayforge.player.queue}):
the sink's worker (L{replayforge.player.worker}) hands it a few
L{QueuedEvent}s at a time and gets back one outcome per event.
L{DELIVERED} means the event is safely handed over (replayed, committed to
disk) and leaves the queue; L{Rejected} means it never will be and moves to
the dead-letter table with its reason; L{Retry} asks for another attempt
after a backoff; L{POSTPONED} means it was not tried this time.  A
L{Deferred} that fails says the sink itself could not work just now (disk
full, database locked): the whole batch is offered again later, and no
event is blamed for it.

A sink may also serve an HTTP API, mounted by the player under
C{/<sink id>/}.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.web.resource import IResource

from replayforge.player.config import PlayerSinkConfig
from replayforge.player.sinks.settings import RetryPolicy
from replayforge.player.stats import SinkStats

DEFAULT_BATCH_SIZE = 100


@attrs.frozen
class QueuedEvent:
    """
    One event waiting in a sink's queue.

    @ivar id: its position in the queue; ids grow strictly and are never
        given out twice by the same queue file.
    @ivar attempts: how many attempts to deliver it have failed so far.
    """

    id: int
    content: str
    attempts: int = 0


@attrs.frozen
class Delivered:
    """The event is handed over for good."""


@attrs.frozen
class Postponed:
    """The event was not tried this time; it stays queued as it is."""


@attrs.frozen
class Rejected:
    """The event can never be delivered; it goes to the dead-letter table."""

    reason: str
    detail: str


@attrs.frozen
class Retry:
    """
    The attempt failed in a way worth trying again.

    @ivar retry_after: the wait the target asked for (C{Retry-After}), in
        seconds, if it asked.
    """

    reason: str
    retry_after: float | None = None


DELIVERED = Delivered()
POSTPONED = Postponed()
Outcome = Delivered | Postponed | Rejected | Retry


class Sink(abc.ABC):
    """
    One configured sink.

    @ivar stats: what the sink received, delivered and lost, by reason.
    @ivar batch_size: how many events its worker hands over at once.
    """

    batch_size = DEFAULT_BATCH_SIZE

    def __init__(self, config: PlayerSinkConfig) -> None:
        self.config = config
        self.stats = SinkStats()

    @property
    def name(self) -> str:
        """The name scripts emit to."""
        return self.config.name

    @property
    def id(self) -> str:
        """The id under which the sink's API is served."""
        return self.config.id

    @property
    def type(self) -> str:
        """The sink's type, as configured."""
        return self.config.type

    @property
    def retry_policy(self) -> RetryPolicy:
        """How often and how patiently a failed event is tried again."""
        policy = getattr(self.config.settings, "retry", None)
        return policy if isinstance(policy, RetryPolicy) else RetryPolicy()

    def start(self) -> Deferred[None]:
        """Get ready to take events; fire once ready."""
        return succeed(None)

    def stop(self) -> Deferred[None]:
        """Cancel work in flight and let go of files and connections."""
        return succeed(None)

    def reopen_files(self) -> None:
        """Reopen the files the sink appends to (after a log rotation)."""
        return None

    @abc.abstractmethod
    def deliver(self, events: Sequence[QueuedEvent]) -> Deferred[list[Outcome]]:
        """
        Hand C{events} over, in order.

        @return: a L{Deferred} firing with one outcome per event, in the
            same order, or failing when the sink could not work at all.
        """

    def resource(self) -> IResource | None:
        """Return the sink's HTTP API, or L{None} when it has none."""
        return None

    def listen_description(self) -> str | None:
        """Return the endpoint of the sink's own listener, if it has one."""
        return None
