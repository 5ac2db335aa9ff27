"""
Tests for the player's HTTP endpoints, L{replayforge.player.api} and
L{replayforge.player.auth}, and for building the service in
L{replayforge.player.tap}.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from replayforge.player.api import PlayerAPI, StatusAPI
from replayforge.player.auth import basic_auth
from replayforge.player.config import PlayerSinkConfig, load_player_config
from replayforge.player.sinks.db import DbSink
from replayforge.player.sinks.http import HttpSink
from replayforge.player.sinks.settings import DbSinkSettings, HttpSinkSettings
from replayforge.player.tap import Options, PlayerService, makeService
from replayforge.store import open_pool


class SynchronousThreadPool:
    """A thread pool that runs each call at once."""

    def callInThreadWithCallback(
        self, on_result: Any, function: Any, *args: Any, **kwargs: Any
    ) -> None:
        try:
            result = function(*args, **kwargs)
        except Exception:
            on_result(False, Failure())
        else:
            on_result(True, result)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class SynchronousReactor(Clock):
    """A clock on which adbapi's thread hand-offs happen at once."""

    def callWhenRunning(self, function: Any, *args: Any, **kwargs: Any) -> None:
        return None

    def callFromThread(self, function: Any, *args: Any, **kwargs: Any) -> None:
        function(*args, **kwargs)


def temp_folder(case: SynchronousTestCase) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="rf-player-api-"))
    case.addCleanup(shutil.rmtree, folder, True)
    return folder


class PlayerAPITests(SynchronousTestCase):
    """The exposed port: ping, sink listing, and each sink's API."""

    def setUp(self) -> None:
        self.reactor = SynchronousReactor()
        folder = temp_folder(self)
        db_config = PlayerSinkConfig(
            name="store",
            id="store-api",
            type="db",
            settings=DbSinkSettings(folder / "s.sqlite3", None, None, 0),
            metadata={"team": "ops"},
            key_path="sinks[0]",
        )
        pool = open_pool(folder / "s.sqlite3", self.reactor)
        pool.threadpool = SynchronousThreadPool()
        self.db = DbSink(db_config, self.reactor, pool=pool)
        self.addCleanup(self.db.stop)
        http_config = PlayerSinkConfig(
            name="web",
            id="web",
            type="http",
            settings=HttpSinkSettings("http://127.0.0.1:9", 1.0, 0),
            metadata={},
            key_path="sinks[1]",
        )
        self.http = HttpSink(http_config, self.reactor)
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

    def test_sink_api_routed(self) -> None:
        """C{/<sink id>/rpf-db/<table>} reaches the db sink's query API."""
        event = {"method": "POST", "path": "/users", "body": json.dumps({"id": "u1"})}
        self.successResultOf(self.db.deliver([json.dumps(event)]))
        code, body, _ = self.get("/store-api/rpf-db/users")
        self.assertEqual(code, 200)
        self.assertEqual([row["id"] for row in json.loads(body)], ["u1"])
        # The Go player routed by name; that still works.
        code, _, _ = self.get("/store/rpf-db/users")
        self.assertEqual(code, 200)

    def test_sink_without_api(self) -> None:
        """A sink without an API, or no sink, answers 404."""
        code, body, _ = self.get("/web/anything")
        self.assertEqual((code, body), (404, b"Sink does not expose a port\n"))
        code, _, _ = self.get("/missing/rpf-db/users")
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
        code, _, _ = self.get("/ping", guarded, authorization("admin", "wrong"))
        self.assertEqual(code, 401)
        code, _, _ = self.get("/ping", guarded, authorization("root", "s3cret"))
        self.assertEqual(code, 401)
        code, body, _ = self.get("/ping", guarded, authorization("admin", "s3cret"))
        self.assertEqual((code, body), (200, b"pong"))
        code, _, _ = self.get(
            "/store-api/rpf-db/none", guarded, authorization("admin", "s3cret")
        )
        self.assertEqual(code, 404)

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


class PlayerServiceTests(SynchronousTestCase):
    """Building the player from its file."""

    def write_config(self, document: dict[str, Any]) -> Path:
        folder = temp_folder(self)
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
        self.addCleanup(shutil.rmtree, script.parent, ignore_errors=True)
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

    def test_service_parts(self) -> None:
        """The service holds one puller per source and one sink per entry."""
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
        self.assertEqual([puller.bucket for puller in service.pullers], ["a", "b"])
        self.assertEqual(list(service.sinks), ["web"])
