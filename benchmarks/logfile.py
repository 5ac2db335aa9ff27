"""
Measure the C{logfile} source: lines/s from a growing file into a sink buffer.

Run from the repository root::

    python -m benchmarks.logfile           # 200,000 lines, best of 3
    python -m benchmarks.logfile --quick   # 20,000 lines, once

A writer process appends nginx-like lines (about 100 bytes) as fast as it
can, 1,000 per write, while the reader under test follows the file:

  - ours: a L{LogFileSource} with its position store, feeding a
    L{SourcePipeline} without script into a real L{SinkBuffer}, polled
    again as soon as it caught up (as a busy file keeps it reading), until
    every line is committed;
  - the baselines, in the same run and on the same kind of file: a plain
    Python loop reading lines and inserting them with C{executemany} into a
    table like the buffer's (WAL, C{synchronous=NORMAL}), a commit every
    2,048 lines; once with the raw lines, once with each line wrapped as
    the call object our events hold.

The measure runs in a child process, which owns its reactor, so that
L{measure_logfile} can be called from any runner.
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

from replayforge.proxy.logline import wrap_line

REPOSITORY = Path(__file__).resolve().parent.parent
BATCH_LINES = 2048
QUICK_LINES = 20_000
FULL_LINES = 200_000
POLL_PAUSE_SECONDS = 0.001
DEADLINE_SECONDS = 300.0

_WRITER = """
import sys
path, count = sys.argv[1], int(sys.argv[2])
with open(path, "a", encoding="utf-8") as file:
    for start in range(0, count, 1000):
        file.write("".join(
            f'127.0.0.1 - - [10/Oct/2024:13:55:36 +0000] "GET /item/{n} HTTP/1.1"'
            f' 200 {n % 5000} "-" "bench/1.0"\\n'
            for n in range(start, min(start + 1000, count))
        ))
        file.flush()
"""


@attrs.frozen
class Throughput:
    """Our lines/s beside a baseline's, measured in the same run."""

    name: str
    ours: float
    baseline_name: str
    baseline: float

    @property
    def ratio(self) -> float:
        """Our speed as a fraction of the baseline's."""
        return self.ours / self.baseline if self.baseline else 0.0


def _start_writer(path: Path, count: int) -> subprocess.Popen[bytes]:
    path.touch()
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(count)])


def baseline_lines_per_second(folder: Path, count: int, wrap: bool) -> float:
    """Tail a growing file with a plain loop into SQLite; return lines/s."""
    path = folder / f"baseline-{int(wrap)}.log"
    database = sqlite3.connect(folder / f"baseline-{int(wrap)}.sqlite3")
    database.execute("PRAGMA journal_mode = WAL")
    database.execute("PRAGMA synchronous = NORMAL")
    database.execute(
        "CREATE TABLE sink_events (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " content TEXT NOT NULL, created_at REAL NOT NULL)"
    )
    writer = _start_writer(path, count)
    started = time.perf_counter()
    stored = 0
    pending = ""
    with path.open(encoding="utf-8") as file:
        while stored < count and time.perf_counter() - started < DEADLINE_SECONDS:
            lines = file.readlines(1024 * 1024)
            if not lines:
                time.sleep(POLL_PAUSE_SECONDS)
                continue
            lines[0] = pending + lines[0]
            pending = "" if lines[-1].endswith("\n") else lines.pop()
            now = time.time()
            for start in range(0, len(lines), BATCH_LINES):
                texts = [
                    line.rstrip("\n") for line in lines[start : start + BATCH_LINES]
                ]
                if wrap:
                    texts = [wrap_line(text) for text in texts]
                database.executemany(
                    "INSERT INTO sink_events (content, created_at) VALUES (?, ?)",
                    [(text, now) for text in texts],
                )
                database.commit()
                stored += len(texts)
    elapsed = time.perf_counter() - started
    writer.wait()
    database.close()
    return stored / elapsed


