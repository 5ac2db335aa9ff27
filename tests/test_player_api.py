"""
Tests for the player's HTTP endpoints, L{replayforge.player.api},
L{replayforge.player.static}, L{replayforge.player.relay_proxy} and
L{replayforge.player.auth}, and for building the service in
L{replayforge.player.tap}.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from replayforge.player.api import PlayerAPI, StatusAPI
from replayforge.player.auth import SingleUserChecker, basic_auth
from replayforge.player.config import load_player_config
from replayforge.player.relay_proxy import RelayStatusProxy, status_base
from replayforge.player.sinks.http import HttpSink
from replayforge.player.sinks.settings import HttpSinkSettings, LogSinkSettings
from replayforge.player.tap import Options, PlayerService, makeService
from replayforge.web import make_site
from tests.player_support import (
    RecordingTarget,
    SynchronousReactor,
    call,
    listen,
    make_db_sink,
    queued,
    sink_config,
    temp_folder,
)

TRAVERSALS = [
    "/static/../secret.txt",
    "/static/%2e%2e/secret.txt",
    "/static/%2E%2E%2Fsecret.txt",
    "/static/..%2fsecret.txt",
    "/static/..%5csecret.txt",
    "/static/sub/../../secret.txt",
    "/static/%2Fetc%2Fpasswd",
    "/static//etc/passwd",
    "/static/%00/secret.txt",
    "/static/outside",
    "/../secret.txt",
    "/%2e%2e/secret.txt",
    "//etc/passwd",
    "/outside/secret.txt",
]


def static_folders(case: SynchronousTestCase) -> Path:
    """A static folder beside a secret, with a link leading out of it."""
    folder = temp_folder(case, "rf-player-static-")
    static = folder / "static"
    (static / "sub").mkdir(parents=True)
    (static / "index.html").write_text("<h1>home</h1>")
    (static / "app.js").write_text("console.log(1)")
    (static / "sub" / "page.html").write_text("sub page")
    (folder / "secret.txt").write_text("do not serve")
    os.symlink(folder, static / "outside")
    return static


class PlayerAPITests(SynchronousTestCase):
    """The exposed port: ping, sink listing, and each sink's API."""

    def setUp(self) -> None:
        self.reactor = SynchronousReactor()
        folder = temp_folder(self, "rf-player-api-")
        self.db = make_db_sink(
            self,
            self.reactor,
            folder / "s.sqlite3",
            name="store",
            sink_id="store-api",
            metadata={"team": "ops"},
        )
        self.http = HttpSink(
            sink_config("web", HttpSinkSettings("http://127.0.0.1:9"), "http"),
            self.reactor,
        )
        self.api = PlayerAPI([self.db, self.http])

    def get(
        self, path: str, resource: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, Any]:
        stub = StubTreq(resource or self.api.app.resource())
        response = self.successResultOf(
            stub.get(f"http://player{path}", headers=headers or {})
        )
        return response.code, self.successResultOf(stub.content(response)), response

    def test_ping(self) -> None:
        """C{/ping} answers C{pong}."""
        code, body, _ = self.get("/ping")
        self.assertEqual((code, body), (200, b"pong"))

    def test_sink_list_and_find(self) -> None:
        """C{/sink/list} and C{/sink/find/<id>} describe the sinks."""
        code, body, _ = self.get("/sink/list")
        self.assertEqual(code, 200)
        self.assertEqual(
            json.loads(body),
            [
                {
                    "id": "store-api",
                    "name": "store",
                    "type": "db",
                    "metadata": {"team": "ops"},
                },
                {"id": "web", "name": "web", "type": "http", "metadata": {}},
            ],
        )
        code, body, _ = self.get("/sink/find/store-api")
        self.assertEqual(json.loads(body)["name"], "store")
        code, body, _ = self.get("/sink/find/nope")
        self.assertEqual((code, body), (404, b"Sink not found\n"))
        code, body, _ = self.get("/sink/find/")
        self.assertEqual((code, body), (400, b"id parameter is required\n"))

    def test_sink_api_routed(self) -> None:
        """C{/<sink id>/rpf-db/<table>} reaches the db sink's query API."""
        event = call("POST", "/users", {"id": "u1"})
        self.successResultOf(self.db.deliver(queued(event)))
        code, body, _ = self.get("/store-api/rpf-db/users?id=u1")
        self.assertEqual(code, 200)
        self.assertEqual([row["id"] for row in json.loads(body)], ["u1"])
        # The Go player routed by name; that still works.
        code, _, _ = self.get("/store/rpf-db/users")
        self.assertEqual(code, 200)
        code, body, _ = self.get("/store-api/rpf-db/pragma_database_list")
        self.assertEqual(code, 404)
        self.assertNotIn(b"s.sqlite3", body)

    def test_sink_without_api(self) -> None:
        """A sink without an API, or no sink, answers 404."""
        code, body, _ = self.get("/web/anything")
        self.assertEqual((code, body), (404, b"Sink does not expose a port\n"))
        code, body, _ = self.get("/missing/rpf-db/users")
        self.assertEqual((code, body), (404, b"404 page not found\n"))
        code, _, _ = self.get("/relay-proxy/statusz")
        self.assertEqual(code, 404)

    def test_basic_auth(self) -> None:
        """With a username set, every request needs the right credentials."""
        guarded = basic_auth(self.api.app.resource(), "admin", "s3cret")

        def authorization(user: str, password: str) -> dict[str, str]:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            return {"Authorization": f"Basic {token}"}

        code, _, response = self.get("/ping", guarded)
        self.assertEqual(code, 401)
        self.assertEqual(
            response.headers.getRawHeaders(b"WWW-Authenticate"),
            [b'basic realm="replayforge-player"'],
        )
        for user, password in [
            ("admin", "wrong"),
            ("root", "s3cret"),
            ("admin", "s3cret-and-more"),
            ("admin", ""),
        ]:
            code, _, _ = self.get("/ping", guarded, authorization(user, password))
            self.assertEqual(code, 401, (user, password))
        code, body, _ = self.get("/ping", guarded, authorization("admin", "s3cret"))
        self.assertEqual((code, body), (200, b"pong"))
        code, _, _ = self.get(
            "/store-api/rpf-db/none", guarded, authorization("admin", "s3cret")
        )
        self.assertEqual(code, 404)

    def test_checker_compares_digests(self) -> None:
        """The checker keeps only digests and refuses every near miss."""
        checker = SingleUserChecker("admin", "s3cret")
        self.assertNotIn(b"s3cret", vars(checker).values())
        self.successResultOf(
            checker.requestAvatarId(UsernamePassword(b"admin", b"s3cret"))
        )
        for password in [b"s3cre", b"s3cret ", b"S3cret", b""]:
            self.failureResultOf(
                checker.requestAvatarId(UsernamePassword(b"admin", password)),
                UnauthorizedLogin,
            )

    def test_no_auth_without_username(self) -> None:
        """Without a username the resource is served as it is."""
        resource = self.api.app.resource()
        self.assertIs(basic_auth(resource, "", ""), resource)

    def test_statusz(self) -> None:
        """C{/statusz} renders every sink's counts; C{/} answers C{ok}."""
        self.db.stats.drop("bad_table", 2)
        self.reactor.advance(12)
        status = StatusAPI([], [self.db, self.http], self.reactor)
        self.reactor.advance(3)
        code, body, _ = self.get("/statusz", status.app.resource())
        document = json.loads(body)
        self.assertEqual(document["uptimeSeconds"], 3)
        self.assertEqual(document["sinks"]["store-api"]["dropped"], {"bad_table": 2})
        self.assertEqual(document["sinks"]["web"]["type"], "http")
        code, body, _ = self.get("/", status.app.resource())
        self.assertEqual((code, body), (200, b"ok"))


