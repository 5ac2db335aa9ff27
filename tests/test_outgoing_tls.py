"""
Tests for L{replayforge.outgoing}: the TLS of every outgoing client.

Certificates come from a test authority (L{tests.tls_support}); servers are
twisted.web sites over TLS on a free loopback port.  The proxy's forwarder,
the player's relay client and its C{http} and C{notification} sinks each
call such a server through agents built from their own configuration keys.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import ResponseNeverReceived, readBody
from twisted.web.resource import Resource

from replayforge.config import Section
from replayforge.outgoing import (
    OutgoingSettings,
    client_pool,
    make_agent,
    read_outgoing_settings,
)
from replayforge.player.config import parse_player_config
from replayforge.player.relay_client import BucketClient, RelayError
from replayforge.player.sinks.base import DELIVERED, Retry
from replayforge.player.sinks.http import HttpSink
from replayforge.player.sinks.notification import NotificationSink
from replayforge.player.sinks.settings import (
    read_http_settings,
    read_notification_settings,
)
from replayforge.proxy.config import parse_proxy_config
from replayforge.proxy.forwarder import Forwarder
from replayforge.proxy.stats import SinkStats
from tests.log_support import capture_log, warnings_in
from tests.player_support import queued, sink_config
from tests.test_forwarder import MemoryBuffer
from tests.tls_support import Authority, closed, listen_tls, make_authority

POLL_SECONDS = 0.02
POLL_ROUNDS = 500


def section(raw: dict[str, Any], path: str = "") -> Section:
    """A configuration mapping as the readers receive it."""
    return Section(raw, "test.json", path, Path("."))


def peer_name(request: Any) -> str | None:
    """The common name of the client certificate behind C{request}."""
    certificate = request.transport.getPeerCertificate()
    if certificate is None:
        return None
    name: str = certificate.get_subject().CN
    return name


async def fetch(agent: Any, url: str) -> int:
    """GET C{url} and read the whole answer; return its status."""
    response = await agent.request(b"GET", url.encode())
    await readBody(response)
    code: int = response.code
    return code


class RecordingServer(Resource):
    """Answer every request 200 with C{answer}; note each one's client name."""

    isLeaf = True

    def __init__(self, answer: bytes = b"ok") -> None:
        super().__init__()
        self.answer = answer
        self.requests: list[tuple[bytes, bytes, bytes]] = []
        self.client_names: list[str | None] = []

    def render(self, request: Any) -> bytes:
        self.requests.append((request.method, request.uri, request.content.read()))
        self.client_names.append(peer_name(request))
        return self.answer


