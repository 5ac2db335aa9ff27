"""
What every player sink offers the rest of the player.

A sink takes lists of events (the strings scripts emitted to it) and fires
its L{Sink.deliver} result only once they are safely handed over: replayed
to the target, committed to disk.  Only then does the puller acknowledge
the batch to the relay.  A sink may also serve an HTTP API, mounted by the
player under C{/<sink id>/}.
"""

from __future__ import annotations

import abc

from twisted.internet.defer import Deferred, succeed
from twisted.web.resource import IResource

from replayforge.player.config import PlayerSinkConfig
from replayforge.player.stats import SinkStats


class Sink(abc.ABC):
    """
    One configured sink.

    @ivar stats: what the sink received, delivered and dropped, by reason.
    """

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

    def start(self) -> Deferred[None]:
        """Get ready to take events; fire once ready."""
        return succeed(None)

    def stop(self) -> Deferred[None]:
        """Cancel work in flight and let go of files and connections."""
        return succeed(None)

    @abc.abstractmethod
    def deliver(self, events: list[str]) -> Deferred[None]:
        """
        Hand C{events} over, in order.

        Events the sink cannot use are dropped and counted by reason, and do
        not fail the call.

        @return: a L{Deferred} that fires once every event is safely handed
            over or dropped by policy, and fails when the batch should be
            delivered again later.
        """

    def resource(self) -> IResource | None:
        """Return the sink's HTTP API, or L{None} when it has none."""
        return None

    def listen_description(self) -> str | None:
        """Return the endpoint of the sink's own listener, if it has one."""
        return None
