"""
C{/statusz} and C{/metrics} after a known sequence of events and drops: in
memory for each daemon's status listener, then through the three real
daemons under twistd.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from replayforge.launch import Daemon, free_port
from replayforge.metrics import (
    DaemonMetrics,
    player_samples,
    proxy_samples,
    relay_samples,
)
from replayforge.player.api import StatusAPI as PlayerStatusAPI
from replayforge.player.puller import BucketPuller
from replayforge.player.sinks.base import Sink
from replayforge.player.stats import SinkStats as PlayerSinkStats
from replayforge.player.stats import SourceStats as PlayerSourceStats
from replayforge.proxy.stats import SinkStats, SourceStats
from replayforge.relay.api import StatusAPI as RelayStatusAPI
from tests.test_forwarder import ForwarderTestCase, sink_config
from tests.test_relay_api import RelayTestCase, bucket

TOKEN = "statusz-secret-token"
ARRIVAL_TIMEOUT_SECONDS = 90.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """Each sample's name and non-empty labels, and its value."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = frozenset((k, v) for k, v in sample.labels.items() if v)
            values[(sample.name, labels)] = sample.value
    return values


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    """The key of a sample in what L{parse_metrics} returns."""
    return (name, frozenset(labels.items()))


def stub_get(stub: StubTreq, path: str) -> tuple[int, bytes]:
    """GET C{path} from a status listener whose handlers answer at once."""
    result: list[Any] = []
    stub.get("http://status" + path).addCallback(result.append)
    stub.flush()
    [response] = result
    body: list[bytes] = []
    response.content().addCallback(body.append)
    stub.flush()
    return response.code, body[0]


class RelayCountsTests(RelayTestCase):
    """The relay's status listener after known batches and refusals."""

    async def test_known_sequence(self) -> None:
        """
        Stored, handed out and refused events show in C{/statusz} and in
        C{/metrics}, per bucket, with the reason of each drop.
        """
        clock = Clock()
        relay = await self.start([bucket("logs"), bucket("small", max_kb=32)], clock)
        metrics = DaemonMetrics(
            "relay", lambda: relay_samples(5.0, relay.stats, relay.stores)
        )
        for name in relay.stores:
            relay.stats.batch_observers[name] = metrics.batch_observer(bucket=name)
        status = StubTreq(
            RelayStatusAPI(
                relay.stores, relay.stats, clock, None, metrics
            ).app.resource()
        )

        full = await relay.post_batch(["x" * 2000] * 20, buckets="small")
        stored = await relay.post_batch(
            ["a", "b", "c"], **{"RF-ENV-NAME": "prod", "RF-HOSTNAME": "edge-1"}
        )
        pulled = await relay.first_batch("?limit=2")
        refused = await relay.post_batch(["d", "e"], buckets="small")
        self.assertEqual(
            [full.code, stored.code, pulled.code, refused.code], [200, 200, 200, 429]
        )

        code, body = stub_get(status, "/statusz")
        self.assertEqual(code, 200)
        document = json.loads(body)
        logs = document["buckets"]["logs"]
        self.assertEqual(logs["rxMessagesSinceStart"], 3)
        self.assertEqual(logs["txMessagesSinceStart"], 2)
        self.assertEqual(document["buckets"]["small"]["rxMessagesSinceStart"], 20)
        self.assertEqual(document["envs"]["prod"]["rxMessagesSinceStart"], 3)
        self.assertEqual(document["hostnames"]["edge-1"]["rxMessagesSinceStart"], 3)
        self.assertEqual(document["dropped"], {"small/refused_bucket_full": 2})

        code, body = stub_get(status, "/metrics")
        samples = parse_metrics(body.decode())
        relay_key: Callable[..., Any] = lambda name, **labels: key(  # noqa: E731
            name, component="relay", **labels
        )
        self.assertEqual(
            samples[relay_key("replayforge_events_received_total", bucket="logs")], 3
        )
        self.assertEqual(
            samples[relay_key("replayforge_events_sent_total", bucket="logs")], 2
        )
        self.assertEqual(
            samples[
                relay_key(
                    "replayforge_events_dropped_total",
                    bucket="small",
                    reason="refused_bucket_full",
                )
            ],
            2,
        )
        self.assertEqual(
            samples[relay_key("replayforge_buffer_events", bucket="small")], 20
        )
        self.assertEqual(
            samples[relay_key("replayforge_batch_events_count", bucket="logs")], 1
        )
        self.assertEqual(
            samples[relay_key("replayforge_batch_events_sum", bucket="small")], 20
        )
        self.assertNotIn(b"shared-token", body)


