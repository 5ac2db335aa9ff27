"""
Tests for the listener and outgoing-URL readers of L{replayforge.config}:
endpoint strings parsed when the file is read, ports bounded, URLs without
credentials.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from replayforge.config import ConfigError, Section
from tests.tls_support import make_authority


def section(raw: dict[str, Any]) -> Section:
    """Make the top-level L{Section} of a document holding C{raw}."""
    return Section(raw, "conf.yaml", "", Path("."))


def temporary_folder(test: SynchronousTestCase) -> Path:
    """Make an empty folder, removed when C{test} ends."""
    folder = Path(tempfile.mkdtemp(prefix="rf-endpoints-"))
    test.addCleanup(shutil.rmtree, folder, ignore_errors=True)
    return folder


class PortTests(SynchronousTestCase):
    """L{Section.port} reads a TCP port number, 0 to 65535."""

    def test_ports(self) -> None:
        """Numbers and numeric strings in range are read; a default applies."""
        document = section({"zero": 0, "port": 8081, "text": "8095", "top": 65535})
        self.assertEqual(document.port("zero"), 0)
        self.assertEqual(document.port("port"), 8081)
        self.assertEqual(document.port("text"), 8095)
        self.assertEqual(document.port("top"), 65535)
        self.assertEqual(document.port("absent", 8081), 8081)

    def test_out_of_range(self) -> None:
        """Negative, too large, fractional and non-numeric ports are refused."""
        document = section(
            {"big": 65536, "negative": -1, "frac": 80.5, "word": "eighty", "b": True}
        )
        for key in ("big", "negative", "frac", "word", "b"):
            error = self.assertRaises(ConfigError, document.port, key)
            self.assertEqual(error.key_path, key)
            self.assertTrue(
                error.problem.startswith("expected a port number from 0 to 65535"),
                error.problem,
            )


class EndpointTests(SynchronousTestCase):
    """
    L{Section.endpoint} parses a listener's endpoint string as the daemon
    will, and refuses one it could not listen on in one line naming the key.
    """

    def assertRefused(self, description: str, *fragments: str) -> ConfigError:
        """
        Assert that C{listen: description} is refused at C{listen} in one
        line holding the string and each of C{fragments}.
        """
        document = section({"listen": description})
        error = self.assertRaises(ConfigError, document.endpoint, "listen")
        self.assertEqual(error.key_path, "listen")
        message = str(error)
        self.assertTrue(message.startswith("conf.yaml: listen: "), message)
        self.assertNotIn("\n", message)
        self.assertIn(repr(description), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return error

    def test_valid(self) -> None:
        """Strings the daemon can listen on come back unchanged."""
        for description in [
            "tcp:8081",
            "tcp:0:interface=127.0.0.1",
            "tcp6:8081:interface=\\:\\:1",
            "unix:/run/replayforge/relay.sock",
        ]:
            document = section({"listen": description})
            self.assertEqual(document.endpoint("listen"), description)

    def test_absent(self) -> None:
        """An absent or empty key reads as C{""}: no listener."""
        self.assertEqual(section({}).endpoint("listen"), "")
        self.assertEqual(section({"listen": ""}).endpoint("listen"), "")

    def test_port_not_a_number(self) -> None:
        """C{tcp:abc} is refused, with the form expected."""
        self.assertRefused("tcp:abc", "'abc'", 'such as "tcp:8081')

    def test_unknown_kind(self) -> None:
        """An endpoint type Twisted does not know is refused."""
        self.assertRefused("tpc:8081", "Unknown endpoint type")

    def test_bare_port(self) -> None:
        """A bare port number is no endpoint string."""
        self.assertRefused("8081", "Unknown endpoint type")

    def test_unknown_argument(self) -> None:
        """An argument the endpoint type does not take is refused."""
        self.assertRefused("tcp:8081:colour=blue", "colour")

    def test_port_out_of_range(self) -> None:
        """A port Twisted would only refuse when binding is refused here."""
        self.assertRefused("tcp:70000", "from 0 to 65535, got 70000")

    def test_tls_files_missing(self) -> None:
        """
        An C{ssl:} listener whose key and certificate do not exist is
        refused, naming the file.
        """
        missing = temporary_folder(self) / "missing.pem"
        self.assertRefused(
            f"ssl:8443:privateKey={missing}:certKey={missing}",
            f"cannot read {missing}",
        )

    def test_tls_files_invalid(self) -> None:
        """Files that hold no key or certificate are refused."""
        garbage = temporary_folder(self) / "garbage.pem"
        garbage.write_text("not a key\n")
        self.assertRefused(
            f"ssl:8443:privateKey={garbage}:certKey={garbage}",
            "invalid key or certificate",
        )

    def test_tls_valid(self) -> None:
        """An C{ssl:} listener with a real key and certificate is accepted."""
        authority = make_authority(temporary_folder(self))
        description = (
            f"ssl:8443:interface=127.0.0.1:privateKey={authority.server_key}"
            f":certKey={authority.server_cert}"
        )
        document = section({"listen": description})
        self.assertEqual(document.endpoint("listen"), description)

    def test_systemd_outside_systemd(self) -> None:
        """
        A C{systemd:} listener is left to the daemon when no sockets were
        passed, so a file meant for a socket-activated unit checks clean.
        """
        self.assertNotIn("LISTEN_FDS", os.environ)
        document = section({"listen": "systemd:domain=INET:index=0"})
        self.assertEqual(document.endpoint("listen"), "systemd:domain=INET:index=0")

    def test_check_endpoint(self) -> None:
        """
        L{Section.check_endpoint} checks a string built from a key, and names
        that key.
        """
        document = section({"listenAddress": "127.0.0.1"})
        document.check_endpoint("listenAddress", "tcp:8081:interface=127.0.0.1")
        error = self.assertRaises(
            ConfigError, document.check_endpoint, "listenAddress", "tcp:x"
        )
        self.assertEqual(error.key_path, "listenAddress")


class OutgoingURLTests(SynchronousTestCase):
    """L{Section.url} reads the URL of a server the daemon calls."""

    def assertRefused(
        self, url: str, expected: str, credentials_hint: str = ""
    ) -> ConfigError:
        """Assert that C{url} is refused at C{url} with problem C{expected}."""
        document = section({"url": url})
        error = self.assertRaises(ConfigError, document.url, "url", credentials_hint)
        self.assertEqual(error.key_path, "url")
        self.assertEqual(error.problem, expected)
        return error

    def test_valid(self) -> None:
        """http and https URLs with a host come back unchanged."""
        for url in [
            "http://127.0.0.1:8081/",
            "https://relay.example.test/base/",
            "http://[::1]:8081",
        ]:
            self.assertEqual(section({"url": url}).url("url"), url)

    def test_scheme(self) -> None:
        """A URL of another scheme, or none, is refused with its value."""
        self.assertRefused(
            "relay.test:8081",
            "expected an http:// or https:// URL, got 'relay.test:8081'",
        )

    def test_bad_port_or_host(self) -> None:
        """A port that is no number, or a missing host, is refused."""
        error = self.assertRaises(
            ConfigError, section({"url": "http://relay.test:80a/"}).url, "url"
        )
        self.assertTrue(error.problem.startswith("expected a valid URL"))
        self.assertRefused(
            "http://:8081/", "expected a host name or address in the URL"
        )

    def test_credentials(self) -> None:
        """
        A user, with or without a password, is refused with the hint; the
        password is not repeated.
        """
        error = self.assertRefused(
            "https://user:pw-secret@127.0.0.1:18481/",
            "user and password in the URL are not supported; use the bearer",
            "use the bearer",
        )
        self.assertNotIn("pw-secret", str(error))
        self.assertRefused(
            "http://user@127.0.0.1/", "user and password in the URL are not supported"
        )

    def test_wrong_scheme_masked(self) -> None:
        """A refused URL of another scheme is shown without its password."""
        document = section({"url": "ftp://user:pw-secret@127.0.0.1/"})
        error = self.assertRaises(ConfigError, document.url, "url")
        self.assertNotIn("pw-secret", str(error))
