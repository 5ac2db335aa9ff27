"""
Tests for the player's queue keys (L{replayforge.player.config}) and each
sink type's C{params} (L{replayforge.player.sinks.settings}), read from
real files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from replayforge.config import ConfigError
from replayforge.player.config import (
    DEFAULT_DEAD_LETTER_MAX_EVENTS,
    DEFAULT_QUEUE_MAX_EVENTS,
    PlayerConfig,
    load_player_config,
)
from replayforge.player.sinks.settings import (
    DEFAULT_RETRY_STATUS_CODES,
    HttpSinkSettings,
    LogSinkSettings,
    NotificationSinkSettings,
    RetryPolicy,
)
from tests.player_support import temp_folder


def document(*sinks: dict[str, Any], **top: Any) -> dict[str, Any]:
    """A player document with C{sinks}, every one fed by one bucket."""
    return {
        "relayUrl": "http://127.0.0.1:8081",
        "sources": [
            {
                "name": "bucket",
                "relayAuthenticationBearer": "t",
                "sinks": [sink["name"] for sink in sinks],
            }
        ],
        "sinks": list(sinks),
        **top,
    }


def http_sink(**params: Any) -> dict[str, Any]:
    return {
        "name": "web",
        "type": "http",
        "params": {"targetHost": "http://127.0.0.1:9000", **params},
    }


class SinkSettingsTests(SynchronousTestCase):
    """Reading the keys of the queue and of each sink type."""

    def load(self, raw: dict[str, Any]) -> PlayerConfig:
        path = temp_folder(self) / "player.json"
        path.write_text(json.dumps(raw))
        return load_player_config(path)

    def error(self, raw: dict[str, Any]) -> ConfigError:
        with self.assertRaises(ConfigError) as caught:
            self.load(raw)
        return caught.exception

    def test_queue_defaults_and_values(self) -> None:
        """C{dataDir}, C{queueMaxEvents} and C{deadLetterMaxEvents}."""
        config = self.load(document(http_sink()))
        self.assertEqual(config.data_dir, Path("."))
        self.assertEqual(config.queue_max_events, DEFAULT_QUEUE_MAX_EVENTS)
        self.assertEqual(config.dead_letter_max_events, DEFAULT_DEAD_LETTER_MAX_EVENTS)
        config = self.load(
            document(
                http_sink(),
                dataDir="/var/lib/rf",
                queueMaxEvents=5,
                deadLetterMaxEvents=7,
            )
        )
        self.assertEqual(
            (config.data_dir, config.queue_max_events, config.dead_letter_max_events),
            (Path("/var/lib/rf"), 5, 7),
        )
        problem = self.error(document(http_sink(), queueMaxEvents=0))
        self.assertEqual(problem.key_path, "queueMaxEvents")

    def test_http_retry_and_concurrency(self) -> None:
        """The http sink's retry policy and concurrency, and their defaults."""
        [sink] = self.load(document(http_sink())).sinks
        self.assertEqual(sink.settings, HttpSinkSettings("http://127.0.0.1:9000", 30.0))
        [sink] = self.load(
            document(
                http_sink(
                    maxRetries=0,
                    retryInitialSecs=2,
                    retryMaxSecs=10,
                    retryStatusCodes=["5xx", 429, "408"],
                    maxConcurrency=4,
                )
            )
        ).sinks
        assert isinstance(sink.settings, HttpSinkSettings)
        self.assertEqual(
            sink.settings.retry,
            RetryPolicy(0, 2.0, 10.0, frozenset({408, 429, *range(500, 600)})),
        )
        self.assertEqual(sink.settings.max_concurrency, 4)
        self.assertNotIn(501, DEFAULT_RETRY_STATUS_CODES)

    def test_http_bad_values(self) -> None:
        """Bad retry codes, backoffs or concurrency name their key."""
        for params, key in [
            ({"retryStatusCodes": "5xx"}, "retryStatusCodes"),
            ({"retryStatusCodes": [700]}, "retryStatusCodes"),
            ({"retryStatusCodes": ["6xx"]}, "retryStatusCodes"),
            ({"retryStatusCodes": [True]}, "retryStatusCodes"),
            ({"retryInitialSecs": 5, "retryMaxSecs": 1}, "retryMaxSecs"),
            ({"maxConcurrency": 0}, "maxConcurrency"),
            ({"maxConcurrency": 1000}, "maxConcurrency"),
            ({"maxRetries": -1}, "maxRetries"),
        ]:
            problem = self.error(document(http_sink(**params)))
            self.assertEqual(problem.key_path, f"sinks[0].params.{key}", params)

    def test_log_sink(self) -> None:
        """A log sink reads its file, rotation size and backups."""
        [sink] = self.load(
            document(
                {
                    "name": "trail",
                    "type": "log",
                    "params": {
                        "logFilePath": "/var/log/rf/events.log",
                        "logLevel": "info",
                        "maxFileBytes": 1000,
                        "maxBackups": 3,
                    },
                }
            )
        ).sinks
        self.assertEqual(
            sink.settings, LogSinkSettings(Path("/var/log/rf/events.log"), 1000, 3)
        )

    def test_notification_sink(self) -> None:
        """A notification sink reads its named webhooks."""
        [sink] = self.load(
            document(
                {
                    "name": "alerts",
                    "type": "notification",
                    "params": {
                        "webhooks": {
                            "slack": {"url": "https://hooks.example/s"},
                            "ops": {"url": "http://ops.example", "method": "put"},
                        }
                    },
                }
            )
        ).sinks
        assert isinstance(sink.settings, NotificationSinkSettings)
        self.assertEqual(
            [(hook.name, hook.method) for hook in sink.settings.webhooks],
            [("slack", "POST"), ("ops", "PUT")],
        )
        problem = self.error(
            document({"name": "alerts", "type": "notification", "params": {}})
        )
        self.assertEqual(problem.key_path, "sinks[0].params.webhooks")
