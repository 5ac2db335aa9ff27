"""
The player's own HTTP endpoints: the exposed port and the status listener.

The exposed port answers C{/ping}, lists the sinks (C{/sink/list},
C{/sink/find/<id>}) and routes C{/<sink id>/...} to that sink's API in
process, where the Go player proxied to the sink's own port.  The status
listener answers C{/} and C{/statusz} with the counts of every source and
sink.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from replayforge.player.puller import BucketPuller
from replayforge.player.sinks.base import Sink
from replayforge.web import json_body, text_body


def sink_summary(sink: Sink) -> dict[str, Any]:
    """Describe a sink for C{/sink/list} and C{/sink/find}."""
    return {
        "id": sink.id,
        "name": sink.name,
        "type": sink.type,
        "metadata": sink.config.metadata,
    }


class PlayerAPI:
    """The Klein application behind the player's exposed port."""

    app = Klein()

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self._sinks = list(sinks)

    def _find(self, sink_id: str) -> Sink | None:
        for sink in self._sinks:
            if sink.id == sink_id:
                return sink
        # The Go player routed by name; ids default to names anyway.
        for sink in self._sinks:
            if sink.name == sink_id:
                return sink
        return None

    @app.route("/ping", methods=["GET"])
    def ping(self, request: IRequest) -> bytes:
        """Answer C{pong}."""
        return text_body(request, 200, "pong")

    @app.route("/sink/list", methods=["GET"])
    def sink_list(self, request: IRequest) -> bytes:
        """List the sinks: id, name, type and metadata."""
        return json_body(request, 200, [sink_summary(sink) for sink in self._sinks])

    @app.route("/sink/find/<sink_id>", methods=["GET"])
    def sink_find(self, request: IRequest, sink_id: str) -> bytes:
        """Describe the sink with C{sink_id}."""
        for sink in self._sinks:
            if sink.id == sink_id:
                return json_body(request, 200, sink_summary(sink))
        return text_body(request, 404, "Sink not found\n")

    @app.route("/<sink_id>/", branch=True)
    def sink_api(self, request: IRequest, sink_id: str) -> IResource | bytes:
        """Hand the request to the API of the sink C{sink_id}."""
        sink = self._find(sink_id)
        if sink is None:
            return text_body(request, 404, "404 page not found\n")
        resource = sink.resource()
        if resource is None:
            return text_body(request, 404, "Sink does not expose a port\n")
        return resource


class StatusAPI:
    """The player's status listener: C{/statusz} and a liveness C{/}."""

    app = Klein()

    def __init__(
        self,
        pullers: Sequence[BucketPuller],
        sinks: Sequence[Sink],
        clock: IReactorTime,
    ) -> None:
        self._pullers = list(pullers)
        self._sinks = list(sinks)
        self._clock = clock
        self._started = clock.seconds()

    @app.route("/statusz", methods=["GET"])
    def statusz(self, request: IRequest) -> bytes:
        """Render the counts of every source and sink as JSON."""
        return json_body(
            request,
            200,
            {
                "uptimeSeconds": round(self._clock.seconds() - self._started, 3),
                "sources": {
                    puller.bucket: puller.stats.as_json() for puller in self._pullers
                },
                "sinks": {
                    sink.id: {"name": sink.name, "type": sink.type}
                    | sink.stats.as_json()
                    for sink in self._sinks
                },
            },
        )

    @app.route("/", methods=["GET"])
    def alive(self, request: IRequest) -> bytes:
        """Answer C{ok} while the player runs."""
        return text_body(request, 200, "ok")