class AuthorityTestCase(TestCase):
    """A test authority's files in a temporary folder, and TLS servers."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="rf-tls-"))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        self.authority = make_authority(self.folder / "ca")

    def serve(
        self,
        resource: Resource,
        require_client: bool = False,
        authority: Authority | None = None,
    ) -> tuple[str, Authority]:
        """Serve C{resource} over TLS; return its base URL and authority."""
        authority = authority or self.authority
        port, connections = listen_tls(resource, authority, require_client)
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: Deferred.fromCoroutine(closed(connections)))
        return f"https://127.0.0.1:{port.getHost().port}/", authority

    def agent_for(self, settings: OutgoingSettings, name: str = "test client") -> Any:
        pool = client_pool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        return make_agent(reactor, settings, name, pool, connect_timeout=5)

    def settings(self, **keys: Any) -> OutgoingSettings:
        """Read client keys as a configuration file would hold them."""
        return read_outgoing_settings(section(keys))

    async def wait_for(self, condition: Any) -> None:
        """Let the reactor run until C{condition()} holds (bounded)."""
        for _ in range(POLL_ROUNDS):
            if condition():
                return
            await deferLater(reactor, POLL_SECONDS, lambda: None)
        self.fail("condition never held")


class AgentTLSTests(AuthorityTestCase):
    """Agents check servers' certificates and present their own."""

    async def test_unknown_authority_refused_by_default(self) -> None:
        """
        Without C{caFile} the system's store is used: a server whose
        authority is not in it is refused before any request is sent.
        """
        server = RecordingServer()
        url, _ = self.serve(server)
        agent = self.agent_for(OutgoingSettings())
        with self.assertRaises(ResponseNeverReceived):
            await agent.request(b"GET", url.encode())
        self.assertEqual(server.requests, [])

    async def test_ca_file_trusts_its_authority(self) -> None:
        """With C{caFile} naming the authority, the request goes through."""
        server = RecordingServer(b"hello")
        url, authority = self.serve(server)
        http = HTTPClient(self.agent_for(self.settings(caFile=str(authority.ca))))
        response = await http.get(url + "ping")
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), b"hello")
        self.assertEqual([uri for _, uri, _ in server.requests], [b"/ping"])

    async def test_other_authority_refused(self) -> None:
        """A C{caFile} of another authority does not open this server."""
        url, _ = self.serve(RecordingServer())
        other = make_authority(self.folder / "other", "Other CA")
        agent = self.agent_for(self.settings(caFile=str(other.ca)))
        with self.assertRaises(ResponseNeverReceived):
            await agent.request(b"GET", url.encode())

    async def test_host_name_checked(self) -> None:
        """
        The certificate must name the host of the URL: one for
        C{localhost} opens C{https://localhost}, and not
        C{https://127.0.0.1}, even from a trusted authority.
        """
        named = make_authority(self.folder / "named", server_names=["localhost"])
        server = RecordingServer()
        url, _ = self.serve(server, authority=named)
        port = url.rsplit(":", 1)[1].rstrip("/")
        agent = self.agent_for(self.settings(caFile=str(named.ca)))
        self.assertEqual(await fetch(agent, f"https://localhost:{port}/"), 200)
        with self.assertRaises(ResponseNeverReceived):
            await agent.request(b"GET", url.encode())
        self.assertEqual(len(server.requests), 1)

    async def test_mutual_tls(self) -> None:
        """
        A server that requires a client certificate refuses a client
        without one and accepts the one C{clientCert}/C{clientKey} name.
        """
        server = RecordingServer()
        url, authority = self.serve(server, require_client=True)
        anonymous = self.agent_for(self.settings(caFile=str(authority.ca)))
        with self.assertRaises(ResponseNeverReceived):
            await anonymous.request(b"GET", url.encode())
        self.assertEqual(server.requests, [])

        agent = self.agent_for(
            self.settings(
                caFile=str(authority.ca),
                clientCert=str(authority.client_cert),
                clientKey=str(authority.client_key),
            )
        )
        self.assertEqual(await fetch(agent, url), 200)
        self.assertEqual(server.client_names, ["player"])

    async def test_client_cert_file_with_its_key(self) -> None:
        """C{clientCert} alone may hold the certificate and its key."""
        server = RecordingServer()
        url, authority = self.serve(server, require_client=True)
        agent = self.agent_for(
            self.settings(
                caFile=str(authority.ca), clientCert=str(authority.client_both)
            )
        )
        self.assertEqual(await fetch(agent, url), 200)
        self.assertEqual(server.client_names, ["player"])

    async def test_insecure_skip_verify(self) -> None:
        """
        C{insecureSkipVerify: true} accepts an unknown authority, still
        presents the client certificate, and warns at start naming the
        client.
        """
        events = capture_log(self)
        server = RecordingServer()
        url, authority = self.serve(server, require_client=True)
        agent = self.agent_for(
            self.settings(
                insecureSkipVerify=True, clientCert=str(authority.client_both)
            ),
            name="sink audit",
        )
        [warning] = warnings_in(events)
        self.assertIn("sink audit", warning)
        self.assertIn("insecureSkipVerify", warning)
        self.assertEqual(await fetch(agent, url), 200)
        self.assertEqual(server.client_names, ["player"])

    def test_no_warning_when_verifying(self) -> None:
        """A client that checks certificates logs no warning."""
        events = capture_log(self)
        self.agent_for(self.settings(caFile=str(self.authority.ca)))
        self.assertEqual(warnings_in(events), [])


class ForwarderTLSTests(AuthorityTestCase):
    """The proxy's forwarder sends batches to a relay over TLS."""

    def forwarder(self, url: str, **keys: Any) -> tuple[Forwarder, MemoryBuffer]:
        """A forwarder of a sink configured with C{keys}, over a memory buffer."""
        config = parse_proxy_config(
            section(
                {
                    "sinks": [
                        {
                            "id": "relay",
                            "url": url,
                            "authBearer": "token",
                            "buckets": ["events"],
                            "config": {"batchTimeoutSecs": 0},
                            **keys,
                        }
                    ],
                    "sources": [],
                }
            )
        )
        sink = config.sinks["relay"]
        clock = Clock()
        buffer = MemoryBuffer(clock)
        self.stats = SinkStats()
        http = HTTPClient(self.agent_for(sink.outgoing, "sink relay"))
        forwarder = Forwarder(
            sink, buffer, http, clock, self.stats, "env", "host", rng=lambda: 0.0
        )
        self.clock = clock
        return forwarder, buffer

    async def test_refused_without_ca_file_then_kept(self) -> None:
        """
        A relay with a certificate of an unknown authority is refused: the
        batch stays in the buffer and is retried, nothing is lost.
        """
        relay = RecordingServer()
        url, _ = self.serve(relay)
        forwarder, buffer = self.forwarder(url)
        buffer.add("one", "two")
        forwarder.start()
        self.addCleanup(forwarder.stop)
        await self.wait_for(lambda: self.stats.retries >= 1)
        self.clock.advance(60)
        await self.wait_for(lambda: self.stats.retries >= 2)
        self.assertEqual(buffer.contents(), ["one", "two"])
        self.assertEqual(relay.requests, [])

    async def test_accepted_with_ca_file(self) -> None:
        """With C{caFile} the batch reaches the relay and leaves the buffer."""
        relay = RecordingServer()
        url, authority = self.serve(relay)
        forwarder, buffer = self.forwarder(url, caFile=str(authority.ca))
        buffer.add("one", "two")
        forwarder.start()
        self.addCleanup(forwarder.stop)
        await self.wait_for(lambda: buffer.contents() == [])
        [(method, uri, body)] = relay.requests
        self.assertEqual((method, uri), (b"POST", b"/record-batch"))
        self.assertEqual(json.loads(body), ["one", "two"])

    async def test_mutual_tls(self) -> None:
        """The forwarder presents its sink's client certificate."""
        relay = RecordingServer()
        url, authority = self.serve(relay, require_client=True)
        forwarder, buffer = self.forwarder(
            url,
            caFile=str(authority.ca),
            clientCert=str(authority.client_cert),
            clientKey=str(authority.client_key),
        )
        buffer.add("one")
        forwarder.start()
        self.addCleanup(forwarder.stop)
        await self.wait_for(lambda: buffer.contents() == [])
        self.assertEqual(relay.client_names, ["player"])


