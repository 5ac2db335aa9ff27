"""
What the relay's dashboard shows, built from the C{/statusz} document.

Every bucket with its traffic, backlog, size against its cap and the last
hour minute by minute; every environment and host with its last report and
the figures people look at first (memory, CPU, warnings, errors).  A host or
environment that gave no sign of life (a node report, a batch posted or
fetched) for longer than the stale limit is marked stale.

Only the fields named here leave the relay: a node report may carry
anything, and whatever else it holds is not shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from replayforge.relay.history import MinuteSample, TrafficHistory
from replayforge.status import parse_rfc3339, rfc3339

# Figures of a node report shown on the dashboard, by the Go field names.
NODE_FIGURES = (
    "memoryProcess",
    "memoryHostTotal",
    "memoryHostUsedPct",
    "cpuPercentHost",
    "diskUsedPct",
    "warnCount",
    "errorCount",
)


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _integer(value: Any) -> int:
    number = _number(value)
    return int(number) if number is not None else 0


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _latest(*times: float | None) -> float | None:
    known = [time for time in times if time is not None]
    return max(known) if known else None


def _last_traffic(counts: Mapping[str, Any]) -> float | None:
    """The last time a bucket, environment or host sent or fetched anything."""
    return _latest(
        parse_rfc3339(counts.get("rxLastMessageDate")),
        parse_rfc3339(counts.get("txLastAccess")),
    )


def _traffic(counts: Mapping[str, Any]) -> dict[str, int]:
    """The counts every bucket, environment and host row shows."""
    return {
        "rxPerMinute": _integer(counts.get("rxMessagesByMinute")),
        "txPerMinute": _integer(counts.get("txMessageByMinute")),
        "rxSinceStart": _integer(counts.get("rxMessagesSinceStart")),
        "txSinceStart": _integer(counts.get("txMessagesSinceStart")),
    }


class Overview:
    """
    Build the dashboard's document at one moment.

    @ivar now: the relay's clock when the document is built.
    @ivar stale_after: seconds of silence after which a host is stale.
    """

    def __init__(self, now: float, stale_after: float) -> None:
        self.now = now
        self.stale_after = stale_after

    def _liveness(self, last_seen: float | None) -> dict[str, Any]:
        age = self._age(last_seen)
        return {
            "lastSeen": rfc3339(last_seen) if last_seen is not None else None,
            "ageSeconds": age,
            "stale": age is None or age > self.stale_after,
        }

    def _age(self, moment: float | None) -> int | None:
        return None if moment is None else max(0, int(self.now - moment))

    def build(
        self,
        status: Mapping[str, Any],
        sizes: Mapping[str, tuple[int, int | None]],
        backlogs: Mapping[str, int],
        history: TrafficHistory,
    ) -> dict[str, Any]:
        """
        Render the dashboard's document.

        @param status: the relay's C{/statusz} document.
        @param sizes: per bucket, the bytes in use and the cap (or L{None}).
        @param backlogs: per bucket, the records waiting for a player.
        """
        node_info = _mapping(status.get("nodeInfo"))
        traffic = _mapping(status.get("hostnames"))
        hosts = [
            self._host(name, _mapping(traffic.get(name)), _mapping(node_info.get(name)))
            for name in sorted({*traffic, *node_info})
        ]
        return {
            "now": rfc3339(self.now),
            "uptime": status.get("uptime", ""),
            "staleAfterSeconds": self.stale_after,
            "buckets": [
                self._bucket(name, counts, sizes, backlogs, history)
                for name, counts in _mapping(status.get("buckets")).items()
            ],
            "envs": self._envs(_mapping(status.get("envs")), hosts),
            "hosts": hosts,
        }

    def _bucket(
        self,
        name: str,
        counts: Any,
        sizes: Mapping[str, tuple[int, int | None]],
        backlogs: Mapping[str, int],
        history: TrafficHistory,
    ) -> dict[str, Any]:
        counts = _mapping(counts)
        used, cap = sizes.get(name, (0, None))
        backlog = backlogs.get(name, 0)
        running = MinuteSample(
            ended=self.now,
            received=_integer(counts.get("rxMessagesByMinute")),
            sent=_integer(counts.get("txMessageByMinute")),
            backlog=backlog,
        )
        minutes = [*history.minutes(name), running]
        return {
            "name": name,
            **_traffic(counts),
            "rxLastMinute": _integer(counts.get("lastMinuteRxMessages")),
            "rxAgeSeconds": self._age(parse_rfc3339(counts.get("rxLastMessageDate"))),
            "txAgeSeconds": self._age(parse_rfc3339(counts.get("txLastAccess"))),
            "backlog": backlog,
            "usedBytes": used,
            "maxBytes": cap,
            "full": cap is not None and used > cap,
            "dropped": {
                str(reason): _integer(count)
                for reason, count in _mapping(counts.get("dropped")).items()
            },
            "history": [minute.as_json() for minute in minutes],
        }

    def _host(
        self, name: str, counts: Mapping[str, Any], report: Mapping[str, Any]
    ) -> dict[str, Any]:
        last_report = parse_rfc3339(report.get("lastUpdated"))
        env = report.get("envName")
        return {
            "name": name,
            "env": env if isinstance(env, str) else "",
            "reportAgeSeconds": self._age(last_report),
            "lastReport": rfc3339(last_report) if last_report is not None else None,
            **{figure: _number(report.get(figure)) for figure in NODE_FIGURES},
            **_traffic(counts),
            **self._liveness(_latest(last_report, _last_traffic(counts))),
        }

    def _envs(
        self, traffic: Mapping[str, Any], hosts: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        names = {*traffic, *(host["env"] for host in hosts if host["env"])}
        envs = []
        for name in sorted(names):
            counts = _mapping(traffic.get(name))
            members = [host for host in hosts if host["env"] == name]
            last_seen = _latest(
                _last_traffic(counts),
                *(parse_rfc3339(host["lastSeen"]) for host in members),
            )
            envs.append(
                {
                    "name": name,
                    "hosts": len(members),
                    "staleHosts": sum(1 for host in members if host["stale"]),
                    **_traffic(counts),
                    **self._liveness(last_seen),
                }
            )
        return envs