def raw_get(port: int, target: str) -> tuple[int, bytes]:
    """
    Send C{GET target} exactly as written (no client normalises it), as
    HTTP/1.0 so the answer is not chunked.
    """
    request = f"GET {target} HTTP/1.0\r\nHost: player\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request.encode())
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


class ExposedPortTests(TestCase):
    """Static files and the relay's status, over real connections."""

    def setUp(self) -> None:
        self.static = static_folders(self)
        folder = temp_folder(self, "rf-player-exposed-")
        self.relay = RecordingTarget()
        self.relay.headers = {b"Content-Type": b"application/json"}
        relay_port = listen(self.relay)
        self.addCleanup(relay_port.stopListening)
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        pool = HTTPConnectionPool(reactor, persistent=False)
        client = HTTPClient(Agent(reactor, pool=pool))
        self.addCleanup(pool.closeCachedConnections)
        relay_status = RelayStatusProxy(
            f"127.0.0.1:{relay_port.getHost().port}/ignored/path", client, reactor
        )
        # A db sink whose own static_dir is the same folder.
        synchronous_reactor = SynchronousReactor()
        self.db = make_db_sink(
            self,
            synchronous_reactor,
            folder / "s.sqlite3",
            name="store",
            static_dir=self.static,
        )
        api = PlayerAPI([self.db], self.static, relay_status)
        guarded = basic_auth(api.app.resource(), "", "")
        self.port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, make_site(guarded), interface="127.0.0.1"
        )
        self.addCleanup(self.port.stopListening)

    def fetch(self, target: str) -> Deferred[tuple[int, bytes]]:
        return deferToThread(raw_get, self.port.getHost().port, target)

    async def test_static_files_served(self) -> None:
        """Files of the folder are served at C{/static/...} and at C{/...}."""
        for target, expected in [
            ("/static/app.js", b"console.log(1)"),
            ("/app.js", b"console.log(1)"),
            ("/", b"<h1>home</h1>"),
            ("/static/", b"<h1>home</h1>"),
            ("/sub/page.html", b"sub page"),
            ("/store/static/app.js", b"console.log(1)"),
        ]:
            code, body = await self.fetch(target)
            self.assertEqual((code, body), (200, expected), target)
        code, _ = await self.fetch("/static/sub/")
        self.assertEqual(code, 404, "a folder without index.html is not listed")

    async def test_static_traversal_refused(self) -> None:
        """No path, encoded, absolute or through a link, leaves the folder."""
        for target in [*TRAVERSALS, *(f"/store{path}" for path in TRAVERSALS)]:
            code, body = await self.fetch(target)
            # Klein redirects a path with an empty segment to the same path
            # without it, which is still inside the folder.
            self.assertIn(code, (308, 400, 404), target)
            self.assertNotIn(b"do not serve", body, target)
            self.assertNotIn(b"root:", body, target)

    async def test_relay_proxy(self) -> None:
        """
        C{/relay-proxy/<rest>} answers what the relay's status listener
        answers at C{/<rest>}, query kept, without the caller's headers.
        """
        code, body = await self.fetch("/relay-proxy/statusz?bucket=a%20b")
        self.assertEqual((code, body), (200, b"answered"))
        [seen] = self.relay.seen
        self.assertEqual(seen.uri, b"/statusz?bucket=a%20b")
        self.assertNotIn(b"authorization", seen.headers)

    def test_status_base(self) -> None:
        """Only the scheme and host of C{relayUrlStatusz} are kept."""
        self.assertEqual(status_base("relay:8082/statusz"), "http://relay:8082")
        self.assertEqual(status_base("https://r.example/x"), "https://r.example")


