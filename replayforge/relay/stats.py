"""
What the relay has seen, per bucket, environment and host, for C{/statusz}.

Field names are those of the Go relay, so its dashboards keep working;
C{dropped} (ours) counts every event lost or refused, by reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs

from replayforge.status import go_duration, rfc3339

SILENT_HOST_SECONDS = 3600


@attrs.define
class Traffic:
    """Counts of one bucket, environment or host."""

    kind: str
    id: str
    rx_messages_by_minute: int = 0
    last_minute_rx_messages: int = 0
    rx_messages_since_start: int = 0
    rx_last_message_date: float | None = None
    rx_query_by_minute: int = 0
    tx_message_by_minute: int = 0
    tx_messages_since_start: int = 0
    tx_query_by_minute: int = 0
    tx_last_access: float | None = None

    def received(self, count: int, now: float) -> None:
        """Count C{count} events stored by one request."""
        self.rx_messages_by_minute += count
        self.rx_messages_since_start += count
        self.rx_query_by_minute += 1
        self.rx_last_message_date = now

    def sent(self, count: int, now: float) -> None:
        """Count C{count} events handed to a player by one request."""
        self.tx_message_by_minute += count
        self.tx_messages_since_start += count
        self.tx_query_by_minute += 1
        self.tx_last_access = now

    def next_minute(self) -> None:
        """Start a new minute of per-minute counts."""
        self.last_minute_rx_messages = self.rx_messages_by_minute
        self.rx_messages_by_minute = 0
        self.rx_query_by_minute = 0
        self.tx_message_by_minute = 0
        self.tx_query_by_minute = 0

    def last_seen(self) -> float:
        """The last time this key sent or fetched anything."""
        return max(self.rx_last_message_date or 0, self.tx_last_access or 0)

    def as_json(self) -> dict[str, Any]:
        """Render with the Go relay's field names."""
        return {
            "kind": self.kind,
            "id": self.id,
            "rxMessagesByMinute": self.rx_messages_by_minute,
            "lastMinuteRxMessages": self.last_minute_rx_messages,
            "rxMessagesSinceStart": self.rx_messages_since_start,
            "rxLastMessageDate": rfc3339(self.rx_last_message_date),
            "rxQueryByMinute": self.rx_query_by_minute,
            "txMessageByMinute": self.tx_message_by_minute,
            "txMessagesSinceStart": self.tx_messages_since_start,
            "txQueryByMinute": self.tx_query_by_minute,
            "txLastAccess": rfc3339(self.tx_last_access),
        }


class RelayStats:
    """Traffic per bucket, environment and host, node reports and drops."""

    def __init__(self, bucket_names: list[str], started: float) -> None:
        self.started = started
        self.buckets = {name: Traffic("relay", name) for name in bucket_names}
        self.envs: dict[str, Traffic] = {}
        self.hostnames: dict[str, Traffic] = {}
        self.node_info: dict[str, dict[str, Any]] = {}
        self.dropped: Counter[tuple[str, str]] = Counter()
        # Per bucket, told the size and store time of every batch stored
        # (the metrics' histograms).
        self.batch_observers: dict[str, Callable[[int, float], None]] = {}

    def _keys(self, bucket: str, env: str, host: str) -> list[Traffic]:
        keyed = [self.buckets[bucket]]
        if env:
            keyed.append(self.envs.setdefault(env, Traffic("env", env)))
        if host:
            keyed.append(self.hostnames.setdefault(host, Traffic("hostname", host)))
        return keyed

    def received(
        self, bucket: str, env: str, host: str, count: int, now: float
    ) -> None:
        """Count a batch stored in C{bucket}."""
        for traffic in self._keys(bucket, env, host):
            traffic.received(count, now)

    def sent(self, bucket: str, env: str, host: str, count: int, now: float) -> None:
        """Count records handed out from C{bucket}."""
        for traffic in self._keys(bucket, env, host):
            traffic.sent(count, now)

    def batch_stored(self, bucket: str, count: int, seconds: float) -> None:
        """Tell the metrics of a batch of C{count} stored in C{seconds}."""
        observe = self.batch_observers.get(bucket)
        if observe is not None:
            observe(count, seconds)

    def drop(self, bucket: str, reason: str, count: int) -> None:
        """Count C{count} events of C{bucket} lost or refused for C{reason}."""
        if count:
            self.dropped[(bucket, reason)] += count

    def next_minute(self, now: float) -> None:
        """Roll the per-minute counts; forget hosts silent for an hour."""
        for traffic in [*self.buckets.values(), *self.envs.values()]:
            traffic.next_minute()
        for host, traffic in list(self.hostnames.items()):
            if now - traffic.last_seen() > SILENT_HOST_SECONDS:
                del self.hostnames[host]
            else:
                traffic.next_minute()
        self.forget_silent_nodes(now)

    def forget_silent_nodes(self, now: float) -> None:
        """Forget the node reports of hosts silent for an hour."""
        for host, info in list(self.node_info.items()):
            if now - info["_received"] > SILENT_HOST_SECONDS:
                del self.node_info[host]

    def node_report(self, host: str, report: dict[str, Any], now: float) -> None:
        """Keep the latest report of C{host}."""
        self.node_info[host] = {**report, "_received": now}

    def as_json(
        self, now: float, sizes: dict[str, tuple[int, int | None]]
    ) -> dict[str, Any]:
        """
        Render C{/statusz}.

        @param sizes: per bucket, the bytes in use and the cap (or L{None}).
        """
        self.forget_silent_nodes(now)
        buckets = {}
        for name, traffic in self.buckets.items():
            used, cap = sizes.get(name, (0, None))
            buckets[name] = {
                **traffic.as_json(),
                "databaseSizeKb": used // 1024,
                "databaseMaxSizeKb": (cap or 0) // 1024,
                "dropped": {
                    reason: count
                    for (bucket, reason), count in sorted(self.dropped.items())
                    if bucket == name
                },
            }
        node_info = {}
        for host, info in self.node_info.items():
            report = {key: value for key, value in info.items() if key != "_received"}
            report["lastUpdated"] = rfc3339(info["_received"])
            node_info[host] = report
        return {
            "uptime": go_duration(now - self.started),
            "buckets": buckets,
            "envs": {key: value.as_json() for key, value in self.envs.items()},
            "hostnames": {
                key: value.as_json() for key, value in self.hostnames.items()
            },
            "nodeInfo": node_info,
            "dropped": {
                f"{bucket}/{reason}": count
                for (bucket, reason), count in sorted(self.dropped.items())
            },
        }
