"""
Tests for C{replayforge check -c FILE}: a configuration loaded by its daemon's
own loader, printed resolved with its secrets masked, or refused in one line.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

import yaml
from twisted.trial.unittest import SynchronousTestCase

from replayforge.cli import main
from replayforge.configcheck import MASK, mask_text
from tests.tls_support import make_authority

REPOSITORY = Path(__file__).resolve().parent.parent
SECRET = "s3cret-value-never-shown"
PORT = 18081


class Run:
    """The exit status and the output lines of one run."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code = code
        self.text = out
        self.err = err.splitlines()

    def document(self) -> Any:
        """The printed configuration, parsed."""
        return yaml.safe_load(self.text)


class CheckTestCase(SynchronousTestCase):
    """Write configuration files in a temporary folder and check them."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="rf-check-"))
        self.addCleanup(shutil.rmtree, self.folder)

    def write(self, name: str, document: Any) -> Path:
        """Write C{document} as JSON, or as it is when it is text."""
        path = self.folder / name
        text = document if isinstance(document, str) else json.dumps(document)
        path.write_text(text, encoding="utf-8")
        return path

    def check(self, *arguments: str) -> Run:
        """Run C{replayforge check ARGUMENTS} in the process."""
        out, err = io.StringIO(), io.StringIO()
        code = main(["check", *arguments], io.BytesIO(), out, err)
        return Run(code, out.getvalue(), err.getvalue())


def relay_document(**extra: Any) -> dict[str, Any]:
    """A relay configuration with one bucket."""
    return {"buckets": {"logs": {"auth": SECRET}}, **extra}


def proxy_document() -> dict[str, Any]:
    """A proxy configuration whose sink and pgcall source hold secrets."""
    return {
        "envName": "prod",
        "hostName": "web-1",
        "sources": [
            {
                "id": "db",
                "type": "pgcall",
                "targetSink": "relay",
                "params": {
                    "host": "127.0.0.1",
                    "user": "reader",
                    "password": SECRET,
                    "intervalSeconds": 60,
                    "calls": [{"name": "now", "sql": "SELECT now()"}],
                },
            }
        ],
        "sinks": [
            {
                "id": "relay",
                "type": "http",
                "url": f"http://127.0.0.1:{PORT}/",
                "authBearer": SECRET,
                "buckets": ["logs"],
            }
        ],
    }


def player_document() -> dict[str, Any]:
    """A player configuration with every kind of secret it can hold."""
    return {
        "relayUrl": f"http://127.0.0.1:{PORT}/",
        "hostName": "player-1",
        "httpUsername": "admin",
        "httpPassword": SECRET,
        "sources": [
            {"name": "logs", "relayAuthenticationBearer": SECRET, "sinks": ["alert"]}
        ],
        "sinks": [
            {
                "name": "alert",
                "id": "alert",
                "type": "notification",
                "metadata": {"apiKey": SECRET, "team": "ops"},
                "params": {
                    "webhooks": {
                        "chat": {
                            "url": "http://127.0.0.1:9/hook",
                            "header": {
                                "Authorization": f"Bearer {SECRET}",
                                "X-Team": "ops",
                            },
                        }
                    }
                },
            }
        ],
    }


class CheckTests(CheckTestCase):
    """A valid file is printed resolved, secrets masked, and exits 0."""

    def test_relay(self) -> None:
        """
        A relay file is recognised by its buckets; defaults are filled in and
        the bucket's token is masked.
        """
        run = self.check("-c", str(self.write("relay.json", relay_document())))

        self.assertEqual((run.code, run.err), (0, []))
        self.assertTrue(run.text.startswith("# relay configuration from "))
        document = run.document()
        self.assertEqual(document["buckets"]["logs"]["auth"], MASK)
        self.assertEqual(document["buckets"]["logs"]["db_max_size_kb"], 1024 * 1024)
        self.assertEqual(document["listen"], "tcp:8081")
        self.assertEqual(document["stale_host_seconds"], 180)
        self.assertNotIn(SECRET, run.text)

    def test_environment_resolved(self) -> None:
        """Environment variables are substituted before the file is shown."""
        os.environ["RF_CHECK_DATA"] = "/srv/relay-data"
        self.addCleanup(os.environ.pop, "RF_CHECK_DATA")
        path = self.write("relay.yaml", relay_document(dataDir="${RF_CHECK_DATA}"))

        run = self.check("-c", str(path))

        self.assertEqual(run.document()["data_dir"], "/srv/relay-data")

    def test_proxy(self) -> None:
        """
        A proxy's sink token and its PostgreSQL password are masked; the
        sink's URL and the rest of the connection string stay readable.
        """
        run = self.check("-c", str(self.write("proxy.json", proxy_document())))

        self.assertEqual((run.code, run.err), (0, []))
        self.assertNotIn(SECRET, run.text)
        document = run.document()
        sink = document["sinks"]["relay"]
        self.assertEqual(sink["auth_bearer"], MASK)
        self.assertEqual(sink["url"], f"http://127.0.0.1:{PORT}/")
        conninfo = document["sources"][0]["settings"]["conninfo"]
        self.assertIn("host='127.0.0.1'", conninfo)
        self.assertIn(f"password={MASK}", conninfo)

    def test_player(self) -> None:
        """
        A player's bearer, HTTP password, secret-looking metadata and
        C{Authorization} header are masked; other values are shown.
        """
        run = self.check("-c", str(self.write("player.json", player_document())))

        self.assertEqual((run.code, run.err), (0, []))
        self.assertNotIn(SECRET, run.text)
        document = run.document()
        self.assertEqual(document["sources"][0]["bearer"], MASK)
        self.assertEqual(document["http_password"], MASK)
        self.assertEqual(document["http_username"], "admin")
        [sink] = document["sinks"]
        self.assertEqual(sink["metadata"], {"apiKey": MASK, "team": "ops"})
        [hook] = sink["settings"]["webhooks"]
        self.assertEqual(hook["headers"], [["Authorization", MASK], ["X-Team", "ops"]])

    def test_query_secrets_masked(self) -> None:
        """
        Secret-looking query parameters of every printed URL are masked;
        the rest of each URL stays readable.
        """
        document = player_document()
        document["sinks"].append(
            {
                "name": "mirror",
                "type": "http",
                "params": {
                    "targetHost": "http://127.0.0.1:9/?api_key=QueryKeySecret77&region=eu"
                },
            }
        )
        hook = document["sinks"][0]["params"]["webhooks"]["chat"]
        hook["url"] = "http://127.0.0.1:9/hook?Token=QueryToken88&X-Sig=QuerySig99"

        run = self.check("-c", str(self.write("player.json", document)))

        self.assertEqual((run.code, run.err), (0, []))
        for secret in ("QueryKeySecret77", "QueryToken88", "QuerySig99"):
            self.assertNotIn(secret, run.text)
        printed = run.document()
        self.assertEqual(
            printed["sinks"][1]["settings"]["target_host"],
            f"http://127.0.0.1:9/?api_key={MASK}&region=eu",
        )
        [hook_shown] = printed["sinks"][0]["settings"]["webhooks"]
        self.assertEqual(
            hook_shown["url"], f"http://127.0.0.1:9/hook?Token={MASK}&X-Sig={MASK}"
        )

    def test_tls_listener(self) -> None:
        """An C{ssl:} listener with a readable key and certificate passes."""
        authority = make_authority(self.folder / "tls")
        listen = (
            f"ssl:8443:interface=127.0.0.1:privateKey={authority.server_key}"
            f":certKey={authority.server_cert}"
        )
        path = self.write("relay.json", relay_document(listen=listen))

        run = self.check("-c", str(path))

        self.assertEqual((run.code, run.err), (0, []))
        self.assertEqual(run.document()["listen"], listen)

    def test_json(self) -> None:
        """C{--json} prints the same configuration as JSON."""
        path = self.write("relay.json", relay_document())

        run = self.check("-c", str(path), "--json")

        self.assertEqual(json.loads(run.text)["buckets"]["logs"]["auth"], MASK)

    def test_warnings_shown(self) -> None:
        """
        Unknown keys are warned about on standard error; the file is still
        valid.
        """
        path = self.write("relay.json", relay_document(colour="blue"))

        run = self.check("-c", str(path))

        self.assertEqual(run.code, 0)
        self.assertEqual(len(run.err), 1)
        self.assertIn("colour: unknown key, ignored", run.err[0])

    def test_shipped_examples(self) -> None:
        """The example configurations of C{conf/} pass, their tokens masked."""
        for daemon in ("relay", "proxy", "player"):
            path = REPOSITORY / "conf" / f"{daemon}.yaml"
            run = self.check("-c", str(path))
            self.assertEqual((run.code, run.err), (0, []), daemon)
            self.assertIn(f"# {daemon} configuration", run.text)
            self.assertNotIn("-token", run.text, daemon)


class CheckErrorTests(CheckTestCase):
    """An invalid file is refused in one line naming it, with exit status 1."""

    def assert_refused(self, run: Run, *parts: str) -> None:
        """The run exited 1 with one error line holding each of C{parts}."""
        self.assertEqual(run.code, 1)
        self.assertEqual(run.text, "")
        self.assertEqual(len(run.err), 1, run.err)
        self.assertTrue(run.err[0].startswith("replayforge check: "), run.err)
        for part in parts:
            self.assertIn(part, run.err[0])

    def test_invalid_value(self) -> None:
        """A bad value is named by its file and key path."""
        path = self.write("relay.json", {"buckets": {"logs": {"auth": ""}}})

        self.assert_refused(
            self.check("-c", str(path)), "relay.json", "buckets.logs.auth"
        )

    def test_unknown_daemon(self) -> None:
        """A file that is no daemon's configuration asks for C{--daemon}."""
        path = self.write("mystery.yaml", "colour: blue\n")

        self.assert_refused(self.check("-c", str(path)), "mystery.yaml", "--daemon")

    def test_daemon_named(self) -> None:
        """
        C{--daemon} checks the file against that daemon's loader, whatever its
        keys look like.
        """
        path = self.write("proxy.json", proxy_document())

        self.assert_refused(
            self.check("-c", str(path), "--daemon", "relay"), "proxy.json", "buckets"
        )

    def test_missing_file(self) -> None:
        """A file that cannot be read is named."""
        self.assert_refused(
            self.check("-c", str(self.folder / "absent.yaml")),
            "absent.yaml",
            "cannot read the file",
        )

    def test_listener_unparsable(self) -> None:
        """A listener string the relay could not listen on is refused."""
        path = self.write("relay.json", relay_document(listen="tcp:abc"))

        self.assert_refused(
            self.check("-c", str(path)), "relay.json: listen: ", "'tcp:abc'"
        )

    def test_listener_tls_files_missing(self) -> None:
        """
        An C{ssl:} listener whose key and certificate are missing is refused,
        naming the key path and the file.
        """
        listen = "ssl:8443:privateKey=missing.pem:certKey=missing.pem"
        document = proxy_document()
        document["listenStatusZ"] = listen
        path = self.write("proxy.json", document)

        self.assert_refused(
            self.check("-c", str(path)),
            "proxy.json: listenStatusZ: ",
            "missing.pem: No such file or directory",
        )

    def test_relay_url_credentials(self) -> None:
        """
        A C{relayUrl} with a user and password is refused, pointing at the
        bearer; the password is not printed.
        """
        document = player_document()
        document["relayUrl"] = f"https://user:{SECRET}@127.0.0.1:18481/"
        path = self.write("player.json", document)

        run = self.check("-c", str(path))

        self.assert_refused(
            run,
            "player.json: relayUrl: user and password in the URL are not "
            "supported; use relayAuthenticationBearer",
        )
        self.assertNotIn(SECRET, run.err[0])

    def test_bad_yaml(self) -> None:
        """A file that does not parse is refused with its line."""
        path = self.write("relay.yaml", "buckets: [unclosed\n")

        self.assert_refused(self.check("-c", str(path)), "relay.yaml", "invalid YAML")


