"""
The local tailscaled, asked through its LocalAPI: which tailnet addresses
this node has, and who a connecting peer is.

The LocalAPI is HTTP over tailscaled's unix socket.  tailscaled accepts a
request only with the C{Host} C{local-tailscaled.sock} and without
C{Origin} or C{Referer} headers, so requests go through a bare
L{twisted.web.client.Agent} whose every connection opens that socket.

L{TailnetListener} listens on the node's tailnet addresses once tailscaled
tells them, retrying until it does, so a daemon starts even before
tailscaled; L{PeerIdentities} looks peers up with C{whois} for the relay's
per-bucket tailnet allow lists.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs
import treq
from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    maybeDeferred,
)
from twisted.internet.endpoints import UNIXClientEndpoint, serverFromString
from twisted.internet.error import CannotListenError, ConnectError
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseFailed
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.server import Site
from zope.interface import implementer

from replayforge.backoff import Backoff
from replayforge.outgoing import client_pool

log = Logger()

DEFAULT_SOCKET = "/var/run/tailscale/tailscaled.sock"
LOCALAPI_HOST = "local-tailscaled.sock"
REQUEST_TIMEOUT_SECONDS = 5.0
MAX_ANSWER_BYTES = 4 * 1024 * 1024
WHOIS_CACHE_SECONDS = 30.0
WHOIS_CACHE_ENTRIES = 4096
RETRY_BACKOFF = Backoff(initial=1.0, maximum=30.0)


class TailscaleUnavailable(Exception):
    """tailscaled did not answer, or answered something unusable."""


@attrs.frozen
class NodeStatus:
    """
    What tailscaled says of this node.

    @ivar addresses: its tailnet addresses, empty until it is logged in.
    @ivar dns_name: its MagicDNS name, without the final dot.
    """

    addresses: tuple[str, ...]
    dns_name: str
    backend_state: str


@attrs.frozen
class Peer:
    """
    A tailnet peer, as C{whois} names it.

    @ivar node_name: the node's MagicDNS name, without the final dot.
    @ivar computed_name: the node's short name.
    @ivar login_name: its user's login (C{alice@example.com}), or for a
        tagged node the placeholder tailscaled gives.
    """

    node_name: str
    computed_name: str
    login_name: str

    def describe(self) -> str:
        """Name the peer for a log line or an answer."""
        return f"{self.node_name or self.computed_name} ({self.login_name})"

    def allowed(self, nodes: Sequence[str], users: Sequence[str]) -> bool:
        """
        Tell whether the peer is one of C{nodes} or belongs to one of
        C{users}.

        A node is named by its short name or its MagicDNS name (with or
        without the final dot); both comparisons ignore case.
        """
        names = {self.node_name.lower(), self.computed_name.lower()} - {""}
        if any(node.lower().rstrip(".") in names for node in nodes):
            return True
        login = self.login_name.lower()
        return bool(login) and any(user.lower() == login for user in users)


@implementer(IAgentEndpointFactory)
class _SocketEndpoints:
    """Open every connection to tailscaled's unix socket, whatever the URL."""

    def __init__(self, reactor: Any, path: str) -> None:
        self._reactor = reactor
        self._path = path

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        return UNIXClientEndpoint(
            self._reactor, self._path, timeout=REQUEST_TIMEOUT_SECONDS
        )


