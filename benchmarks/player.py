"""
Measure the player's sinks against the plainest way to do the same work.

Run from the repository root::

    python -m benchmarks.player           # the full run, about a minute
    python -m benchmarks.player --quick   # a smoke run of a few seconds

or call L{measure} (as C{benchmarks.run} may).  Each measure prints our
figure, the baseline measured in the same run on the same input, their
ratio and the target:

  - C{db sink write}: rows/s of the C{db} sink's writer applying call
    objects in its batches (one transaction each, a savepoint per event),
    against C{executemany} of the same rows, already as tuples, into the
    same schema (same columns and indexes) in transactions of the same size;
  - C{db sink via queue}: rows/s from the durable queue through the sink's
    worker and the sink (adbapi threads, the real reactor) until drained,
    against the same C{executemany} figure;
  - C{http replay xN}: requests/s the C{http} sink replays to a local
    target with N calls in flight, against twisted.web's L{Agent} sending the
    same request with the same concurrency and persistent connections.

The measures run in a child process (the reactor runs once there), and the
HTTP target in another, so the client and the target do not share a CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from benchmarks.run import Figure, report
from replayforge.player.sinks.base import QueuedEvent
from replayforge.player.sinks.dbwrite import TableWriter

DB_BATCH = 500
QUICK_ROWS = 2_000
FULL_ROWS = 50_000
QUICK_REQUESTS = 300
FULL_REQUESTS = 5_000
REPETITIONS_FULL = 3
DB_TARGET = 20_000.0
HTTP_TARGETS = {1: 1_000.0, 8: 1_500.0}


def call_objects(count: int) -> list[str]:
    """The events both db measures write: one row each, seven columns."""
    return [
        json.dumps(
            {
                "method": "POST",
                "path": "/rpf-db/bench",
                "body": json.dumps(
                    {
                        "id": f"r{number}",
                        "name": f"name {number}",
                        "value": number * 1.5,
                        "count": number,
                        "active": number % 2 == 0,
                        "tags": ["a", "b"],
                        "timestamp": 1_700_000_000 + number,
                    }
                ),
            }
        )
        for number in range(count)
    ]


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    return connection


def writer_rows_per_second(folder: Path, events: list[str]) -> tuple[float, Path]:
    """Apply C{events} with the sink's writer; return rows/s and the file."""
    path = folder / "ours.sqlite3"
    connection = _connect(path)
    writer = TableWriter("bench", "instance")
    queued = [QueuedEvent(number + 1, text) for number, text in enumerate(events)]
    started = time.perf_counter()
    for start in range(0, len(queued), DB_BATCH):
        writer.write_batch(connection.cursor(), queued[start : start + DB_BATCH], 0)
    elapsed = time.perf_counter() - started
    connection.close()
    return len(events) / elapsed, path


def executemany_rows_per_second(folder: Path, schema_from: Path) -> float:
    """Insert the rows our writer stored, as tuples, into the same schema."""
    source = sqlite3.connect(schema_from)
    statements = [
        row[0]
        for row in source.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'bench' OR tbl_name = 'bench'"
            " ORDER BY type DESC"
        )
        if row[0]
    ]
    names = [row[1] for row in source.execute("PRAGMA table_info(bench)")]
    rows = source.execute("SELECT * FROM bench").fetchall()
    source.close()
    path = folder / "baseline.sqlite3"
    connection = _connect(path)
    for statement in statements:
        connection.execute(statement)
    connection.commit()
    insert = (
        f"INSERT OR REPLACE INTO bench ({', '.join(names)})"
        f" VALUES ({', '.join('?' * len(names))})"
    )
    started = time.perf_counter()
    for start in range(0, len(rows), DB_BATCH):
        with connection:
            connection.executemany(insert, rows[start : start + DB_BATCH])
    elapsed = time.perf_counter() - started
    connection.close()
    return len(rows) / elapsed


def measure_db(rows: int, repetitions: int) -> tuple[float, float]:
    """Return the best rows/s of our writer and of the baseline."""
    events = call_objects(rows)
    ours = baseline = 0.0
    for _ in range(repetitions):
        folder = Path(tempfile.mkdtemp(prefix="rf-bench-db-"))
        try:
            rate, path = writer_rows_per_second(folder, events)
            ours = max(ours, rate)
            baseline = max(baseline, executemany_rows_per_second(folder, path))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return ours, baseline


def run_in_child(quick: bool) -> list[Figure]:
    """Run every measure in a child process; return its figures."""
    command = [sys.executable, "-m", "benchmarks.player", "--child"]
    if quick:
        command.append("--quick")
    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=900, check=False
    )
    if finished.returncode != 0:
        raise RuntimeError(f"the player benchmark failed:\n{finished.stderr}")
    return [Figure(**json.loads(line)) for line in finished.stdout.splitlines()]


def measure(quick: bool = False) -> list[Figure]:
    """Measure the player's sinks; the figures suit C{benchmarks.run.report}."""
    return run_in_child(quick)


def child(quick: bool) -> int:
    """Measure here, printing one JSON figure per line."""
    from benchmarks.player_live import measure_live

    rows = QUICK_ROWS if quick else FULL_ROWS
    repetitions = 1 if quick else REPETITIONS_FULL
    ours, baseline = measure_db(rows, repetitions)
    figures = [Figure("db sink write", ours, "executemany", baseline, DB_TARGET)]
    live: dict[str, Any] = measure_live(
        rows, QUICK_REQUESTS if quick else FULL_REQUESTS, sorted(HTTP_TARGETS)
    )
    figures.append(
        Figure(
            "db sink via queue",
            live["queue_rows_per_second"],
            "executemany",
            baseline,
            DB_TARGET / 2,
        )
    )
    for concurrency in sorted(HTTP_TARGETS):
        ours_rate, agent_rate = live["http"][str(concurrency)]
        figures.append(
            Figure(
                f"http replay x{concurrency}",
                ours_rate,
                f"Agent x{concurrency}",
                agent_rate,
                HTTP_TARGETS[concurrency],
            )
        )
    for figure in figures:
        print(json.dumps(attrs.asdict(figure)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the player benchmarks; print the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.player")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child:
        return child(options.quick)
    print("\n".join(report(measure(options.quick))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
