"""
The relay's HTTP API: proxies post batches, players fetch and acknowledge.

Every answer follows the Go relay's protocol (see the specification); a
request is authorized for a bucket only by that bucket's own token.
Nothing is answered 200 before it is committed.
"""

from __future__ import annotations

import json
import math
from typing import Any, cast

from klein import Klein
from twisted.internet.defer import CancelledError, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request

from replayforge.logs import mask_value
from replayforge.metrics import DaemonMetrics
from replayforge.relay.bucket import BucketStore, bucket_sizes
from replayforge.relay.config import RelayConfig
from replayforge.relay.pages import Dashboard
from replayforge.relay.stats import RelayStats
from replayforge.tailscale import PeerIdentities, TailscaleUnavailable
from replayforge.web import bearer_matches, header_text, json_body, text_body

log = Logger()

DEFAULT_LIMIT = 100
MAX_WAIT_SECONDS = 30.0
RETRY_AFTER_SECONDS = 5
# A node report is a few hundred bytes of figures; statusz and the
# dashboard render every kept report on each read.
MAX_NODE_REPORT_BYTES = 64 * 1024
MAX_NODE_HOST_CHARS = 255
MAX_NODE_HOSTS = 1000


class BadRequest(Exception):
    """A request the relay answers with a 4xx and a message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RelayAPI:
    """The Klein application behind the relay's main listener."""

    app = Klein()

    def __init__(
        self,
        config: RelayConfig,
        stores: dict[str, BucketStore],
        stats: RelayStats,
        clock: IReactorTime,
        peers: PeerIdentities | None = None,
    ) -> None:
        """
        @param peers: who tailnet peers are, for buckets with tailnet allow
            lists; without it those buckets admit nobody.
        """
        self._config = config
        self._stores = stores
        self._stats = stats
        self._clock = clock
        self._peers = peers

    @app.handle_errors(BadRequest)
    def _bad_request(self, request: IRequest, failure: Failure) -> bytes:
        # handle_errors(BadRequest) sends only those here.
        error = cast(BadRequest, failure.value)
        if error.code == 503:
            request.setHeader(b"Retry-After", b"%d" % RETRY_AFTER_SECONDS)
        return text_body(request, error.code, error.message + "\n")

    def _authorized_store(self, request: IRequest, bucket: str) -> BucketStore:
        store = self._stores.get(bucket)
        authorization = _single_header(request, b"Authorization")
        # An unknown bucket is checked against an empty token, which never
        # matches, so both refusals take the same path.
        token = store.config.auth if store is not None else ""
        if store is None or not bearer_matches(authorization, token):
            raise BadRequest(401, f"not authorized for bucket {bucket!r}")
        return store

    async def _check_tailnet(
        self, request: IRequest, stores: list[BucketStore]
    ) -> None:
        """
        Refuse the request unless its peer is allowed by every bucket of
        C{stores} that has a tailnet allow list.
        """
        guarded = [store for store in stores if store.config.needs_tailnet_identity]
        if not guarded:
            return
        address = request.getClientAddress()
        host = getattr(address, "host", None)
        port = getattr(address, "port", None)
        if (
            self._peers is None
            or not isinstance(host, str)
            or not isinstance(port, int)
        ):
            raise BadRequest(
                403, f"bucket {guarded[0].name!r} admits only allowed tailnet peers"
            )
        try:
            peer = await self._peers.identify(host, port)
        except TailscaleUnavailable as error:
            log.warn(
                "cannot check a tailnet peer for bucket {bucket}: {error}",
                bucket=guarded[0].name,
                error=str(error),
            )
            raise BadRequest(
                503, "cannot check the tailnet identity now; try again later"
            ) from None
        if peer is None:
            raise BadRequest(
                403,
                f"{host} is not a tailnet peer allowed for bucket {guarded[0].name!r}",
            )
        for store in guarded:
            bucket = store.config
            if not peer.allowed(
                bucket.allowed_tailnet_nodes, bucket.allowed_tailnet_users
            ):
                raise BadRequest(
                    403, f"{peer.describe()} is not allowed for bucket {bucket.name!r}"
                )

    def _one_bucket(self, request: IRequest) -> BucketStore:
        _single_header(request, b"RF-BUCKET")
        bucket = header_text(request, b"RF-BUCKET")
        if not bucket:
            raise BadRequest(400, "missing RF-BUCKET header")
        return self._authorized_store(request, bucket)

    @app.route("/record-batch", methods=["POST"])
    async def record_batch(self, request: IRequest) -> bytes:
        """Store a JSON array of strings in every bucket of C{RF-BUCKETS}."""
        _single_header(request, b"RF-BUCKETS")
        names = [
            name.strip()
            for name in header_text(request, b"RF-BUCKETS").split(",")
            if name.strip()
        ]
        if not names:
            raise BadRequest(400, "missing RF-BUCKETS header")
        stores = [
            self._authorized_store(request, name) for name in dict.fromkeys(names)
        ]
        await self._check_tailnet(request, stores)
        events = _parse_event_array(_plain_body(request))

        full = [store.name for store in stores if store.is_full]
        if full:
            for name in full:
                self._stats.drop(name, "refused_bucket_full", len(events))
            log.warn(
                "refused {count} events: buckets over their size cap: {buckets}",
                count=len(events),
                buckets=", ".join(full),
            )
            raise BadRequest(
                429, "database size limit exceeded for buckets: " + ", ".join(full)
            )

        env = header_text(request, b"RF-ENV-NAME")
        host = header_text(request, b"RF-HOSTNAME")
        batch_id = header_text(request, b"RF-BATCH-ID") or None
        started = self._clock.seconds()
        # No bucket was full above and nothing ran since: every append starts.
        stored = await gatherResults(
            [store.append(events, batch_id) for store in stores],
            consumeErrors=True,
        )

        now = self._clock.seconds()
        for store, fresh in zip(stores, stored, strict=True):
            if fresh:
                self._stats.received(store.name, env, host, len(events), now)
                self._stats.batch_stored(store.name, len(events), now - started)
            else:
                log.debug(
                    "{bucket}: batch {batch_id} was already stored",
                    bucket=store.name,
                    batch_id=batch_id,
                )
        return text_body(request, 200, "")

    @app.route("/first-batch", methods=["GET"])
    async def first_batch(self, request: Request) -> bytes:
        """Answer the oldest records of C{RF-BUCKET}, waiting if asked to."""
        store = self._one_bucket(request)
        await self._check_tailnet(request, [store])
        limit = _query_number(request, b"limit", DEFAULT_LIMIT, whole=True)
        if limit <= 0:
            raise BadRequest(400, "invalid limit parameter: expected a number above 0")
        limit = min(int(limit), self._config.max_batch)
        wait = _query_number(request, b"wait", 0, whole=False)
        if not 0 <= wait <= MAX_WAIT_SECONDS:
            raise BadRequest(
                400, f"invalid wait parameter: expected 0 to {MAX_WAIT_SECONDS:g}"
            )

        records = await store.first(limit)
        if not records and wait:
            waiting = store.wait_for_records(wait)
            request.notifyFinish().addErrback(lambda _: waiting.cancel())
            try:
                await waiting
            except CancelledError:
                return b""
            records = await store.first(limit)
        if not records:
            return json_body(request, 404, [])

        self._stats.sent(
            store.name,
            header_text(request, b"RF-ENV-NAME"),
            header_text(request, b"RF-HOSTNAME"),
            len(records),
            self._clock.seconds(),
        )
        return json_body(
            request,
            200,
            [{"id": record.id, "content": record.content} for record in records],
        )

    @app.route("/acknowledge-batch", methods=["DELETE"])
    async def acknowledge_batch(self, request: IRequest) -> bytes:
        """Delete the records whose ids are listed in the body."""
        store = self._one_bucket(request)
        await self._check_tailnet(request, [store])
        ids = _parse_ids(_plain_body(request))
        deleted = await store.acknowledge(ids)
        if not deleted:
            return text_body(request, 404, "no records matched the given ids\n")
        return text_body(request, 200, f"{deleted} records deleted successfully")

    @app.route("/node-info", methods=["POST"])
    async def node_info(self, request: IRequest) -> bytes:
        """Keep a host's latest report of its own figures."""
        store = self._one_bucket(request)
        await self._check_tailnet(request, [store])
        host = header_text(request, b"RF-HOSTNAME")
        if not host:
            raise BadRequest(400, "missing RF-HOSTNAME header")
        if len(host) > MAX_NODE_HOST_CHARS:
            raise BadRequest(400, f"RF-HOSTNAME over {MAX_NODE_HOST_CHARS} characters")
        body = _plain_body(request, MAX_NODE_REPORT_BYTES + 1)
        if len(body) > MAX_NODE_REPORT_BYTES:
            raise BadRequest(
                413, f"node report over the limit of {MAX_NODE_REPORT_BYTES} bytes"
            )
        report = _parse_node_report(body)
        if (
            host not in self._stats.node_info
            and len(self._stats.node_info) >= MAX_NODE_HOSTS
        ):
            raise BadRequest(
                429, f"reports of {MAX_NODE_HOSTS} hosts already kept; try later"
            )
        self._stats.node_report(host, report, self._clock.seconds())
        return text_body(request, 200, "")