class LocalAPI:
    """A client of tailscaled's LocalAPI on the unix socket at C{path}."""

    def __init__(self, reactor: Any, path: str = DEFAULT_SOCKET) -> None:
        self.path = path
        self._pool = client_pool(reactor, persistent=False)
        agent = Agent.usingEndpointFactory(
            reactor, _SocketEndpoints(reactor, path), pool=self._pool
        )
        self._http = treq.client.HTTPClient(agent)

    async def status(self) -> NodeStatus:
        """
        Ask for this node's addresses and name.

        @raise TailscaleUnavailable: when tailscaled cannot be asked.
        """
        answer = await self._get("status?peers=false")
        if not isinstance(answer, dict):
            raise TailscaleUnavailable("status: expected a JSON object")
        own = _mapping(answer.get("Self"))
        addresses = answer.get("TailscaleIPs") or own.get("TailscaleIPs") or []
        return NodeStatus(
            addresses=tuple(str(address) for address in addresses),
            dns_name=str(own.get("DNSName") or "").rstrip("."),
            backend_state=str(answer.get("BackendState") or ""),
        )

    async def whois(self, host: str, port: int) -> Peer | None:
        """
        Ask who the peer connected from C{host}:C{port} is.

        @return: L{None} when tailscaled knows no such peer.
        @raise TailscaleUnavailable: when tailscaled cannot be asked.
        """
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        answer = await self._get(f"whois?addr={address}", not_found_ok=True)
        if answer is None:
            return None
        if not isinstance(answer, dict):
            raise TailscaleUnavailable("whois: expected a JSON object")
        node = _mapping(answer.get("Node"))
        user = _mapping(answer.get("UserProfile"))
        return Peer(
            node_name=str(node.get("Name") or "").rstrip("."),
            computed_name=str(node.get("ComputedName") or ""),
            login_name=str(user.get("LoginName") or ""),
        )

    def close(self) -> Deferred[None]:
        """Close any connection still open to tailscaled."""
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed

    async def _get(self, query: str, not_found_ok: bool = False) -> Any:
        url = f"http://{LOCALAPI_HOST}/localapi/v0/{query}"
        try:
            response = await self._http.get(url, timeout=REQUEST_TIMEOUT_SECONDS)
            body = await _read_bounded(response)
        except (ConnectError, ResponseFailed, CancelledError, OSError) as error:
            raise TailscaleUnavailable(
                f"no answer from tailscaled at {self.path}: {error}"
            ) from error
        if response.code == 404 and not_found_ok:
            return None
        if response.code != 200:
            text = body[:200].decode("utf-8", "replace").strip()
            raise TailscaleUnavailable(
                f"tailscaled answered {response.code} to {query.split('?')[0]}: {text}"
            )
        try:
            return json.loads(body)
        except ValueError as error:
            raise TailscaleUnavailable(
                f"tailscaled answered bad JSON: {error}"
            ) from None


