"""
Tests for L{replayforge.proxy.sources.settings}: the C{params} of the
pulled source types, read through the proxy's configuration loader.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from replayforge.config import ConfigError
from replayforge.proxy.config import ProxyConfig, load_proxy_config
from replayforge.proxy.sources.settings import (
    LogFileSettings,
    PgCall,
    PgCallSettings,
    RepeatFileSettings,
    SystemStatsSettings,
)

SINK = {"id": "relay", "url": "http://127.0.0.1:1/", "buckets": ["logs"]}


class SourceSettingsTests(SynchronousTestCase):
    """Each pulled source type reads its Go-era params, and ours."""

    def setUp(self) -> None:
        folder = tempfile.TemporaryDirectory(prefix="rf-source-settings-")
        self.addCleanup(folder.cleanup)
        self.path = Path(folder.name) / "proxy.json"
        self.warnings: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_level") == LogLevel.warn:
                self.warnings.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def load(self, kind: str, params: dict[str, Any], **keys: Any) -> ProxyConfig:
        """Load a proxy with one source of C{kind} with C{params}."""
        source = {"id": "src", "type": kind, "targetSink": "relay", "params": params}
        document = {"sources": [{**source, **keys}], "sinks": [SINK]}
        self.path.write_text(json.dumps(document))
        return load_proxy_config(self.path)

    def error(self, kind: str, params: dict[str, Any], **keys: Any) -> ConfigError:
        """Load a source that must be refused; return the error."""
        source = {"id": "src", "type": kind, "targetSink": "relay", "params": params}
        document = {"sources": [{**source, **keys}], "sinks": [SINK]}
        self.path.write_text(json.dumps(document))
        return self.assertRaises(ConfigError, load_proxy_config, self.path)

    def test_logfile_go_keys(self) -> None:
        """The Go proxy's logfile params load unchanged, without warnings."""
        config = self.load(
            "logfile",
            {
                "filePath": "/var/log/app.log",
                "fingerprintLines": 2,
                "removeAfterSecs": 3600,
                "httpPath": "/rpf-db/logs",
            },
        )

        settings = config.sources[0].settings
        assert isinstance(settings, LogFileSettings)
        self.assertEqual(settings.file_path, Path("/var/log/app.log"))
        self.assertEqual(settings.fingerprint_lines, 2)
        self.assertEqual(settings.remove_after_seconds, 3600)
        self.assertEqual(settings.http_path, "/rpf-db/logs")
        self.assertEqual(self.warnings, [])

    def test_logfile_defaults(self) -> None:
        """
        Unset, C{httpPath} is C{/}, partial lines wait 5 s, lines are cut at
        1 MiB, files are known by their first 1,024 bytes, and the position
        is kept in C{<id>-source.sqlite3}.
        """
        settings = self.load("logfile", {"filePath": "app.log"}).sources[0].settings

        self.assertEqual(
            settings,
            LogFileSettings(
                file_path=Path("app.log"),
                http_path="/",
                fingerprint_lines=0,
                fingerprint_bytes=1024,
                remove_after_seconds=0,
                flush_partial_after_seconds=5.0,
                max_line_bytes=1024 * 1024,
                position_path=Path("src-source.sqlite3"),
            ),
        )

    def test_logfile_needs_a_polling_period(self) -> None:
        """A logfile with C{hookInterval} 0 would spin: refused, as in Go."""
        error = self.error("logfile", {"filePath": "a.log"}, hookInterval=0)

        self.assertEqual(error.key_path, "sources[0].hookInterval")

    def test_logfile_needs_a_path(self) -> None:
        """C{filePath} is required."""
        error = self.error("logfile", {})

        self.assertEqual(error.key_path, "sources[0].params.filePath")

    def test_repeatfile(self) -> None:
        """C{interval} is in milliseconds."""
        settings = self.load("repeatfile", {"filePath": "lines.txt", "interval": 250})

        self.assertEqual(
            settings.sources[0].settings,
            RepeatFileSettings(file_path=Path("lines.txt"), interval_seconds=0.25),
        )

    def test_repeatfile_interval_above_zero(self) -> None:
        """An interval of 0 (which made the Go proxy spin) is refused."""
        error = self.error("repeatfile", {"filePath": "x", "interval": 0})

        self.assertEqual(error.key_path, "sources[0].params.interval")

    def test_system_stats_default_interval(self) -> None:
        """C{intervalSeconds} defaults to 60, as in Go."""
        settings = self.load("system-stats", {}).sources[0].settings

        self.assertEqual(settings, SystemStatsSettings(interval_seconds=60))

    def test_pgcall_go_keys(self) -> None:
        """
        C{host}, C{user}, C{password} and C{database} make the connection
        string; the calls keep their order; the password is not in the
        settings' repr.
        """
        config = self.load(
            "pgcall",
            {
                "intervalSeconds": 30,
                "host": "db.internal",
                "user": "reader",
                "password": "it's secret",
                "database": "shop",
                "calls": [
                    {"name": "orders", "sql": "SELECT count(*) FROM orders"},
                    {"name": "now", "sql": "SELECT now()"},
                ],
                "path": "/rpf-db/pg",
            },
        )

        settings = config.sources[0].settings
        assert isinstance(settings, PgCallSettings)
        self.assertEqual(
            settings.conninfo,
            "host='db.internal' user='reader' password='it\\'s secret' "
            "dbname='shop' sslmode=prefer",
        )
        self.assertEqual(
            settings.calls,
            [
                PgCall("orders", "SELECT count(*) FROM orders"),
                PgCall("now", "SELECT now()"),
            ],
        )
        self.assertEqual(settings.path, "/rpf-db/pg")
        self.assertNotIn("secret", repr(settings))
        self.assertEqual(self.warnings, [])

    def test_pgcall_conn_string_wins(self) -> None:
        """C{connString} is used as it is."""
        settings = (
            self.load(
                "pgcall",
                {
                    "intervalSeconds": 5,
                    "connString": "postgresql://u@127.0.0.1:5433/db",
                    "host": "ignored",
                    "calls": [{"name": "one", "sql": "SELECT 1"}],
                },
            )
            .sources[0]
            .settings
        )

        assert isinstance(settings, PgCallSettings)
        self.assertEqual(settings.conninfo, "postgresql://u@127.0.0.1:5433/db")

    def test_pgcall_interval_required(self) -> None:
        """Without C{intervalSeconds} (the Go proxy panicked) start-up stops."""
        error = self.error("pgcall", {"calls": [{"name": "a", "sql": "SELECT 1"}]})

        self.assertEqual(error.key_path, "sources[0].params.intervalSeconds")

    def test_pgcall_calls_required(self) -> None:
        """A pgcall source without calls has nothing to do."""
        error = self.error("pgcall", {"intervalSeconds": 1, "calls": []})

        self.assertEqual(error.key_path, "sources[0].params.calls")

    def test_pgcall_call_names_distinct(self) -> None:
        """Two calls of one name would share one key of the event."""
        error = self.error(
            "pgcall",
            {
                "intervalSeconds": 1,
                "calls": [{"name": "a", "sql": "SELECT 1"}] * 2,
            },
        )

        self.assertEqual(error.key_path, "sources[0].params.calls")
