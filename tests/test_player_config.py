"""
Tests for L{replayforge.player.config}: the player's file, key by key.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from replayforge.config import ConfigError
from replayforge.lua import ScriptError
from replayforge.player.config import (
    PlayerConfig,
    PlayerSourceConfig,
    load_player_config,
)
from replayforge.player.processing import FanOut, has_timer, load_processor
from replayforge.player.sinks.settings import DbSinkSettings, HttpSinkSettings


def temp_folder(case: SynchronousTestCase) -> Path:
    """A fresh folder removed after the test (pytest runs in the checkout)."""
    folder = Path(tempfile.mkdtemp(prefix="rf-player-config-"))
    case.addCleanup(shutil.rmtree, folder, True)
    return folder


def minimal(**overrides: Any) -> dict[str, Any]:
    """A valid Go-era player document, with top-level keys replaced."""
    document: dict[str, Any] = {
        "relayUrl": "http://127.0.0.1:8081",
        "sources": [
            {
                "name": "bucket1",
                "relayAuthenticationBearer": "secret-token",
                "sinks": ["web"],
            }
        ],
        "sinks": [
            {
                "name": "web",
                "type": "http",
                "params": {"targetHost": "http://127.0.0.1:9000/"},
            }
        ],
    }
    document.update(overrides)
    return document


class PlayerConfigTests(SynchronousTestCase):
    """Reading the player's configuration file."""

    def load(self, document: dict[str, Any], name: str = "player.json") -> PlayerConfig:
        folder = temp_folder(self)
        path = folder / name
        path.write_text(json.dumps(document))
        return load_player_config(path)

    def error(self, document: dict[str, Any]) -> ConfigError:
        with self.assertRaises(ConfigError) as caught:
            self.load(document)
        return caught.exception

    def test_go_era_document(self) -> None:
        """A Go player's keys load with their defaults filled in."""
        config = self.load(minimal(envName="prod", hostName="box-1"))
        self.assertEqual(config.relay_url, "http://127.0.0.1:8081/")
        self.assertEqual(config.env_name, "prod")
        self.assertEqual(config.host_name, "box-1")
        [source] = config.sources
        self.assertEqual(source.name, "bucket1")
        self.assertEqual(source.bearer, "secret-token")
        self.assertEqual(source.sinks, ("web",))
        self.assertEqual(source.hook_interval, 1.0)
        self.assertIsNone(source.transform_script)
        [sink] = config.sinks
        self.assertEqual((sink.name, sink.id, sink.type), ("web", "web", "http"))
        self.assertEqual(
            sink.settings,
            HttpSinkSettings(target_host="http://127.0.0.1:9000", timeout_seconds=30.0),
        )
        self.assertEqual((config.poll_limit, config.poll_wait_seconds), (1000, 10.0))
        self.assertIsNone(config.listen)
        self.assertIsNone(config.listen_status)

    def test_host_name_defaults_to_machine(self) -> None:
        """Without C{hostName}, the machine's name is sent to the relay."""
        self.assertEqual(self.load(minimal()).host_name, socket.gethostname())

    def test_bearer_not_in_repr(self) -> None:
        """Tokens and passwords stay out of the records' text form."""
        config = self.load(minimal(httpUsername="u", httpPassword="hunter2"))
        self.assertNotIn("secret-token", repr(config))
        self.assertNotIn("hunter2", repr(config))

    def test_yaml_and_hook_interval(self) -> None:
        """YAML files load too, and C{hookInterval} takes Go durations."""
        document = minimal()
        document["sources"][0]["hookInterval"] = "1m30s"
        folder = temp_folder(self)
        path = folder / "player.yaml"
        path.write_text(json.dumps(document))  # JSON is YAML
        [source] = load_player_config(path).sources
        self.assertEqual(source.hook_interval, 90.0)

    def test_listeners(self) -> None:
        """C{listen} wins over C{exposedPort}, which takes C{listenAddress}."""
        config = self.load(minimal(exposedPort=8090, listenAddress="127.0.0.1"))
        self.assertEqual(config.listen, "tcp:8090:interface=127.0.0.1")
        config = self.load(minimal(exposedPort=8090, listenAddress="::1"))
        self.assertEqual(config.listen, "tcp:8090:interface=\\:\\:1")
        config = self.load(minimal(exposedPort=8090, listen="tcp:1:interface=x"))
        self.assertEqual(config.listen, "tcp:1:interface=x")
        config = self.load(minimal(portStatusZ=8091))
        self.assertEqual(config.listen_status, "tcp:8091")
        config = self.load(minimal(portStatusZ=8091, listenStatusZ="tcp:7"))
        self.assertEqual(config.listen_status, "tcp:7")

    def test_relay_url_required(self) -> None:
        """A missing or non-HTTP C{relayUrl} is named in the error."""
        document = minimal()
        del document["relayUrl"]
        self.assertEqual(self.error(document).key_path, "relayUrl")
        error = self.error(minimal(relayUrl="ftp://relay"))
        self.assertEqual(error.key_path, "relayUrl")

    def test_unknown_sink_in_source(self) -> None:
        """A source listing a sink that does not exist names C{sinks}."""
        document = minimal()
        document["sources"][0]["sinks"] = ["web", "nowhere"]
        error = self.error(document)
        self.assertEqual(error.key_path, "sources[0].sinks")
        self.assertIn("nowhere", error.problem)

    def test_source_needs_script_or_sinks(self) -> None:
        """A source with neither a script nor sinks cannot start."""
        document = minimal()
        del document["sources"][0]["sinks"]
        self.assertEqual(self.error(document).key_path, "sources[0].transformScript")

    def test_duplicate_sink_names(self) -> None:
        """Two sinks cannot share a name, nor an id."""
        document = minimal()
        document["sinks"].append(dict(document["sinks"][0]))
        self.assertEqual(self.error(document).key_path, "sinks[1].name")
        document["sinks"][1] = {**document["sinks"][0], "name": "other", "id": "web"}
        self.assertEqual(self.error(document).key_path, "sinks[1].id")

    def test_duplicate_buckets(self) -> None:
        """Two sources cannot pull the same bucket."""
        document = minimal()
        document["sources"].append(dict(document["sources"][0]))
        self.assertEqual(self.error(document).key_path, "sources[1].name")

    def test_unsupported_sink_type(self) -> None:
        """A sink type not built yet is refused, naming the key."""
        document = minimal()
        document["sinks"][0]["type"] = "time_series"
        error = self.error(document)
        self.assertEqual(error.key_path, "sinks[0].type")
        self.assertIn("unsupported sink type", error.problem)

    def test_http_sink_params(self) -> None:
        """An http sink needs an http(s) C{targetHost}; limits are checked."""
        document = minimal()
        document["sinks"][0]["params"] = {"targetHost": "127.0.0.1:9000"}
        self.assertEqual(self.error(document).key_path, "sinks[0].params.targetHost")
        document["sinks"][0]["params"] = {
            "targetHost": "https://example.test",
            "maxRetries": -1,
        }
        self.assertEqual(self.error(document).key_path, "sinks[0].params.maxRetries")

    def test_db_sink_params(self) -> None:
        """A db sink reads the Go keys; C{listen_port} may be a string."""
        document = minimal()
        document["sinks"].append(
            {
                "name": "store",
                "type": "db",
                "id": "store-api",
                "params": {"database": "data/events.sqlite3", "listen_port": "8095"},
                "metadata": {"team": "ops"},
            }
        )
        config = self.load(document)
        sink = config.sink_named("store")
        assert sink is not None
        self.assertEqual(sink.id, "store-api")
        self.assertEqual(sink.metadata, {"team": "ops"})
        self.assertEqual(
            sink.settings,
            DbSinkSettings(
                database=Path("data/events.sqlite3"),
                listen="tcp:8095:interface=127.0.0.1",
                static_dir=None,
                row_ttl_seconds=0,
            ),
        )
        del document["sinks"][1]["params"]["database"]
        self.assertEqual(self.error(document).key_path, "sinks[1].params.database")

    def test_poll_wait_bounded(self) -> None:
        """C{pollWaitSecs} cannot pass the relay's 30 second limit."""
        self.assertEqual(self.error(minimal(pollWaitSecs=31)).key_path, "pollWaitSecs")
        self.assertEqual(self.error(minimal(pollLimit=0)).key_path, "pollLimit")

    def test_basic_auth_needs_both(self) -> None:
        """A username without a password (or the reverse) is an error."""
        self.assertEqual(
            self.error(minimal(httpUsername="admin")).key_path, "httpPassword"
        )

    def test_relay_url_credentials(self) -> None:
        """
        A C{relayUrl} carrying a user and password is refused, pointing at
        the bearer, and without repeating the password.
        """
        error = self.error(minimal(relayUrl="https://user:pw-77@127.0.0.1:18481/"))
        self.assertEqual(error.key_path, "relayUrl")
        self.assertEqual(
            error.problem,
            "user and password in the URL are not supported; use "
            "relayAuthenticationBearer",
        )
        self.assertNotIn("pw-77", str(error))
        error = self.error(minimal(relayUrlStatusz="user:pw-77@127.0.0.1:8082"))
        self.assertEqual(error.key_path, "relayUrlStatusz")
        self.assertNotIn("pw-77", str(error))

    def test_sink_url_credentials(self) -> None:
        """
        The URLs the http and notification sinks call may not carry a user
        and password either: their client would not send them.
        """
        document = minimal()
        document["sinks"][0]["params"] = {"targetHost": "http://u:p@127.0.0.1:9000"}
        error = self.error(document)
        self.assertEqual(error.key_path, "sinks[0].params.targetHost")
        self.assertIn("user and password in the URL are not supported", error.problem)
        document["sinks"][0] = {
            "name": "web",
            "type": "notification",
            "params": {"webhooks": {"chat": {"url": "https://bot@127.0.0.1/hook"}}},
        }
        error = self.error(document)
        self.assertEqual(error.key_path, "sinks[0].params.webhooks.chat.url")
        self.assertIn("Authorization header", error.problem)

    def test_bad_listeners(self) -> None:
        """
        Every listener key is parsed when the file is read: the exposed and
        status listeners, their Go-era ports, and a db sink's API listener.
        """
        cases: list[tuple[dict[str, Any], str]] = [
            ({"listen": "tcp:abc"}, "listen"),
            (
                {"listenStatusZ": "ssl:8443:privateKey=/nonexistent.pem"},
                "listenStatusZ",
            ),
            ({"exposedPort": 70000}, "exposedPort"),
            ({"portStatusZ": -1}, "portStatusZ"),
        ]
        for overrides, key_path in cases:
            error = self.error(minimal(**overrides))
            self.assertEqual(error.key_path, key_path, overrides)
            self.assertNotIn("\n", str(error))
        document = minimal()
        document["sinks"].append(
            {
                "name": "store",
                "type": "db",
                "params": {"database": "events.sqlite3", "listen": "tcp:80:x=y"},
            }
        )
        error = self.error(document)
        self.assertEqual(error.key_path, "sinks[1].params.listen")
        self.assertIn("cannot listen on 'tcp:80:x=y'", error.problem)
        document["sinks"][1]["params"] = {
            "database": "events.sqlite3",
            "listen_port": "99999",
        }
        self.assertEqual(self.error(document).key_path, "sinks[1].params.listen_port")