async def ours_lines_per_second(reactor: Any, folder: Path, count: int) -> float:
    """Follow a growing file with a L{LogFileSource}; return lines/s."""
    from twisted.internet.task import deferLater

    from replayforge.proxy.buffer import SinkBuffer
    from replayforge.proxy.config import ProxySourceConfig
    from replayforge.proxy.pipeline import SourcePipeline
    from replayforge.proxy.sources.blocking import ReactorThreads
    from replayforge.proxy.sources.logfile import LogFileSource
    from replayforge.proxy.sources.positions import PositionStore
    from replayforge.proxy.sources.settings import LogFileSettings
    from replayforge.proxy.stats import SinkStats, SourceStats

    path = folder / "ours.log"
    settings = LogFileSettings(
        file_path=path,
        http_path="/",
        fingerprint_lines=0,
        fingerprint_bytes=1024,
        remove_after_seconds=0,
        flush_partial_after_seconds=5,
        max_line_bytes=1024 * 1024,
        position_path=folder / "ours-source.sqlite3",
    )
    config = ProxySourceConfig(
        id="bench",
        type="logfile",
        transform_script=None,
        target_sink="main",
        hook_interval=1.0,
        listen=None,
        max_body_bytes=1024,
        settings=settings,
    )
    buffer = SinkBuffer(folder / "ours-sink.sqlite3", 1 << 40, reactor, reactor)
    await buffer.open()
    pipeline = SourcePipeline(
        config,
        None,
        {"main": buffer},
        SourceStats(),
        {"main": SinkStats()},
        reactor,
        payload_limits={"main": 5 * 1024 * 1024},
    )
    positions = PositionStore(settings.position_path, "bench", reactor)
    source = LogFileSource(
        "bench",
        settings,
        pipeline,
        positions,
        ReactorThreads(reactor),
        reactor,
        drain_grace=1.0,
    )
    writer = _start_writer(path, count)
    started = time.perf_counter()
    while (
        buffer.pending_events < count
        and time.perf_counter() - started < DEADLINE_SECONDS
    ):
        await source.poll()
        if buffer.pending_events < count:
            await deferLater(reactor, POLL_PAUSE_SECONDS, lambda: None)
    elapsed = time.perf_counter() - started
    writer.wait()
    stored = buffer.pending_events
    source.close()
    buffer.close()
    return stored / elapsed


def _child(count: int, repetitions: int) -> dict[str, float]:
    """Run every measure in this process; return the best rates."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, ensureDeferred

    best = {"ours": 0.0, "raw": 0.0, "wrapped": 0.0}

    async def measure_ours() -> None:
        for _ in range(repetitions):
            folder = Path(tempfile.mkdtemp(prefix="rf-bench-logfile-"))
            try:
                rate = await ours_lines_per_second(reactor, folder, count)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            best["ours"] = max(best["ours"], rate)

    for _ in range(repetitions):
        for name, wrap in (("raw", False), ("wrapped", True)):
            folder = Path(tempfile.mkdtemp(prefix="rf-bench-logfile-"))
            try:
                rate = baseline_lines_per_second(folder, count, wrap)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            best[name] = max(best[name], rate)

    failures: list[BaseException] = []

    def run() -> Deferred[None]:
        done = ensureDeferred(measure_ours())
        done.addErrback(lambda failure: failures.append(failure.value))
        done.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]
        return done

    reactor.callWhenRunning(run)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    if failures:
        raise failures[0]
    return best


def measure_logfile(quick: bool = False) -> list[Throughput]:
    """
    Measure ours and the baselines in a child process.

    @param quick: a smoke run (20,000 lines, once) instead of the full one
        (200,000 lines, best of 3).
    """
    count, repetitions = (QUICK_LINES, 1) if quick else (FULL_LINES, 3)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.logfile",
            "--child",
            str(count),
            str(repetitions),
        ],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=True,
        timeout=DEADLINE_SECONDS * 2 * repetitions,
    )
    best = json.loads(result.stdout.strip().splitlines()[-1])
    return [
        Throughput("logfile → sink buffer", best["ours"], "read + insert", best["raw"]),
        Throughput(
            "logfile → sink buffer",
            best["ours"],
            "read + wrap + insert",
            best["wrapped"],
        ),
    ]


def report(figures: Sequence[Throughput]) -> list[str]:
    """Format the figures as a table."""
    lines = [
        f"{'measure':<24} {'ours lines/s':>12} {'baseline':<22} "
        f"{'baseline/s':>11} {'ratio':>6}"
    ]
    lines.extend(
        f"{figure.name:<24} {figure.ours:>12,.0f} {figure.baseline_name:<22} "
        f"{figure.baseline:>11,.0f} {figure.ratio:>6.2f}"
        for figure in figures
    )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print, or, as the child, measure and print JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.logfile")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child:
        print(json.dumps(_child(*options.child)))
        return 0
    print("\n".join(report(measure_logfile(options.quick))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
