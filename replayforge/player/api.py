"""
The player's own HTTP endpoints: the exposed port and the status listener.

The exposed port answers C{/ping}, lists the sinks (C{/sink/list},
C{/sink/find/<id>}), shows the relay's status pages (C{/relay-proxy/...},
see L{replayforge.player.relay_proxy}), serves the files of
C{staticFolderPath} (at C{/static/...}, and at C{/...} when such a file
exists, as the Go player did) and routes C{/<sink id>/...} to that sink's
API in process, where the Go player proxied to the sink's own port.  The
status listener answers C{/} and C{/statusz} with the counts of every source
and sink, and the depth of each sink's queue and dead letters.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from replayforge.logs import mask_value
from replayforge.metrics import DaemonMetrics
from replayforge.player.puller import BucketPuller
from replayforge.player.queue import PlayerQueue
from replayforge.player.relay_proxy import RelayStatusProxy
from replayforge.player.sinks.base import Sink
from replayforge.player.static import resolve_static, static_file
from replayforge.status import go_duration, total_drops
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

    def __init__(
        self,
        sinks: Sequence[Sink],
        static_folder: Path | None = None,
        relay_status: RelayStatusProxy | None = None,
    ) -> None:
        self._sinks = list(sinks)
        self._static_folder = static_folder
        self._relay_status = relay_status

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

    @app.route("/sink/find/", methods=["GET"])
    def sink_find_without_id(self, request: IRequest) -> bytes:
        """Refuse a search without an id."""
        return text_body(request, 400, "id parameter is required\n")

    @app.route("/sink/find/<sink_id>", methods=["GET"])
    def sink_find(self, request: IRequest, sink_id: str) -> bytes:
        """Describe the sink with C{sink_id}."""
        for sink in self._sinks:
            if sink.id == sink_id:
                return json_body(request, 200, sink_summary(sink))
        return text_body(request, 404, "Sink not found\n")

    @app.route("/relay-proxy/", branch=True)
    async def relay_proxy(self, request: IRequest) -> bytes:
        """Answer with the relay's status page at the rest of the path."""
        if self._relay_status is None:
            return text_body(request, 404, "relayUrlStatusz is not set\n")
        segments = list(request.postpath or [])
        return await self._relay_status.forward(request, segments)

    @app.route("/static/", branch=True, methods=["GET"])
    def static(self, request: IRequest) -> IResource | bytes:
        """Serve the files of C{staticFolderPath}."""
        if self._static_folder is None:
            return text_body(request, 404, "404 page not found\n")
        segments = list(request.postpath or [])
        return static_file(request, self._static_folder, segments)

    @app.route("/", branch=True)
    def sink_api(self, request: IRequest) -> IResource | bytes:
        """
        Serve a static file of that name if there is one; else hand the
        request to the API of the sink named by the first segment.
        """
        segments: list[bytes] = list(request.postpath or [])
        if (
            self._static_folder is not None
            and request.method in (b"GET", b"HEAD")
            and resolve_static(self._static_folder, segments) is not None
        ):
            return static_file(request, self._static_folder, segments)
        first = segments[0].decode("utf-8", "replace") if segments else ""
        sink = self._find(first) if first else None
        if sink is None:
            return text_body(request, 404, "404 page not found\n")
        resource = sink.resource()
        if resource is None:
            return text_body(request, 404, "Sink does not expose a port\n")
        request.prepath.append(segments[0])
        request.postpath = segments[1:]
        return resource


class StatusAPI:
    """
    The player's status listener: C{/statusz}, C{/metrics} when given, and
    a liveness C{/}.
    """

    app = Klein()

    def __init__(
        self,
        pullers: Sequence[BucketPuller],
        sinks: Sequence[Sink],
        clock: IReactorTime,
        queue: PlayerQueue | None = None,
        metrics: DaemonMetrics | None = None,
        names: tuple[str, str] = ("", ""),
    ) -> None:
        self._pullers = list(pullers)
        self._sinks = list(sinks)
        self._clock = clock
        self._queue = queue
        self._metrics = metrics
        self._env_name, self._host_name = names
        self._started = clock.seconds()

    def _sink_status(self, sink: Sink) -> dict[str, Any]:
        status: dict[str, Any] = {"name": sink.name, "type": sink.type}
        status.update(sink.stats.as_json())
        if self._queue is not None:
            status["queued"] = self._queue.depth(sink.name)
            status["deadLetters"] = self._queue.dead_letters(sink.name)
        return status

    def status(self) -> dict[str, Any]:
        """Gather what C{/statusz} shows, secrets masked."""
        uptime = self._clock.seconds() - self._started
        status: dict[str, Any] = mask_value(
            {
                "uptime": go_duration(uptime),
                "uptimeSeconds": round(uptime, 3),
                "envName": self._env_name,
                "hostName": self._host_name,
                "sources": {
                    puller.bucket: puller.stats.as_json() for puller in self._pullers
                },
                "sinks": {sink.id: self._sink_status(sink) for sink in self._sinks},
                "dropped": total_drops(
                    [puller.stats for puller in self._pullers]
                    + [sink.stats for sink in self._sinks]
                ),
            }
        )
        return status

    @app.route("/statusz", methods=["GET"])
    def statusz(self, request: IRequest) -> bytes:
        """Render the counts of every source and sink as JSON."""
        return json_body(request, 200, self.status())

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: IRequest) -> bytes:
        """Render the counts for Prometheus."""
        if self._metrics is None:
            return text_body(request, 404, "no metrics on this listener\n")
        return self._metrics.render(request)

    @app.route("/", methods=["GET"])
    def alive(self, request: IRequest) -> bytes:
        """Answer C{ok} while the player runs."""
        return text_body(request, 200, "ok")
