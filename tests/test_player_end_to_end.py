"""
The player under twistd, killed with SIGKILL between committing a batch to
its queue and the relay's acknowledgement.

The relay here is a small stand-in speaking the relay protocol in a thread
of the test, so that the kill happens at exactly that moment: when the
player's C{DELETE /acknowledge-batch} arrives, the player is killed before
the relay answers or deletes anything.  The player started again must pull
the same records, recognise them, and store every event exactly once.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit
from urllib.request import urlopen

from twisted.trial.unittest import SynchronousTestCase

from replayforge.launch import Daemon, free_port
from tests.player_support import temp_folder

TOKEN = "e2e-player-token"
RECORDS = 120
POLL_LIMIT = 50
WAIT_SECONDS = 60.0


class StandInRelay:
    """
    The relay protocol over records in memory, served in a thread.

    @ivar before_acknowledgement: called (once) with the ids of the first
        acknowledgement, before it is answered; the request then gets no
        answer at all.
    """

    def __init__(self, contents: list[str]) -> None:
        self.records = {number + 1: text for number, text in enumerate(contents)}
        self.lock = threading.Lock()
        self.acknowledgements: list[list[int]] = []
        self.before_acknowledgement: Any = None
        relay = self

        class Handler(BaseHTTPRequestHandler):
            # Kept-alive connections, as a Go relay keeps them.
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path != "/first-batch" or not relay.authorized(self):
                    self.answer(404, b"[]")
                    return
                limit = int(parse_qs(url.query).get("limit", ["100"])[0])
                with relay.lock:
                    batch = [
                        {"content": relay.records[key], "id": key}
                        for key in sorted(relay.records)[:limit]
                    ]
                if not batch:
                    self.answer(404, b"[]")
                    return
                self.answer(200, json.dumps(batch).encode())

            def do_DELETE(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                ids = [int(key) for key in json.loads(self.rfile.read(length))["ids"]]
                hook, relay.before_acknowledgement = relay.before_acknowledgement, None
                if hook is not None:
                    hook(ids)
                    self.close_connection = True
                    return
                with relay.lock:
                    relay.acknowledgements.append(ids)
                    deleted = [key for key in ids if relay.records.pop(key, None)]
                if not deleted:
                    self.answer(404, b"No records found with provided ids\n")
                    return
                self.answer(
                    200, f"{len(deleted)} records deleted successfully".encode()
                )

            def answer(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def authorized(self, handler: BaseHTTPRequestHandler) -> bool:
        return handler.headers.get("Authorization") == f"Bearer {TOKEN}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def remaining(self) -> int:
        with self.lock:
            return len(self.records)


class PlayerKilledTests(SynchronousTestCase):
    """kill -9 of the player between its queue commit and the acknowledgement."""

    def setUp(self) -> None:
        self.folder = temp_folder(self, "rf-player-e2e-")
        events = [
            json.dumps(
                {"method": "POST", "path": "/events", "body": json.dumps({"n": n})}
            )
            for n in range(RECORDS)
        ]
        self.relay = StandInRelay(events)
        self.relay.start()
        self.addCleanup(self.relay.stop)
        self.status_port = free_port()
        self.database = self.folder / "store.sqlite3"
        config = {
            "relayUrl": f"http://127.0.0.1:{self.relay.port}/",
            "listenStatusZ": f"tcp:{self.status_port}:interface=127.0.0.1",
            "pollWaitSecs": 0,
            "pollLimit": POLL_LIMIT,
            "dataDir": str(self.folder / "data"),
            "sources": [
                {
                    "name": "events",
                    "relayAuthenticationBearer": TOKEN,
                    "sinks": ["store"],
                    "hookInterval": "100ms",
                }
            ],
            "sinks": [
                {
                    "name": "store",
                    "type": "db",
                    "params": {"database": str(self.database)},
                }
            ],
        }
        path = self.folder / "player.json"
        path.write_text(json.dumps(config))
        self.player = Daemon("player", path, self.folder / "player")
        self.addCleanup(self.player.stop)

    def start_player(self) -> None:
        self.player.start()
        self.player.wait_until_ready(f"http://127.0.0.1:{self.status_port}/")

    def stored(self) -> list[int]:
        if not self.database.exists():
            return []
        connection = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)
        try:
            rows = connection.execute("SELECT n FROM events").fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            connection.close()
        return [row[0] for row in rows]

    def marks(self) -> list[int]:
        connection = sqlite3.connect(self.folder / "data" / "player-queue.sqlite3")
        try:
            return [
                row[0]
                for row in connection.execute(
                    "SELECT relay_id FROM pulled_records ORDER BY relay_id"
                )
            ]
        finally:
            connection.close()

    def wait_for(self, condition: Any, what: str) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.1)
        self.fail(f"never happened: {what}\n{self.player.log_tail(30)}")

    def test_no_event_lost_or_stored_twice(self) -> None:
        """
        Killed when its first acknowledgement reaches the relay, the player
        has the batch committed to its queue; started again it recognises
        the redelivered records by id, and every event is stored once.
        """
        killed = threading.Event()
        first_batch: list[int] = []

        def kill(ids: list[int]) -> None:
            first_batch.extend(ids)
            self.player.kill()
            killed.set()

        self.relay.before_acknowledgement = kill
        self.player.start()
        self.wait_for(killed.is_set, "the first acknowledgement")
        self.assertEqual(first_batch, list(range(1, POLL_LIMIT + 1)))
        self.assertEqual(self.relay.remaining(), RECORDS)
        # The batch was committed before it was acknowledged.
        self.assertEqual(self.marks(), first_batch)

        self.start_player()
        self.wait_for(lambda: self.relay.remaining() == 0, "the relay emptied")
        self.wait_for(lambda: len(self.stored()) >= RECORDS, "every event stored")
        time.sleep(0.5)
        self.assertEqual(sorted(self.stored()), list(range(RECORDS)))
        self.assertEqual(self.relay.acknowledgements[0], first_batch)
        with urlopen(f"http://127.0.0.1:{self.status_port}/statusz") as answer:
            status = json.loads(answer.read())
        source = status["sources"]["events"]
        self.assertEqual(source["redelivered"], POLL_LIMIT)
        self.assertEqual(source["received"], RECORDS - POLL_LIMIT)
        self.assertEqual(status["sinks"]["store"]["queued"], 0)
        self.assertEqual(self.marks(), [])