class StatusAPI:
    """
    The relay's status listener: C{/statusz}, C{/metrics} and the
    C{/dashboard} page when they are given, and a liveness C{/}.
    """

    app = Klein()

    def __init__(
        self,
        stores: dict[str, BucketStore],
        stats: RelayStats,
        clock: IReactorTime,
        dashboard: Dashboard | None = None,
        metrics: DaemonMetrics | None = None,
    ) -> None:
        self._stores = stores
        self._stats = stats
        self._clock = clock
        self._dashboard = dashboard
        self._metrics = metrics

    @app.route("/statusz", methods=["GET"])
    def statusz(self, request: IRequest) -> bytes:
        """Render traffic, sizes, node reports and drops as JSON."""
        sizes = bucket_sizes(self._stores)
        # Node reports come from other hosts: mask what they may have let by.
        status = mask_value(self._stats.as_json(self._clock.seconds(), sizes))
        return json_body(request, 200, status)

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: IRequest) -> bytes:
        """Render the counts for Prometheus."""
        if self._metrics is None:
            return text_body(request, 404, "no metrics on this listener\n")
        return self._metrics.render(request)

    @app.route("/dashboard", branch=True, methods=["GET"], strict_slashes=False)
    def dashboard(self, request: IRequest) -> IResource | bytes:
        """Serve the dashboard's page, assets and data."""
        if self._dashboard is None:
            return text_body(request, 404, "no dashboard on this listener\n")
        return self._dashboard.serve(request)

    @app.route("/", methods=["GET"])
    def alive(self, request: IRequest) -> bytes:
        """Answer C{ok} while the relay runs."""
        return text_body(request, 200, "ok")


