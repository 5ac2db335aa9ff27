"""
Measure the whole pipeline: proxy, relay and player under twistd, on one
machine, on loopback.

Run from the repository root::

    python -m benchmarks.pipeline           # about two minutes
    python -m benchmarks.pipeline --quick   # a smoke run of seconds

  - C{end to end}: a log file of 200,000 lines (20,000 quick) through the
    proxy's C{logfile} source, the relay and the player's C{db} sink; lines/s
    from the moment the file appears (the source polls it every 0.1 s) to
    the moment the last row is committed in the sink.  Baseline: the same
    lines through the same durable steps in one plain Python loop (wrap,
    then insert into and delete from a buffer, a bucket and a queue table,
    then insert the row), batches of 1,000, no network (L{storage_floor}).
  - C{latency p50/p99}: events at a steady 1,000/s into the proxy's
    C{http} source; for each, the time from the proxy's 200 (seen by the
    load generator) to its row's commit in the db sink (seen by polling
    the sink's file every 2 ms).  Baseline: the same with the player polling
    as against a Go relay, which answers an empty bucket at once (the
    player then waits its 1 s C{hookInterval}).
  - C{CPU per line}: the CPU time (user and system) each daemon spent
    during the end-to-end run, per line, beside the baseline loop's whole
    time per line: where the work goes, whatever else runs on the machine.
  - C{peak RSS}: C{VmHWM} of each daemon after the end-to-end run, beside
    its C{VmRSS} just after start; then of the relay holding a backlog of
    1,000,000 events (20,000 quick) posted through C{record-batch}, and of
    a player pulling from that backlog for a few seconds.

The figures are printed by L{measure}; every daemon is stopped and every
file removed at the end, even after a failure.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import loadgen
from benchmarks.daemons import BUCKET, TOKEN, Cluster
from benchmarks.measures import (
    AT_LEAST,
    AT_MOST,
    Deadline,
    Measure,
    cpu_seconds,
    peak_rss_mb,
    percentile,
    rss_mb,
    run_suite,
)
from replayforge.proxy.logline import wrap_line

LINES_FULL = 200_000
LINES_QUICK = 20_000
LINES_TABLE = "lines"
LATENCY_TABLE = "latency"
LATENCY_RATE = 1_000.0
BACKLOG_FULL = 1_000_000
BACKLOG_QUICK = 20_000
BACKLOG_BATCH = 1_000
FLOOR_BATCH = 1_000
THROUGHPUT_TARGET = 20_000.0
LATENCY_TARGET_MS = 100.0
MEMORY_TARGET_MB = 80.0
POLL_SECONDS = 0.002
DEADLINE_SECONDS = 240.0


def log_lines(count: int) -> list[str]:
    """Nginx-like lines of about 100 bytes."""
    return [
        f'127.0.0.1 - - [10/Oct/2024:13:55:36 +0000] "GET /item/{n} HTTP/1.1"'
        f' 200 {n % 5000} "-" "bench/1.0"'
        for n in range(count)
    ]


def storage_floor(folder: Path, lines: list[str]) -> float:
    """
    Pass C{lines} through every durable step of the pipeline in one plain
    loop; return lines/s.
    """
    database = sqlite3.connect(folder / "floor.sqlite3", isolation_level=None)
    database.execute("PRAGMA journal_mode = WAL")
    database.execute("PRAGMA synchronous = NORMAL")
    for table in ("buffer", "bucket", "queue"):
        database.execute(
            f"CREATE TABLE {table} (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " content TEXT NOT NULL, at REAL NOT NULL)"
        )
    database.execute(
        "CREATE TABLE store (id INTEGER PRIMARY KEY AUTOINCREMENT, content TEXT)"
    )

    def move(source: str, target: str) -> list[str]:
        rows = database.execute(
            f"SELECT id, content FROM {source} ORDER BY id LIMIT ?", (FLOOR_BATCH,)
        ).fetchall()
        texts = [text for _, text in rows]
        database.execute("BEGIN")
        database.executemany(
            f"INSERT INTO {target} (content, at) VALUES (?, ?)",
            [(text, time.time()) for text in texts],
        )
        database.execute("COMMIT")
        database.execute("BEGIN")
        marks = ",".join("?" * len(rows))
        database.execute(
            f"DELETE FROM {source} WHERE id IN ({marks})", [row[0] for row in rows]
        )
        database.execute("COMMIT")
        return texts

    started = time.perf_counter()
    for start in range(0, len(lines), FLOOR_BATCH):
        events = [
            wrap_line(line, "/rpf-db/lines")
            for line in lines[start : start + FLOOR_BATCH]
        ]
        database.execute("BEGIN")
        database.executemany(
            "INSERT INTO buffer (content, at) VALUES (?, ?)",
            [(event, time.time()) for event in events],
        )
        database.execute("COMMIT")
        sent = move("buffer", "bucket")
        json.loads(json.dumps(sent))
        move("bucket", "queue")
        rows = database.execute(
            "SELECT id, content FROM queue ORDER BY id LIMIT ?", (FLOOR_BATCH,)
        ).fetchall()
        database.execute("BEGIN")
        database.executemany(
            "INSERT INTO store (content) VALUES (?)",
            [(json.loads(json.loads(text)["body"])["content"],) for _, text in rows],
        )
        database.execute("DELETE FROM queue")
        database.execute("COMMIT")
    elapsed = time.perf_counter() - started
    database.close()
    return len(lines) / elapsed


def _count(path: Path, table: str) -> int:
    if not path.exists():
        return 0
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        row = connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    except sqlite3.OperationalError:
        return 0
    finally:
        connection.close()
    return int(row[0])


def end_to_end(cluster: Cluster, lines: list[str]) -> float:
    """Let the proxy find a file of C{lines}; return lines/s to the sink."""
    staging = cluster.folder / "staging.log"
    staging.write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    staging.rename(cluster.folder / "app.log")
    deadline = Deadline(DEADLINE_SECONDS)
    while _count(cluster.store_path, LINES_TABLE) < len(lines):
        if deadline.passed:
            raise RuntimeError(
                f"only {_count(cluster.store_path, LINES_TABLE)} of {len(lines)}"
                " lines arrived in time"
            )
        time.sleep(0.01)
    return len(lines) / (time.monotonic() - started)


class _Arrivals(threading.Thread):
    """Note when each row of the latency table is first seen committed."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.seen: dict[int, float] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        last = 0
        connection: sqlite3.Connection | None = None
        while not self.stopping.is_set():
            time.sleep(POLL_SECONDS)
            try:
                if connection is None:
                    if not self.path.exists():
                        continue
                    connection = sqlite3.connect(
                        f"file:{self.path}?mode=ro", uri=True, timeout=5
                    )
                rows = connection.execute(
                    f"SELECT rowid, id FROM {LATENCY_TABLE} WHERE rowid > ?",
                    (last,),
                ).fetchall()
            except sqlite3.OperationalError:
                continue
            now = time.monotonic()
            for rowid, event_id in rows:
                last = max(last, rowid)
                self.seen.setdefault(int(event_id), now)
        if connection is not None:
            connection.close()


