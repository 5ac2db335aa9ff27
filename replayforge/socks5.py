"""
Reach a host through a SOCKS5 server, as tailscaled offers in userspace mode.

Only what an HTTP client needs is here: the no-authentication method and
C{CONNECT} (RFC 1928).  A host name is sent to the server as a name
(address type 3) and never looked up here, so the server resolves it: with
tailscaled that is how MagicDNS names (C{relay.tailnet.example}) reach the
tailnet.  Address literals are sent as addresses.

Once the server has connected, the protocol the caller asked for is handed
the very TCP transport; bytes that came with the server's answer are passed
on to it, and nothing else stands in between.
"""

from __future__ import annotations

import ipaddress
import struct

from twisted.internet.address import HostnameAddress
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

VERSION = 5
NO_AUTHENTICATION = 0
NO_ACCEPTABLE_METHOD = 0xFF
CONNECT = 1
ADDRESS_IPV4 = 1
ADDRESS_NAME = 3
ADDRESS_IPV6 = 4
DEFAULT_HANDSHAKE_TIMEOUT_SECONDS = 30.0

REPLIES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


class Socks5Error(ConnectError):
    """
    The SOCKS5 server did not connect us to the host.

    A L{ConnectError}, so callers retry it as they retry a refused
    connection.
    """

    def __init__(self, problem: str) -> None:
        super().__init__(string=problem)  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self.problem = problem

    def __str__(self) -> str:
        return f"SOCKS5: {self.problem}"


def connect_request(host: str, port: int) -> bytes:
    """
    Encode a C{CONNECT} request for C{host} and C{port}.

    @raise ValueError: when the host name is longer than 255 bytes or the
        port is out of range.
    """
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        name = host.encode("idna")
        if not name or len(name) > 255:
            raise ValueError(
                f"host name {host!r} cannot be sent to a SOCKS5 server"
            ) from None
        target = bytes([ADDRESS_NAME, len(name)]) + name
    else:
        kind = ADDRESS_IPV4 if address.version == 4 else ADDRESS_IPV6
        target = bytes([kind]) + address.packed
    return bytes([VERSION, CONNECT, 0]) + target + struct.pack("!H", port)


def reply_length(data: bytes) -> int | None:
    """
    Return how many bytes the server's reply to C{CONNECT} takes, or
    L{None} while C{data} is too short to tell.

    @raise ValueError: when the reply's address type is unknown.
    """
    if len(data) < 5:
        return None
    kind = data[3]
    if kind == ADDRESS_IPV4:
        return 4 + 4 + 2
    if kind == ADDRESS_IPV6:
        return 4 + 16 + 2
    if kind == ADDRESS_NAME:
        return 4 + 1 + data[4] + 2
    raise ValueError(f"a reply with unknown address type {kind}")


class _HandshakeFactory(Factory):
    """Hand out the one handshake of a connection, without logging it."""

    noisy = False

    def __init__(self, handshake: _Handshake) -> None:
        self._handshake = handshake

    def buildProtocol(self, addr: IAddress | None) -> _Handshake:
        self._handshake.factory = self
        return self._handshake


class _Handshake(Protocol):
    """Speak SOCKS5 until the server connected, then step aside."""

    def __init__(
        self,
        request: bytes,
        factory: IProtocolFactory,
        address: HostnameAddress,
        connected: Deferred[IProtocol],
        clock: IReactorTime,
        timeout: float,
    ) -> None:
        self._request = request
        self._factory = factory
        self._address = address
        self._connected = connected
        self._clock = clock
        self._timeout = timeout
        self._timer: IDelayedCall | None = None
        self._received = b""
        self._method_chosen = False
        self._wrapped: IProtocol | None = None

    def connectionMade(self) -> None:
        self._timer = self._clock.callLater(self._timeout, self._timed_out)
        self._send(bytes([VERSION, 1, NO_AUTHENTICATION]))

    def _send(self, data: bytes) -> None:
        assert self.transport is not None  # connected
        self.transport.write(data)

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(f"no answer from the server in {self._timeout:g}s")

    def abort(self) -> None:
        """Give up the handshake (the caller cancelled)."""
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]  # TCP transports have it

    def dataReceived(self, data: bytes) -> None:
        if self._wrapped is not None:
            self._wrapped.dataReceived(data)
            return
        self._received += data
        if not self._method_chosen:
            if len(self._received) < 2:
                return
            version, method = self._received[0], self._received[1]
            self._received = self._received[2:]
            if version != VERSION:
                self._fail(f"not a SOCKS5 server (it answered version {version})")
                return
            if method != NO_AUTHENTICATION:
                problem = (
                    "requires authentication"
                    if method == NO_ACCEPTABLE_METHOD
                    else f"chose unknown method {method}"
                )
                self._fail(f"the server {problem}")
                return
            self._method_chosen = True
            self._send(self._request)
        try:
            length = reply_length(self._received)
        except ValueError as error:
            self._fail(f"the server sent {error}")
            return
        if length is None or len(self._received) < length:
            return
        reply, rest = self._received[:length], self._received[length:]
        self._received = b""
        code = reply[1]
        if code != 0:
            reason = REPLIES.get(code, f"reply code {code}")
            self._fail(f"the server could not connect: {reason}")
            return
        self._hand_over(rest)

    def _hand_over(self, rest: bytes) -> None:
        self._cancel_timer()
        wrapped = self._factory.buildProtocol(self._address)
        if wrapped is None:
            self._fail("the connection was refused by its own protocol factory")
            return
        self._wrapped = wrapped
        assert self.transport is not None  # connected
        wrapped.makeConnection(self.transport)
        self._connected.callback(wrapped)
        if rest:
            wrapped.dataReceived(rest)

    def _fail(self, problem: str) -> None:
        self._cancel_timer()
        if not self._connected.called:
            self._connected.errback(Failure(Socks5Error(problem)))
        if self.transport is not None:
            self.transport.loseConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        if self._wrapped is not None:
            self._wrapped.connectionLost(reason)
        elif not self._connected.called:
            message = reason.getErrorMessage()
            self._connected.errback(
                Failure(Socks5Error(f"the server closed: {message}"))
            )


@implementer(IStreamClientEndpoint)
class Socks5ClientEndpoint:
    """
    Connect to C{host}:C{port} through the SOCKS5 server at C{proxy}.

    @param proxy: how to reach the SOCKS5 server itself.
    @param timeout: the longest the server may take to answer once the
        connection to it is up.
    """

    def __init__(
        self,
        proxy: IStreamClientEndpoint,
        host: str,
        port: int,
        clock: IReactorTime,
        timeout: float = DEFAULT_HANDSHAKE_TIMEOUT_SECONDS,
    ) -> None:
        self._proxy = proxy
        self._host = host
        self._port = port
        self._request = connect_request(host, port)
        self._clock = clock
        self._timeout = timeout

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect and hand the connection to a protocol of C{factory};
        fire with that protocol once the server connected us.
        """

        def cancel(connected: Deferred[IProtocol]) -> None:
            if handshake.transport is not None:
                handshake.abort()
            else:
                reaching.cancel()

        connected: Deferred[IProtocol] = Deferred(cancel)
        handshake = _Handshake(
            self._request,
            factory,
            HostnameAddress(self._host.encode("idna"), self._port),
            connected,
            self._clock,
            self._timeout,
        )

        def unreachable(failure: Failure) -> None:
            if not connected.called:
                connected.errback(failure)

        reaching = self._proxy.connect(_HandshakeFactory(handshake))
        reaching.addErrback(unreachable)
        return connected