def _single_header(request: IRequest, name: bytes) -> bytes | None:
    """
    Return the one value of header C{name}, or L{None} when absent.

    Two values would leave it to chance which one decides (the Go relay took
    the first, Twisted the last), so they are refused.
    """
    values: list[bytes] | None = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(400, f"header {name.decode()} given {len(values)} times")
    return values[0]


def _parse_event_array(body: bytes) -> list[str]:
    try:
        events = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest(400, "invalid JSON: expected an array of strings") from None
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise BadRequest(400, "invalid body: expected a JSON array of strings")
    try:
        # Only text that is not ASCII can hold a surrogate; isascii is free.
        for event in events:
            if not event.isascii():
                event.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(
            400, "invalid body: a string holds an unpaired UTF-16 surrogate"
        ) from None
    return events


def _plain_body(request: IRequest, most: int = -1) -> bytes:
    """
    Read the body, refusing one in an encoding the relay does not decode.

    A gzip body arrives inflated, its C{Content-Encoding} gone; any other
    coding left would be read as JSON and refused as such, or stored as it
    is, so it is answered 415 instead.
    """
    codings = request.requestHeaders.getRawHeaders(b"Content-Encoding") or []
    for coding in b",".join(codings).split(b","):
        if coding.strip().lower() not in (b"", b"identity"):
            raise BadRequest(
                415,
                f"unsupported Content-Encoding {coding.strip().decode('latin-1')!r}:"
                " send the body as it is, or gzip",
            )
    body: bytes = request.content.read(most)
    return body


def _parse_node_report(body: bytes) -> dict[str, Any]:
    """
    Read a node report: a JSON object whose numbers are all finite, since
    the status pages that show it are JSON too, which has no infinities.
    """
    try:
        report = json.loads(
            body, parse_constant=_refuse_constant, parse_float=_finite_float
        )
    except (ValueError, RecursionError):
        report = None
    if not isinstance(report, dict):
        raise BadRequest(
            400, "invalid request body: expected a JSON object of finite numbers"
        )
    return report


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _parse_ids(body: bytes) -> list[int]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest(400, 'invalid JSON: expected {"ids": [...]}') from None
    raw_ids = document.get("ids") if isinstance(document, dict) else None
    if not isinstance(raw_ids, list) or not raw_ids:
        raise BadRequest(400, 'invalid body: expected a non-empty "ids" array')
    ids = []
    for raw in raw_ids:
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise BadRequest(400, f"invalid id {raw!r}: expected a whole number")
        try:
            number = int(raw)
        except ValueError:
            raise BadRequest(
                400, f"invalid id {raw!r}: expected a whole number"
            ) from None
        # SQLite cannot even compare an integer beyond 64 bits.
        if not -(2**63) <= number < 2**63:
            raise BadRequest(400, f"invalid id {raw!r}: out of range")
        ids.append(number)
    return ids


def _query_number(request: IRequest, name: bytes, default: float, whole: bool) -> float:
    values = request.args.get(name)
    if not values:
        return default
    text = values[0].decode("ascii", "replace")
    try:
        return int(text) if whole else float(text)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise BadRequest(
            400, f"invalid {name.decode()} parameter {text!r}: expected {kind}"
        ) from None
