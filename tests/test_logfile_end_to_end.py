"""
The C{logfile} source in a real proxy under twistd, forwarding to a real
relay: what the relay stores is what the file held, across a SIGTERM and
a kill -9 of the proxy.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from replayforge.launch import Daemon, free_port
from tests.logfile_helpers import line_of

TOKEN = "logfile-e2e-token"
ARRIVAL_TIMEOUT_SECONDS = 90.0
# At most one batch of the source, and one of the forwarder, can be sent
# twice after a kill -9.
SOURCE_BATCH_LINES = 2048
FORWARDER_BATCH_EVENTS = 500


class LogFileRelayTests(SynchronousTestCase):
    """A proxy tails a file into a relay's bucket."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="rf-logfile-e2e-"))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        self.log_path = self.folder / "app.log"
        self.ports = {
            name: free_port() for name in ("relay", "relay_status", "proxy_status")
        }
        relay = {
            "listen": self._listen("relay"),
            "listenStatusZ": self._listen("relay_status"),
            "dataDir": str(self.folder / "relay-data"),
            "buckets": {"logs": {"auth": TOKEN}},
        }
        (self.folder / "relay.json").write_text(json.dumps(relay))
        self.relay = Daemon("relay", self.folder / "relay.json", self.folder / "relay")
        self.addCleanup(self.relay.stop)
        self.relay.start()
        self.relay.wait_until_ready(self._status_url("relay_status"))

    def _listen(self, name: str) -> str:
        return f"tcp:{self.ports[name]}:interface=127.0.0.1"

    def _status_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}/"

    def start_proxy(self, **params: Any) -> Daemon:
        """Start a proxy whose C{logfile} source follows C{app.log}."""
        proxy = {
            "listenStatusZ": self._listen("proxy_status"),
            "sources": [
                {
                    "id": "tail",
                    "type": "logfile",
                    "targetSink": "relay",
                    "hookInterval": "100ms",
                    "params": {"filePath": str(self.log_path), **params},
                }
            ],
            "sinks": [
                {
                    "id": "relay",
                    "url": f"http://127.0.0.1:{self.ports['relay']}/",
                    "authBearer": TOKEN,
                    "buckets": ["logs"],
                    "dbMaxSizeKb": 1024,
                    "config": {
                        "batchTimeoutSecs": 0.1,
                        "batchMaxEvents": FORWARDER_BATCH_EVENTS,
                    },
                }
            ],
        }
        (self.folder / "proxy.json").write_text(json.dumps(proxy))
        daemon = Daemon(
            "proxy",
            self.folder / "proxy.json",
            self.folder / "proxy",
            log_dir=self.folder,
        )
        self.addCleanup(daemon.stop)
        daemon.start()
        daemon.wait_until_ready(self._status_url("proxy_status"))
        return daemon

    def relayed(self) -> list[str]:
        """The lines the relay's bucket holds, in the order it stored them."""
        path = self.folder / "relay-data" / "logs" / "relay.sqlite3"
        if not path.exists():
            return []
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            rows = connection.execute(
                "SELECT content FROM wrap_calls ORDER BY id"
            ).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            connection.close()
        return [line_of(row[0]) for row in rows]

    def wait_for(self, count: int, proxy: Daemon) -> list[str]:
        """Wait until the relay holds C{count} distinct lines."""
        deadline = time.monotonic() + ARRIVAL_TIMEOUT_SECONDS
        lines: list[str] = []
        while time.monotonic() < deadline:
            lines = self.relayed()
            if len(set(lines)) >= count:
                return lines
            time.sleep(0.1)
        self.fail(
            f"the relay holds {len(set(lines))} of {count} lines\n"
            f"--- proxy\n{proxy.log_tail(20)}\n--- relay\n{self.relay.log_tail(10)}"
        )

    def test_partial_line_then_sigterm_append_restart(self) -> None:
        """
        A partial line present when the proxy gets SIGTERM is not sent; the
        proxy stops cleanly, and once the line is completed and the proxy
        restarted it is sent once, whole, after the lines before it.
        """
        self.log_path.write_text("alpha\nbeta\npart")
        proxy = self.start_proxy(flushPartialAfterSecs=600)
        self.wait_for(2, proxy)
        time.sleep(0.5)

        # twistd ends an orderly shutdown by raising the signal again.
        self.assertIn(proxy.stop(), (0, -signal.SIGTERM))
        self.assertIn("Server Shut Down.", proxy.log_tail())
        self.assertNotIn("Traceback", proxy.log_tail(200))
        with self.log_path.open("a") as file:
            file.write("ial\n")
        proxy = self.start_proxy(flushPartialAfterSecs=600)
        self.wait_for(3, proxy)
        time.sleep(0.5)

        self.assertEqual(self.relayed(), ["alpha", "beta", "partial"])

    def test_kill_9_mid_file(self) -> None:
        """
        A proxy killed with SIGKILL in the middle of a long file and started
        again delivers every line; the lines sent twice are at most one
        batch of the source and one of the forwarder, and the first
        delivery of each line comes in file order.
        """
        total = 60_000
        self.log_path.write_text(
            "".join(f"line {number:06d}\n" for number in range(total))
        )
        proxy = self.start_proxy()
        self.wait_for(total // 10, proxy)

        proxy.kill()
        self.assertLess(len(set(self.relayed())), total, "read before the kill")
        proxy = self.start_proxy()
        lines = self.wait_for(total, proxy)

        wanted = [f"line {number:06d}" for number in range(total)]
        first_seen = list(dict.fromkeys(lines))
        self.assertEqual(first_seen, wanted)
        self.assertLessEqual(
            len(lines) - total, SOURCE_BATCH_LINES + FORWARDER_BATCH_EVENTS
        )
