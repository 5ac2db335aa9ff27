"""
The relay's dashboard in a real browser, over a real relay.

A relay runs under twistd on loopback; batches, fetches and node reports give
it live figures; headless Chromium loads C{/dashboard}, lets its script fetch
and draw them, and hands back the DOM it rendered.  The assertions read what
a person would see: the buckets with their counts and sparklines, the hosts
with a silent one marked stale, and no markup or secret smuggled in.

Chromium comes from Debian's C{chromium} package, which C{.ci/run}
installs.  Without it the test is skipped, except under CI (C{CI} set),
where a missing browser is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from unittest import SkipTest

from twisted.trial.unittest import SynchronousTestCase

from replayforge.launch import Daemon, free_port

TOKEN = "browser-test-secret-token"
STALE_AFTER_SECONDS = 2
BROWSER_TIMEOUT_SECONDS = 120
INJECTED_HOST = '<b id="injected">web-3</b>'


class ChromiumUnavailable(Exception):
    """No Chromium on this machine."""


def find_chromium() -> str:
    """
    The path of Chromium.

    @raise ChromiumUnavailable: when there is none.
    """
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise ChromiumUnavailable("Chromium not found (apt-get install chromium)")


class RenderedTables(HTMLParser):
    """
    Read the rows of the dashboard's tables out of a rendered DOM.

    @ivar rows: per C{data-bucket}, C{data-env} or C{data-host} row, as
        C{("bucket", "orders")}, the text of each cell by its C{data-field}.
    @ivar row_classes: the C{class} attribute of each of those rows.
    @ivar sparklines: per bucket, the C{points} of each polyline drawn in
        its sparklines.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[tuple[str, str], dict[str, str]] = {}
        self.row_classes: dict[tuple[str, str], str] = {}
        self.sparklines: dict[str, list[str]] = {}
        self._row: tuple[str, str] | None = None
        self._field: str | None = None
        self._in_svg_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "tr":
            for kind in ("bucket", "env", "host"):
                name = attributes.get(f"data-{kind}")
                if name is not None:
                    self._row = (kind, name)
                    self.rows[self._row] = {}
                    self.row_classes[self._row] = attributes.get("class") or ""
        elif tag == "td" and self._row is not None:
            self._field = attributes.get("data-field")
            if self._field is not None:
                self.rows[self._row][self._field] = ""
        elif tag == "polyline" and self._row is not None and self._row[0] == "bucket":
            lines = self.sparklines.setdefault(self._row[1], [])
            lines.append(attributes.get("points") or "")
        elif tag == "title":
            self._in_svg_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        elif tag == "td":
            self._field = None
        elif tag == "title":
            self._in_svg_title = False

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._field is not None:
            if not self._in_svg_title:
                self.rows[self._row][self._field] += data

    def row(self, kind: str, name: str) -> dict[str, str]:
        """The cells of one row, failing clearly when it is missing."""
        key = (kind, name)
        if key not in self.rows:
            raise AssertionError(f"no {kind} row {name!r} in {sorted(self.rows)}")
        return {field: text.strip() for field, text in self.rows[key].items()}


