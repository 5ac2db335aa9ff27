"""
Tests for the relay's dashboard pages: L{replayforge.relay.pages} behind the
status listener, the backlog L{replayforge.relay.bucket} keeps for it, the
relay's minute task that feeds its history, and C{staleHostSecs}.

What the page shows is pinned down by C{tests/test_relay_overview.py}, what a
browser makes of it by C{tests/test_dashboard_browser.py}.
"""

from __future__ import annotations

import configparser
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.task import Clock, LoopingCall
from twisted.trial.unittest import SynchronousTestCase, TestCase

from replayforge.config import ConfigError, Section
from replayforge.relay.api import StatusAPI
from replayforge.relay.bucket import BucketStore
from replayforge.relay.config import BucketConfig, RelayConfig, parse_relay_config
from replayforge.relay.pages import ASSET_TYPES, Dashboard, load_assets
from replayforge.relay.stats import RelayStats
from replayforge.relay.tap import RelayService

REPOSITORY = Path(__file__).resolve().parent.parent
TOKEN = "dashboard-secret-token"
URL = "http://relay.example"
START = 1_800_000_000.0


def temporary_folder(test: TestCase) -> Path:
    """An empty folder removed when C{test} ends."""
    folder = Path(tempfile.mkdtemp(prefix="rf-dashboard-"))
    test.addCleanup(shutil.rmtree, folder, ignore_errors=True)
    return folder


def bucket(name: str, max_kb: int = 1024, ttl: int = 0) -> BucketConfig:
    """Describe one bucket, with the test's token."""
    return BucketConfig(name=name, auth=TOKEN, db_max_size_kb=max_kb, ttl_seconds=ttl)


class BacklogTests(TestCase):
    """
    L{BucketStore.backlog} counts the records waiting, without a query on
    the reactor.
    """

    timeout = 20

    async def open_store(self, folder: Path, clock: Clock) -> BucketStore:
        """Open the C{logs} bucket in C{folder}, with a one-minute TTL."""
        store = BucketStore(bucket("logs", ttl=60), folder, reactor, clock)
        self.addCleanup(store.close)
        await store.open()
        return store

    async def test_follows_every_change(self) -> None:
        """
        Appends add to the backlog, acknowledgements and purges take from it;
        a repeated batch adds nothing.
        """
        clock = Clock()
        store = await self.open_store(temporary_folder(self), clock)
        self.assertEqual(store.backlog, 0)

        await store.append(["a", "b", "c"], "batch-1")
        await store.append(["a", "b", "c"], "batch-1")
        self.assertEqual(store.backlog, 3)

        ids = [record.id for record in await store.first(10)]
        await store.acknowledge(ids[:1])
        await store.acknowledge(ids[:1])
        self.assertEqual(store.backlog, 2)

        clock.advance(61)
        await store.append(["young"])
        await store.purge_expired()
        self.assertEqual(store.backlog, 1)

    async def test_counted_when_opened(self) -> None:
        """A store opened over a file with records starts with their count."""
        folder = temporary_folder(self)
        first = BucketStore(bucket("logs"), folder, reactor, Clock())
        await first.open()
        await first.append(["a", "b"])
        first.close()

        store = await self.open_store(folder, Clock())

        self.assertEqual(store.backlog, 2)


def relay_config(data_dir: Path, stale_after: int = 180) -> RelayConfig:
    """A relay with the C{logs} and C{audit} buckets."""
    return RelayConfig(
        buckets={"logs": bucket("logs"), "audit": bucket("audit", max_kb=0)},
        listen="tcp:0:interface=127.0.0.1",
        listen_status=None,
        data_dir=data_dir,
        max_batch=1000,
        max_body_bytes=1024 * 1024,
        use_tailnet=False,
        tailnet_hostname="relay",
        stale_host_seconds=stale_after,
    )