def latencies_ms(cluster: Cluster, seconds: float) -> list[float]:
    """Send 1,000 events/s for C{seconds}; return each event's latency."""
    arrivals = _Arrivals(cluster.store_path)
    arrivals.start()
    try:
        load = loadgen.spawn(
            cluster.ports["proxy"],
            f"/rpf-db/{LATENCY_TABLE}",
            connections=8,
            seconds=seconds,
            rate=LATENCY_RATE,
            body='{"id": {n}, "note": "latency probe"}',
            record=True,
        )
        answered = {int(n): float(t) for n, t in load["answered"]}  # type: ignore[attr-defined]
        deadline = Deadline(60.0)
        while not set(answered) <= set(arrivals.seen) and not deadline.passed:
            time.sleep(0.05)
    finally:
        arrivals.stopping.set()
        arrivals.join(10)
    missing = set(answered) - set(arrivals.seen)
    if missing:
        raise RuntimeError(f"{len(missing)} answered events never arrived")
    return [(arrivals.seen[n] - at) * 1000 for n, at in answered.items()]


def _clear_latency_table(cluster: Cluster) -> None:
    connection = sqlite3.connect(cluster.store_path, timeout=10)
    try:
        with connection:
            connection.execute(f"DELETE FROM {LATENCY_TABLE}")
    finally:
        connection.close()


