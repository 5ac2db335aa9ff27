"""
Measure the relay: events/s in through C{record-batch} and out through
C{first-batch} and C{acknowledge-batch}, batches of 1,000.

Run from the repository root::

    python -m benchmarks.relay           # 300,000 events, best of 2
    python -m benchmarks.relay --quick   # 20,000 events, once

  - in: the load generator posts batches of 1,000 events (about 200 bytes
    each) to the relay daemon over 2 keep-alive connections, each answered
    once committed; against C{executemany} of the same rows into the same
    table, 1,000 per transaction, in one plain loop;
  - out: one connection, as a player pulls: C{first-batch?limit=1000}, then
    C{acknowledge-batch} of the ids it answered, until the bucket is empty;
    against selecting 1,000 rows and deleting them by id, one transaction
    per batch, in one plain loop.

Targets: at least 100,000 events/s in and 50,000 out.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import loadgen
from benchmarks.daemons import BUCKET, TOKEN, Cluster
from benchmarks.measures import AT_LEAST, Measure, run_suite

BATCH = 1_000
EVENTS_FULL = 300_000
EVENTS_QUICK = 20_000
IN_TARGET = 100_000.0
OUT_TARGET = 50_000.0


def event_content() -> str:
    """One event as proxies send it: a call object of about 200 bytes."""
    return json.dumps(
        {
            "method": "POST",
            "path": "/rpf-db/orders",
            "params": {},
            "headers": {"Content-Type": ["application/json"]},
            "body": json.dumps({"order": 1234, "total": 99.5, "items": [1, 2, 3]}),
            "ip": "127.0.0.1",
        }
    )


def _sqlite_rates(folder: Path, events: int) -> tuple[float, float]:
    """Insert, then select and delete, C{events} rows; return both rates."""
    database = sqlite3.connect(folder / "baseline.sqlite3", isolation_level=None)
    database.execute("PRAGMA journal_mode = WAL")
    database.execute("PRAGMA synchronous = NORMAL")
    database.execute(
        "CREATE TABLE wrap_calls (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " content TEXT NOT NULL, timestamp INTEGER NOT NULL)"
    )
    database.execute("CREATE INDEX idx_timestamp ON wrap_calls (timestamp)")
    rows = [(event_content(), int(time.time()))] * BATCH
    started = time.perf_counter()
    for _ in range(events // BATCH):
        database.execute("BEGIN")
        database.executemany(
            "INSERT INTO wrap_calls (content, timestamp) VALUES (?, ?)", rows
        )
        database.execute("COMMIT")
    into = events / (time.perf_counter() - started)
    started = time.perf_counter()
    while True:
        found = database.execute(
            "SELECT id, content FROM wrap_calls ORDER BY id LIMIT ?", (BATCH,)
        ).fetchall()
        if not found:
            break
        database.execute("BEGIN")
        marks = ",".join("?" * len(found))
        database.execute(
            f"DELETE FROM wrap_calls WHERE id IN ({marks})", [row[0] for row in found]
        )
        database.execute("COMMIT")
    out = events / (time.perf_counter() - started)
    database.close()
    return into, out


def _drain(port: int, events: int) -> float:
    """Pull and acknowledge C{events} as a player does; return events/s."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"RF-BUCKET": BUCKET, "Authorization": f"Bearer {TOKEN}"}
    taken = 0
    started = time.perf_counter()
    try:
        while taken < events:
            connection.request("GET", f"/first-batch?limit={BATCH}", headers=headers)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"first-batch answered {response.status}")
            ids = [str(record["id"]) for record in json.loads(body)]
            connection.request(
                "DELETE",
                "/acknowledge-batch",
                body=json.dumps({"ids": ids}),
                headers={**headers, "Content-Type": "application/json"},
            )
            answer = connection.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"acknowledge-batch answered {answer.status}")
            taken += len(ids)
    finally:
        connection.close()
    return taken / (time.perf_counter() - started)


def measure(quick: bool = False) -> list[Measure]:
    """Measure the relay and the SQLite baseline; return the figures."""
    events, repetitions = (EVENTS_QUICK, 1) if quick else (EVENTS_FULL, 2)
    body = json.dumps([event_content()] * BATCH)
    best = {"in": 0.0, "out": 0.0, "sqlite in": 0.0, "sqlite out": 0.0}
    with Cluster() as cluster:
        cluster.start("relay", cluster.relay_config())
        for _ in range(repetitions):
            with tempfile.TemporaryDirectory(prefix="rf-bench-relay-") as folder:
                into, out = _sqlite_rates(Path(folder), events)
            best["sqlite in"] = max(best["sqlite in"], into)
            best["sqlite out"] = max(best["sqlite out"], out)
            load = loadgen.spawn(
                cluster.ports["relay"],
                "/record-batch",
                connections=2,
                seconds=120,
                body=body,
                max_requests=events // BATCH,
                headers=[f"Authorization: Bearer {TOKEN}", f"RF-BUCKETS: {BUCKET}"],
            )
            if load["ok"] != events // BATCH:
                raise RuntimeError(f"the relay did not store every batch: {load}")
            rate = events / float(load["seconds"])  # type: ignore[arg-type]
            best["in"] = max(best["in"], rate)
            best["out"] = max(best["out"], _drain(cluster.ports["relay"], events))
    return [
        Measure(
            "relay in, record-batch",
            "events/s",
            best["in"],
            "SQLite executemany",
            best["sqlite in"],
            IN_TARGET,
            AT_LEAST,
        ),
        Measure(
            "relay out, first+ack",
            "events/s",
            best["out"],
            "SQLite select+delete",
            best["sqlite out"],
            OUT_TARGET,
            AT_LEAST,
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the figures."""
    return run_suite("python -m benchmarks.relay", measure, argv)


if __name__ == "__main__":
    sys.exit(main())
