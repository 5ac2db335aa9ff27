"""
Every listener of the three daemons serves TLS when its endpoint string says
C{ssl:}: the relay's API and status, the proxy's http source and status, the
player's exposed port, status and db sink API.

The daemons run under twistd, with a certificate the test makes, and are
asked over HTTPS with the test's authority as the only trusted one.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from replayforge.launch import Daemon, DaemonFailed, free_port
from tests.tls_support import Authority, make_authority

TOKEN = "tls-token"


class TLSListenerTests(SynchronousTestCase):
    """Each daemon serves each of its listeners over TLS."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="replayforge-tls-"))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        self.authority: Authority = make_authority(self.folder / "pki")
        self.context = ssl.create_default_context(cafile=str(self.authority.ca))

    def tls(self, port: int) -> str:
        """An C{ssl:} endpoint on loopback with the test's certificate."""
        return (
            f"ssl:{port}:interface=127.0.0.1"
            f":privateKey={self.authority.server_key}"
            f":certKey={self.authority.server_cert}"
        )

    def start(self, kind: str, config: dict[str, Any], ready: str) -> Daemon:
        """Start daemon C{kind} with C{config}; wait for C{ready} over TLS."""
        path = self.folder / f"{kind}.json"
        path.write_text(json.dumps(config))
        daemon = Daemon(kind, path, self.folder / kind)
        daemon.start()
        self.addCleanup(daemon.stop)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.call(ready)
                return daemon
            except urllib.error.HTTPError:
                return daemon
            except OSError:
                time.sleep(0.1)
        raise DaemonFailed(f"{kind} not ready at {ready}:\n{daemon.log_tail()}")

    def call(
        self,
        url: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        method: str | None = None,
    ) -> tuple[int, bytes]:
        """Make one HTTPS request trusting only the test's authority."""
        request = urllib.request.Request(
            url, data=data, headers=headers or {}, method=method
        )
        with urllib.request.urlopen(request, timeout=5, context=self.context) as answer:
            return answer.status, answer.read()

    def test_relay(self) -> None:
        """
        The relay's API takes a gzip batch over TLS and hands it back; its
        status listener answers over TLS too.
        """
        api, status = free_port(), free_port()
        self.start(
            "relay",
            {
                "listen": self.tls(api),
                "listenStatusZ": self.tls(status),
                "dataDir": str(self.folder / "relay-data"),
                "buckets": {"events": {"auth": TOKEN}},
            },
            f"https://127.0.0.1:{status}/",
        )
        auth = {"Authorization": f"Bearer {TOKEN}", "RF-BUCKET": "events"}

        code, _ = self.call(
            f"https://127.0.0.1:{api}/record-batch",
            gzip.compress(json.dumps(["one", "two"]).encode()),
            {**auth, "RF-BUCKETS": "events", "Content-Encoding": "gzip"},
        )
        self.assertEqual(code, 200)
        code, body = self.call(f"https://127.0.0.1:{api}/first-batch", headers=auth)
        self.assertEqual(
            [record["content"] for record in json.loads(body)], ["one", "two"]
        )

        code, body = self.call(f"https://127.0.0.1:{status}/statusz")
        self.assertEqual(code, 200)
        self.assertIn("buckets", json.loads(body))

    def test_proxy(self) -> None:
        """
        The proxy's http source captures a gzip request over TLS as its
        decoded text, and its status listener answers over TLS.
        """
        source, status = free_port(), free_port()
        buffer = self.folder / "buffer.sqlite3"
        self.start(
            "proxy",
            {
                "listenStatusZ": self.tls(status),
                "sources": [
                    {
                        "id": "web",
                        "type": "http",
                        "targetSink": "relay",
                        "params": {"listen": self.tls(source)},
                    }
                ],
                "sinks": [
                    {
                        "id": "relay",
                        "url": f"http://127.0.0.1:{free_port()}/",
                        "authBearer": TOKEN,
                        "buckets": ["events"],
                        "databasePath": str(buffer),
                    }
                ],
            },
            f"https://127.0.0.1:{status}/",
        )

        code, body = self.call(
            f"https://127.0.0.1:{source}/hooks/order",
            gzip.compress(b'{"order": 7}'),
            {"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
        self.assertEqual((code, body), (200, b"Request received"))

        with sqlite3.connect(f"file:{buffer}?mode=ro", uri=True) as database:
            (content,) = database.execute("SELECT content FROM sink_events").fetchone()
        call = json.loads(content)
        self.assertEqual(call["path"], "/hooks/order")
        self.assertEqual(call["body"], '{"order": 7}')
        self.assertNotIn("Content-Encoding", call["headers"])
        self.assertEqual(call["headers"]["Content-Length"], ["12"])

        code, body = self.call(f"https://127.0.0.1:{status}/statusz")
        self.assertEqual(code, 200)
        self.assertIn("web", json.loads(body)["sources"])

    def test_player(self) -> None:
        """
        The player's exposed port, its status listener and a db sink's own
        API listener all answer over TLS.
        """
        exposed, status, sink_api = free_port(), free_port(), free_port()
        self.start(
            "player",
            {
                "relayUrl": f"http://127.0.0.1:{free_port()}/",
                "listen": self.tls(exposed),
                "listenStatusZ": self.tls(status),
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
                        "id": "store",
                        "type": "db",
                        "params": {
                            "database": str(self.folder / "player.sqlite3"),
                            "listen": self.tls(sink_api),
                        },
                    }
                ],
            },
            f"https://127.0.0.1:{status}/",
        )

        self.assertEqual(self.call(f"https://127.0.0.1:{exposed}/ping"), (200, b"pong"))
        code, body = self.call(f"https://127.0.0.1:{status}/statusz")
        self.assertEqual(code, 200)
        self.assertIsInstance(json.loads(body), dict)
        code, body = self.call(f"https://127.0.0.1:{sink_api}/store/list")
        self.assertEqual(code, 200)
        self.assertIsInstance(json.loads(body), list)

    def test_plain_http_refused_on_a_tls_listener(self) -> None:
        """
        A client speaking plain HTTP to a TLS listener gets no HTTP answer:
        the listener really is TLS, not HTTP beside it.
        """
        api = free_port()
        self.start(
            "relay",
            {
                "listen": self.tls(api),
                "dataDir": str(self.folder / "relay-data"),
                "buckets": {"events": {"auth": TOKEN}},
            },
            f"https://127.0.0.1:{api}/",
        )

        with self.assertRaises((urllib.error.URLError, OSError)) as raised:
            urllib.request.urlopen(f"http://127.0.0.1:{api}/first-batch", timeout=5)
        self.assertNotIsInstance(raised.exception, urllib.error.HTTPError)