class ProcessorTests(SynchronousTestCase):
    """Loading a source's script or fan-out."""

    def write(self, name: str, text: str) -> Path:
        folder = temp_folder(self)
        path = folder / name
        path.write_text(text)
        return path

    def script_source(self, name: str, text: str) -> tuple[PlayerSourceConfig, str]:
        """
        Write script C{name} and a config whose one source runs it; return
        that source and the config's path.
        """
        config_path = self.write("player.json", "")
        script = config_path.parent / name
        script.write_text(text)
        document = minimal()
        document["sources"][0] = {
            "name": "bucket1",
            "relayAuthenticationBearer": "t",
            "transformScript": str(script),
        }
        config_path.write_text(json.dumps(document))
        [source] = load_player_config(config_path).sources
        return source, str(config_path)

    def test_script_relative_to_working_directory(self) -> None:
        """
        A relative C{transformScript} is taken from the working directory,
        as the Go player did, not from the config file's folder.
        """
        document = minimal()
        document["sources"][0] = {
            "name": "bucket1",
            "relayAuthenticationBearer": "t",
            "transformScript": "scripts/route.lua",
        }
        config_path = self.write("player.json", json.dumps(document))
        [source] = load_player_config(config_path).sources
        self.assertEqual(source.transform_script, Path("scripts/route.lua"))

    def test_script_loaded(self) -> None:
        """A script's C{Process} routes events; it has no timer unless defined."""
        source, config_path = self.script_source(
            "route.lua", "function Process(content, emit) emit('web', content) end\n"
        )
        processor = load_processor(source, config_path)
        self.assertEqual(processor.process("x"), [("web", "x")])
        self.assertFalse(has_timer(processor))

    def test_script_with_timer_only(self) -> None:
        """A script that defines only C{TimerHandler} is accepted."""
        source, config_path = self.script_source(
            "timer.lua", "function TimerHandler() end\n"
        )
        processor = load_processor(source, config_path)
        self.assertTrue(has_timer(processor))

    def test_script_without_entry_point(self) -> None:
        """
        A script that defines neither C{Process} nor C{TimerHandler} is a
        configuration error.
        """
        source, config_path = self.script_source("empty.lua", "function init() end\n")
        with self.assertRaises(ConfigError) as caught:
            load_processor(source, config_path)
        self.assertEqual(caught.exception.key_path, "sources[0].transformScript")

    def test_script_syntax_error(self) -> None:
        """A script that does not load is a start-up error."""
        source, config_path = self.script_source("bad.lua", "function Process(\n")
        self.assertRaises(ScriptError, load_processor, source, config_path)

    def test_fan_out(self) -> None:
        """Without a script, each record goes unchanged to every listed sink."""
        processor = FanOut(("a", "b"))
        self.assertEqual(processor.process("e"), [("a", "e"), ("b", "e")])
        self.assertEqual(processor.timer(), [])
