"""
The player and the proxy, run by twistd beside a fake tailscaled LocalAPI
(in a process of its own), with their Tailscale keys.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from replayforge.launch import Daemon, free_port


def _folder(test: SynchronousTestCase) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="replayforge-tailnet-"))
    test.addCleanup(shutil.rmtree, folder, ignore_errors=True)
    return folder


class DaemonTailscaleKeysTests(SynchronousTestCase):
    """
    The player and the proxy, run by twistd, say at start what they did
    with their Tailscale keys; the player's listeners go on the tailnet.
    """

    def setUp(self) -> None:
        self.folder = _folder(self)
        self.socket = self.folder / "tailscaled.sock"
        command = [sys.executable, "-m", "tests.localapi_support"]
        fake = subprocess.Popen(
            [*command, str(self.socket), "127.0.0.2"],
            cwd=Path(__file__).parent.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(fake.wait, 10)
        self.addCleanup(fake.terminate)
        deadline = time.monotonic() + 20
        while not self.socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def start(self, kind: str, config: dict[str, Any]) -> Daemon:
        """Start daemon C{kind} with C{config}."""
        path = self.folder / f"{kind}.json"
        path.write_text(json.dumps(config))
        daemon = Daemon(kind, path, self.folder / kind)
        daemon.start()
        self.addCleanup(daemon.stop)
        return daemon

    def test_player_listens_on_the_tailnet(self) -> None:
        """
        With a C{tsnet} section, C{listenUsingTailscale} and
        C{useTsnetStatusZ}, the player's exposed port and status listener
        answer on the tailnet address, not on loopback, and the start log
        says so and that the tsnet host name is ignored.
        """
        exposed, status = free_port("127.0.0.2"), free_port("127.0.0.2")
        player = self.start(
            "player",
            {
                "relayUrl": f"http://127.0.0.1:{free_port()}/",
                "tsnet": {"hostname": "player-eu"},
                "listenUsingTailscale": True,
                "useTsnetStatusZ": True,
                "listenAddress": "0.0.0.0",
                "exposedPort": exposed,
                "portStatusZ": status,
                "tailscaleSocket": str(self.socket),
                "sources": [
                    {
                        "name": "events",
                        "relayAuthenticationBearer": "t",
                        "sinks": ["log"],
                    }
                ],
                "sinks": [{"name": "log", "type": "log", "id": "log"}],
            },
        )
        player.wait_until_ready(f"http://127.0.0.2:{exposed}/ping")
        player.wait_until_ready(f"http://127.0.0.2:{status}/statusz")

        with urllib.request.urlopen(f"http://127.0.0.2:{exposed}/ping") as answer:
            self.assertEqual(answer.read(), b"pong")
        with self.assertRaises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{exposed}/ping", timeout=5)
        log = player.log_tail(200)
        self.assertIn(f"listenUsingTailscale: listening on 127.0.0.2:{exposed}", log)
        self.assertIn(f"useTsnetStatusZ: listening on 127.0.0.2:{status}", log)
        self.assertIn("tsnet hostname 'player-eu' ignored", log)

    def test_proxy_says_tsnet_hostname_ignored(self) -> None:
        """
        The proxy says at start that C{tsnetHostname} is ignored, and how a
        sink with C{useTsnet} reaches the relay.
        """
        status = free_port()
        proxy = self.start(
            "proxy",
            {
                "tsnetHostname": "proxy-eu",
                "portStatusZ": status,
                "sources": [
                    {
                        "id": "web",
                        "type": "http",
                        "targetSink": "relay",
                        "params": {"listen": f"tcp:{free_port()}:interface=127.0.0.1"},
                    }
                ],
                "sinks": [
                    {
                        "id": "relay",
                        "url": f"http://127.0.0.1:{free_port()}/",
                        "buckets": ["events"],
                        "databasePath": str(self.folder / "buffer.sqlite3"),
                        "useTsnet": True,
                    }
                ],
            },
        )
        proxy.wait_until_ready(f"http://127.0.0.1:{status}/")

        log = proxy.log_tail(200)
        self.assertIn("tsnetHostname 'proxy-eu' ignored", log)
        self.assertIn("sink relay: useTsnet: calls go out on the host's network", log)