class PlayerServiceTests(SynchronousTestCase):
    """Building the player from its file."""

    def write_config(self, document: dict[str, Any]) -> Path:
        folder = temp_folder(self)
        self.data = folder / "data"
        document.setdefault("dataDir", str(self.data))
        path = folder / "player.json"
        path.write_text(json.dumps(document))
        return path

    def test_bad_config_exits(self) -> None:
        """A configuration error stops twistd with one line naming the key."""
        path = self.write_config({"sources": []})
        options = Options()
        options.parseOptions(["-c", str(path)])
        with self.assertRaises(SystemExit) as caught:
            makeService(options)
        self.assertEqual(
            str(caught.exception), f"replayforge-player: {path}: relayUrl: is required"
        )

    def test_script_without_process_exits(self) -> None:
        """A script that defines no C{Process} stops twistd too."""
        script = Path(tempfile.mkdtemp(prefix="replayforge-test-")) / "noop.lua"
        self.addCleanup(shutil.rmtree, script.parent, True)
        script.write_text("x = 1\n")
        path = self.write_config(
            {
                "relayUrl": "http://127.0.0.1:1/",
                "sources": [
                    {
                        "name": "b",
                        "relayAuthenticationBearer": "t",
                        "transformScript": str(script),
                    }
                ],
            }
        )
        options = Options()
        options.parseOptions(["-c", str(path)])
        with self.assertRaises(SystemExit) as caught:
            makeService(options)
        self.assertIn("sources[0].transformScript", str(caught.exception))

    def test_unusable_data_dir_exits(self) -> None:
        """A queue folder that cannot be made stops twistd with one line."""
        blocker = temp_folder(self) / "file"
        blocker.write_text("not a folder")
        path = self.write_config(
            {"relayUrl": "http://127.0.0.1:1/", "dataDir": str(blocker / "data")}
        )
        options = Options()
        options.parseOptions(["-c", str(path)])
        with self.assertRaises(SystemExit) as caught:
            makeService(options)
        self.assertTrue(str(caught.exception).startswith("replayforge-player: "))

    def test_service_parts(self) -> None:
        """
        The service holds one puller per source, one sink and one worker per
        sink entry, and its queue in C{dataDir}.
        """
        path = self.write_config(
            {
                "relayUrl": "http://127.0.0.1:1",
                "sources": [
                    {"name": "a", "relayAuthenticationBearer": "t", "sinks": ["web"]},
                    {"name": "b", "relayAuthenticationBearer": "t", "sinks": ["web"]},
                ],
                "sinks": [
                    {
                        "name": "web",
                        "type": "http",
                        "params": {"targetHost": "http://127.0.0.1:2"},
                    }
                ],
                "listen": "tcp:0:interface=127.0.0.1",
            }
        )
        service = PlayerService(load_player_config(path), SynchronousReactor())
        self.addCleanup(service.queue.close)
        self.assertEqual([puller.bucket for puller in service.pullers], ["a", "b"])
        self.assertEqual(list(service.sinks), ["web"])
        self.assertEqual([worker.sink.name for worker in service.workers], ["web"])
        self.assertTrue((self.data / "player-queue.sqlite3").exists())

    def test_sighup_reopens_log_files(self) -> None:
        """SIGHUP, handled through the reactor, reopens every log sink's file."""
        log_file = temp_folder(self) / "events.log"
        path = self.write_config(
            {
                "relayUrl": "http://127.0.0.1:1",
                "sinks": [
                    {
                        "name": "trail",
                        "type": "log",
                        "params": {"logFilePath": str(log_file)},
                    }
                ],
            }
        )
        fake = SynchronousReactor()
        service = PlayerService(load_player_config(path), fake)
        sink = service.sinks["trail"]
        self.assertIsInstance(sink.config.settings, LogSinkSettings)
        service.startService()
        self.addCleanup(lambda: self.successResultOf(service.stopService()))
        self.successResultOf(sink.deliver(queued("one")))
        log_file.rename(log_file.with_name("events.log.1"))
        os.kill(os.getpid(), signal.SIGHUP)
        self.successResultOf(sink.deliver(queued("two")))
        self.assertEqual(log_file.read_text(), "two\n")
        self.assertEqual(log_file.with_name("events.log.1").read_text(), "one\n")
