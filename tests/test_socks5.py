"""
Tests for L{replayforge.socks5} and the SOCKS5 path of
L{replayforge.outgoing}: outgoing calls through tailscaled's SOCKS5 server.

The handshake is driven byte by byte over a L{StringTransport}; the rest
runs against L{FakeSocks5Server}, a loopback SOCKS5 server that knows a few
made-up tailnet names (C{relay.tailnet.example}), none of which resolves on
this machine: a call that arrives proves the name was resolved by the
SOCKS5 server.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource

from replayforge.config import Section
from replayforge.outgoing import (
    OutgoingSettings,
    Socks5Server,
    client_pool,
    make_agent,
    read_outgoing_settings,
)
from replayforge.player.config import parse_player_config
from replayforge.player.relay_client import BucketClient
from replayforge.proxy.config import parse_proxy_config
from replayforge.proxy.forwarder import Forwarder
from replayforge.proxy.stats import SinkStats
from replayforge.socks5 import Socks5ClientEndpoint, Socks5Error, connect_request
from tests.player_support import listen
from tests.test_forwarder import MemoryBuffer
from tests.tls_support import (
    FakeSocks5Server,
    SocksRequest,
    closed,
    listen_tls,
    make_authority,
)

RELAY_NAME = "relay.tailnet.example"
POLL_ROUNDS = 500


class Recorder(Protocol):
    """Keep what arrives after the handshake."""

    def __init__(self) -> None:
        self.received = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = reason


class RecorderFactory(Factory):
    """Build one L{Recorder} and remember it."""

    def __init__(self) -> None:
        self.built: list[Recorder] = []

    def buildProtocol(self, addr: Any) -> Recorder:
        protocol = Recorder()
        self.built.append(protocol)
        return protocol


class StringEndpoint:
    """Connect at once, to a L{StringTransport} the test reads and feeds."""

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.protocol: IProtocol | None = None

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        protocol.makeConnection(self.transport)
        self.protocol = protocol
        return succeed(protocol)


class ConnectRequestTests(SynchronousTestCase):
    """Encoding C{CONNECT} requests."""

    def test_name_sent_as_name(self) -> None:
        """A host name is sent as a name (address type 3), not looked up."""
        self.assertEqual(
            connect_request(RELAY_NAME, 8081),
            b"\x05\x01\x00\x03\x15relay.tailnet.example\x1f\x91",
        )

    def test_addresses_sent_as_addresses(self) -> None:
        """IPv4 and IPv6 literals use address types 1 and 4."""
        self.assertEqual(
            connect_request("100.64.0.7", 443), b"\x05\x01\x00\x01d@\x00\x07\x01\xbb"
        )
        self.assertEqual(
            connect_request("fd7a:115c:a1e0::1", 80),
            b"\x05\x01\x00\x04\xfd\x7a\x11\x5c\xa1\xe0" + b"\x00" * 9 + b"\x01\x00P",
        )

    def test_too_long_name(self) -> None:
        """A name over 255 bytes cannot be sent."""
        with self.assertRaises(ValueError):
            connect_request("a" * 250 + ".example", 80)


class HandshakeTests(SynchronousTestCase):
    """The client side of the SOCKS5 handshake, byte by byte."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.proxy = StringEndpoint()
        self.factory = RecorderFactory()
        endpoint = Socks5ClientEndpoint(
            self.proxy, RELAY_NAME, 8081, self.clock, timeout=10
        )
        self.connected = endpoint.connect(self.factory)

    def feed(self, data: bytes) -> None:
        assert self.proxy.protocol is not None
        self.proxy.protocol.dataReceived(data)

    def test_connects_by_name(self) -> None:
        """
        Greeting without authentication, then C{CONNECT} by name; on
        success the caller's protocol gets the transport and the bytes
        that came with the reply.
        """
        self.assertEqual(self.proxy.transport.value(), b"\x05\x01\x00")
        self.proxy.transport.clear()
        self.feed(b"\x05\x00")
        self.assertEqual(
            self.proxy.transport.value(), connect_request(RELAY_NAME, 8081)
        )
        self.assertNoResult(self.connected)
        # The reply, split, with an IPv6 bound address and early data.
        self.feed(b"\x05\x00\x00\x04" + b"\x00" * 10)
        self.assertNoResult(self.connected)
        self.feed(b"\x00" * 6 + b"\x04\x38HTTP/1.1 200")
        [protocol] = self.factory.built
        self.assertIs(self.successResultOf(self.connected), protocol)
        self.assertIs(protocol.transport, self.proxy.transport)
        self.assertEqual(protocol.received, b"HTTP/1.1 200")
        self.feed(b" OK")
        self.assertEqual(protocol.received, b"HTTP/1.1 200 OK")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reply_with_bound_name(self) -> None:
        """A reply whose bound address is a name is read to its end."""
        self.feed(b"\x05\x00")
        self.feed(b"\x05\x00\x00\x03\x04host\x00\x50rest")
        [protocol] = self.factory.built
        self.assertEqual(protocol.received, b"rest")

    def test_refused_reply(self) -> None:
        """A failure reply fails the connection with its reason."""
        self.feed(b"\x05\x00")
        self.feed(b"\x05\x04\x00\x01" + b"\x00" * 6)
        error = self.failureResultOf(self.connected, Socks5Error).value
        self.assertIn("host unreachable", str(error))
        self.assertTrue(self.proxy.transport.disconnecting)
        self.assertEqual(self.factory.built, [])

    def test_authentication_required(self) -> None:
        """A server that accepts no method without authentication is refused."""
        self.feed(b"\x05\xff")
        error = self.failureResultOf(self.connected, Socks5Error).value
        self.assertIn("requires authentication", str(error))

    def test_not_socks5(self) -> None:
        """A server speaking another version is refused."""
        self.feed(b"HTTP/1.1 400 Bad Request\r\n")
        error = self.failureResultOf(self.connected, Socks5Error).value
        self.assertIn("not a SOCKS5 server", str(error))

    def test_silent_server_times_out(self) -> None:
        """A server that never answers fails the connection after the timeout."""
        self.feed(b"\x05\x00")
        self.clock.advance(9.9)
        self.assertNoResult(self.connected)
        self.clock.advance(0.2)
        error = self.failureResultOf(self.connected, Socks5Error).value
        self.assertIn("no answer", str(error))
        self.assertTrue(self.proxy.transport.disconnecting)

    def test_closed_during_handshake(self) -> None:
        """The server closing before it answered fails the connection."""
        assert self.proxy.protocol is not None
        self.proxy.protocol.connectionLost(Failure(ConnectionError("gone")))
        self.failureResultOf(self.connected, Socks5Error)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel(self) -> None:
        """Cancelling during the handshake aborts the connection."""
        self.connected.cancel()
        self.assertTrue(self.proxy.transport.disconnecting)
        self.failureResultOf(self.connected)


