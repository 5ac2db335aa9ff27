"""
The real daemons, and a bare twisted.web server, for the pipeline suites.

L{Cluster} writes the configs of a relay, a proxy and a player on free
loopback ports in one temporary folder, starts each under twistd
(L{replayforge.launch.Daemon}) and stops them all, removing the folder.
C{python -m benchmarks.daemons --bare SECONDS} is the ingest baseline: a
twisted.web resource that reads the body and answers 200, on a free
loopback port it prints, ending by itself after C{SECONDS}.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from replayforge.launch import Daemon, free_port

TOKEN = "bench-token"
BUCKET = "bench"
PASS_THROUGH = 'function Process(content, emit) emit("relay", content) end\n'


def listen(port: int) -> str:
    """The loopback endpoint string of C{port}."""
    return f"tcp:{port}:interface=127.0.0.1"


class Cluster:
    """
    Up to three daemons sharing one temporary folder.

    @ivar ports: the loopback ports, by name (C{relay}, C{relay_status}, ...).
    """

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="rf-bench-"))
        self.ports = {
            name: free_port()
            for name in (
                "relay",
                "relay_status",
                "proxy",
                "proxy_status",
                "player",
                "player_status",
                "nowhere",
            )
        }
        self.daemons: dict[str, Daemon] = {}

    def relay_config(self, **extra: Any) -> dict[str, Any]:
        """A relay with one bucket, C{bench}."""
        return {
            "listen": listen(self.ports["relay"]),
            "listenStatusZ": listen(self.ports["relay_status"]),
            "dataDir": str(self.folder / "relay-data"),
            "buckets": {BUCKET: {"auth": TOKEN, "dbMaxSizeKb": 4_000_000}},
            **extra,
        }

    @property
    def relay_url(self) -> str:
        """The relay's base URL."""
        return f"http://127.0.0.1:{self.ports['relay']}/"

    def proxy_config(
        self,
        sources: list[dict[str, Any]],
        relay_url: str | None = None,
        batching: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A proxy with C{sources} and one sink, C{relay}, to the relay."""
        return {
            "envName": "bench",
            "listenStatusZ": listen(self.ports["proxy_status"]),
            "sources": sources,
            "sinks": [
                {
                    "id": "relay",
                    "type": "http",
                    "url": relay_url or self.relay_url,
                    "authBearer": TOKEN,
                    "buckets": [BUCKET],
                    "databasePath": str(self.folder / "proxy-buffer.sqlite3"),
                    "dbMaxSizeKb": 4_000_000,
                    "config": batching or {},
                }
            ],
        }

    def http_source(self, script: Path | None = None) -> dict[str, Any]:
        """The proxy's C{http} source, through C{script} or straight on."""
        source: dict[str, Any] = {
            "id": "web",
            "type": "http",
            "params": {"listen": listen(self.ports["proxy"])},
        }
        if script is None:
            source["targetSink"] = "relay"
        else:
            source["transformScript"] = str(script)
        return source

    def pass_through_script(self) -> Path:
        """Write the pass-through script; return its path."""
        path = self.folder / "pass-through.lua"
        path.write_text(PASS_THROUGH)
        return path

    def player_config(self, **extra: Any) -> dict[str, Any]:
        """A player pulling C{bench} into a db sink, C{store}."""
        return {
            "relayUrl": self.relay_url,
            "envName": "bench",
            "listen": listen(self.ports["player"]),
            "listenStatusZ": listen(self.ports["player_status"]),
            "dataDir": str(self.folder / "player-data"),
            "sources": [
                {
                    "name": BUCKET,
                    "relayAuthenticationBearer": TOKEN,
                    "sinks": ["store"],
                }
            ],
            "sinks": [
                {
                    "name": "store",
                    "id": "store",
                    "type": "db",
                    "params": {"database": str(self.store_path)},
                }
            ],
            **extra,
        }

    @property
    def store_path(self) -> Path:
        """The player's db sink file."""
        return self.folder / "player-store.sqlite3"

    def start(self, kind: str, config: dict[str, Any]) -> Daemon:
        """Write C{config}, start the daemon and wait until it answers."""
        path = self.folder / f"{kind}.json"
        path.write_text(json.dumps(config, indent=2))
        daemon = Daemon(kind, path, self.folder / kind)
        self.daemons[kind] = daemon
        daemon.start()
        daemon.wait_until_ready(f"http://127.0.0.1:{self.ports[kind + '_status']}/")
        return daemon

    def pid(self, kind: str) -> int:
        """The process id of the running daemon C{kind}."""
        pid = self.daemons[kind].pid
        if pid is None:
            raise RuntimeError(f"{kind} is not running")
        return pid

    def stop(self, kind: str) -> None:
        """Stop the daemon C{kind}."""
        daemon = self.daemons.pop(kind, None)
        if daemon is not None:
            daemon.stop()

    def close(self) -> None:
        """Stop every daemon and remove the folder."""
        for kind in list(self.daemons):
            self.stop(kind)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BareServer:
    """The ingest baseline's server, in a process of its own."""

    def __init__(self, lifetime: float) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.daemons", "--bare", str(lifetime)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        self.port = int(self._process.stdout.readline())

    @property
    def pid(self) -> int:
        """Its process id."""
        return self._process.pid

    def close(self) -> None:
        """Stop it, if it has not ended by itself."""
        if self._process.poll() is None:
            self._process.terminate()
        self._process.wait(10)


def serve_bare(lifetime: float) -> None:
    """Answer every request's body with 200 for C{lifetime} seconds."""
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class Answer(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            request.content.read()
            return b"Request received"

    site = Site(Answer())
    site.log = lambda request: None  # type: ignore[method-assign]
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(port.getHost().port, flush=True)
    reactor.callLater(lifetime, reactor.stop)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__" and sys.argv[1:2] == ["--bare"]:
    serve_bare(float(sys.argv[2]))