class ProxyCountsTests(ForwarderTestCase):
    """The proxy's stats after known captures, batches and drops."""

    def test_known_sequence(self) -> None:
        """
        Captured, forwarded and dropped events show under the Go field names
        and in the metrics, with the reason of each drop.
        """
        metrics_of = DaemonMetrics(
            "proxy",
            lambda: proxy_samples(1.0, {"web": source}, {"main": self.stats}, {}),
        )
        source = SourceStats(type="http", id="web")
        self.stats = SinkStats(id="main", url="http://user:pw@relay.test/")
        self.stats.observe_batch = metrics_of.batch_observer(sink="main")
        self.start(sink_config(max_events=3, max_payload_bytes=100))

        for number in range(4):
            source.saw(f"captured event number {number}", self.clock.seconds())
        source.drop("script_error")
        self.stats.stored(3, "the last buffered event")
        self.buffer.add("a", "b", "c")
        self.buffer.add("x" * 200)

        document = self.stats.as_json(pending=0, buffer_bytes=0, cap=1000)
        self.assertEqual(document["messageSinceStart"], 3)
        self.assertEqual(document["batchCounter"], 1)
        self.assertEqual(document["appBytesSent"], len(b'["a","b","c"]'))
        self.assertEqual(document["lastMessage"], "the last buffer...")
        self.assertEqual(document["dropped"], {"payload_too_large": 1})
        sourced = source.as_json()
        self.assertEqual(sourced["messageSinceStart"], 4)
        self.assertEqual(sourced["messagesByMinute"], 4)
        self.assertEqual(sourced["lastMessage"], "captured event ...")
        self.assertEqual(sourced["dropped"], {"script_error": 1})
        source.next_minute()
        self.assertEqual(source.as_json()["messagesByMinute"], 0)

        from prometheus_client import generate_latest

        samples = parse_metrics(generate_latest(metrics_of.registry).decode())
        proxy_key: Callable[..., Any] = lambda name, **labels: key(  # noqa: E731
            name, component="proxy", **labels
        )
        self.assertEqual(
            samples[proxy_key("replayforge_events_received_total", source="web")], 4
        )
        self.assertEqual(
            samples[proxy_key("replayforge_events_forwarded_total", sink="main")], 3
        )
        self.assertEqual(
            samples[
                proxy_key(
                    "replayforge_events_dropped_total",
                    sink="main",
                    reason="payload_too_large",
                )
            ],
            1,
        )
        self.assertEqual(
            samples[proxy_key("replayforge_batch_events_sum", sink="main")], 3
        )


class PlayerCountsTests(SynchronousTestCase):
    """The player's status listener after known pulls, deliveries and drops."""

    def test_known_sequence(self) -> None:
        """
        Pulled, delivered and dead-lettered events show in C{/statusz} and
        C{/metrics}, and the drops add up by reason.
        """
        clock = Clock()
        source = PlayerSourceStats()
        for number in range(5):
            source.saw(f"pulled record {number} with a long body", 10.0)
        source.drop("script_error")
        sink_stats = PlayerSinkStats()
        sink_stats.delivered_events(3, 11.0, "delivered call")
        sink_stats.drop("sink_gave_up")

        class Puller:
            bucket = "events"
            stats = source

        class FakeSink:
            name = id = "store"
            type = "db"
            stats = sink_stats

        pullers = [cast(BucketPuller, Puller())]
        sinks = [cast(Sink, FakeSink())]
        metrics = DaemonMetrics(
            "player", lambda: player_samples(2.0, pullers, sinks, None)
        )
        sink_stats.observe_batch = metrics.batch_observer(sink="store")
        sink_stats.batch_done(4, 0.2)
        status = StubTreq(
            PlayerStatusAPI(
                pullers, sinks, clock, None, metrics, ("prod", "edge-2")
            ).app.resource()
        )
        clock.advance(90)

        code, body = stub_get(status, "/statusz")
        self.assertEqual(code, 200)
        document = json.loads(body)
        self.assertEqual(document["uptime"], "1m30s")
        self.assertEqual(document["hostName"], "edge-2")
        events = document["sources"]["events"]
        self.assertEqual(events["messageSinceStart"], 5)
        self.assertEqual(events["lastMessage"], "pulled record 4...")
        self.assertEqual(events["lastMessageDate"], "1970-01-01T00:00:10.000Z")
        store = document["sinks"]["store"]
        self.assertEqual(store["messageSinceStart"], 3)
        self.assertEqual(store["batchCounter"], 1)
        self.assertEqual(document["dropped"], {"script_error": 1, "sink_gave_up": 1})

        _, body = stub_get(status, "/metrics")
        samples = parse_metrics(body.decode())
        self.assertEqual(
            samples[
                key(
                    "replayforge_events_delivered_total",
                    component="player",
                    sink="store",
                )
            ],
            3,
        )
        self.assertEqual(
            samples[
                key(
                    "replayforge_events_dropped_total",
                    component="player",
                    source="events",
                    bucket="events",
                    reason="script_error",
                )
            ],
            1,
        )
        self.assertEqual(
            samples[
                key("replayforge_batch_events_sum", component="player", sink="store")
            ],
            4,
        )


