"""
A C{logfile} source over a real file, a real position store and a real sink
buffer in a fresh folder, driven tick by tick with a L{Clock}.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from replayforge.proxy.buffer import SinkBuffer
from replayforge.proxy.config import ProxySourceConfig
from replayforge.proxy.pipeline import SourcePipeline
from replayforge.proxy.sources.blocking import ReactorThreads
from replayforge.proxy.sources.logfile import LogFileSource
from replayforge.proxy.sources.positions import PositionStore
from replayforge.proxy.sources.settings import LogFileSettings
from replayforge.proxy.stats import SinkStats, SourceStats

MIB = 1024 * 1024
GRACE_SECONDS = 1.0


def line_of(event: str) -> str:
    """The log line an event carries (the C{content} of its body)."""
    content: str = json.loads(json.loads(event)["body"])["content"]
    return content


def buffered_events(path: Path) -> list[str]:
    """The events committed to the sink buffer at C{path}, oldest first."""
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute(
            "SELECT content FROM sink_events ORDER BY id"
        ).fetchall()
    finally:
        connection.close()
    return [row[0] for row in rows]


def numbered(first: int, last: int, prefix: str = "line") -> str:
    """Lines C{prefix 001} to C{prefix last}, each ending in a newline."""
    return "".join(f"{prefix} {number:03d}\n" for number in range(first, last + 1))


def expected(first: int, last: int, prefix: str = "line") -> list[str]:
    """The lines L{numbered} writes, without newlines."""
    return numbered(first, last, prefix).splitlines()


class LogFileTestCase(TestCase):
    """
    Give each test a folder with C{app.log}, a sink buffer and a clock;
    L{start} makes a source over them, as the proxy does at start-up.
    """

    max_bytes = 64 * MIB

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="rf-logfile-"))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        self.log_path = self.folder / "app.log"
        self.buffer_path = self.folder / "main-sink.sqlite3"
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.stats = SourceStats()
        self.settings = LogFileSettings(
            file_path=self.log_path,
            http_path="/logs",
            fingerprint_lines=0,
            fingerprint_bytes=1024,
            remove_after_seconds=0,
            flush_partial_after_seconds=5.0,
            max_line_bytes=MIB,
            position_path=self.folder / "tail-source.sqlite3",
        )
        self.source: LogFileSource | None = None

    async def open_buffer(self) -> SinkBuffer:
        """Open the sink buffer; it is closed when the test ends."""
        buffer = SinkBuffer(self.buffer_path, self.max_bytes, reactor, self.clock)
        await buffer.open()
        self.addCleanup(buffer.close)
        return buffer

    async def start(self, **changes: Any) -> LogFileSource:
        """
        Start a source over the folder's file, with C{changes} to its
        settings; the one started before is closed first.
        """
        self.stop()
        self.buffer = await self.open_buffer()
        settings = attrs.evolve(self.settings, **changes)
        config = ProxySourceConfig(
            id="tail",
            type="logfile",
            transform_script=None,
            target_sink="main",
            hook_interval=GRACE_SECONDS,
            listen=None,
            max_body_bytes=MIB,
            settings=settings,
        )
        self.pipeline = SourcePipeline(
            config,
            None,
            {"main": self.buffer},
            self.stats,
            {"main": SinkStats()},
            self.clock,
        )
        positions = PositionStore(settings.position_path, "tail", reactor)
        self.source = LogFileSource(
            "tail",
            settings,
            self.pipeline,
            positions,
            ReactorThreads(reactor),
            self.clock,
            drain_grace=GRACE_SECONDS,
        )
        return self.source

    def stop(self) -> None:
        """Close the running source, as a stopping proxy does."""
        if self.source is not None:
            self.source.stop()
            self.source.close()
            self.source = None

    def tearDown(self) -> None:
        self.stop()

    async def poll(self, ticks: int = 1) -> None:
        """Run C{ticks} ticks of the source, one polling period apart."""
        assert self.source is not None
        for tick in range(ticks):
            if tick:
                self.clock.advance(GRACE_SECONDS)
            await self.source.poll()

    def delivered(self) -> list[str]:
        """The lines committed to the sink buffer, in order."""
        return [line_of(event) for event in buffered_events(self.buffer_path)]

    def write(self, text: str | bytes, mode: str = "a") -> None:
        """Write C{text} to the log file (append by default)."""
        data = text.encode("utf-8") if isinstance(text, str) else text
        with self.log_path.open(mode + "b") as file:
            file.write(data)

    def file_status(self) -> dict[str, Any]:
        """The C{file} part of the source's status."""
        assert self.source is not None
        status: dict[str, Any] = self.source.status()["file"]
        return status
