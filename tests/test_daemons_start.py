"""
Starting the daemons through twistd: plugins found, options and
configuration checked, every start-up error one clear line.

These run the real C{twistd} of the installed package in a separate
process, from a folder outside the repository, as an operator would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def twistd(folder: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run twistd with C{arguments} in C{folder}; return what it did."""
    return subprocess.run(
        [*TWISTD, "--nodaemon", "--pidfile=", *arguments],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class StartUpTestCase(SynchronousTestCase):
    """Give each test an empty folder outside the repository."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="replayforge-start-"))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)

    def write(self, name: str, text: str) -> Path:
        """Write C{text} to C{name} in the test's folder."""
        path = self.folder / name
        path.write_text(text)
        return path


class PluginTests(StartUpTestCase):
    """The installed package gives twistd its three plugins."""

    def test_help_lists_the_daemons(self) -> None:
        """
        C{twistd --help}, run outside the repository, lists the three
        daemons: the (editable or normal) install exposes twisted/plugins.
        """
        result = subprocess.run(
            [*TWISTD, "--help"],
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        for daemon in ("replayforge-relay", "replayforge-proxy", "replayforge-player"):
            self.assertIn(daemon, result.stdout)

    def test_config_option_required(self) -> None:
        """Each daemon refuses to start without C{-c FILE}."""
        for daemon in ("replayforge-relay", "replayforge-proxy", "replayforge-player"):
            result = twistd(self.folder, daemon)
            self.assertNotEqual(result.returncode, 0, daemon)
            self.assertIn("a configuration file is required: -c FILE", result.stdout)

    def test_config_file_must_exist(self) -> None:
        """A C{-c} naming no file is refused before anything starts."""
        result = twistd(self.folder, "replayforge-relay", "-c", "missing.yaml")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("no configuration file at missing.yaml", result.stdout)


class ConfigErrorTests(StartUpTestCase):
    """A bad configuration stops start-up with one line naming the problem."""

    def assert_one_line_error(
        self, result: subprocess.CompletedProcess[str], expected: str
    ) -> None:
        """The process failed and said exactly C{expected} on stderr."""
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertEqual(result.stderr.strip(), expected)

    def test_relay_wrong_type(self) -> None:
        """A wrong value names the file, the key path and what was expected."""
        self.write("relay.yaml", "buckets:\n  logs:\n    auth: t\n    tls: soon\n")
        result = twistd(self.folder, "replayforge-relay", "-c", "relay.yaml")
        self.assert_one_line_error(
            result,
            "replayforge-relay: relay.yaml: buckets.logs.tls: expected a whole "
            "number of at least 0, got 'soon'",
        )

    def test_proxy_json_syntax(self) -> None:
        """A file that is not JSON says where it broke."""
        self.write("proxy.json", '{"sinks": [\n  {"id": "r",}\n]}\n')
        result = twistd(self.folder, "replayforge-proxy", "-c", "proxy.json")
        self.assert_one_line_error(
            result,
            "replayforge-proxy: proxy.json: invalid JSON at line 2: "
            "Expecting property name enclosed in double quotes",
        )

    def test_player_unknown_sink(self) -> None:
        """A source naming a sink that does not exist is refused."""
        config = {
            "relayUrl": "http://127.0.0.1:9/",
            "sources": [
                {"name": "b", "relayAuthenticationBearer": "t", "sinks": ["nowhere"]}
            ],
            "sinks": [],
        }
        self.write("player.json", json.dumps(config))
        result = twistd(self.folder, "replayforge-player", "-c", "player.json")
        self.assertEqual(result.returncode, 1)
        self.assertTrue(result.stderr.startswith("replayforge-player: player.json: "))
        self.assertIn("sources[0].sinks", result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1)


class ListenerErrorTests(StartUpTestCase):
    """
    A listener endpoint string the daemon could not listen on, or a URL
    with credentials no client would send, stops start-up with one line.
    """

    def assert_one_line_error(
        self, result: subprocess.CompletedProcess[str], expected: str
    ) -> None:
        """The process failed and said exactly C{expected} on stderr."""
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertEqual(result.stderr.strip(), expected)
        self.assertNotIn("Traceback", result.stdout + result.stderr)

    def test_relay_listen_unparsable(self) -> None:
        """C{listen: tcp:abc} names the key and the endpoint problem."""
        self.write("relay.yaml", "listen: 'tcp:abc'\nbuckets:\n  logs:\n    auth: t\n")
        result = twistd(self.folder, "replayforge-relay", "-c", "relay.yaml")
        self.assert_one_line_error(
            result,
            "replayforge-relay: relay.yaml: listen: cannot listen on 'tcp:abc': "
            "invalid literal for int() with base 10: 'abc'; expected an endpoint "
            'string such as "tcp:8081:interface=127.0.0.1"',
        )

    def test_proxy_tls_files_missing(self) -> None:
        """
        An C{ssl:} source listener whose key and certificate are missing
        names the key path and the file.
        """
        self.write(
            "proxy.yaml",
            "sources:\n"
            "  - {id: web, type: http, targetSink: relay, params: {listen: "
            "'ssl:8443:privateKey=missing.pem:certKey=missing.pem'}}\n"
            "sinks:\n"
            "  - {id: relay, url: 'http://127.0.0.1:9/', buckets: [b]}\n",
        )
        result = twistd(self.folder, "replayforge-proxy", "-c", "proxy.yaml")
        missing = self.folder.resolve() / "missing.pem"
        self.assert_one_line_error(
            result,
            "replayforge-proxy: proxy.yaml: sources[0].params.listen: cannot "
            "listen on 'ssl:8443:privateKey=missing.pem:certKey=missing.pem': "
            f"cannot read {missing}: No such file or directory",
        )

    def test_player_relay_url_credentials(self) -> None:
        """A C{relayUrl} with a user and password points at the bearer."""
        config = {
            "relayUrl": "https://user:pw@127.0.0.1:18481/",
            "sources": [
                {"name": "b", "relayAuthenticationBearer": "t", "sinks": ["db"]}
            ],
            "sinks": [
                {"name": "db", "type": "db", "params": {"database": "db.sqlite3"}}
            ],
        }
        self.write("player.json", json.dumps(config))
        result = twistd(self.folder, "replayforge-player", "-c", "player.json")
        self.assert_one_line_error(
            result,
            "replayforge-player: player.json: relayUrl: user and password in the "
            "URL are not supported; use relayAuthenticationBearer",
        )


class ScriptErrorTests(StartUpTestCase):
    """A Lua script that does not load stops start-up, naming script and line."""

    def test_proxy_script_syntax_error(self) -> None:
        """The proxy names the script and the line of the syntax error."""
        self.write("broken.lua", "function Process(content, emit)\n  emit(\n")
        self.write(
            "proxy.yaml",
            "sources:\n"
            "  - {id: web, type: http, transformScript: broken.lua,"
            " params: {listen: 'tcp:0:interface=127.0.0.1'}}\n"
            "sinks:\n"
            "  - {id: relay, url: 'http://127.0.0.1:9/', buckets: [b],"
            " databasePath: buffer.sqlite3}\n",
        )
        result = twistd(self.folder, "replayforge-proxy", "-c", "proxy.yaml")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr.strip(),
            "replayforge-proxy: syntax error in broken.lua:3: "
            "unexpected symbol near <eof>",
        )

    def test_player_script_syntax_error(self) -> None:
        """The player names the script and the line of the syntax error."""
        self.write("broken.lua", "function Process(content, emit)\n  if then\nend\n")
        config = {
            "relayUrl": "http://127.0.0.1:9/",
            "sources": [
                {
                    "name": "b",
                    "relayAuthenticationBearer": "t",
                    "transformScript": "broken.lua",
                }
            ],
            "sinks": [
                {"name": "db", "type": "db", "params": {"database": "db.sqlite3"}}
            ],
        }
        self.write("player.json", json.dumps(config))
        result = twistd(self.folder, "replayforge-player", "-c", "player.json")
        self.assertEqual(result.returncode, 1)
        self.assertIn("broken.lua:2:", result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1)

    def test_bucket_folder_unwritable(self) -> None:
        """A data folder that cannot be created stops the relay with one line."""
        self.write("blocker", "a file where a folder should be")
        self.write(
            "relay.yaml",
            "dataDir: blocker\nlisten: 'tcp:0:interface=127.0.0.1'\n"
            "buckets:\n  logs:\n    auth: t\n",
        )
        result = twistd(self.folder, "replayforge-relay", "-c", "relay.yaml")
        self.assertEqual(result.returncode, 1)
        self.assertTrue(
            result.stderr.startswith("replayforge-relay: blocker/logs/"), result.stderr
        )
        self.assertEqual(len(result.stderr.strip().splitlines()), 1)
