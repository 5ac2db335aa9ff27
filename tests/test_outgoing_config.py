"""
Tests for reading the outgoing clients' keys: C{caFile}, C{clientCert},
C{clientKey}, C{insecureSkipVerify} (per client) and C{tailscaleSocks5}
(per daemon), in L{replayforge.outgoing} and the daemons' configurations.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from replayforge.config import ConfigError, Section
from replayforge.outgoing import OutgoingSettings, read_outgoing_settings, read_socks5
from replayforge.player.config import parse_player_config
from replayforge.proxy.config import parse_proxy_config
from tests.tls_support import make_authority


def section(raw: dict[str, Any], path: str = "") -> Section:
    """A configuration mapping as the readers receive it."""
    return Section(raw, "test.json", path, Path("."))


class ClientKeyTests(SynchronousTestCase):
    """Reading C{caFile}, C{clientCert}, C{clientKey}, C{insecureSkipVerify}."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="rf-tls-keys-"))
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        self.authority = make_authority(self.folder)

    def refused(self, **keys: Any) -> str:
        """The message of the configuration error C{keys} cause."""
        with self.assertRaises(ConfigError) as caught:
            read_outgoing_settings(section(keys, "sinks[0]"))
        return str(caught.exception)

    def test_defaults_verify_with_system_store(self) -> None:
        """Without keys: system trust store, no client certificate, checked."""
        self.assertEqual(read_outgoing_settings(section({})), OutgoingSettings())

    def test_missing_ca_file(self) -> None:
        """A missing C{caFile} names the key path and the file."""
        message = self.refused(caFile=str(self.folder / "nope.pem"))
        self.assertTrue(message.startswith("test.json: sinks[0].caFile: cannot read"))
        self.assertIn("nope.pem", message)

    def test_ca_file_not_pem(self) -> None:
        """A C{caFile} without certificates is refused."""
        path = self.folder / "junk.pem"
        path.write_text("not a certificate\n")
        message = self.refused(caFile=str(path))
        self.assertIn("sinks[0].caFile: expected PEM certificates", message)

    def test_unreadable_client_key(self) -> None:
        """A C{clientKey} that is not there is refused by its key path."""
        message = self.refused(
            clientCert=str(self.authority.client_cert),
            clientKey=str(self.folder / "gone.pem"),
        )
        self.assertIn("sinks[0].clientKey: cannot read", message)

    def test_client_cert_without_key(self) -> None:
        """A C{clientCert} holding no key and no C{clientKey} is refused."""
        message = self.refused(clientCert=str(self.authority.client_cert))
        self.assertIn("sinks[0].clientCert: expected a PEM private key", message)

    def test_key_of_another_certificate(self) -> None:
        """A C{clientKey} that does not match C{clientCert} is refused."""
        message = self.refused(
            clientCert=str(self.authority.client_cert),
            clientKey=str(self.authority.server_key),
        )
        self.assertIn("sinks[0].clientKey: expected the private key of", message)

    def test_key_without_cert(self) -> None:
        """C{clientKey} alone is refused."""
        message = self.refused(clientKey=str(self.authority.client_key))
        self.assertIn("sinks[0].clientKey: expected clientCert beside it", message)

    def test_insecure_must_be_boolean(self) -> None:
        """C{insecureSkipVerify} takes true or false."""
        message = self.refused(insecureSkipVerify="sometimes")
        self.assertIn("sinks[0].insecureSkipVerify: expected true or false", message)

    def test_proxy_sink_key_path(self) -> None:
        """The proxy reads the keys per sink, and names the sink's path."""
        with self.assertRaises(ConfigError) as caught:
            parse_proxy_config(
                section(
                    {
                        "sinks": [
                            {
                                "id": "relay",
                                "url": "https://127.0.0.1:1/",
                                "buckets": ["b"],
                                "caFile": str(self.folder / "missing.pem"),
                            }
                        ],
                        "sources": [],
                    }
                )
            )
        self.assertIn("sinks[0].caFile: cannot read", str(caught.exception))

    def test_player_http_sink_key_path(self) -> None:
        """The player's http sink reads the keys from its params."""
        with self.assertRaises(ConfigError) as caught:
            parse_player_config(
                section(
                    {
                        "relayUrl": "https://127.0.0.1:1/",
                        "sinks": [
                            {
                                "name": "web",
                                "type": "http",
                                "params": {
                                    "targetHost": "https://127.0.0.1:2",
                                    "clientCert": str(self.folder / "none.pem"),
                                },
                            }
                        ],
                    }
                )
            )
        self.assertIn("sinks[0].params.clientCert: cannot read", str(caught.exception))

    def test_player_relay_keys_at_top(self) -> None:
        """The player's relay client reads the keys at the top level."""
        config = parse_player_config(
            section(
                {
                    "relayUrl": "https://127.0.0.1:1/",
                    "caFile": str(self.authority.ca),
                    "insecureSkipVerify": False,
                }
            )
        )
        self.assertEqual(len(config.relay_outgoing.trusted), 1)
        self.assertFalse(config.relay_outgoing.insecure_skip_verify)


class Socks5KeyTests(SynchronousTestCase):
    """Reading C{tailscaleSocks5}."""

    def test_host_and_port(self) -> None:
        """C{"127.0.0.1:1055"} and C{"[::1]:1055"} are read."""
        server = read_socks5(section({"tailscaleSocks5": "127.0.0.1:1055"}))
        assert server is not None
        self.assertEqual((server.host, server.port), ("127.0.0.1", 1055))
        server = read_socks5(section({"tailscaleSocks5": "[::1]:1055"}))
        assert server is not None
        self.assertEqual((server.host, server.port), ("::1", 1055))
        self.assertEqual(str(server), "[::1]:1055")

    def test_absent(self) -> None:
        """Without the key connections are direct."""
        self.assertIsNone(read_socks5(section({})))

    def test_refused(self) -> None:
        """A value without a usable port is a configuration error."""
        for value in ("127.0.0.1", "127.0.0.1:0", ":1055", "host:99999"):
            with self.assertRaises(ConfigError) as caught:
                read_socks5(section({"tailscaleSocks5": value}))
            self.assertIn("tailscaleSocks5: expected", str(caught.exception))

    def test_reaches_every_player_client(self) -> None:
        """The player's relay client and its calling sinks all get it."""
        config = parse_player_config(
            section(
                {
                    "relayUrl": "http://relay.tailnet.example:8081/",
                    "tailscaleSocks5": "127.0.0.1:1055",
                    "sinks": [
                        {
                            "name": "web",
                            "type": "http",
                            "params": {"targetHost": "http://app.tailnet.example"},
                        },
                        {"name": "log", "type": "log"},
                    ],
                }
            )
        )
        self.assertEqual(str(config.relay_outgoing.socks5), "127.0.0.1:1055")
        web = config.sink_named("web")
        assert web is not None
        self.assertEqual(str(web.settings.outgoing.socks5), "127.0.0.1:1055")  # type: ignore[union-attr]

    def test_reaches_every_proxy_sink(self) -> None:
        """Each of the proxy's sinks gets it."""
        config = parse_proxy_config(
            section(
                {
                    "tailscaleSocks5": "127.0.0.1:1055",
                    "sources": [],
                    "sinks": [
                        {
                            "id": "a",
                            "url": "http://relay.tailnet.example/",
                            "buckets": ["b"],
                        }
                    ],
                }
            )
        )
        self.assertEqual(str(config.sinks["a"].outgoing.socks5), "127.0.0.1:1055")