def _mapping(value: Any) -> dict[str, Any]:
    """Return C{value} if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


async def _read_bounded(response: Any) -> bytes:
    """Read a LocalAPI answer, refusing one past L{MAX_ANSWER_BYTES}."""
    pieces: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > MAX_ANSWER_BYTES:
            raise TailscaleUnavailable("tailscaled's answer is too large")
        pieces.append(data)

    await treq.collect(response, collect)
    return b"".join(pieces)


def on_address(description: str, address: str) -> str:
    """
    Bind the C{tcp:} or C{ssl:} endpoint C{description} to C{address}.

    @raise ValueError: for another kind of endpoint, or one that already
        names its interface.
    """
    problem = tailnet_listen_problem(description)
    if problem:
        raise ValueError(problem)
    escaped = address.replace("\\", "\\\\").replace(":", "\\:")
    return f"{description}:interface={escaped}"


def tailnet_listen_problem(description: str) -> str | None:
    """Say why C{description} cannot be bound to a tailnet address, if so."""
    kind = description.split(":", 1)[0].lower()
    if kind not in ("tcp", "ssl"):
        return f"expected a tcp: or ssl: endpoint to listen on the tailnet, got {kind}:"
    if "interface=" in description:
        return "expected no interface= on a listener bound to the tailnet address"
    return None


class TailnetListener(Service):
    """
    Serve C{site} on every tailnet address of this node, at the port and
    with the TLS settings of C{description}.

    tailscaled is asked for the addresses when the service starts, and
    again after a backoff while it does not answer, is not logged in, or
    its addresses cannot be bound yet; the daemon starts meanwhile.
    """

    def __init__(
        self,
        what: str,
        description: str,
        site: Site,
        local_api: LocalAPI,
        reactor: Any,
        backoff: Backoff = RETRY_BACKOFF,
    ) -> None:
        self.what = what
        self._description = description
        self._site = site
        self._local_api = local_api
        self._reactor = reactor
        self._backoff = backoff
        self._attempt = 0
        self._retry: Any = None
        self._asking: Deferred[Any] | None = None
        self.ports: list[IListeningPort] = []

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        log.info(
            "{what}: asking tailscaled at {socket} for this node's tailnet addresses",
            what=self.what,
            socket=self._local_api.path,
        )
        self._try()

    def stopService(self) -> Deferred[Any]:
        super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._asking is not None:
            self._asking.cancel()
        ports, self.ports = self.ports, []
        stopped = [maybeDeferred(port.stopListening) for port in ports]
        return DeferredList(stopped).addCallback(lambda _: None)

    def _try(self) -> None:
        self._retry = None
        self._attempt += 1
        asking = Deferred.fromCoroutine(self._listen())
        self._asking = asking
        asking.addErrback(self._failed)

    async def _listen(self) -> None:
        status = await self._local_api.status()
        if not status.addresses:
            raise TailscaleUnavailable(
                f"tailscaled has no tailnet address yet (state "
                f"{status.backend_state or 'unknown'})"
            )
        ports: list[IListeningPort] = []
        refused: list[tuple[str, CannotListenError]] = []
        try:
            for address in status.addresses:
                endpoint = serverFromString(
                    self._reactor, on_address(self._description, address)
                )
                try:
                    ports.append(await endpoint.listen(self._site))
                except CannotListenError as error:
                    refused.append((address, error))
        except BaseException:
            for port in ports:
                port.stopListening()
            raise
        if not ports:
            raise refused[0][1]
        # A host without IPv6 still serves the tailnet on IPv4.
        for address, problem in refused:
            log.warn(
                "{what}: cannot listen on tailnet address {address}: {problem}",
                what=self.what,
                address=address,
                problem=str(problem),
            )
        self._asking = None
        if not self.running:
            for port in ports:
                port.stopListening()
            return
        self.ports = ports
        log.info(
            "{what}: listening on {addresses} from tailscaled (node {node})",
            what=self.what,
            addresses=", ".join(_port_text(port) for port in ports),
            node=status.dns_name or "unnamed",
        )

    def _failed(self, failure: Failure) -> None:
        self._asking = None
        if not self.running:
            return
        if not failure.check(TailscaleUnavailable, CannotListenError):
            log.failure(
                "{what}: unexpected failure while listening on the tailnet",
                failure,
                what=self.what,
            )
        delay = self._backoff.delay(self._attempt)
        emit = log.warn if self._attempt == 1 else log.debug
        emit(
            "{what}: not listening on the tailnet yet ({problem}); trying "
            "again in {delay:.1f}s",
            what=self.what,
            problem=failure.getErrorMessage(),
            delay=delay,
        )
        self._retry = self._reactor.callLater(delay, self._try)


def _port_text(port: IListeningPort) -> str:
    host = port.getHost()
    address = getattr(host, "host", str(host))
    number = getattr(host, "port", "")
    if ":" in address:
        return f"[{address}]:{number}"
    return f"{address}:{number}"


class PeerIdentities:
    """
    Look connecting peers up in tailscaled, remembering each answer for a
    short while so a kept-alive client costs one lookup.
    """

    def __init__(
        self,
        local_api: LocalAPI,
        clock: IReactorTime,
        remember_seconds: float = WHOIS_CACHE_SECONDS,
    ) -> None:
        self._local_api = local_api
        self._clock = clock
        self._remember = remember_seconds
        self._known: dict[tuple[str, int], tuple[float, Peer | None]] = {}

    async def identify(self, host: str, port: int) -> Peer | None:
        """
        Return who is connected from C{host}:C{port}, or L{None} when
        tailscaled does not know the address.

        @raise TailscaleUnavailable: when tailscaled cannot be asked.
        """
        now = self._clock.seconds()
        known = self._known.get((host, port))
        if known is not None and now - known[0] < self._remember:
            return known[1]
        peer = await self._local_api.whois(host, port)
        if len(self._known) >= WHOIS_CACHE_ENTRIES:
            self._known = {
                key: value
                for key, value in self._known.items()
                if now - value[0] < self._remember
            }
            if len(self._known) >= WHOIS_CACHE_ENTRIES:
                self._known.clear()
        self._known[(host, port)] = (now, peer)
        return peer