class MaskTextTests(SynchronousTestCase):
    """L{mask_text} hides the password of URLs and connection strings."""

    def test_url(self) -> None:
        """The password of a URL is masked; the user and host stay."""
        self.assertEqual(
            mask_text("postgresql://app:pw@db.internal:5432/app"),
            f"postgresql://app:{MASK}@db.internal:5432/app",
        )

    def test_url_without_password(self) -> None:
        """A URL without a password is left alone."""
        for text in ["http://127.0.0.1:8081/", "http://user@127.0.0.1/", "plain"]:
            self.assertEqual(mask_text(text), text)

    def test_query_parameters(self) -> None:
        """
        Query parameters whose names look secret are masked, whatever their
        case; others, the path and the fragment stay.
        """
        cases = {
            "http://host/?api_key=QueryKeySecret77": f"http://host/?api_key={MASK}",
            "https://h/x?apikey=a&Access_Token=b&page=2#top": (
                f"https://h/x?apikey={MASK}&Access_Token={MASK}&page=2#top"
            ),
            "http://h/?PASSWD=a&pwd=b&auth=c&Signature=d&sig=e&secret=f": (
                f"http://h/?PASSWD={MASK}&pwd={MASK}&auth={MASK}"
                f"&Signature={MASK}&sig={MASK}&secret={MASK}"
            ),
            "http://u:pw@h/?password=x&q=1": f"http://u:{MASK}@h/?password={MASK}&q=1",
            "http://h/?token=&flag": "http://h/?token=&flag",
        }
        for text, expected in cases.items():
            self.assertEqual(mask_text(text), expected, text)

    def test_conninfo(self) -> None:
        """A quoted or bare libpq password is masked."""
        self.assertEqual(
            mask_text("host=db password='a b\\'c' user=app"),
            f"host=db password={MASK} user=app",
        )
        self.assertEqual(
            mask_text("host=db password=bare user=app"),
            f"host=db password={MASK} user=app",
        )


class InstalledCheckTests(CheckTestCase):
    """The installed C{replayforge} command's exit statuses."""

    def run_installed(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        """Run the console script."""
        command = Path(sysconfig.get_path("scripts")) / "replayforge"
        return subprocess.run(
            [str(command), *arguments],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def test_valid(self) -> None:
        """A valid file exits 0 and prints the configuration."""
        result = self.run_installed(
            "check", "-c", str(self.write("relay.json", relay_document()))
        )
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertIn("auth: '********'", result.stdout)

    def test_invalid(self) -> None:
        """An invalid file exits 1 with one line on standard error."""
        path = self.write("relay.json", {"buckets": {}})

        result = self.run_installed("check", "-c", str(path))

        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, "")
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
