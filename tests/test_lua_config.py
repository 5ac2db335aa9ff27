"""
Tests for scripts in the daemons' configuration: the runtime keys of proxy
sources and sinks and of player sources, and the start-up errors of scripts
without the entry points they need.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from replayforge.config import ConfigError
from replayforge.lua import LuaSettings, ScriptError
from replayforge.player.config import load_player_config
from replayforge.proxy.config import load_proxy_config
from replayforge.proxy.tap import make_proxy_service, makeService
from tests.lua_support import LUAJIT_MISSING

ROUTE = "function Process(content, emit) emit('relay', content) end\n"
TRANSFORM = "function TransformBatch(messages, request) return messages end\n"


class ConfigTestCase(SynchronousTestCase):
    """Write configurations and scripts in a temporary folder."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="replayforge-lua-config-"))
        self.addCleanup(shutil.rmtree, self.folder, True)

    def write(self, name: str, text: str) -> str:
        """Write C{text} to C{name}; return its path."""
        path = self.folder / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    def proxy(
        self, source: dict[str, Any] | None = None, sink: dict[str, Any] | None = None
    ) -> str:
        """Write a proxy config with one http source and one sink."""
        document = {
            "sources": [
                {
                    "id": "web",
                    "type": "http",
                    "transformScript": self.write("route.lua", ROUTE),
                    "params": {"listen": "tcp:0:interface=127.0.0.1"},
                    **(source or {}),
                }
            ],
            "sinks": [
                {
                    "id": "relay",
                    "url": "http://127.0.0.1:9/",
                    "buckets": ["b"],
                    "databasePath": str(self.folder / "relay-sink.sqlite3"),
                    **(sink or {}),
                }
            ],
        }
        return self.write("proxy.json", json.dumps(document))


class ProxyConfigTests(ConfigTestCase):
    """The runtime keys on proxy sources and sinks."""

    def test_defaults(self) -> None:
        """Without the keys, sources and sinks get the default runtime."""
        config = load_proxy_config(self.proxy())
        self.assertEqual(config.sources[0].lua, LuaSettings())
        self.assertEqual(config.sinks["relay"].lua, LuaSettings())

    def test_keys(self) -> None:
        """The keys are read on sources and on sinks."""
        config = load_proxy_config(
            self.proxy(
                source={"unsafeLua": True, "luaInstructionBudget": 50_000},
                sink={"luaMaxMemoryMb": 8},
            )
        )
        self.assertEqual(
            config.sources[0].lua, LuaSettings(unsafe=True, instruction_budget=50_000)
        )
        self.assertEqual(config.sinks["relay"].lua, LuaSettings(max_memory=8 << 20))

    def test_luajit(self) -> None:
        """C{luaEngine: luajit} selects LuaJIT."""
        if LUAJIT_MISSING:
            raise self.skipTest(LUAJIT_MISSING)
        config = load_proxy_config(self.proxy(source={"luaEngine": "luajit"}))
        self.assertEqual(config.sources[0].lua.engine, "luajit")

    def test_bad_engine(self) -> None:
        """An unknown engine is a config error naming the key."""
        with self.assertRaises(ConfigError) as caught:
            load_proxy_config(self.proxy(sink={"luaEngine": "python"}))
        self.assertEqual(caught.exception.key_path, "sinks[0].luaEngine")


class PlayerConfigTests(ConfigTestCase):
    """The runtime keys on player sources."""

    def test_keys(self) -> None:
        """A player source reads the same keys."""
        document = {
            "relayUrl": "http://127.0.0.1:9/",
            "sources": [
                {
                    "name": "b",
                    "relayAuthenticationBearer": "t",
                    "transformScript": "route.lua",
                    "luaMaxMemoryMb": 4,
                    "luaInstructionBudget": 20_000,
                }
            ],
            "sinks": [{"name": "db", "type": "db", "params": {"database": "x.db"}}],
        }
        config = load_player_config(self.write("player.json", json.dumps(document)))
        self.assertEqual(
            config.sources[0].lua,
            LuaSettings(instruction_budget=20_000, max_memory=4 << 20),
        )


class ProxyStartUpTests(ConfigTestCase):
    """Scripts that lack their entry points stop the proxy's start-up."""

    def test_sink_without_transform_batch(self) -> None:
        """
        A sink script without C{TransformBatch} is refused, before any
        buffer file is made.
        """
        config = self.proxy(sink={"transformScript": self.write("sink.lua", ROUTE)})
        with self.assertRaises(ScriptError) as caught:
            make_proxy_service(config, MemoryReactorClock())
        self.assertTrue(
            str(caught.exception).endswith(
                "sink.lua: defines no TransformBatch(messages, request)"
            )
        )
        self.assertFalse((self.folder / "relay-sink.sqlite3").exists())

    def test_sink_error_one_line(self) -> None:
        """twistd gets one line naming the daemon and the script."""
        config = self.proxy(sink={"transformScript": self.write("sink.lua", ROUTE)})
        with self.assertRaises(SystemExit) as caught:
            makeService({"config": config})  # type: ignore[arg-type]
        message = str(caught.exception)
        self.assertTrue(message.startswith("replayforge-proxy: "), message)
        self.assertIn("sink.lua: defines no TransformBatch", message)
        self.assertEqual(len(message.splitlines()), 1)

    def test_source_without_entry_point(self) -> None:
        """A source script with neither C{Process} nor C{TimerHandler} is refused."""
        config = self.proxy(
            source={"transformScript": self.write("empty.lua", "x = 1\n")}
        )
        with self.assertRaises(ScriptError) as caught:
            make_proxy_service(config, MemoryReactorClock())
        self.assertTrue(
            str(caught.exception).endswith(
                "empty.lua: defines neither Process(content, emit) "
                "nor TimerHandler(emit)"
            )
        )

    def test_sink_script_loaded(self) -> None:
        """A sink script with C{TransformBatch} starts with the proxy."""
        config = self.proxy(sink={"transformScript": self.write("sink.lua", TRANSFORM)})
        service = make_proxy_service(config, MemoryReactorClock())
        self.assertIsNotNone(service)
