"""
Start and stop the daemons as separate processes, the way an operator would.

Used by the demo, the end-to-end tests and the benchmarks: each daemon runs
under the real C{twistd} of this interpreter, with its own working folder
and log file.  These helpers block; they are for scripts, never for code
running inside a reactor.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

DAEMONS = ("relay", "proxy", "player")


def endpoint_url(endpoint: str, path: str = "/") -> str:
    """
    Turn a C{tcp:PORT[:interface=HOST]} endpoint into a loopback URL.

    @raise ValueError: for any other kind of endpoint.
    """
    kind, _, rest = endpoint.partition(":")
    if kind != "tcp":
        raise ValueError(f"expected a tcp: endpoint, got {endpoint!r}")
    port, *options = rest.split(":")
    host = "127.0.0.1"
    for option in options:
        name, _, value = option.partition("=")
        if name == "interface" and value not in ("", "0.0.0.0", "::"):  # noqa: S104
            host = value
    return f"http://{host}:{int(port)}{path}"


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on C{host} that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class DaemonFailed(Exception):
    """A daemon exited or never became ready; the message has its log."""


class Daemon:
    """
    One ReplayForge daemon running under twistd.

    @ivar log_path: where the daemon's log goes.
    """

    def __init__(
        self,
        kind: str,
        config: Path,
        workdir: Path,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        if kind not in DAEMONS:
            raise ValueError(f"unknown daemon {kind!r}: expected one of {DAEMONS}")
        self.kind = kind
        self.config = config.resolve()
        self.workdir = workdir
        self.log_path = (log_dir or workdir) / f"{kind}.log"
        self._env = env
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the daemon in the background; its log is appended to."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, **(self._env or {})}
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(  # noqa: S603 (our own interpreter)
            [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "--nodaemon",
                "--pidfile=",
                f"replayforge-{self.kind}",
                "-c",
                str(self.config),
            ],
            cwd=self.workdir,
            env=environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def log_tail(self, lines: int = 30) -> str:
        """Return the last C{lines} lines of the daemon's log."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_until_ready(self, url: str, timeout: float = 20.0) -> None:
        """
        Poll C{url} until it answers, or fail with the log.

        Any HTTP answer counts: the listener is up.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise DaemonFailed(
                    f"{self.kind} exited with {self._process.returncode}:\n"
                    + self.log_tail()
                )
            try:
                urllib.request.urlopen(url, timeout=1).close()  # noqa: S310
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.1)
        raise DaemonFailed(f"{self.kind} not ready at {url}:\n" + self.log_tail())

    def stop(self, timeout: float = 15.0) -> int | None:
        """Ask the daemon to stop (SIGTERM) and wait; return its exit code."""
        return self._end(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """End the daemon at once (SIGKILL), as a crash would."""
        return self._end(signal.SIGKILL, 10.0)

    def _end(self, sig: int, timeout: float) -> int | None:
        process, self._process = self._process, None
        code = None
        if process is not None:
            if process.poll() is None:
                process.send_signal(sig)
            try:
                code = process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code
