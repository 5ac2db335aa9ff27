"""
The three daemons under twistd, on loopback, moving real events.

Each test starts a relay, a proxy and a player as separate processes in a
temporary folder, sends events through the proxy's http source, and reads
the player's SQLite database to see what arrived.
"""

from __future__ import annotations

import http.client
import json
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from replayforge.launch import Daemon, free_port

TOKEN = "end-to-end-token"
ARRIVAL_TIMEOUT_SECONDS = 90.0


def _post_events(port: int, ids: Iterable[int], answered: list[int]) -> None:
    """POST one event per id over one keep-alive connection; note the 200s."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for event_id in ids:
            body = json.dumps({"id": event_id, "note": f"event number {event_id}"})
            try:
                connection.request(
                    "POST",
                    "/rpf-db/events",
                    body=body,
                    headers={"Content-Type": "application/json"},
                )
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            if response.status == 200:
                answered.append(event_id)
    finally:
        connection.close()


class PipelineTests(SynchronousTestCase):
    """Events sent to the proxy reach the player's db sink through a relay."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="replayforge-e2e-"))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        self.ports = {
            name: free_port()
            for name in (
                "relay",
                "relay_status",
                "proxy",
                "proxy_status",
                "player",
                "player_status",
            )
        }
        self._write_configs()
        self.daemons = {
            kind: Daemon(kind, self.folder / f"{kind}.json", self.folder / kind)
            for kind in ("relay", "proxy", "player")
        }
        for kind in ("relay", "proxy", "player"):
            self.addCleanup(self.daemons[kind].stop)
            self._start(kind)

    def _listen(self, name: str) -> str:
        return f"tcp:{self.ports[name]}:interface=127.0.0.1"

    def _write_configs(self) -> None:
        relay = {
            "listen": self._listen("relay"),
            "listenStatusZ": self._listen("relay_status"),
            "dataDir": str(self.folder / "relay-data"),
            "buckets": {"events": {"auth": TOKEN}},
        }
        proxy = {
            "envName": "e2e",
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
                    "type": "http",
                    "url": f"http://127.0.0.1:{self.ports['relay']}/",
                    "authBearer": TOKEN,
                    "buckets": ["events"],
                    "databasePath": str(self.folder / "proxy-buffer.sqlite3"),
                    "config": {"batchTimeoutSecs": 0.1, "batchMaxEvents": 500},
                }
            ],
        }
        player = {
            "relayUrl": f"http://127.0.0.1:{self.ports['relay']}/",
            "envName": "e2e",
            "listen": self._listen("player"),
            "listenStatusZ": self._listen("player_status"),
            "pollWaitSecs": 1,
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
                    "params": {"database": str(self.folder / "player.sqlite3")},
                }
            ],
        }
        for kind, config in (("relay", relay), ("proxy", proxy), ("player", player)):
            (self.folder / f"{kind}.json").write_text(json.dumps(config, indent=2))

    def _start(self, kind: str) -> None:
        daemon = self.daemons[kind]
        daemon.start()
        daemon.wait_until_ready(f"http://127.0.0.1:{self.ports[kind + '_status']}/")

    def _stored_ids(self) -> list[str]:
        path = self.folder / "player.sqlite3"
        if not path.exists():
            return []
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            rows = connection.execute("SELECT id FROM events").fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            connection.close()
        return [str(row[0]) for row in rows]

    def _wait_for(self, expected: set[str]) -> list[str]:
        deadline = time.monotonic() + ARRIVAL_TIMEOUT_SECONDS
        stored: list[str] = []
        while time.monotonic() < deadline:
            stored = self._stored_ids()
            if expected <= set(stored):
                return stored
            time.sleep(0.25)
        missing = sorted(expected - set(stored), key=int)
        self.fail(
            f"{len(missing)} events never reached the player, e.g. {missing[:10]}\n"
            + "\n".join(
                f"--- {kind}\n{daemon.log_tail(15)}"
                for kind, daemon in self.daemons.items()
            )
        )

    def _send(
        self, ids: list[int], connections: int = 4, answered: list[int] | None = None
    ) -> list[int]:
        answered = [] if answered is None else answered
        threads = [
            threading.Thread(
                target=_post_events,
                args=(self.ports["proxy"], ids[index::connections], answered),
            )
            for index in range(connections)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        return answered

    def test_each_event_arrives_once(self) -> None:
        """
        2,000 events sent through the proxy are each answered 200 and each
        stored once in the player's db sink.
        """
        ids = list(range(1, 2001))
        answered = self._send(ids)
        self.assertEqual(sorted(answered), ids)

        stored = self._wait_for({str(event_id) for event_id in ids})
        self.assertEqual(len(stored), len(ids))

    def test_relay_killed_mid_stream(self) -> None:
        """
        Killing the relay with SIGKILL while events flow and starting it again
        loses none of the events the proxy answered 200 for.
        """
        ids = list(range(1, 2001))
        answered: list[int] = []
        sender = threading.Thread(
            target=self._send, args=(ids,), kwargs={"answered": answered}
        )
        sender.start()
        deadline = time.monotonic() + 60
        while len(answered) < 500 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.daemons["relay"].kill()
        answered_before_kill = len(answered)
        time.sleep(1.0)
        answered_while_down = len(answered) - answered_before_kill
        self._start("relay")
        sender.join(timeout=120)

        self.assertGreaterEqual(answered_before_kill, 500)
        self.assertGreater(answered_while_down, 0)
        self._wait_for({str(event_id) for event_id in answered})
