"""
Node reports: every minute a proxy or player tells its relay how it fares.

A report holds the process's and the host's memory, the host's CPU and
disk use, the daemon's warning and error counts, its environment name and
a summary of its own status page, under the Go daemons' field names.  It is
posted to C{<relay url>node-info} with the bucket and token the daemon
already uses there; the relay keeps the latest report of each host for its
C{/statusz}.  A report that fails is logged (at most once per 30 seconds
for the same failure) and forgotten: reports never hold back events.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import psutil
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from replayforge.logs import DAEMON, LogSettings, mask_text, mask_value
from replayforge.logthrottle import ThrottledLog
from replayforge.status import rfc3339

log = Logger()

REPORT_INTERVAL_SECONDS = 60.0
REQUEST_TIMEOUT_SECONDS = 10.0


class Post(Protocol):
    """Send a POST request; fire with a treq response."""

    def __call__(
        self,
        url: str,
        /,
        *,
        data: bytes,
        headers: dict[bytes | str, list[bytes | str]],
        timeout: float,
    ) -> Deferred[Any]:
        """Send C{data} to C{url}."""
        ...


@attrs.frozen
class NodeTarget:
    """
    A relay to report to.

    @ivar relay_url: the relay's base URL, ending with C{/}.
    @ivar bucket: the bucket whose token authorizes the report.
    @ivar post: the daemon's own client for that relay.
    """

    relay_url: str
    bucket: str
    token: str = attrs.field(repr=False)
    post: Post = attrs.field(repr=False)


def host_figures(disk_path: str) -> dict[str, Any]:
    """
    Measure this process and its host as the Go daemons reported them.

    @param disk_path: a path on the disk whose use is reported (the
        daemon's data folder).
    """
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(disk_path)
    return {
        "memoryProcess": psutil.Process().memory_info().rss,
        "memoryHostTotal": memory.total,
        "memoryHostFree": memory.available,
        "memoryHostUsedPct": memory.percent,
        # Since the previous call: a report every minute gives the last minute.
        "cpuPercentHost": psutil.cpu_percent(interval=None),
        "diskTotal": disk.total,
        "diskFree": disk.free,
        "diskUsedPct": disk.percent,
    }


class NodeReporter:
    """Build and post this daemon's node report to each of its relays."""

    def __init__(
        self,
        targets: list[NodeTarget],
        clock: IReactorTime,
        env_name: str,
        host_name: str,
        summary: Callable[[], dict[str, Any]],
        figures: Callable[[], dict[str, Any]],
        settings: LogSettings = DAEMON,
    ) -> None:
        self._targets = _distinct(targets)
        self._clock = clock
        self._env_name = env_name
        self._host_name = host_name
        self._summary = summary
        self._figures = figures
        self._settings = settings
        self._log = ThrottledLog(log, clock)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.sent = 0
        self.failed = 0

    def report(self) -> dict[str, Any]:
        """The report as it is sent now."""
        return {
            **self._figures(),
            "lastUpdated": rfc3339(self._clock.seconds()),
            "warnCount": self._settings.warnings,
            "errorCount": self._settings.errors,
            "envName": self._env_name,
            "hostName": self._host_name,
            "appBytesSentNodeInfo": self.bytes_sent,
            "appBytesRecvNodeInfo": self.bytes_received,
            "statuszInfo": mask_value(self._summary(), self._settings.secrets),
        }

    async def send(self) -> None:
        """Post the report to every relay; log failures, never raise them."""
        try:
            body = json.dumps(self.report(), default=str).encode("utf-8")
        except Exception as error:
            self._log.warn("node report could not be built: {error}", error=error)
            return
        for target in self._targets:
            await self._send_one(target, body)

    async def _send_one(self, target: NodeTarget, body: bytes) -> None:
        url = target.relay_url + "node-info"
        headers: dict[bytes | str, list[bytes | str]] = {
            "Content-Type": ["application/json"],
            "RF-BUCKET": [target.bucket],
            "RF-HOSTNAME": [self._host_name],
            "Authorization": [f"Bearer {target.token}"],
        }
        if self._env_name:
            headers["RF-ENV-NAME"] = [self._env_name]
        try:
            response = await target.post(
                url, data=body, headers=headers, timeout=REQUEST_TIMEOUT_SECONDS
            ).addTimeout(REQUEST_TIMEOUT_SECONDS, self._clock)
            answer = await response.content().addTimeout(
                REQUEST_TIMEOUT_SECONDS, self._clock
            )
        except Exception as error:
            self.failed += 1
            self._log.warn(
                "node report to {url} failed: {error}",
                key=f"node-info {url}",
                url=mask_text(url),
                error=f"{type(error).__name__}: {error}",
            )
            return
        self.bytes_sent += len(body)
        self.bytes_received += len(answer)
        if not 200 <= response.code < 300:
            self.failed += 1
            self._log.warn(
                "node report to {url} answered {code}: {text}",
                key=f"node-info {url}",
                url=mask_text(url),
                code=response.code,
                text=answer[:200].decode("utf-8", "replace").strip(),
            )
            return
        self.sent += 1


def _distinct(targets: list[NodeTarget]) -> list[NodeTarget]:
    """One target per relay URL, the first configured; as the Go proxy did."""
    seen: dict[str, NodeTarget] = {}
    for target in targets:
        seen.setdefault(target.relay_url, target)
    return list(seen.values())
