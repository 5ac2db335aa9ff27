"""
The player measures that need a running reactor (see L{benchmarks.player}).

L{measure_live} runs the reactor once, so it belongs in a process of its
own.  The HTTP target of the replay measures is the ingest baseline's
L{benchmarks.daemons.BareServer}, which answers every request with 200.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from benchmarks.daemons import BareServer
from benchmarks.player import call_objects
from replayforge.player.config import PlayerSinkConfig
from replayforge.player.queue import PlayerQueue
from replayforge.player.sinks.base import DELIVERED, QueuedEvent
from replayforge.player.sinks.db import DbSink
from replayforge.player.sinks.http import HttpSink
from replayforge.player.sinks.settings import DbSinkSettings, HttpSinkSettings
from replayforge.player.worker import SinkWorker

REPLAY_PATH = b"/replay/orders?shop=s1&page=2"
REPLAY_BODY = json.dumps({"order": 17, "items": [1, 2, 3], "note": "x" * 200})
DRAIN_POLL_SECONDS = 0.005
TARGET_LIFETIME = 3600.0  # seconds; the target stops itself after that at the latest


def _sink_config(name: str, settings: Any, kind: str) -> PlayerSinkConfig:
    return PlayerSinkConfig(name, name, kind, settings, {}, "sinks[0]")


def measure_live(rows: int, requests: int, concurrencies: list[int]) -> dict[str, Any]:
    """Run the reactor once for every live measure; return their rates."""
    from twisted.internet import reactor

    outcome: dict[str, Any] = {}

    def run() -> None:
        measured = Deferred.fromCoroutine(
            _measure(reactor, rows, requests, concurrencies)
        )
        measured.addCallbacks(
            outcome.update, lambda failure: outcome.update(failure=failure)
        )
        measured.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

    reactor.callWhenRunning(run)  # type: ignore[attr-defined]
    reactor.run(installSignalHandlers=False)  # type: ignore[attr-defined]
    if "failure" in outcome:
        outcome["failure"].raiseException()
    return outcome


async def _measure(
    reactor: Any, rows: int, requests: int, concurrencies: list[int]
) -> dict[str, Any]:
    queue_rate = await _queue_to_db(reactor, rows)
    target = BareServer(TARGET_LIFETIME)
    port = target.port
    try:
        http: dict[str, tuple[float, float]] = {}
        for concurrency in concurrencies:
            ours = await _sink_replay(reactor, port, requests, concurrency)
            agent = await _agent_replay(reactor, port, requests, concurrency)
            http[str(concurrency)] = (ours, agent)
    finally:
        target.close()
    return {"queue_rows_per_second": queue_rate, "http": http}


async def _queue_to_db(reactor: Any, rows: int) -> float:
    folder = Path(tempfile.mkdtemp(prefix="rf-bench-queue-"))
    queue = PlayerQueue(folder / "player-queue.sqlite3", reactor, rows * 2, 100)
    settings = DbSinkSettings(folder / "store.sqlite3", None, None, 0)
    sink = DbSink(_sink_config("store", settings, "db"), reactor, queue_instance="q")
    worker = SinkWorker(sink, queue, reactor)
    events = call_objects(rows)
    try:
        worker.start()
        started = time.perf_counter()
        for start in range(0, rows, 500):
            await queue.commit(
                "bench", [], [("store", e) for e in events[start : start + 500]]
            )
        while queue.depth("store"):
            await deferLater(reactor, DRAIN_POLL_SECONDS)
        elapsed = time.perf_counter() - started
        if sink.stats.delivered != rows:
            raise RuntimeError(f"stored {sink.stats.delivered} of {rows} rows")
    finally:
        await worker.stop()
        await sink.stop()
        queue.close()
        shutil.rmtree(folder, ignore_errors=True)
    return rows / elapsed


async def _sink_replay(
    reactor: Any, port: int, requests: int, concurrency: int
) -> float:
    path, _, query = REPLAY_PATH.decode().partition("?")
    event = json.dumps(
        {
            "method": "POST",
            "path": path,
            "params": {
                key: [value] for key, value in (p.split("=") for p in query.split("&"))
            },
            "headers": {"Content-Type": ["application/json"]},
            "body": REPLAY_BODY,
        }
    )
    settings = HttpSinkSettings(
        f"http://127.0.0.1:{port}", timeout_seconds=10.0, max_concurrency=concurrency
    )
    sink = HttpSink(_sink_config("web", settings, "http"), reactor)
    queued = [QueuedEvent(number + 1, event) for number in range(requests)]
    try:
        started = time.perf_counter()
        for start in range(0, requests, sink.batch_size):
            outcomes = await sink.deliver(queued[start : start + sink.batch_size])
            if any(outcome != DELIVERED for outcome in outcomes):
                raise RuntimeError(f"replay failed: {outcomes[:3]}")
        elapsed = time.perf_counter() - started
    finally:
        await sink.stop()
    return requests / elapsed


async def _agent_replay(
    reactor: Any, port: int, requests: int, concurrency: int
) -> float:
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max(2, concurrency)
    agent = Agent(reactor, pool=pool)
    url = b"http://127.0.0.1:%d%s" % (port, REPLAY_PATH)
    body = REPLAY_BODY.encode()

    async def send(count: int) -> None:
        for _ in range(count):
            headers = Headers({b"Content-Type": [b"application/json"]})
            response = await agent.request(
                b"POST", url, headers, FileBodyProducer(BytesIO(body))
            )
            await readBody(response)

    share = requests // concurrency
    try:
        started = time.perf_counter()
        await gatherResults(
            [Deferred.fromCoroutine(send(share)) for _ in range(concurrency)]
        )
        elapsed = time.perf_counter() - started
    finally:
        await pool.closeCachedConnections()
    return share * concurrency / elapsed
