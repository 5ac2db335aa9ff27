"""
Fakes and builders shared by the player's tests.

SQLite pools here run their interactions at once, on the calling thread
(L{SynchronousThreadPool} and L{SynchronousReactor}), so a test sees a
transaction committed as soon as the call that started it returns.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import attrs
from twisted.enterprise import adbapi
from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from replayforge.player.config import PlayerConfig, PlayerSinkConfig
from replayforge.player.queue import PlayerQueue
from replayforge.player.sinks.base import QueuedEvent
from replayforge.player.sinks.db import DbSink
from replayforge.player.sinks.settings import DbSinkSettings, SinkSettings
from replayforge.store import open_pool, open_read_pool


class SynchronousThreadPool:
    """A thread pool that runs each call at once, on the calling thread."""

    def callInThreadWithCallback(
        self, on_result: Any, function: Any, *args: Any, **kwargs: Any
    ) -> None:
        try:
            result = function(*args, **kwargs)
        except Exception:
            on_result(False, Failure())
        else:
            on_result(True, result)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class SynchronousReactor(Clock):
    """A clock on which adbapi's and threads' hand-offs happen at once."""

    def __init__(self) -> None:
        super().__init__()
        self._threads = SynchronousThreadPool()

    def callWhenRunning(self, function: Any, *args: Any, **kwargs: Any) -> None:
        return None

    def callFromThread(self, function: Any, *args: Any, **kwargs: Any) -> None:
        function(*args, **kwargs)

    def getThreadPool(self) -> SynchronousThreadPool:
        return self._threads


def synchronous(pool: adbapi.ConnectionPool) -> adbapi.ConnectionPool:
    """Make C{pool} run its interactions at once."""
    pool.threadpool = SynchronousThreadPool()
    return pool


def temp_folder(case: SynchronousTestCase, prefix: str = "rf-player-") -> Path:
    """A fresh folder, removed after the test."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    case.addCleanup(shutil.rmtree, folder, True)
    return folder


def sink_config(
    name: str,
    settings: SinkSettings,
    kind: str = "db",
    sink_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> PlayerSinkConfig:
    """The configuration of one sink."""
    return PlayerSinkConfig(
        name=name,
        id=sink_id or name,
        type=kind,
        settings=settings,
        metadata=metadata or {},
        key_path="sinks[0]",
    )


def make_db_sink(
    case: SynchronousTestCase,
    reactor: SynchronousReactor,
    path: Path,
    name: str = "store",
    ttl: int = 0,
    static_dir: Path | None = None,
    queue_instance: str = "",
    sink_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> DbSink:
    """A started C{db} sink on C{path} whose pools run synchronously."""
    config = sink_config(
        name,
        DbSinkSettings(
            database=path, listen=None, static_dir=static_dir, row_ttl_seconds=ttl
        ),
        sink_id=sink_id,
        metadata=metadata,
    )
    sink = DbSink(
        config,
        reactor,
        pool=synchronous(open_pool(path, reactor)),
        read_pool=synchronous(open_read_pool(path, reactor)),
        queue_instance=queue_instance,
    )
    case.successResultOf(sink.start())
    case.addCleanup(sink.stop)
    return sink


def make_queue(
    case: SynchronousTestCase,
    reactor: SynchronousReactor,
    folder: Path,
    max_events: int = 1000,
    max_dead_letters: int = 100,
) -> PlayerQueue:
    """A queue file in C{folder} whose pool runs synchronously."""
    queue = PlayerQueue(
        folder / "player-queue.sqlite3", reactor, max_events, max_dead_letters
    )
    synchronous(queue.pool)
    case.addCleanup(queue.close)
    return queue


def call(method: str, path: str, body: Any = None, **extra: Any) -> str:
    """Encode a call object whose body is C{body} as JSON (or as given)."""
    text = body if isinstance(body, str) or body is None else json.dumps(body)
    document = {"method": method, "path": path, **extra}
    if text is not None:
        document["body"] = text
    return json.dumps(document)


def queued(*contents: str, first: int = 1) -> list[QueuedEvent]:
    """Queue events with ids from C{first}."""
    return [QueuedEvent(first + index, text) for index, text in enumerate(contents)]


def player_config(**overrides: Any) -> PlayerConfig:
    """A player configuration with no sources or sinks, fields overridden."""
    fields: dict[str, Any] = {
        "source_file": "player.yaml",
        "relay_url": "http://relay.test/",
        "relay_url_statusz": "",
        "env_name": "prod",
        "host_name": "player-1",
        "sources": (),
        "sinks": (),
        "listen": None,
        "listen_status": None,
        "static_folder": None,
        "http_username": "",
        "http_password": "",
        "poll_limit": 100,
        "poll_wait_seconds": 10.0,
        "tsnet_hostname": "",
        "listen_using_tailscale": False,
    }
    fields.update(overrides)
    return PlayerConfig(**fields)


@attrs.frozen
class Seen:
    """One request as the target received it."""

    method: bytes
    uri: bytes
    headers: dict[bytes, list[bytes]]
    body: bytes


class RecordingTarget(Resource):
    """A target that records every request and answers scripted codes."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Seen] = []
        self.codes: list[int] = []
        self.headers: dict[bytes, bytes] = {}
        self.holding: list[Any] = []
        self.hold = False

    def render(self, request: Any) -> Any:
        self.seen.append(
            Seen(
                method=request.method,
                uri=request.uri,
                headers={
                    name.lower(): values
                    for name, values in request.requestHeaders.getAllRawHeaders()
                },
                body=request.content.read(),
            )
        )
        if self.hold:
            self.holding.append(request)
            return NOT_DONE_YET
        request.setResponseCode(self.codes.pop(0) if self.codes else 200)
        for name, value in self.headers.items():
            request.setHeader(name, value)
        return b"answered"


def listen(resource: Resource) -> IListeningPort:
    site = Site(resource)
    site.log = lambda request: None  # type: ignore[method-assign]
    port: IListeningPort = reactor.listenTCP(  # type: ignore[attr-defined]
        0, site, interface="127.0.0.1"
    )
    return port
