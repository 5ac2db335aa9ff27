"""
Tests for L{replayforge.tailscale} and what the relay does with it: asking a
fake LocalAPI on a unix socket, listening on the node's tailnet address
(C{127.0.0.2} standing in for it) once tailscaled answers, and admitting
relay clients by tailnet identity on top of their token.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from replayforge.backoff import Backoff
from replayforge.config import Section
from replayforge.launch import free_port
from replayforge.relay.config import parse_relay_config
from replayforge.relay.tap import RelayService
from replayforge.tailscale import (
    LocalAPI,
    Peer,
    PeerIdentities,
    TailnetListener,
    TailscaleUnavailable,
    on_address,
    tailnet_listen_problem,
)
from tests.localapi_support import FakeLocalAPI
from tests.log_support import capture_log

FAST = Backoff(initial=0.02, maximum=0.05, rng=lambda: 1.0)
TOKEN = "tailnet-token"


def _folder(test: SynchronousTestCase) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="replayforge-tailnet-"))
    test.addCleanup(shutil.rmtree, folder, ignore_errors=True)
    return folder


async def _eventually(predicate: Any, what: str) -> None:
    """Let the reactor run until C{predicate()} holds (at most 5 s)."""
    for _ in range(500):
        if predicate():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"never happened: {what}")


def _client() -> treq.client.HTTPClient:
    """A client whose every request opens a fresh connection."""
    return treq.client.HTTPClient(
        Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    )


class PeerTests(SynchronousTestCase):
    """L{Peer.allowed} matches node names and user logins."""

    peer = Peer(
        node_name="builder.example-tailnet.ts.net",
        computed_name="builder",
        login_name="Alice@Example.com",
    )

    def test_node_by_short_or_full_name(self) -> None:
        """
        A node is allowed by its short name or its MagicDNS name, with or
        without the final dot, in any case.
        """
        for name in ("builder", "BUILDER", "builder.example-tailnet.ts.net."):
            self.assertTrue(self.peer.allowed([name], []), name)
        self.assertFalse(self.peer.allowed(["build"], []))

    def test_user_by_login(self) -> None:
        """A user is matched on the whole login, ignoring case."""
        self.assertTrue(self.peer.allowed([], ["alice@example.com"]))
        self.assertFalse(self.peer.allowed([], ["alice"]))
        self.assertFalse(self.peer.allowed([], []))


class EndpointTests(SynchronousTestCase):
    """L{on_address} binds a TCP or TLS endpoint to a tailnet address."""

    def test_ipv4_and_ipv6(self) -> None:
        """The address becomes C{interface=}, IPv6 colons escaped."""
        self.assertEqual(
            on_address("tcp:8081", "100.64.0.7"), "tcp:8081:interface=100.64.0.7"
        )
        self.assertEqual(
            on_address("ssl:8443:privateKey=k.pem", "fd7a:115c::7"),
            r"ssl:8443:privateKey=k.pem:interface=fd7a\:115c\:\:7",
        )

    def test_refused(self) -> None:
        """
        A unix endpoint, or one that names its own interface, cannot be
        bound to the tailnet.
        """
        self.assertIsNotNone(tailnet_listen_problem("unix:/run/relay.sock"))
        self.assertIsNotNone(tailnet_listen_problem("tcp:80:interface=127.0.0.1"))
        self.assertIsNone(tailnet_listen_problem("tcp:80"))


class LocalAPITests(TestCase):
    """L{LocalAPI} asks tailscaled as tailscaled requires."""

    timeout = 15

    def setUp(self) -> None:
        self.socket = _folder(self) / "tailscaled.sock"
        self.fake = FakeLocalAPI(["100.64.0.7", "fd7a:115c::7"])
        self.fake.serve(self.socket)
        self.addCleanup(self.fake.stop)
        self.api = LocalAPI(reactor, str(self.socket))

    async def test_status(self) -> None:
        """
        C{status} gives the node's addresses and its name without the final
        dot, asked with the Host tailscaled expects and no Origin.
        """
        status = await self.api.status()

        self.assertEqual(status.addresses, ("100.64.0.7", "fd7a:115c::7"))
        self.assertEqual(status.dns_name, "relay-node.example-tailnet.ts.net")
        self.assertEqual(status.backend_state, "Running")
        self.assertEqual(
            self.fake.requests, [("/localapi/v0/status", "local-tailscaled.sock", "")]
        )

    async def test_fake_keeps_tailscaled_rules(self) -> None:
        """
        The fake refuses what tailscaled refuses: a request with an
        C{Origin} or C{Referer}, or another C{Host}; so the tests above
        would fail if L{LocalAPI} sent one.
        """
        url = "http://local-tailscaled.sock/localapi/v0/status"
        client = self.api._http
        for headers in ({"Origin": "http://example.com"}, {"Referer": "http://x/"}):
            response = await client.get(url, headers=headers)
            self.assertEqual(response.code, 403)
            await response.content()
        response = await client.get("http://localhost/localapi/v0/status")
        self.assertEqual(response.code, 403)
        await response.content()

    async def test_whois(self) -> None:
        """
        C{whois} names a known peer's node and user; an IPv6 peer is asked
        for in brackets; an unknown one is L{None}.
        """
        self.fake.add_peer("100.64.0.9", "builder", "alice@example.com")
        self.fake.add_peer("fd7a:115c::9", "laptop", "bob@example.com")

        peer = await self.api.whois("100.64.0.9", 41000)
        self.assertEqual(
            peer, Peer("builder.example-tailnet.ts.net", "builder", "alice@example.com")
        )
        other = await self.api.whois("fd7a:115c::9", 41001)
        assert other is not None
        self.assertEqual(other.computed_name, "laptop")
        self.assertIsNone(await self.api.whois("100.64.0.10", 41002))
        self.assertEqual(
            [addr for _, _, addr in self.fake.requests],
            ["100.64.0.9:41000", "[fd7a:115c::9]:41001", "100.64.0.10:41002"],
        )

    async def test_unavailable(self) -> None:
        """
        No socket, or a refusal by tailscaled, raise L{TailscaleUnavailable}
        naming the problem.
        """
        missing = LocalAPI(reactor, str(self.socket) + ".missing")
        error = await self.assertFailure(
            ensureDeferred(missing.status()), TailscaleUnavailable
        )
        self.assertIn("no answer from tailscaled", str(error))

        self.fake.addresses = []
        self.fake.peers = {"100.64.0.9": {"Node": 1}}
        self.fake.render = lambda request: (  # type: ignore[method-assign]
            request.setResponseCode(403) or b"invalid localapi request\n"
        )
        error = await self.assertFailure(
            ensureDeferred(self.api.status()), TailscaleUnavailable
        )
        self.assertIn("answered 403", str(error))


class _FakeWhois:
    """A L{LocalAPI} stand-in counting C{whois} calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def whois(self, host: str, port: int) -> Peer | None:
        self.calls += 1
        return Peer("n.ts.net", "n", "u@example.com")