class Target(Resource):
    """Answer with the request's path, and note each request."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[bytes, bytes, bytes]] = []

    def render(self, request: Any) -> bytes:
        self.requests.append((request.method, request.uri, request.content.read()))
        if request.uri.startswith(b"/first-batch"):
            return b'[{"id": 7, "content": "through the tailnet"}]'
        return b"reached " + request.uri


class Socks5AgentTests(TestCase):
    """Agents built with C{tailscaleSocks5} call through the SOCKS5 server."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="rf-socks5-"))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        self.target = Target()
        self.socks = FakeSocks5Server({})
        socks_port = self.socks.listen()
        self.addCleanup(socks_port.stopListening)
        self.server = Socks5Server("127.0.0.1", socks_port.getHost().port)

    def serve_plain(self) -> int:
        port = listen(self.target)
        self.addCleanup(port.stopListening)
        number: int = port.getHost().port
        return number

    def serve_tls(self) -> tuple[int, Path]:
        authority = make_authority(self.folder, server_names=[RELAY_NAME])
        port, connections = listen_tls(self.target, authority)
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: Deferred.fromCoroutine(closed(connections)))
        number: int = port.getHost().port
        return number, authority.ca

    def http(self, settings: OutgoingSettings) -> HTTPClient:
        pool = client_pool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        return HTTPClient(make_agent(reactor, settings, "test", pool, 5))

    async def test_name_resolved_by_the_server(self) -> None:
        """
        C{http://relay.tailnet.example:PORT/} is reached through the SOCKS5
        server, which was asked for the name itself.
        """
        port = self.serve_plain()
        self.socks.names[RELAY_NAME] = port
        http = self.http(OutgoingSettings(socks5=self.server))
        response = await http.get(f"http://{RELAY_NAME}:{port}/ping")
        self.assertEqual(await response.content(), b"reached /ping")
        self.assertEqual(self.socks.requests, [SocksRequest(3, RELAY_NAME, port)])

    async def test_https_checked_for_the_name(self) -> None:
        """
        Over the SOCKS5 connection TLS is started with the same checks:
        the certificate must be trusted (C{caFile}) and name the host.
        """
        port, ca = self.serve_tls()
        self.socks.names[RELAY_NAME] = port
        url = f"https://{RELAY_NAME}:{port}/secure"
        unchecked = self.http(OutgoingSettings(socks5=self.server))
        with self.assertRaises(Exception) as refused:
            await unchecked.get(url)
        self.assertIn("certificate verify failed", str(refused.exception))

        trusted = read_outgoing_settings(
            Section({"caFile": str(ca)}, "test.json", "", Path(".")), self.server
        )
        response = await self.http(trusted).get(url)
        self.assertEqual(await response.content(), b"reached /secure")

    async def test_unknown_name_fails(self) -> None:
        """A name the SOCKS5 server cannot reach fails as a connect error."""
        http = self.http(OutgoingSettings(socks5=self.server))
        with self.assertRaises(Socks5Error) as failed:
            await http.get("http://nowhere.tailnet.example:80/")
        self.assertIn("host unreachable", str(failed.exception))

    async def test_player_relay_client(self) -> None:
        """The player's relay client pulls through C{tailscaleSocks5}."""
        port = self.serve_plain()
        self.socks.names[RELAY_NAME] = port
        config = parse_player_config(
            Section(
                {
                    "relayUrl": f"http://{RELAY_NAME}:{port}/",
                    "tailscaleSocks5": str(self.server),
                    "pollWaitSecs": 0,
                    "sources": [
                        {
                            "name": "events",
                            "relayAuthenticationBearer": "token",
                            "sinks": ["log"],
                        }
                    ],
                    "sinks": [{"name": "log", "type": "log"}],
                },
                "player.json",
                "",
                Path("."),
            )
        )
        http = self.http(config.relay_outgoing)
        batch = await BucketClient(
            config, config.sources[0], http, reactor
        ).first_batch()
        self.assertEqual(
            [record.content for record in batch.records], ["through the tailnet"]
        )
        self.assertEqual(self.socks.requests[0].host, RELAY_NAME)

    async def test_proxy_forwarder(self) -> None:
        """The proxy's forwarder sends batches through C{tailscaleSocks5}."""
        port, ca = self.serve_tls()
        self.socks.names[RELAY_NAME] = port
        config = parse_proxy_config(
            Section(
                {
                    "tailscaleSocks5": str(self.server),
                    "sources": [],
                    "sinks": [
                        {
                            "id": "relay",
                            "url": f"https://{RELAY_NAME}:{port}/",
                            "buckets": ["events"],
                            "caFile": str(ca),
                            "config": {"batchTimeoutSecs": 0},
                        }
                    ],
                },
                "proxy.json",
                "",
                Path("."),
            )
        )
        sink = config.sinks["relay"]
        clock = Clock()
        buffer = MemoryBuffer(clock)
        buffer.add("over", "socks")
        forwarder = Forwarder(
            sink,
            buffer,
            self.http(sink.outgoing),
            clock,
            SinkStats(),
            "env",
            "host",
        )
        forwarder.start()
        self.addCleanup(forwarder.stop)
        for _ in range(POLL_ROUNDS):
            if not buffer.contents():
                break
            await _turn()
        [(method, uri, body)] = self.target.requests
        self.assertEqual((method, uri), (b"POST", b"/record-batch"))
        self.assertEqual(json.loads(body), ["over", "socks"])
        self.assertEqual(buffer.contents(), [])


def _turn() -> Deferred[None]:
    """Let the reactor run a little."""
    return deferLater(reactor, 0.02, lambda: None)
