"""
Tests for C{replayforge status URL}: a relay's C{/statusz} printed as tables,
or one line and exit status 1 when it cannot be read.

A small HTTP server of the test's own, on loopback, answers what each test
needs; one test reads a real relay started under twistd.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import sysconfig
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from replayforge.cli import main
from replayforge.launch import Daemon, free_port
from replayforge.relay.stats import RelayStats
from replayforge.statusview import (
    StatusUnavailable,
    render_status,
    statusz_url,
)

NOW = 1_800_000_000.0
TOKEN = "status-test-token"


def sample_status() -> dict[str, Any]:
    """A status document as a relay with traffic renders it."""
    stats = RelayStats(["orders", "audit"], NOW - 3725)
    stats.received("orders", "prod", "web-1", 1500, NOW - 30)
    stats.sent("orders", "", "player-1", 700, NOW - 5)
    stats.drop("audit", "refused_bucket_full", 4)
    stats.node_report(
        "web-1",
        {
            "envName": "prod",
            "memoryProcess": 52428800,
            "memoryHostUsedPct": 63.25,
            "cpuPercentHost": 7.5,
            "warnCount": 3,
            "errorCount": 0,
        },
        NOW - 42,
    )
    return stats.as_json(NOW, {"orders": (2 * 1024 * 1024, 1024**3)})


class Canned(BaseHTTPRequestHandler):
    """Answer every GET with the server's canned status code and body."""

    def do_GET(self) -> None:
        server: Any = self.server
        server.paths.append(self.path)
        if server.hang.is_set():
            server.release.wait(30)
            return
        self.send_response(server.code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(server.body)))
        self.end_headers()
        self.wfile.write(server.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test's output quiet."""


@contextmanager
def canned_server(code: int = 200, body: bytes = b"") -> Iterator[Any]:
    """Run a loopback server answering C{code} and C{body}."""
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    server.code, server.body, server.paths = code, body, []
    server.hang, server.release = threading.Event(), threading.Event()
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def base_url(server: Any) -> str:
    """The server's base URL."""
    return f"http://127.0.0.1:{server.server_address[1]}"


class Run:
    """The exit status and the output of one run."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code = code
        self.out = out
        self.err = err.splitlines()


def status(*arguments: str) -> Run:
    """Run C{replayforge status ARGUMENTS} in the process."""
    out, err = io.StringIO(), io.StringIO()
    code = main(["status", *arguments], io.BytesIO(), out, err)
    return Run(code, out.getvalue(), err.getvalue())


class StatuszUrlTests(SynchronousTestCase):
    """L{statusz_url} accepts the listener's URL or its statusz URL."""

    def test_forms(self) -> None:
        """A base URL, with or without a slash, or the statusz URL itself."""
        for given in [
            "http://127.0.0.1:8082",
            "http://127.0.0.1:8082/",
            "http://127.0.0.1:8082/statusz",
            "http://127.0.0.1:8082/statusz/",
        ]:
            self.assertEqual(statusz_url(given), "http://127.0.0.1:8082/statusz")

    def test_prefix_kept(self) -> None:
        """A path in front, as behind the player's relay proxy, is kept."""
        self.assertEqual(
            statusz_url("https://127.0.0.1/relay-proxy"),
            "https://127.0.0.1/relay-proxy/statusz",
        )

    def test_not_http(self) -> None:
        """Anything but an http or https URL is refused."""
        for given in ["ftp://127.0.0.1/", "127.0.0.1:8082", "http://"]:
            self.assertRaises(StatusUnavailable, statusz_url, given)


class RenderTests(SynchronousTestCase):
    """L{render_status} lays the status out in tables."""

    def lines(self) -> list[str]:
        """The rendered sample status."""
        return render_status(sample_status(), NOW).splitlines()

    def row(self, first: str) -> list[str]:
        """The cells of the row starting with C{first}."""
        [row] = [line.split() for line in self.lines() if line.startswith(first)]
        return row

    def test_summary(self) -> None:
        """The first line sums up the relay."""
        self.assertEqual(
            self.lines()[0],
            "relay up 1h2m5s: 2 buckets, 1 environments, 2 hosts, 1 node reports",
        )

    def test_buckets(self) -> None:
        """
        Each bucket shows its per-minute and total counts, its size against
        its cap and its drops.
        """
        self.assertEqual(
            self.row("orders"),
            [
                "orders",
                "1,500",
                "700",
                "1,500",
                "700",
                "2.0",
                "MiB",
                "/",
                "1.0",
                "GiB",
                "0",
            ],
        )
        self.assertEqual(self.row("audit")[-5:], ["0", "B", "/", "none", "4"])

    def test_hosts_and_nodes(self) -> None:
        """
        A host shows its traffic and when it last sent and fetched; its node
        report its environment, age and figures.
        """
        rows = [line.split() for line in self.lines() if line.startswith("web-1")]

        self.assertEqual(
            rows,
            [
                ["web-1", "1,500", "0", "1,500", "0", "30s", "ago", "never"],
                [
                    "web-1",
                    "prod",
                    "42s",
                    "ago",
                    "50.0",
                    "MiB",
                    "63.2%",
                    "7.5%",
                    "3",
                    "0",
                ],
            ],
        )
        self.assertEqual(self.row("player-1")[-3:], ["never", "5s", "ago"])

    def test_odd_figures(self) -> None:
        """
        Figures that are not finite numbers (another relay may pass them
        on) show as C{-}, never as a traceback.
        """
        status = sample_status()
        status["nodeInfo"]["web-1"].update(
            memoryProcess=float("inf"), cpuPercentHost=float("nan"), warnCount="3"
        )
        [row] = [
            line.split()
            for line in render_status(status, NOW).splitlines()
            if line.startswith("web-1") and "prod" in line
        ]
        self.assertEqual(row[4:], ["-", "63.2%", "-", "-", "0"])


class StatusCommandTests(SynchronousTestCase):
    """The command fetches the status and prints it, or fails in one line."""

    def test_prints_tables(self) -> None:
        """A relay's status is fetched from C{/statusz} and printed."""
        body = json.dumps(sample_status()).encode()
        with canned_server(200, body) as server:
            run = status(base_url(server))

        self.assertEqual((run.code, run.err), (0, []))
        self.assertEqual(server.paths, ["/statusz"])
        self.assertIn("BUCKET", run.out)
        self.assertIn("orders", run.out)

    def assert_fails(self, run: Run, *parts: str) -> None:
        """The run exited 1 with one error line holding each of C{parts}."""
        self.assertEqual((run.code, run.out), (1, ""))
        self.assertEqual(len(run.err), 1, run.err)
        self.assertTrue(run.err[0].startswith("replayforge status: "))
        for part in parts:
            self.assertIn(part, run.err[0])

    def test_not_json(self) -> None:
        """An answer that is not JSON is named as such."""
        with canned_server(200, b"<html>hello</html>") as server:
            self.assert_fails(status(base_url(server)), "did not answer JSON")

    def test_not_a_relay(self) -> None:
        """JSON without buckets is not a relay's status."""
        with canned_server(200, b'{"sinks": {}}') as server:
            self.assert_fails(status(base_url(server)), "no buckets")

    def test_error_status(self) -> None:
        """An error answer is reported with its code."""
        with canned_server(404, b"not here") as server:
            self.assert_fails(status(base_url(server)), "answered 404")

    def test_unreachable(self) -> None:
        """A port nobody listens on is reported, not raised."""
        self.assert_fails(status(f"http://127.0.0.1:{free_port()}"), "cannot reach")

    def test_timeout(self) -> None:
        """A relay that never answers is given up on after C{--timeout}."""
        with canned_server() as server:
            server.hang.set()
            self.assert_fails(
                status(base_url(server), "--timeout", "0.5"), "cannot reach"
            )

    def test_bad_url(self) -> None:
        """A URL that is not http is refused before anything is sent."""
        self.assert_fails(status("ftp://127.0.0.1/"), "expected an http")


class RelayStatusTests(SynchronousTestCase):
    """The installed command against a relay running under twistd."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="rf-status-"))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        self.status_port = free_port()
        config = {
            "listen": f"tcp:{free_port()}:interface=127.0.0.1",
            "listenStatusZ": f"tcp:{self.status_port}:interface=127.0.0.1",
            "dataDir": str(self.folder / "data"),
            "buckets": {"orders": {"auth": TOKEN}, "audit": {"auth": TOKEN}},
        }
        path = self.folder / "relay.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        self.relay = Daemon("relay", path, self.folder / "relay")
        self.addCleanup(self.relay.stop)
        self.relay.start()
        self.relay.wait_until_ready(f"http://127.0.0.1:{self.status_port}/")

    def run_installed(self, url: str) -> subprocess.CompletedProcess[str]:
        """Run the console script's C{status} on C{url}."""
        command = Path(sysconfig.get_path("scripts")) / "replayforge"
        return subprocess.run(
            [str(command), "status", url, "--timeout", "10"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def test_running_relay(self) -> None:
        """Every bucket of a running relay is listed, and no token; exit 0."""
        result = self.run_installed(f"http://127.0.0.1:{self.status_port}/")

        self.assertEqual((result.returncode, result.stderr), (0, ""))
        buckets = [line.split()[0] for line in result.stdout.splitlines()[3:5]]
        self.assertEqual(sorted(buckets), ["audit", "orders"])
        self.assertNotIn(TOKEN, result.stdout)

    def test_stopped_relay(self) -> None:
        """Once the relay is gone: exit 1 and one line."""
        self.relay.stop()
        with socket.socket() as probe:
            refused = probe.connect_ex(("127.0.0.1", self.status_port))
        self.assertNotEqual(refused, 0)

        result = self.run_installed(f"http://127.0.0.1:{self.status_port}")

        self.assertEqual((result.returncode, result.stdout), (1, ""))
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
