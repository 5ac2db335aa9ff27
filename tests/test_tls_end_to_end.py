"""
The three daemons under twistd with the relay behind TLS.

The relay listens on an C{ssl:} endpoint with a certificate of a test
authority that no system trusts.  The proxy is started first without
C{caFile}: it must refuse the relay, keep the events buffered and retry.
Started again with C{caFile}, it delivers every event, and the player (with
C{caFile} at its top level) pulls them into its db sink.
"""

from __future__ import annotations

import http.client
import json
import shutil
import sqlite3
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from replayforge.launch import Daemon, free_port
from tests.tls_support import make_authority

TOKEN = "tls-end-to-end-token"
TIMEOUT_SECONDS = 60.0
EVENTS = 50


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


class TLSPipelineTests(SynchronousTestCase):
    """Events reach the player through a relay that only speaks TLS."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="replayforge-tls-e2e-"))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        self.authority = make_authority(self.folder / "pki")
        self.ports = {
            name: free_port()
            for name in ("relay", "relay_status", "proxy", "proxy_status", "player")
        }
        self.daemons: dict[str, Daemon] = {}

    def _listen(self, name: str) -> str:
        return f"tcp:{self.ports[name]}:interface=127.0.0.1"

    def _write(self, kind: str, config: dict[str, Any]) -> Path:
        path = self.folder / f"{kind}.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def _start(self, kind: str, config: dict[str, Any], status: str) -> None:
        daemon = Daemon(kind, self._write(kind, config), self.folder / kind)
        self.daemons[kind] = daemon
        self.addCleanup(daemon.stop)
        daemon.start()
        daemon.wait_until_ready(f"http://127.0.0.1:{self.ports[status]}/")

    def _relay_config(self) -> dict[str, Any]:
        listen = (
            f"ssl:{self.ports['relay']}:interface=127.0.0.1"
            f":privateKey={self.authority.server_key}"
            f":certKey={self.authority.server_cert}"
        )
        return {
            "listen": listen,
            "listenStatusZ": self._listen("relay_status"),
            "dataDir": str(self.folder / "relay-data"),
            "buckets": {"events": {"auth": TOKEN}},
        }

    def _proxy_config(self, **keys: str) -> dict[str, Any]:
        return {
            "listenStatusZ": self._listen("proxy_status"),
            "sources": [
                {
                    "id": "web",
                    "type": "http",
                    "targetSink": "relay",
                    "params": {"listen": self._listen("proxy")},
                }
            ],
            "sinks": [
                {
                    "id": "relay",
                    "url": f"https://127.0.0.1:{self.ports['relay']}/",
                    "authBearer": TOKEN,
                    "buckets": ["events"],
                    "databasePath": str(self.folder / "proxy-buffer.sqlite3"),
                    "config": {"batchTimeoutSecs": 0.1},
                    **keys,
                }
            ],
        }

    def _player_config(self) -> dict[str, Any]:
        return {
            "relayUrl": f"https://127.0.0.1:{self.ports['relay']}/",
            "listenStatusZ": self._listen("player"),
            "pollWaitSecs": 1,
            "caFile": str(self.authority.ca),
            "sources": [
                {
                    "name": "events",
                    "relayAuthenticationBearer": TOKEN,
                    "sinks": ["store"],
                }
            ],
            "sinks": [
                {
                    "name": "store",
                    "type": "db",
                    "params": {"database": str(self.folder / "player.sqlite3")},
                }
            ],
        }

    def _send(self, count: int) -> list[int]:
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.ports["proxy"], timeout=30
        )
        codes = []
        try:
            for number in range(1, count + 1):
                body = json.dumps({"id": number})
                connection.request("POST", "/rpf-db/events", body=body)
                response = connection.getresponse()
                response.read()
                codes.append(response.status)
        finally:
            connection.close()
        return codes

    def _sink_status(self) -> dict[str, Any]:
        status = _get_json(f"http://127.0.0.1:{self.ports['proxy_status']}/statusz")
        sink: dict[str, Any] = status["sinks"]["relay"]
        return sink

    def _stored(self) -> set[str]:
        path = self.folder / "player.sqlite3"
        if not path.exists():
            return set()
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            rows = connection.execute("SELECT id FROM events").fetchall()
        except sqlite3.OperationalError:
            return set()
        finally:
            connection.close()
        return {str(row[0]) for row in rows}

    def _logs(self) -> str:
        return "\n".join(
            f"--- {kind}\n{daemon.log_tail(20)}"
            for kind, daemon in self.daemons.items()
        )

    def test_refused_without_ca_file_then_delivered(self) -> None:
        """
        Without C{caFile} the proxy refuses the relay and keeps every event;
        with it every event reaches the player.
        """
        self._start("relay", self._relay_config(), "relay_status")
        self._start("player", self._player_config(), "player")
        self._start("proxy", self._proxy_config(), "proxy_status")
        self.assertEqual(self._send(EVENTS), [200] * EVENTS)

        deadline = time.monotonic() + TIMEOUT_SECONDS
        sink = self._sink_status()
        while sink["retries"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            sink = self._sink_status()
        self.assertGreaterEqual(sink["retries"], 2, self._logs())
        self.assertEqual(sink["forwarded"], 0)
        self.assertEqual(sink["pending"], EVENTS)
        self.assertIn("certificate verify failed", self.daemons["proxy"].log_tail(50))

        self.daemons["proxy"].stop()
        self._start(
            "proxy", self._proxy_config(caFile=str(self.authority.ca)), "proxy_status"
        )
        expected = {str(number) for number in range(1, EVENTS + 1)}
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while self._stored() != expected and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(self._stored(), expected, self._logs())
        self.assertEqual(self._sink_status()["pending"], 0)