class PeerIdentitiesTests(SynchronousTestCase):
    """L{PeerIdentities} remembers answers for a short while."""

    def test_remembered_then_asked_again(self) -> None:
        """
        The same peer address is looked up once within the memory period,
        and again after it.
        """
        clock = Clock()
        whois = _FakeWhois()
        peers = PeerIdentities(whois, clock, remember_seconds=30)  # type: ignore[arg-type]

        for _ in range(3):
            self.successResultOf(ensureDeferred(peers.identify("100.64.0.9", 1)))
        self.assertEqual(whois.calls, 1)
        clock.advance(30)
        self.successResultOf(ensureDeferred(peers.identify("100.64.0.9", 1)))
        self.assertEqual(whois.calls, 2)


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello"


class TailnetListenerTests(TestCase):
    """
    L{TailnetListener} listens on the tailnet address once tailscaled tells
    it, and never holds up the start.
    """

    timeout = 15

    def setUp(self) -> None:
        self.socket = _folder(self) / "tailscaled.sock"
        self.fake = FakeLocalAPI()
        self.addCleanup(self.fake.stop)
        self.port = free_port("127.0.0.2")
        self.listener = TailnetListener(
            "useTailnet",
            f"tcp:{self.port}",
            Site(_Hello()),
            LocalAPI(reactor, str(self.socket)),
            reactor,
            backoff=FAST,
        )
        self.addCleanup(lambda: self.listener.running and self.listener.stopService())

    async def test_waits_for_tailscaled(self) -> None:
        """
        Started before tailscaled, the listener starts at once, retries, and
        listens on the tailnet address only once tailscaled answers; the
        loopback address stays closed.
        """
        events = capture_log(self)
        self.listener.startService()
        self.assertEqual(self.listener.ports, [])
        await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(self.listener.ports, [])

        self.fake.serve(self.socket)
        await _eventually(lambda: self.listener.ports, "listening")

        response = await _client().get(f"http://127.0.0.2:{self.port}/")
        self.assertEqual(await response.content(), b"hello")
        await self.assertFailure(
            _client().get(f"http://127.0.0.1:{self.port}/"), ConnectionRefusedError
        )
        messages = [event.get("log_format", "") for event in events]
        self.assertTrue(any("not listening on the tailnet yet" in m for m in messages))
        listening = [
            e for e in events if "listening on {addresses}" in e.get("log_format", "")
        ]
        self.assertEqual(listening[0]["addresses"], f"127.0.0.2:{self.port}")

    async def test_waits_for_login(self) -> None:
        """
        While tailscaled has no tailnet address (not logged in), the
        listener keeps asking; it listens once an address appears.
        """
        self.fake.addresses = []
        self.fake.serve(self.socket)
        self.listener.startService()
        await _eventually(lambda: len(self.fake.requests) >= 3, "asked again")
        self.assertEqual(self.listener.ports, [])

        self.fake.addresses = ["127.0.0.2"]
        await _eventually(lambda: self.listener.ports, "listening")

    async def test_address_that_cannot_be_bound(self) -> None:
        """
        An address that cannot be bound (here a documentation address that
        is on no interface) is skipped with a warning while another one
        serves.
        """
        events = capture_log(self)
        self.fake.addresses = ["127.0.0.2", "192.0.2.1"]
        self.fake.serve(self.socket)
        self.listener.startService()
        await _eventually(lambda: self.listener.ports, "listening")

        self.assertEqual(len(self.listener.ports), 1)
        warnings = [e for e in events if e.get("address") == "192.0.2.1"]
        self.assertEqual(len(warnings), 1)

    async def test_port_busy_then_free(self) -> None:
        """
        While no address can be bound (the port is taken), the listener
        keeps trying, and listens once the port is free.
        """
        squatter = reactor.listenTCP(self.port, Site(_Hello()), interface="127.0.0.2")
        self.fake.serve(self.socket)
        self.listener.startService()
        await _eventually(lambda: len(self.fake.requests) >= 3, "asked again")
        self.assertEqual(self.listener.ports, [])

        await squatter.stopListening()
        await _eventually(lambda: self.listener.ports, "listening")

    async def test_stop_while_waiting(self) -> None:
        """
        Stopping before tailscaled answered leaves no retry scheduled and
        nothing listening.
        """
        self.listener.startService()
        await deferLater(reactor, 0.05, lambda: None)
        await self.listener.stopService()

        self.assertEqual(self.listener.ports, [])
        self.assertEqual(
            [
                call
                for call in reactor.getDelayedCalls()
                if call.func == self.listener._try
            ],
            [],
        )


