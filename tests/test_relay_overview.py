"""
Tests for what the relay's dashboard shows: the hour of minutes kept by
L{replayforge.relay.history} and the document L{replayforge.relay.overview}
builds from C{/statusz}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from replayforge.relay.history import MINUTES_KEPT, MinuteSample, TrafficHistory
from replayforge.relay.overview import Overview
from replayforge.relay.stats import RelayStats

TOKEN = "dashboard-secret-token"
START = 1_800_000_000.0


def sample(minute: int, received: int = 0) -> MinuteSample:
    """One minute of traffic, ending C{minute} minutes after L{START}."""
    return MinuteSample(
        ended=START + 60 * minute, received=received, sent=0, backlog=minute
    )


class TrafficHistoryTests(SynchronousTestCase):
    """L{TrafficHistory} keeps the last hour of every bucket."""

    def test_keeps_the_last_hour(self) -> None:
        """
        Past L{MINUTES_KEPT} minutes the oldest falls off; the rest stay in
        order, oldest first.
        """
        history = TrafficHistory(["logs"])
        for minute in range(MINUTES_KEPT + 5):
            history.record({"logs": sample(minute, received=minute)})

        kept = history.minutes("logs")

        self.assertEqual(len(kept), MINUTES_KEPT)
        self.assertEqual(kept[0], sample(5, received=5))
        self.assertEqual(kept[-1], sample(MINUTES_KEPT + 4, received=MINUTES_KEPT + 4))

    def test_buckets_apart(self) -> None:
        """
        Each bucket has its own minutes; a bucket the history does not know
        is neither recorded nor reported.
        """
        history = TrafficHistory(["logs", "audit"])
        history.record({"logs": sample(1, 10), "unknown": sample(1, 99)})

        self.assertEqual(history.minutes("logs"), [sample(1, 10)])
        self.assertEqual(history.minutes("audit"), [])
        self.assertEqual(history.minutes("unknown"), [])


def status_of(stats: RelayStats, now: float) -> dict[str, Any]:
    """The C{/statusz} document of C{stats}, with no file sizes."""
    return stats.as_json(now, {})


class OverviewTests(SynchronousTestCase):
    """L{Overview} turns the status document into what the page shows."""

    def setUp(self) -> None:
        self.stats = RelayStats(["logs", "audit"], START)
        self.history = TrafficHistory(["logs", "audit"])

    def build(self, now: float, stale_after: float = 180) -> dict[str, Any]:
        """Build the dashboard document at C{now}."""
        sizes = {"logs": (3000, 4096), "audit": (5000, None)}
        return Overview(now, stale_after).build(
            status_of(self.stats, now), sizes, {"logs": 7, "audit": 0}, self.history
        )

    def host(self, document: dict[str, Any], name: str) -> dict[str, Any]:
        """The entry of host C{name}."""
        [entry] = [host for host in document["hosts"] if host["name"] == name]
        return entry

    def test_bucket_figures(self) -> None:
        """
        A bucket shows its traffic of the running minute and since start, its
        backlog, its size against its cap and its drops.
        """
        self.stats.received("logs", "prod", "web-1", 5, START + 1)
        self.stats.sent("logs", "", "player-1", 2, START + 2)
        self.stats.drop("logs", "refused_bucket_full", 3)

        [logs, audit] = self.build(START + 10)["buckets"]

        self.assertEqual(
            {key: logs[key] for key in ("name", "rxPerMinute", "txPerMinute")},
            {"name": "logs", "rxPerMinute": 5, "txPerMinute": 2},
        )
        self.assertEqual((logs["rxSinceStart"], logs["txSinceStart"]), (5, 2))
        self.assertEqual((logs["rxAgeSeconds"], logs["txAgeSeconds"]), (9, 8))
        self.assertEqual(logs["backlog"], 7)
        self.assertEqual((logs["usedBytes"], logs["maxBytes"]), (3000, 4096))
        self.assertEqual(logs["dropped"], {"refused_bucket_full": 3})
        self.assertFalse(logs["full"])
        self.assertEqual((audit["maxBytes"], audit["full"]), (None, False))
        self.assertEqual(audit["rxAgeSeconds"], None)

    def test_full_bucket(self) -> None:
        """A bucket past its cap is marked full."""
        document = Overview(START, 180).build(
            status_of(self.stats, START),
            {"logs": (4097, 4096)},
            {},
            self.history,
        )
        self.assertTrue(document["buckets"][0]["full"])

    def test_history_then_running_minute(self) -> None:
        """
        The sparklines' points are the recorded minutes, oldest first, then
        the minute still running.
        """
        self.history.record({"logs": sample(1, received=4)})
        self.history.record({"logs": sample(2, received=6)})
        self.stats.received("logs", "", "", 3, START + 150)

        logs = self.build(START + 170)["buckets"][0]

        self.assertEqual([point["rx"] for point in logs["history"]], [4, 6, 3])
        self.assertEqual([point["backlog"] for point in logs["history"]], [1, 2, 7])

    def test_host_stale_after_the_limit(self) -> None:
        """
        A host is live up to the stale limit after its last report, and
        stale past it.
        """
        self.stats.node_report("web-1", {"cpuPercentHost": 5.0}, START)

        self.assertFalse(self.host(self.build(START + 180), "web-1")["stale"])
        late = self.host(self.build(START + 181), "web-1")
        self.assertTrue(late["stale"])
        self.assertEqual(late["reportAgeSeconds"], 181)

    def test_traffic_keeps_a_host_live(self) -> None:
        """
        A host that posts batches but sends no node reports is live while it
        posts, and its report is shown as missing.
        """
        self.stats.received("logs", "prod", "web-2", 1, START + 100)

        entry = self.host(self.build(START + 150), "web-2")

        self.assertFalse(entry["stale"])
        self.assertEqual((entry["lastReport"], entry["reportAgeSeconds"]), (None, None))
        self.assertEqual(entry["rxSinceStart"], 1)

    def test_node_figures(self) -> None:
        """
        The figures of a node report are shown by their Go names, with the
        host's environment; a figure that is not a number is shown as missing.
        """
        report = {
            "memoryProcess": 123456,
            "memoryHostUsedPct": 41.5,
            "cpuPercentHost": "very busy",
            "warnCount": 2,
            "errorCount": True,
            "envName": "prod",
        }
        self.stats.node_report("web-1", report, START)

        entry = self.host(self.build(START), "web-1")

        self.assertEqual(
            {key: entry[key] for key in report if key != "envName"},
            {
                "memoryProcess": 123456,
                "memoryHostUsedPct": 41.5,
                "cpuPercentHost": None,
                "warnCount": 2,
                "errorCount": None,
            },
        )
        self.assertEqual(entry["env"], "prod")

    def test_only_known_figures_leave(self) -> None:
        """
        Whatever else a node report carries (a nested status, a token) is not
        in the dashboard's document.
        """
        report = {
            "cpuPercentHost": 1.0,
            "statuszInfo": {"sinks": {"relay": {"authBearer": TOKEN}}},
            "apiToken": TOKEN,
            "envName": {"not": "text"},
        }
        self.stats.node_report("web-1", report, START)

        document = self.build(START)

        self.assertNotIn(TOKEN, json.dumps(document))
        self.assertNotIn("statuszInfo", json.dumps(document))
        self.assertEqual(self.host(document, "web-1")["env"], "")

    def test_environments(self) -> None:
        """
        An environment is listed from its traffic or from its hosts' reports,
        with how many of its hosts are stale; it is stale only when all of
        its signs of life are old.
        """
        self.stats.received("logs", "prod", "web-1", 4, START)
        self.stats.node_report("web-2", {"envName": "prod"}, START + 200)
        self.stats.node_report("db-1", {"envName": "staging"}, START)

        envs = {env["name"]: env for env in self.build(START + 300)["envs"]}

        self.assertEqual(sorted(envs), ["prod", "staging"])
        self.assertEqual((envs["prod"]["hosts"], envs["prod"]["staleHosts"]), (1, 0))
        self.assertEqual(
            (envs["prod"]["rxSinceStart"], envs["prod"]["stale"]), (4, False)
        )
        self.assertEqual(envs["prod"]["ageSeconds"], 100)
        self.assertEqual(
            (envs["staging"]["staleHosts"], envs["staging"]["stale"]), (1, True)
        )

    def test_broken_status_document(self) -> None:
        """
        Fields of unexpected shapes in the status document are shown as
        missing instead of breaking the page.
        """
        status = {
            "uptime": "1s",
            "buckets": {"logs": {"rxMessagesByMinute": "many", "dropped": []}},
            "envs": [],
            "hostnames": {"web-1": {"rxLastMessageDate": "yesterday"}},
            "nodeInfo": {"web-2": "not a report"},
        }

        document = Overview(START, 180).build(status, {}, {}, TrafficHistory([]))

        self.assertEqual(document["buckets"][0]["rxPerMinute"], 0)
        self.assertEqual(document["buckets"][0]["dropped"], {})
        self.assertEqual(
            [(host["name"], host["stale"]) for host in document["hosts"]],
            [("web-1", True), ("web-2", True)],
        )