# The proxy's source script: logs the same line for every event and fails
# on the ones that say "bad".
PROXY_SCRIPT = """
function Process(content, emit)
  info("processing an event")
  if string.find(content, "bad", 1, true) then
    local missing = nil
    return missing.field
  end
  emit("relay", content)
end
"""


def http_get(port: int, path: str) -> tuple[int, bytes]:
    """GET C{path} from a loopback listener."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def http_post(port: int, path: str, body: str) -> int:
    """POST C{body} to a loopback listener; return the status."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            "POST", path, body=body, headers={"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


class DaemonsTests(SynchronousTestCase):
    """Status pages, metrics, node reports and logs of the real daemons."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="replayforge-statusz-"))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        self.ports = {
            name: free_port()
            for name in (
                "relay",
                "relay_status",
                "proxy",
                "proxy_status",
                "player_status",
            )
        }
        self._write_configs()
        self.daemons = {
            "relay": Daemon("relay", self.folder / "relay.json", self.folder / "relay"),
            "proxy": Daemon("proxy", self.folder / "proxy.json", self.folder / "proxy"),
            "player": Daemon(
                "player",
                self.folder / "player.json",
                self.folder / "player",
                env={"LOG_LEVEL": "warn"},
            ),
        }
        for kind, daemon in self.daemons.items():
            self.addCleanup(daemon.stop)
            daemon.start()
            daemon.wait_until_ready(f"http://127.0.0.1:{self.ports[kind + '_status']}/")

    def _listen(self, name: str) -> str:
        return f"tcp:{self.ports[name]}:interface=127.0.0.1"

    def _write_configs(self) -> None:
        script = self.folder / "proxy.lua"
        script.write_text(PROXY_SCRIPT)
        relay_url = f"http://127.0.0.1:{self.ports['relay']}/"
        configs = {
            "relay": {
                "listen": self._listen("relay"),
                "listenStatusZ": self._listen("relay_status"),
                "dataDir": str(self.folder / "relay-data"),
                "buckets": {"events": {"auth": TOKEN}},
            },
            "proxy": {
                "envName": "e2e",
                "hostName": "edge-proxy",
                "listenStatusZ": self._listen("proxy_status"),
                "sources": [
                    {
                        "id": "web",
                        "type": "http",
                        "transformScript": str(script),
                        "params": {"listen": self._listen("proxy")},
                    }
                ],
                "sinks": [
                    {
                        "id": "relay",
                        "type": "http",
                        "url": relay_url,
                        "authBearer": TOKEN,
                        "buckets": ["events"],
                        "databasePath": str(self.folder / "proxy-buffer.sqlite3"),
                        "config": {"batchTimeoutSecs": 0.1},
                    }
                ],
            },
            "player": {
                "relayUrl": relay_url,
                "envName": "e2e",
                "hostName": "edge-player",
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
            },
        }
        for kind, config in configs.items():
            (self.folder / f"{kind}.json").write_text(json.dumps(config, indent=2))

    def status(self, kind: str) -> dict[str, Any]:
        """The C{/statusz} of daemon C{kind}, checked free of the token."""
        code, body = http_get(self.ports[kind + "_status"], "/statusz")
        self.assertEqual(code, 200, body)
        self.assertNotIn(TOKEN.encode(), body)
        document: dict[str, Any] = json.loads(body)
        return document

    def metrics(self, kind: str) -> Samples:
        """The C{/metrics} of daemon C{kind}, checked free of the token."""
        code, body = http_get(self.ports[kind + "_status"], "/metrics")
        self.assertEqual(code, 200, body)
        self.assertNotIn(TOKEN.encode(), body)
        return parse_metrics(body.decode())

    def wait_for(self, ready: Callable[[], bool], what: str) -> None:
        """Poll C{ready} until it holds, or fail with the daemons' logs."""
        deadline = time.monotonic() + ARRIVAL_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.25)
        self.fail(
            f"{what} did not happen\n"
            + "\n".join(
                f"--- {kind}\n{daemon.log_tail(15)}"
                for kind, daemon in self.daemons.items()
            )
        )

    def test_counts_reports_and_logs(self) -> None:
        """
        After 10 good and 2 failing events, every daemon's status page and
        metrics count them with their reasons, the relay holds the node
        reports of the proxy and the player, the script's repeated line is
        logged once, and the player logs nothing below its level.
        """
        codes = [
            http_post(
                self.ports["proxy"],
                "/rpf-db/events",
                json.dumps({"id": number, "note": "bad" if number > 10 else "ok"}),
            )
            for number in range(1, 13)
        ]
        self.assertEqual(codes, [200] * 12)

        self.wait_for(
            lambda: self.status("player")["sinks"]["store"]["delivered"] == 10,
            "delivery of 10 events",
        )

        proxy = self.status("proxy")
        web = proxy["sources"]["web"]
        self.assertEqual(
            (web["type"], web["messageSinceStart"], web["dropped"]),
            ("http", 12, {"script_error": 2}),
        )
        self.wait_for(
            lambda: self.status("proxy")["sinks"]["relay"]["forwarded"] == 10,
            "forwarding of 10 events",
        )
        sink = self.status("proxy")["sinks"]["relay"]
        self.assertEqual(sink["messageSinceStart"], 10)
        self.assertGreaterEqual(sink["batchCounter"], 1)
        self.assertGreater(sink["appBytesSent"], 0)
        self.assertEqual(proxy["dropped"], {"script_error": 2})

        proxy_metrics = self.metrics("proxy")
        self.assertEqual(
            proxy_metrics[
                key(
                    "replayforge_events_dropped_total",
                    component="proxy",
                    source="web",
                    reason="script_error",
                )
            ],
            2,
        )
        self.assertEqual(
            proxy_metrics[
                key(
                    "replayforge_events_forwarded_total",
                    component="proxy",
                    sink="relay",
                )
            ],
            10,
        )

        relay = self.status("relay")
        self.assertEqual(relay["buckets"]["events"]["rxMessagesSinceStart"], 10)
        self.assertEqual(relay["hostnames"]["edge-proxy"]["rxMessagesSinceStart"], 10)
        self.wait_for(
            lambda: (
                {"edge-proxy", "edge-player"} <= set(self.status("relay")["nodeInfo"])
            ),
            "node reports of the proxy and the player",
        )
        reports = self.status("relay")["nodeInfo"]
        self.assertEqual(reports["edge-proxy"]["envName"], "e2e")
        self.assertGreater(reports["edge-proxy"]["memoryProcess"], 0)
        self.assertIn("sinks", reports["edge-proxy"]["statuszInfo"])
        self.assertIn("diskUsedPct", reports["edge-player"])
        self.assertEqual(
            self.metrics("relay")[
                key(
                    "replayforge_events_received_total",
                    component="relay",
                    bucket="events",
                )
            ],
            10,
        )

        player = self.status("player")
        self.assertEqual(player["sources"]["events"]["messageSinceStart"], 10)
        self.assertEqual(
            self.metrics("player")[
                key(
                    "replayforge_events_delivered_total",
                    component="player",
                    sink="store",
                )
            ],
            10,
        )

        proxy_log = self.daemons["proxy"].log_path.read_text()
        self.assertEqual(proxy_log.count("[source:web] processing an event"), 1)
        player_log = self.daemons["player"].log_path.read_text()
        self.assertNotIn("pulling bucket", player_log)
        for daemon in self.daemons.values():
            self.assertNotIn(TOKEN, daemon.log_path.read_text())


