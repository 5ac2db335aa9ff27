"""
The relay's dashboard: one page, its script and style, and the data it shows.

Served under C{/dashboard} on the status listener.  The page and its assets
ship in the package (C{replayforge/relay/dashboard/}) and are read once at
start-up; the page fetches C{dashboard/data.json} every few seconds and
draws it with the browser's DOM, so nothing from the data is ever parsed as
markup.  Links are relative, so the page also works behind a path prefix
(the player's C{/relay-proxy/}).
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from replayforge.logs import mask_value
from replayforge.relay.bucket import BucketStore, bucket_sizes
from replayforge.relay.history import MinuteSample, TrafficHistory
from replayforge.relay.overview import Overview
from replayforge.relay.stats import RelayStats
from replayforge.web import json_body, text_body

# The browser may run only our own script and style, and reach only us.
CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; "
    b"connect-src 'self'; img-src 'self'; base-uri 'none'; "
    b"form-action 'none'; frame-ancestors 'none'"
)

PAGE = "index.html"
ASSET_TYPES = {
    PAGE: b"text/html; charset=utf-8",
    "dashboard.js": b"text/javascript; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
}


def load_assets() -> dict[str, bytes]:
    """Read the page and its assets from the installed package."""
    folder = resources.files("replayforge.relay").joinpath("dashboard")
    return {name: folder.joinpath(name).read_bytes() for name in ASSET_TYPES}


def _guarded(request: IRequest, content_type: bytes) -> None:
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY)
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    request.setHeader(b"Cache-Control", b"no-cache")


class Dashboard:
    """
    The page, its assets and its data, served under C{/dashboard}.

    @ivar history: the last hour of every bucket, fed by L{record_minute}.
    """

    app = Klein()

    def __init__(
        self,
        stores: Mapping[str, BucketStore],
        stats: RelayStats,
        clock: IReactorTime,
        stale_after: float,
        assets: Mapping[str, bytes] | None = None,
    ) -> None:
        self.history = TrafficHistory(list(stores))
        self._stores = stores
        self._stats = stats
        self._clock = clock
        self._stale_after = stale_after
        self._assets = dict(assets) if assets is not None else load_assets()

    def record_minute(self) -> None:
        """
        Keep the minute that is ending in the history.

        Call it just before the per-minute counts are rolled over.
        """
        now = self._clock.seconds()
        self.history.record(
            {
                name: MinuteSample(
                    ended=now,
                    received=traffic.rx_messages_by_minute,
                    sent=traffic.tx_message_by_minute,
                    backlog=self._stores[name].backlog,
                )
                for name, traffic in self._stats.buckets.items()
                if name in self._stores
            }
        )

    def _asset(self, request: IRequest, name: str) -> bytes:
        _guarded(request, ASSET_TYPES[name])
        return self._assets[name]

    def serve(self, request: IRequest) -> IResource | bytes:
        """
        Answer a request under C{/dashboard}: the page itself, or the
        resource that serves its data and assets.

        The page lives at C{/dashboard}, where its relative links point into
        C{/dashboard/}; C{/dashboard/} is sent there.
        """
        if request.postpath == [b""]:
            request.setResponseCode(301)
            request.setHeader(b"Location", b"../dashboard")
            return b""
        if not request.postpath:
            return self._asset(request, PAGE)
        return self.app.resource()

    @app.route("/data.json", methods=["GET"])
    def data(self, request: IRequest) -> bytes:
        """Render what the page shows, as JSON."""
        now = self._clock.seconds()
        sizes = bucket_sizes(self._stores)
        backlogs = {name: store.backlog for name, store in self._stores.items()}
        document = Overview(now, self._stale_after).build(
            self._stats.as_json(now, sizes), sizes, backlogs, self.history
        )
        # Host and environment names come from clients: mask as statusz does.
        body = json_body(request, 200, mask_value(document))
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        return body

    @app.route("/<name>", methods=["GET"])
    def asset(self, request: IRequest, name: str) -> bytes:
        """Serve the page's script or style."""
        if name == PAGE or name not in ASSET_TYPES:
            return text_body(request, 404, "no such dashboard file\n")
        return self._asset(request, name)