class RelayTailnetTests(TestCase):
    """
    A relay with C{useTailnet} listens on the tailnet address, and buckets
    with tailnet allow lists admit only those peers, token still required.
    """

    timeout = 20

    def setUp(self) -> None:
        folder = _folder(self)
        self.socket = folder / "tailscaled.sock"
        self.fake = FakeLocalAPI()
        self.fake.serve(self.socket)
        self.addCleanup(self.fake.stop)
        # Connections to 127.0.0.2 come from 127.0.0.1.
        self.fake.add_peer("127.0.0.1", "builder", "alice@example.com")
        self.port = free_port("127.0.0.2")
        document = {
            "port": self.port,
            "useTailnet": True,
            "tailnetHostname": "relay-eu",
            "tailscaleSocket": str(self.socket),
            "dataDir": str(folder / "data"),
            "buckets": {
                "open": {"auth": TOKEN},
                "alice": {"auth": TOKEN, "allowedTailnetUsers": ["alice@example.com"]},
                "ci": {"auth": TOKEN, "allowedTailnetNodes": ["ci-runner"]},
            },
        }
        config = parse_relay_config(Section(document, "relay.json", "", folder))
        self.events = capture_log(self)
        self.relay = RelayService(config, reactor)
        self.relay.startService()
        self.addCleanup(self.relay.stopService)

    async def post(self, bucket: str, token: str = TOKEN) -> tuple[int, str]:
        await _eventually(
            lambda: any(
                getattr(service, "ports", None) for service in self.relay.services
            ),
            "relay listening on the tailnet",
        )
        response = await _client().post(
            f"http://127.0.0.2:{self.port}/record-batch",
            data=json.dumps(["event"]).encode(),
            headers={"Authorization": f"Bearer {token}", "RF-BUCKETS": bucket},
        )
        return response.code, (await response.text()).strip()

    async def test_start_says_what_it_did(self) -> None:
        """
        The relay says at start that it listens on the tailnet and ignores
        C{tailnetHostname}, then where it listens once tailscaled told it.
        """
        await self.post("open")
        lines = [event.get("line", "") for event in self.events]
        self.assertTrue(
            any(line.startswith("useTailnet: the API listens") for line in lines)
        )
        self.assertTrue(
            any("tailnetHostname 'relay-eu' ignored" in line for line in lines)
        )
        listening = [e for e in self.events if e.get("addresses")]
        self.assertEqual(listening[0]["addresses"], f"127.0.0.2:{self.port}")

    async def test_bucket_without_allow_list(self) -> None:
        """
        A bucket without allow lists takes the token alone; tailscaled is
        not asked who the client is.
        """
        self.assertEqual((await self.post("open"))[0], 200)
        self.assertNotIn(
            "/localapi/v0/whois", [path for path, _, _ in self.fake.requests]
        )

    async def test_allowed_user(self) -> None:
        """
        A client of an allowed user, with the right token, is admitted; the
        peer address asked about is the client's own.
        """
        self.assertEqual((await self.post("alice"))[0], 200)
        whois = [addr for path, _, addr in self.fake.requests if path.endswith("whois")]
        self.assertEqual(len(whois), 1)
        self.assertTrue(whois[0].startswith("127.0.0.1:"))

    async def test_token_still_required(self) -> None:
        """An allowed peer with a wrong token is refused with 401."""
        self.assertEqual((await self.post("alice", token="wrong"))[0], 401)

    async def test_node_not_allowed(self) -> None:
        """A peer that is not an allowed node is refused with 403 naming it."""
        code, message = await self.post("ci")
        self.assertEqual(code, 403)
        self.assertIn("builder.example-tailnet.ts.net (alice@example.com)", message)
        self.assertIn("'ci'", message)

    async def test_unknown_peer(self) -> None:
        """A client tailscaled does not know is refused with 403."""
        self.fake.peers.clear()
        code, message = await self.post("alice")
        self.assertEqual(code, 403)
        self.assertIn("not a tailnet peer allowed", message)

    async def test_tailscaled_down(self) -> None:
        """
        When tailscaled cannot be asked, a guarded bucket answers 503 with
        C{Retry-After}, not 401: the client may try again.
        """
        await self.post("open")
        await self.fake.stop()
        code, message = await self.post("alice")
        self.assertEqual(code, 503)
        self.assertIn("cannot check the tailnet identity", message)