class RelayClientTLSTests(AuthorityTestCase):
    """The player's relay client pulls over TLS with its top-level keys."""

    def bucket_client(self, url: str, **keys: Any) -> BucketClient:
        config = parse_player_config(
            section(
                {
                    "relayUrl": url,
                    "pollWaitSecs": 0,
                    "sources": [
                        {
                            "name": "events",
                            "relayAuthenticationBearer": "token",
                            "sinks": ["log"],
                        }
                    ],
                    "sinks": [{"name": "log", "type": "log"}],
                    **keys,
                }
            )
        )
        http = HTTPClient(self.agent_for(config.relay_outgoing, "relay client"))
        return BucketClient(config, config.sources[0], http, reactor)

    async def test_refused_without_ca_file(self) -> None:
        """An unknown authority makes the pull fail, to be retried."""
        relay = RecordingServer(b'[{"id": 1, "content": "x"}]')
        url, _ = self.serve(relay)
        with self.assertRaises(RelayError):
            await self.bucket_client(url).first_batch()
        self.assertEqual(relay.requests, [])

    async def test_mutual_tls_with_ca_file(self) -> None:
        """With C{caFile} and a client certificate the batch is pulled."""
        relay = RecordingServer(b'[{"id": 1, "content": "x"}]')
        url, authority = self.serve(relay, require_client=True)
        client = self.bucket_client(
            url,
            caFile=str(authority.ca),
            clientCert=str(authority.client_cert),
            clientKey=str(authority.client_key),
        )
        batch = await client.first_batch()
        self.assertEqual([record.content for record in batch.records], ["x"])
        self.assertEqual(relay.client_names, ["player"])


class SinkTLSTests(AuthorityTestCase):
    """The player's C{http} and C{notification} sinks read TLS keys in params."""

    def http_sink(self, url: str, **keys: Any) -> HttpSink:
        params = section({"targetHost": url.rstrip("/"), "timeoutSecs": 5, **keys})
        sink = HttpSink(sink_config("web", read_http_settings(params), "http"), reactor)
        self.addCleanup(sink.stop)
        return sink

    def notification_sink(self, url: str, **keys: Any) -> NotificationSink:
        params = section(
            {"webhooks": {"ops": {"url": url + "hook"}}, "timeoutSecs": 5, **keys}
        )
        settings = read_notification_settings(params)
        sink = NotificationSink(
            sink_config("alerts", settings, "notification"), reactor
        )
        self.addCleanup(sink.stop)
        return sink

    async def test_http_sink_refused_then_retried(self) -> None:
        """An unknown authority is a failed call, to be retried."""
        target = RecordingServer()
        url, _ = self.serve(target)
        sink = self.http_sink(url)
        event = json.dumps({"method": "POST", "path": "/in", "body": "x"})
        [outcome] = await sink.deliver(queued(event))
        self.assertIsInstance(outcome, Retry)
        self.assertEqual(target.requests, [])

    async def test_http_sink_mutual_tls(self) -> None:
        """The http sink trusts C{caFile} and presents its certificate."""
        target = RecordingServer()
        url, authority = self.serve(target, require_client=True)
        sink = self.http_sink(
            url, caFile=str(authority.ca), clientCert=str(authority.client_both)
        )
        event = json.dumps({"method": "POST", "path": "/in", "body": "x"})
        self.assertEqual(await sink.deliver(queued(event)), [DELIVERED])
        self.assertEqual(target.requests, [(b"POST", b"/in", b"x")])
        self.assertEqual(target.client_names, ["player"])

    async def test_notification_sink_mutual_tls(self) -> None:
        """The notification sink's webhooks use its TLS keys."""
        target = RecordingServer()
        url, authority = self.serve(target, require_client=True)
        refused = self.notification_sink(url)
        [outcome] = await refused.deliver(queued('{"message": "disk full"}'))
        self.assertIsInstance(outcome, Retry)

        sink = self.notification_sink(
            url,
            caFile=str(authority.ca),
            clientCert=str(authority.client_cert),
            clientKey=str(authority.client_key),
        )
        outcomes = await sink.deliver(queued('{"message": "disk full"}'))
        self.assertEqual(outcomes, [DELIVERED])
        self.assertEqual(target.requests, [(b"POST", b"/hook", b"disk full")])
        self.assertEqual(target.client_names, ["player"])
