"""
A throwaway PostgreSQL server for tests: initdb in a temporary folder, a
free loopback port, password authentication, stopped and removed at the end.

The server binaries come from Debian's C{postgresql} package (which
C{.ci/run} installs); PostgreSQL refuses to run as root, so under root the
server runs as the package's C{postgres} user.  On a machine without them
the tests that need a server are skipped, except under CI (C{CI} set),
where a missing server is a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from replayforge.launch import free_port

USER = "replayforge"
PASSWORD = "pg-test-password"
DATABASE = "postgres"


class PostgresUnavailable(Exception):
    """No PostgreSQL server binaries on this machine."""


def server_binaries() -> Path:
    """
    The folder of C{initdb} and C{pg_ctl}, newest version first.

    @raise PostgresUnavailable: when there is none.
    """
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda path: int(Path(path).parent.parent.name),
        reverse=True,
    )
    if found:
        return Path(found[0]).parent
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    raise PostgresUnavailable(
        "PostgreSQL server binaries not found (apt-get install postgresql)"
    )


class PostgresServer:
    """One PostgreSQL server of our own, on 127.0.0.1."""

    def __init__(self) -> None:
        self.binaries = server_binaries()
        self.folder = Path(tempfile.mkdtemp(prefix="rf-postgres-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        result = subprocess.run(
            [*prefix, *command],
            # The server's user may not be allowed into the test's folder.
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}\n{self.log()}"
            )

    def log(self) -> str:
        """The server's log, for failure messages."""
        try:
            return (self.folder / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        """Create the cluster and start the server; wait until it accepts."""
        password_file = self.folder / "password"
        password_file.write_text(PASSWORD + "\n")
        if self._as_postgres:
            shutil.chown(self.folder, "postgres")
            shutil.chown(password_file, "postgres")
        self._run(
            str(self.binaries / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            USER,
            "--pwfile",
            str(password_file),
            "--auth",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        )
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c timezone=UTC"
        )
        self._run(
            str(self.binaries / "pg_ctl"),
            "--pgdata",
            str(self.data),
            "--log",
            str(self.folder / "server.log"),
            "--options",
            options,
            "--wait",
            "start",
        )

    def stop(self) -> None:
        """Stop the server and remove its files."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(
                    str(self.binaries / "pg_ctl"),
                    "--pgdata",
                    str(self.data),
                    "--mode",
                    "immediate",
                    "--wait",
                    "stop",
                )
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def conninfo(self) -> str:
        """A libpq connection string to the server."""
        return (
            f"host=127.0.0.1 port={self.port} user={USER} "
            f"password={PASSWORD} dbname={DATABASE}"
        )