def fill_backlog(cluster: Cluster, events: int) -> float:
    """Post C{events} to the relay in batches of 1,000; return events/s."""
    content = json.dumps(
        {
            "method": "POST",
            "path": "/rpf-db/backlog",
            "headers": {"Content-Type": ["application/json"]},
            "body": json.dumps({"note": "an event waiting at the relay", "n": 1}),
        }
    )
    body = json.dumps([content] * BACKLOG_BATCH)
    load = loadgen.spawn(
        cluster.ports["relay"],
        "/record-batch",
        connections=2,
        seconds=DEADLINE_SECONDS,
        body=body,
        max_requests=events // BACKLOG_BATCH,
        headers=[f"Authorization: Bearer {TOKEN}", f"RF-BUCKETS: {BUCKET}"],
    )
    if load["ok"] != events // BACKLOG_BATCH:
        raise RuntimeError(f"the relay did not store the backlog: {load}")
    return events / float(load["seconds"])  # type: ignore[arg-type]


def measure(quick: bool = False) -> list[Measure]:
    """Run every pipeline measure; return the figures."""
    count = LINES_QUICK if quick else LINES_FULL
    latency_seconds = 1.5 if quick else 10.0
    backlog = BACKLOG_QUICK if quick else BACKLOG_FULL
    lines = log_lines(count)
    figures: list[Measure] = []
    with Cluster() as cluster:
        floor = storage_floor(cluster.folder, lines)
        idle: dict[str, float] = {}
        cluster.start("relay", cluster.relay_config())
        cluster.start("player", cluster.player_config())
        logfile = {
            "id": "file",
            "type": "logfile",
            "targetSink": "relay",
            "hookInterval": "100ms",
            "params": {
                "filePath": str(cluster.folder / "app.log"),
                "httpPath": f"/rpf-db/{LINES_TABLE}",
            },
        }
        cluster.start("proxy", cluster.proxy_config([logfile, cluster.http_source()]))
        for kind in ("proxy", "relay", "player"):
            idle[kind] = rss_mb(cluster.pid(kind))

        cpu = {kind: cpu_seconds(cluster.pid(kind)) for kind in idle}
        rate = end_to_end(cluster, lines)
        cpu_per_line = {
            kind: (cpu_seconds(cluster.pid(kind)) - cpu[kind]) / count * 1e6
            for kind in idle
        }
        figures.append(
            Measure(
                f"end to end, {count:,} lines",
                "lines/s",
                rate,
                "same steps, one loop",
                floor,
                THROUGHPUT_TARGET,
                AT_LEAST,
            )
        )
        figures.extend(
            Measure(
                f"CPU per line, {kind}",
                "us",
                cpu_per_line[kind],
                "whole loop, per line",
                1e6 / floor,
                None,
                AT_MOST,
            )
            for kind in idle
        )
        peaks = {kind: peak_rss_mb(cluster.pid(kind)) for kind in idle}

        ours = latencies_ms(cluster, latency_seconds)
        _clear_latency_table(cluster)
        cluster.stop("player")
        cluster.start("player", cluster.player_config(pollWaitSecs=0))
        polled = latencies_ms(cluster, latency_seconds)
        for name, fraction, target in (
            ("p50", 0.5, None),
            ("p99", 0.99, LATENCY_TARGET_MS),
        ):
            figures.append(
                Measure(
                    f"latency {name} at 1,000/s",
                    "ms",
                    percentile(ours, fraction),
                    "1 s polls (Go relay)",
                    percentile(polled, fraction),
                    target,
                    AT_MOST,
                )
            )
        for kind in ("proxy", "relay", "player"):
            figures.append(
                Measure(
                    f"peak RSS {kind}, end to end",
                    "MB",
                    peaks[kind],
                    "just started",
                    idle[kind],
                    MEMORY_TARGET_MB,
                    AT_MOST,
                )
            )

        cluster.stop("player")
        cluster.stop("proxy")
        fill_backlog(cluster, backlog)
        relay_peak = peak_rss_mb(cluster.pid("relay"))
        cluster.start("player", cluster.player_config())
        time.sleep(1.0 if quick else 5.0)
        figures.append(
            Measure(
                f"peak RSS relay, {backlog:,} backlog",
                "MB",
                max(relay_peak, peak_rss_mb(cluster.pid("relay"))),
                "just started",
                idle["relay"],
                MEMORY_TARGET_MB,
                AT_MOST,
            )
        )
        figures.append(
            Measure(
                f"peak RSS player, {backlog:,} backlog",
                "MB",
                peak_rss_mb(cluster.pid("player")),
                "just started",
                idle["player"],
                MEMORY_TARGET_MB,
                AT_MOST,
            )
        )
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the figures."""
    return run_suite("python -m benchmarks.pipeline", measure, argv)


if __name__ == "__main__":
    sys.exit(main())