class DashboardBrowserTests(SynchronousTestCase):
    """The dashboard, rendered by Chromium from a running relay."""

    def setUp(self) -> None:
        try:
            self.chromium = find_chromium()
        except ChromiumUnavailable as error:
            if os.environ.get("CI"):
                raise AssertionError(f"CI must run the browser test: {error}") from None
            raise SkipTest(str(error)) from None

        self.folder = Path(tempfile.mkdtemp(prefix="rf-browser-"))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        self.port = free_port()
        self.status_port = free_port()
        config = {
            "listen": f"tcp:{self.port}:interface=127.0.0.1",
            "listenStatusZ": f"tcp:{self.status_port}:interface=127.0.0.1",
            "dataDir": str(self.folder / "data"),
            "staleHostSecs": STALE_AFTER_SECONDS,
            "buckets": {
                "orders": {"auth": TOKEN, "dbMaxSizeKb": 2048},
                "audit": {"auth": TOKEN},
            },
        }
        config_path = self.folder / "relay.json"
        config_path.write_text(json.dumps(config), encoding="utf-8")
        relay = Daemon("relay", config_path, self.folder / "relay")
        self.addCleanup(relay.stop)
        relay.start()
        relay.wait_until_ready(self.status_url("/"))

    def status_url(self, path: str) -> str:
        """A URL of the relay's status listener."""
        return f"http://127.0.0.1:{self.status_port}{path}"

    def call(
        self, method: str, path: str, headers: dict[str, str], body: Any = None
    ) -> bytes:
        """Make one authorized request to the relay's API; expect a 200."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {TOKEN}", **headers},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            self.assertEqual(response.status, 200)
            answer: bytes = response.read()
            return answer

    def report(self, host: str, figures: dict[str, Any]) -> None:
        """Post a node report of C{host}."""
        headers = {"RF-BUCKET": "orders", "RF-HOSTNAME": host}
        self.call("POST", "/node-info", headers, figures)

    def wait_until_stale(self, host: str) -> None:
        """Poll the dashboard's data until C{host} is stale (at most 30 s)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with urllib.request.urlopen(
                self.status_url("/dashboard/data.json"), timeout=10
            ) as response:
                document = json.load(response)
            if any(
                entry["name"] == host and entry["stale"] for entry in document["hosts"]
            ):
                return
            time.sleep(0.2)
        raise AssertionError(f"{host} never became stale")

    def keep_reporting(self, host: str, figures: dict[str, Any]) -> threading.Event:
        """
        Report for C{host} every 0.3 s until the returned event is set, as a
        live proxy would (but faster than the stale limit).
        """
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(0.3):
                try:
                    self.report(host, figures)
                except (OSError, urllib.error.URLError):
                    return

        self.report(host, figures)
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()

        def finish() -> None:
            stop.set()
            thread.join(10)

        self.addCleanup(finish)
        return stop

    def render(self) -> str:
        """Load the dashboard in headless Chromium; return the rendered DOM."""
        profile = tempfile.mkdtemp(prefix="rf-chromium-", dir=self.folder)
        result = subprocess.run(
            [
                self.chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=3000",
                "--dump-dom",
                self.status_url("/dashboard"),
            ],
            capture_output=True,
            text=True,
            timeout=BROWSER_TIMEOUT_SECONDS,
            check=False,
            env={**os.environ, "HOME": str(self.folder)},
        )
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        return result.stdout

    def test_live_figures(self) -> None:
        """
        The rendered page lists both buckets with their counts, backlog and
        sparklines; a host that stopped reporting is marked stale while one
        that reports is live; a host name that looks like markup is shown as
        text; no token appears.
        """
        orders = {"RF-BUCKETS": "orders", "RF-ENV-NAME": "prod"}
        self.call(
            "POST", "/record-batch", {**orders, "RF-HOSTNAME": "web-1"}, list("abcde")
        )
        audit = {"RF-BUCKETS": "audit", "RF-HOSTNAME": INJECTED_HOST}
        self.call("POST", "/record-batch", audit, ["x", "y"])
        fetched = json.loads(
            self.call(
                "GET",
                "/first-batch?limit=2",
                {"RF-BUCKET": "orders", "RF-HOSTNAME": "player-1"},
            )
        )
        self.call(
            "DELETE",
            "/acknowledge-batch",
            {"RF-BUCKET": "orders", "Content-Type": "application/json"},
            {"ids": [record["id"] for record in fetched]},
        )

        self.report(
            "quiet-host",
            {"envName": "staging", "cpuPercentHost": 3.0, "apiToken": TOKEN},
        )
        self.wait_until_stale("quiet-host")
        self.keep_reporting(
            "web-1",
            {
                "envName": "prod",
                "memoryProcess": 123456789,
                "memoryHostUsedPct": 41.25,
                "cpuPercentHost": 12.5,
                "warnCount": 2,
                "errorCount": 1,
            },
        )

        dom = self.render()
        tables = RenderedTables()
        tables.feed(dom)

        orders_row = tables.row("bucket", "orders")
        self.assertEqual(
            (orders_row["received"], orders_row["sent"], orders_row["backlog"]),
            ("5", "2", "3"),
        )
        self.assertIn("2.0 MiB", orders_row["size"])
        self.assertEqual(orders_row["dropped"], "none")
        audit_row = tables.row("bucket", "audit")
        self.assertEqual((audit_row["received"], audit_row["backlog"]), ("2", "2"))
        self.assertEqual(len(tables.sparklines["orders"]), 3)
        self.assertTrue(all(tables.sparklines["orders"]))

        quiet = tables.row("host", "quiet-host")
        self.assertEqual((quiet["state"], quiet["env"]), ("stale", "staging"))
        self.assertIn("stale", tables.row_classes[("host", "quiet-host")])
        web = tables.row("host", "web-1")
        self.assertEqual(
            (web["state"], web["memory"], web["cpu"], web["warnings"], web["errors"]),
            ("live", "117.7 MiB", "12.5 %", "2", "1"),
        )
        self.assertEqual(tables.row("env", "prod")["state"], "live")
        self.assertEqual(tables.row("env", "staging")["state"], "stale")

        self.assertEqual(tables.row("host", INJECTED_HOST)["name"], INJECTED_HOST)
        self.assertNotIn('<b id="injected">', dom)
        self.assertNotIn(TOKEN, dom)
        self.assertIn("marked stale", dom)