class JSONLogTests(SynchronousTestCase):
    """C{twistd --logger=replayforge.logs.json_observer} writes JSON lines."""

    def test_relay_json_lines(self) -> None:
        """
        Every line a relay writes is one JSON object, below-level lines are
        left out, and the bucket token never appears.
        """
        folder = Path(tempfile.mkdtemp(prefix="replayforge-jsonlog-"))
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        status_port = free_port()
        config = folder / "relay.json"
        config.write_text(
            json.dumps(
                {
                    "listen": f"tcp:{free_port()}:interface=127.0.0.1",
                    "listenStatusZ": f"tcp:{status_port}:interface=127.0.0.1",
                    "dataDir": str(folder / "data"),
                    "buckets": {"events": {"auth": TOKEN}},
                }
            )
        )
        log_path = folder / "relay.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from twisted.scripts.twistd import run; run()",
                    "--nodaemon",
                    "--pidfile=",
                    "--logger=replayforge.logs.json_observer",
                    "replayforge-relay",
                    "-c",
                    str(config),
                ],
                cwd=folder,
                env={**os.environ, "LOG_LEVEL": "info"},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            try:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        if http_get(status_port, "/")[0] == 200:
                            break
                    except OSError:
                        time.sleep(0.1)
                else:
                    self.fail("relay not ready:\n" + log_path.read_text())
            finally:
                process.terminate()
                process.wait(15)

        lines = log_path.read_text().splitlines()
        records = [json.loads(line) for line in lines]
        messages = [record["message"] for record in records]
        self.assertTrue(
            any(message.startswith("bucket events: cap") for message in messages),
            messages,
        )
        self.assertEqual(
            {record["level"] for record in records} - {"info", "warn"}, set()
        )
        self.assertNotIn(TOKEN, log_path.read_text())