class DashboardPagesTests(TestCase):
    """
    The status listener serves the page, its assets and its data under
    C{/dashboard}.
    """

    timeout = 20

    async def setUp(self) -> None:  # type: ignore[override]
        self.clock = Clock()
        self.clock.advance(START)
        config = relay_config(temporary_folder(self))
        self.stores = {
            name: BucketStore(settings, config.data_dir, reactor, self.clock)
            for name, settings in config.buckets.items()
        }
        for store in self.stores.values():
            self.addCleanup(store.close)
            await store.open()
        self.stats = RelayStats(list(self.stores), self.clock.seconds())
        self.dashboard = Dashboard(self.stores, self.stats, self.clock, 180)
        self.status = StubTreq(
            StatusAPI(
                self.stores, self.stats, self.clock, self.dashboard
            ).app.resource()
        )

    async def get(self, path: str, treq: StubTreq | None = None) -> Any:
        """GET C{path}; return the response with its body as C{.body}."""
        treq = treq or self.status
        pump = LoopingCall(treq.flush)
        pump.clock = reactor
        pump.start(0.002)
        try:
            response = await treq.get(URL + path, allow_redirects=False)
            response.body = await response.content()
        finally:
            pump.stop()
        return response

    def header(self, response: Any, name: str) -> str:
        """The one value of header C{name}."""
        [value] = response.headers.getRawHeaders(name)
        return str(value)

    async def test_page(self) -> None:
        """
        C{/dashboard} is an HTML page whose script and style come from the
        relay itself, under a policy that allows nothing else.
        """
        response = await self.get("/dashboard")

        self.assertEqual(response.code, 200)
        self.assertEqual(
            self.header(response, "Content-Type"), "text/html; charset=utf-8"
        )
        policy = self.header(response, "Content-Security-Policy")
        self.assertIn("default-src 'none'", policy)
        self.assertIn("script-src 'self'", policy)
        self.assertIn(b'<script src="dashboard/dashboard.js" defer>', response.body)
        self.assertNotIn(b"<script>", response.body)
        self.assertNotIn(b"://", response.body)

    async def test_trailing_slash(self) -> None:
        """C{/dashboard/} sends the browser to C{/dashboard}, relatively."""
        response = await self.get("/dashboard/")

        self.assertEqual(response.code, 301)
        self.assertEqual(self.header(response, "Location"), "../dashboard")

    async def test_assets(self) -> None:
        """The script and the style are served with their content types."""
        for name, kind in [
            ("dashboard.js", "text/javascript; charset=utf-8"),
            ("dashboard.css", "text/css; charset=utf-8"),
        ]:
            response = await self.get(f"/dashboard/{name}")
            self.assertEqual(response.code, 200, name)
            self.assertEqual(self.header(response, "Content-Type"), kind)
            self.assertEqual(self.header(response, "X-Content-Type-Options"), "nosniff")
            self.assertEqual(response.body, load_assets()[name])

    async def test_unknown_file(self) -> None:
        """Any other file under C{/dashboard/} is not found."""
        for path in [
            "/dashboard/secret.txt",
            "/dashboard/index.html",
            "/dashboard/a/b",
        ]:
            response = await self.get(path)
            self.assertEqual(response.code, 404, path)

    async def test_data(self) -> None:
        """
        C{dashboard/data.json} shows every bucket with its live backlog and
        its recorded minutes, never a token, and is never cached.
        """
        await self.stores["logs"].append(["a", "b", "c"])
        self.stats.received("logs", "prod", "web-1", 3, self.clock.seconds())
        self.dashboard.record_minute()
        self.stats.next_minute(self.clock.seconds())
        self.clock.advance(60)

        response = await self.get("/dashboard/data.json")

        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "Content-Type"), "application/json")
        self.assertEqual(self.header(response, "Cache-Control"), "no-store")
        self.assertNotIn(TOKEN.encode(), response.body)
        document = json.loads(response.body)
        self.assertEqual(document["staleAfterSeconds"], 180)
        buckets = {entry["name"]: entry for entry in document["buckets"]}
        self.assertEqual(sorted(buckets), ["audit", "logs"])
        self.assertEqual(buckets["logs"]["backlog"], 3)
        self.assertEqual(
            [(point["rx"], point["backlog"]) for point in buckets["logs"]["history"]],
            [(3, 3), (0, 3)],
        )
        self.assertEqual(buckets["audit"]["maxBytes"], None)

    async def test_without_dashboard(self) -> None:
        """A status listener built without a dashboard answers 404 there."""
        bare = StubTreq(StatusAPI(self.stores, self.stats, self.clock).app.resource())

        response = await self.get("/dashboard", bare)

        self.assertEqual(response.code, 404)


class RelayServiceMinuteTests(TestCase):
    """The relay's minute task feeds the history before rolling the counts."""

    timeout = 20

    async def test_minute_recorded_then_rolled(self) -> None:
        """
        At the end of a minute its counts go to the history, and the running
        minute starts again from zero.
        """
        service = RelayService(relay_config(temporary_folder(self)), reactor)
        for store in service.stores.values():
            self.addCleanup(store.close)
            await store.open()
        await service.stores["logs"].append(["a", "b"])
        service.stats.received("logs", "", "", 2, 0)

        service.next_minute()

        [minute] = service.dashboard.history.minutes("logs")
        self.assertEqual((minute.received, minute.sent, minute.backlog), (2, 0, 2))
        self.assertEqual(service.stats.buckets["logs"].rx_messages_by_minute, 0)


class StaleHostConfigTests(SynchronousTestCase):
    """C{staleHostSecs} sets when the dashboard calls a host stale."""

    def parse(self, raw: dict[str, Any]) -> RelayConfig:
        """Parse a relay document with one bucket and C{raw}."""
        document = {"buckets": {"logs": {"auth": TOKEN}}, **raw}
        return parse_relay_config(Section(document, "relay.yaml", "", Path()))

    def test_default(self) -> None:
        """Without the key, three missed minute reports make a host stale."""
        self.assertEqual(self.parse({}).stale_host_seconds, 180)

    def test_set(self) -> None:
        """The key sets the limit in seconds."""
        self.assertEqual(self.parse({"staleHostSecs": 30}).stale_host_seconds, 30)

    def test_invalid(self) -> None:
        """A limit below one second is refused with its key."""
        error = self.assertRaises(ConfigError, self.parse, {"staleHostSecs": 0})
        self.assertIn("staleHostSecs", str(error))


class PackagingTests(SynchronousTestCase):
    """The dashboard's files ship in the package."""

    def test_assets_readable_from_package(self) -> None:
        """Every file the dashboard serves is read from the installed package."""
        assets = load_assets()
        self.assertEqual(sorted(assets), sorted(ASSET_TYPES))
        self.assertTrue(all(assets.values()))

    def test_package_data(self) -> None:
        """C{setup.cfg} ships the dashboard folder with the relay package."""
        setup = configparser.ConfigParser()
        setup.read(REPOSITORY / "setup.cfg")
        self.assertIn(
            "dashboard/*",
            setup["options.package_data"]["replayforge.relay"].split(),
        )
