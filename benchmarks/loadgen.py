"""
A small HTTP/1.1 load generator for loopback servers.

Run as its own process, so that it has a CPU of its own::

    python -m benchmarks.loadgen --port 8090 --path /x --connections 8 \\
        --seconds 10 [--rate 1000] [--body '{"id": {n}}'] [--record]

Each of C{--connections} keep-alive connections sends a C{POST}, reads the
whole answer, then sends the next: as fast as answers come, or, with
C{--rate}, request number C{n} no earlier than C{n / rate} seconds after the
start.  C{{n}} in the body becomes the request's number.  The run stops after
C{--seconds} or C{--max-requests}, whichever comes first, and prints one JSON
object: requests answered 200 (C{ok}), other answers and failures, the
seconds from the first request to the last answer, and with C{--record} the
C{time.monotonic()} at which each 200 arrived, by request number.
C{--header "Name: value"} adds a header to every request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HOST = "127.0.0.1"


class _Run:
    """The shared state of one load run."""

    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.loop = asyncio.get_running_loop()
        self.started = time.monotonic()
        self.stop_at = self.started + options.seconds
        self.next_number = 0
        self.ok = 0
        self.other = 0
        self.failed = 0
        self.last_answer = self.started
        self.answered: dict[int, float] = {}
        self.open = 0
        self.done: asyncio.Future[None] = self.loop.create_future()
        template = options.body
        if options.body_file:
            template = Path(options.body_file).read_text(encoding="utf-8")
        self._templated = "{n}" in template
        self._template = template
        self._fixed = b"" if self._templated else self._request(template.encode())

    def _request(self, body: bytes) -> bytes:
        extra = "".join(f"{header}\r\n" for header in self.options.header)
        head = (
            f"POST {self.options.path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    def request(self, number: int) -> bytes:
        """The bytes of request C{number}."""
        if not self._templated:
            return self._fixed
        return self._request(self._template.replace("{n}", str(number)).encode())

    def next_for(self, connection: _Connection) -> None:
        """Give C{connection} its next request, now or at its due time."""
        now = time.monotonic()
        if now >= self.stop_at or self.next_number >= self.options.max_requests:
            connection.close()
            return
        number = self.next_number
        self.next_number += 1
        if self.options.rate:
            due = self.started + number / self.options.rate
            if due > now:
                self.loop.call_later(due - now, connection.send, number)
                return
        connection.send(number)

    def finished(self, number: int, status: int) -> None:
        """Count the answer to request C{number}."""
        now = time.monotonic()
        self.last_answer = now
        if status == 200:
            self.ok += 1
            if self.options.record:
                self.answered[number] = now
        else:
            self.other += 1

    def closed(self) -> None:
        """One connection ended; the run ends with the last."""
        self.open -= 1
        if self.open <= 0 and not self.done.done():
            self.done.set_result(None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request in flight at a time."""

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._buffer = bytearray()
        self._number: int | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._run.next_for(self)

    def send(self, number: int) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._number = number
        self._transport.write(self._run.request(number))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while self._number is not None:
            parsed = _parse_response(self._buffer)
            if parsed is None:
                return
            status, used = parsed
            del self._buffer[:used]
            number, self._number = self._number, None
            self._run.finished(number, status)
            self._run.next_for(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._number is not None:
            self._run.failed += 1
            self._number = None
        self._transport = None
        self._run.closed()


def _parse_response(buffer: bytearray) -> tuple[int, int] | None:
    """Return (status, bytes used) of the first whole answer in C{buffer}."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).lower()
    status = int(head[9:12])
    position = end + 4
    if b"transfer-encoding: chunked" in head:
        while True:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                return None
            size = int(bytes(buffer[position:line_end]).split(b";")[0], 16)
            position = line_end + 2 + size + 2
            if len(buffer) < position:
                return None
            if size == 0:
                return status, position
    length = 0
    marker = head.find(b"content-length:")
    if marker >= 0:
        length = int(head[marker + 15 :].split(b"\r\n", 1)[0])
    if len(buffer) < position + length:
        return None
    return status, position + length


async def run_load(options: argparse.Namespace) -> dict[str, object]:
    """Drive the load described by C{options}; return its figures."""
    run = _Run(options)
    loop = run.loop
    for _ in range(options.connections):
        run.open += 1
        try:
            await loop.create_connection(lambda: _Connection(run), HOST, options.port)
        except OSError:
            run.open -= 1
            run.failed += 1
    if run.open <= 0:
        run.done.set_result(None)
    await asyncio.wait_for(run.done, options.seconds + 60)
    return {
        "ok": run.ok,
        "other": run.other,
        "failed": run.failed,
        "seconds": max(run.last_answer - run.started, 1e-9),
        "answered": sorted(run.answered.items()) if options.record else [],
    }


def parse_options(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-requests", type=int, default=10_000_000)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--body", default='{"event": "bench"}')
    parser.add_argument("--body-file", help="read the body from this file")
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--header", action="append", default=[], help="Name: value")
    return parser.parse_args(argv)


def spawn(
    port: int,
    path: str,
    connections: int,
    seconds: float,
    rate: float = 0.0,
    body: str = '{"event": "bench"}',
    record: bool = False,
    max_requests: int = 10_000_000,
    headers: Sequence[str] = (),
) -> dict[str, object]:
    """Run the load in a process of its own; return its figures."""
    with tempfile.TemporaryDirectory(prefix="rf-bench-load-") as folder:
        body_file = Path(folder) / "body"
        body_file.write_text(body, encoding="utf-8")
        return _spawn(
            port,
            path,
            connections,
            seconds,
            rate,
            body_file,
            record,
            max_requests,
            headers,
        )


def _spawn(
    port: int,
    path: str,
    connections: int,
    seconds: float,
    rate: float,
    body_file: Path,
    record: bool,
    max_requests: int,
    headers: Sequence[str],
) -> dict[str, object]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.loadgen",
        f"--port={port}",
        f"--path={path}",
        f"--connections={connections}",
        f"--seconds={seconds}",
        f"--rate={rate}",
        f"--body-file={body_file}",
        f"--max-requests={max_requests}",
    ]
    command.extend(f"--header={header}" for header in headers)
    if record:
        command.append("--record")
    finished = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 120, check=True
    )
    figures: dict[str, object] = json.loads(finished.stdout.strip().splitlines()[-1])
    return figures


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
"""


def wrk_available() -> bool:
    """Whether Debian's C{wrk} is installed."""
    return shutil.which("wrk") is not None


def spawn_wrk(
    port: int, path: str, connections: int, seconds: float, body: str
) -> dict[str, object]:
    """
    Run C{wrk} with one thread (one CPU) and C{connections} connections;
    return its answered-200 count and seconds like L{spawn}.
    """
    with tempfile.TemporaryDirectory(prefix="rf-bench-wrk-") as folder:
        script = Path(folder) / "post.lua"
        script.write_text(WRK_SCRIPT.format(body=json.dumps(body)))
        finished = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "-s",
                str(script),
                f"http://{HOST}:{port}{path}",
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        )
    output = finished.stdout
    found = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", output)
    if found is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0}[found.group(3)]
    total = int(found.group(1))
    refused = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = int(refused.group(1)) if refused else 0
    return {
        "ok": total - errors,
        "other": errors,
        "failed": 0,
        "seconds": float(found.group(2)) * scale,
        "answered": [],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load and print its figures as one JSON line."""
    options = parse_options(argv)
    print(json.dumps(asyncio.run(run_load(options))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
