"""
Tests for L{replayforge.proxy.config}: the proxy's sources and sinks.
"""

from __future__ import annotations

import json
import socket
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from replayforge.config import ConfigError
from replayforge.proxy.config import (
    DEFAULT_BATCH_GOAL_BYTES,
    DEFAULT_BATCH_MAX_EVENTS,
    DEFAULT_BATCH_TIMEOUT_SECONDS,
    DEFAULT_BUFFER_MAX_SIZE_KB,
    DEFAULT_MAX_PAYLOAD_BYTES,
    ProxyConfig,
    load_proxy_config,
)
from tests.log_support import capture_log, warnings_in

# A proxy configuration as the Go proxy read it, with every key it knew.
GO_ERA_CONFIG: dict[str, Any] = {
    "sources": [
        {
            "id": "webhooks",
            "type": "http",
            "params": {"listenPort": 8090},
            "targetSink": "relay",
            "hookInterval": "300ms",
        },
        {
            "id": "scripted",
            "type": "http",
            "params": {"listenPort": 8091},
            "transformScript": "scripts/route.lua",
            "hookInterval": "1m30s",
        },
    ],
    "sinks": [
        {
            "id": "relay",
            "type": "http",
            "url": "https://relay.example.com:8081",
            "authBearer": "s3cret-token",
            "buckets": ["events", "audit"],
            "databasePath": "/var/lib/replayforge/relay.sqlite3",
            "maxMessagesPerMinute": 600,
            "useTsnet": False,
            "config": {
                "batchMaxEvents": 50,
                "batchGoalBytes": 100000,
                "maxPayloadBytes": 200000,
                "batchTimeoutSecs": 2,
            },
        }
    ],
    "envName": "prod",
    "hostName": "edge-1",
    "portStatusZ": 8092,
    "verbosityLevel": "debug",
    "tsnetHostname": "edge-1",
}


def minimal_config(**top: Any) -> dict[str, Any]:
    """Return the smallest valid configuration, with C{top} keys added."""
    document: dict[str, Any] = {
        "sources": [
            {
                "id": "webhooks",
                "type": "http",
                "params": {"listenPort": 8090},
                "targetSink": "relay",
            }
        ],
        "sinks": [
            {
                "id": "relay",
                "type": "http",
                "url": "http://relay.example.com:8081/",
                "buckets": ["events"],
            }
        ],
    }
    document.update(top)
    return document


class ProxyConfigTestCase(SynchronousTestCase):
    """Write configuration documents to files of a fresh folder and load them."""

    def setUp(self) -> None:
        folder = tempfile.TemporaryDirectory(prefix="rf-proxy-config-")
        self.addCleanup(folder.cleanup)
        self.folder = Path(folder.name)

    def write(self, document: dict[str, Any], name: str = "proxy.json") -> Path:
        """Write C{document} as JSON to C{name} and return its path."""
        path = self.folder / name
        path.write_text(json.dumps(document), encoding="utf-8")
        return path

    def load(self, document: dict[str, Any]) -> ProxyConfig:
        """Load C{document} through a JSON file."""
        return load_proxy_config(self.write(document))

    def assertConfigError(
        self, document: dict[str, Any], key_path: str, *fragments: str
    ) -> ConfigError:
        """
        Assert that loading C{document} fails with a one-line error naming
        the file, C{key_path} and each of C{fragments}.
        """
        path = self.write(document)
        error = self.assertRaises(ConfigError, load_proxy_config, path)
        self.assertEqual(error.key_path, key_path)
        message = str(error)
        self.assertTrue(message.startswith(f"{path}: {key_path}: "), message)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return error


class GoEraConfigTests(ProxyConfigTestCase):
    """A configuration written for the Go proxy loads unchanged."""

    def test_sink_keys(self) -> None:
        """
        C{url}, C{authBearer}, C{buckets}, C{databasePath},
        C{maxMessagesPerMinute} and the C{config} batching keys of a sink
        are read as the Go proxy read them.
        """
        config = self.load(GO_ERA_CONFIG)

        self.assertEqual(list(config.sinks), ["relay"])
        sink = config.sinks["relay"]
        self.assertEqual(sink.id, "relay")
        self.assertEqual(sink.url, "https://relay.example.com:8081/")
        self.assertEqual(sink.auth_bearer, "s3cret-token")
        self.assertEqual(sink.buckets, ["events", "audit"])
        self.assertEqual(sink.database_path, Path("/var/lib/replayforge/relay.sqlite3"))
        self.assertEqual(sink.max_messages_per_minute, 600)
        self.assertEqual(sink.batching.max_events, 50)
        self.assertEqual(sink.batching.goal_bytes, 100000)
        self.assertEqual(sink.batching.max_payload_bytes, 200000)
        self.assertEqual(sink.batching.timeout_seconds, 2.0)
        # A Go-era file has no batchLingerMs: the default applies.
        self.assertEqual(sink.batching.linger, 0.02)

    def test_batch_linger(self) -> None:
        """C{batchLingerMs} sets the linger; C{batchTimeoutSecs} bounds it."""
        for given, timeout, linger in [(5, 5, 0.005), (0, 5, 0.0), (500, 0.1, 0.1)]:
            document = minimal_config()
            document["sinks"][0]["config"] = {
                "batchLingerMs": given,
                "batchTimeoutSecs": timeout,
            }
            batching = self.load(document).sinks["relay"].batching
            self.assertAlmostEqual(batching.linger, linger)

    def test_source_keys(self) -> None:
        """
        C{params.listenPort} becomes a TCP listener; C{targetSink},
        C{transformScript} and C{hookInterval} are kept per source, in file
        order.
        """
        config = self.load(GO_ERA_CONFIG)

        webhooks, scripted = config.sources
        self.assertEqual(webhooks.id, "webhooks")
        self.assertEqual(webhooks.type, "http")
        self.assertEqual(webhooks.listen, "tcp:8090")
        self.assertEqual(webhooks.target_sink, "relay")
        self.assertIsNone(webhooks.transform_script)
        self.assertEqual(scripted.id, "scripted")
        self.assertEqual(scripted.listen, "tcp:8091")
        self.assertEqual(scripted.transform_script, "scripts/route.lua")
        self.assertIsNone(scripted.target_sink)

    def test_top_level_keys(self) -> None:
        """
        C{envName}, C{hostName}, C{portStatusZ} and C{verbosityLevel} are
        read; the Tailscale keys are accepted.
        """
        config = self.load(GO_ERA_CONFIG)

        self.assertEqual(config.env_name, "prod")
        self.assertEqual(config.host_name, "edge-1")
        self.assertEqual(config.listen_status, "tcp:8092")
        self.assertEqual(config.verbosity_level, "debug")

    def test_known_keys_draw_no_warning(self) -> None:
        """
        Every key of a Go-era file is known, so loading it warns about
        nothing.
        """
        events = capture_log(self)

        self.load(GO_ERA_CONFIG)

        self.assertEqual(warnings_in(events), [])

    def test_hook_interval_go_duration(self) -> None:
        """
        C{hookInterval} takes Go durations: C{"300ms"} is 0.3 seconds and
        C{"1m30s"} is 90 seconds.
        """
        config = self.load(GO_ERA_CONFIG)

        self.assertEqual(
            [source.hook_interval for source in config.sources], [0.3, 90.0]
        )

    def test_hook_interval_number(self) -> None:
        """A plain number as C{hookInterval} is a number of seconds."""
        document = minimal_config()
        document["sources"][0]["hookInterval"] = 2.5

        config = self.load(document)

        self.assertEqual(config.sources[0].hook_interval, 2.5)

    def test_url_gains_trailing_slash(self) -> None:
        """
        A sink C{url} without a trailing slash gets one, so that
        C{url + "record-batch"} is the relay's endpoint.
        """
        document = minimal_config()
        document["sinks"][0]["url"] = "http://relay.example.com:8081/base"

        config = self.load(document)

        self.assertEqual(
            config.sinks["relay"].url, "http://relay.example.com:8081/base/"
        )

    def test_url_with_trailing_slash_kept(self) -> None:
        """A sink C{url} that ends in a slash is kept as it is."""
        config = self.load(minimal_config())

        self.assertEqual(config.sinks["relay"].url, "http://relay.example.com:8081/")

    def test_yaml_reads_like_json(self) -> None:
        """The same document written as YAML gives the same configuration."""
        json_config = self.load(GO_ERA_CONFIG)
        yaml_path = self.folder / "proxy.yaml"
        # JSON is valid YAML: the same text must load through the YAML reader.
        yaml_path.write_text(json.dumps(GO_ERA_CONFIG), encoding="utf-8")

        self.assertEqual(load_proxy_config(yaml_path), json_config)

    def test_token_not_in_repr(self) -> None:
        """A sink's bearer token never appears in its C{repr}, so not in logs."""
        config = self.load(GO_ERA_CONFIG)

        self.assertNotIn("s3cret-token", repr(config))


class ProxyConfigDefaultsTests(ProxyConfigTestCase):
    """What the proxy assumes for every key a file leaves out."""

    def test_batching_defaults(self) -> None:
        """
        Without C{config}, a sink batches 1000 events, aims at about 4.25 MiB,
        never sends more than 5 MiB and lets an event wait 5 seconds.
        """
        batching = self.load(minimal_config()).sinks["relay"].batching

        self.assertEqual(batching.max_events, DEFAULT_BATCH_MAX_EVENTS)
        self.assertEqual(batching.goal_bytes, DEFAULT_BATCH_GOAL_BYTES)
        self.assertEqual(batching.max_payload_bytes, DEFAULT_MAX_PAYLOAD_BYTES)
        self.assertEqual(batching.timeout_seconds, DEFAULT_BATCH_TIMEOUT_SECONDS)
        self.assertEqual(batching.linger, 0.02)
        self.assertEqual(
            (
                DEFAULT_BATCH_MAX_EVENTS,
                DEFAULT_BATCH_GOAL_BYTES,
                DEFAULT_MAX_PAYLOAD_BYTES,
                DEFAULT_BATCH_TIMEOUT_SECONDS,
            ),
            (1000, int(4.25 * 1024 * 1024), 5 * 1024 * 1024, 5.0),
        )

    def test_sink_defaults(self) -> None:
        """
        A sink without C{databasePath} buffers in C{<id>-sink.sqlite3}; it has
        no bearer token, no rate limit and the default buffer cap.
        """
        sink = self.load(minimal_config()).sinks["relay"]

        self.assertEqual(sink.database_path, Path("relay-sink.sqlite3"))
        self.assertEqual(sink.auth_bearer, "")
        self.assertEqual(sink.max_messages_per_minute, 0)
        self.assertIsNone(sink.transform_script)
        self.assertEqual(sink.max_bytes, DEFAULT_BUFFER_MAX_SIZE_KB * 1024)

    def test_db_max_size_kb(self) -> None:
        """C{dbMaxSizeKb} caps the sink's buffer file, in KiB."""
        document = minimal_config()
        document["sinks"][0]["dbMaxSizeKb"] = 2048

        sink = self.load(document).sinks["relay"]

        self.assertEqual(sink.max_bytes, 2048 * 1024)

    def test_top_level_defaults(self) -> None:
        """
        Without them, the environment name is empty, the host name is the
        machine's, there is no status listener and logging is at info.
        """
        config = self.load(minimal_config())

        self.assertEqual(config.env_name, "")
        self.assertEqual(config.host_name, socket.gethostname())
        self.assertIsNone(config.listen_status)
        self.assertEqual(config.verbosity_level, "info")

    def test_hook_interval_default(self) -> None:
        """A source without C{hookInterval} runs its timer every second."""
        config = self.load(minimal_config())

        self.assertEqual(config.sources[0].hook_interval, 1.0)

    def test_listen_wins_over_listen_port(self) -> None:
        """
        C{params.listen}, a Twisted endpoint string, wins over
        C{params.listenPort}.
        """
        document = minimal_config(listenStatusZ="tcp:9000:interface=127.0.0.1")
        document["sources"][0]["params"]["listen"] = "tcp:9001:interface=127.0.0.1"

        config = self.load(document)

        self.assertEqual(config.sources[0].listen, "tcp:9001:interface=127.0.0.1")
        self.assertEqual(config.listen_status, "tcp:9000:interface=127.0.0.1")

    def test_unknown_key_warned_not_fatal(self) -> None:
        """
        An unknown key is warned about with its key path, and the file still
        loads.
        """
        events = capture_log(self)
        document = minimal_config()
        document["sinks"][0]["retries"] = 3

        config = self.load(document)

        self.assertEqual(list(config.sinks), ["relay"])
        self.assertEqual(len(warnings_in(events)), 1)
        self.assertIn("sinks[0].retries", warnings_in(events)[0])


class ProxyConfigErrorTests(ProxyConfigTestCase):
    """
    A configuration the proxy cannot run stops it with one line naming the
    file, the key path and what was expected.
    """

    def test_unknown_source_type(self) -> None:
        """A source C{type} the proxy does not know is an error."""
        document = minimal_config()
        document["sources"][0]["type"] = "carrier-pigeon"

        self.assertConfigError(document, "sources[0].type", "'carrier-pigeon'")

    def test_missing_target_sink_and_script(self) -> None:
        """
        A source with neither C{targetSink} nor C{transformScript} has nowhere
        to send its events.
        """
        document = minimal_config()
        del document["sources"][0]["targetSink"]

        self.assertConfigError(document, "sources[0].targetSink", "transformScript")

    def test_target_sink_names_no_sink(self) -> None:
        """A C{targetSink} that names no sink is an error naming the sinks."""
        document = minimal_config()
        document["sources"][0]["targetSink"] = "elsewhere"

        self.assertConfigError(
            document, "sources[0].targetSink", "'elsewhere'", "'relay'"
        )

    def test_duplicate_sink_id(self) -> None:
        """Two sinks may not share an id."""
        document = minimal_config()
        document["sinks"].append(dict(document["sinks"][0]))

        self.assertConfigError(document, "sinks[1].id", "duplicate", "'relay'")

    def test_duplicate_source_id(self) -> None:
        """Two sources may not share an id."""
        document = minimal_config()
        second = dict(document["sources"][0], params={"listenPort": 8091})
        document["sources"].append(second)

        self.assertConfigError(document, "sources[1].id", "duplicate", "'webhooks'")

    def test_bad_url(self) -> None:
        """A sink C{url} that is not an http(s) URL is an error."""
        document = minimal_config()
        document["sinks"][0]["url"] = "relay.example.com:8081"

        self.assertConfigError(document, "sinks[0].url", "'relay.example.com:8081'")

    def test_url_credentials(self) -> None:
        """
        A sink C{url} with a user and password is an error pointing at
        C{authBearer}, without the password.
        """
        document = minimal_config()
        document["sinks"][0]["url"] = "https://forwarder:pw-77@127.0.0.1:8081/"

        error = self.assertConfigError(
            document,
            "sinks[0].url",
            "user and password in the URL are not supported; use authBearer",
        )
        self.assertNotIn("pw-77", str(error))

    def test_bad_listeners(self) -> None:
        """
        A source's C{params.listen} or C{listenPort} and the status listener
        are parsed when the file is read.
        """
        document = minimal_config()
        document["sources"][0]["params"]["listen"] = "tcp:abc"
        self.assertConfigError(
            document, "sources[0].params.listen", "cannot listen on 'tcp:abc'"
        )
        document = minimal_config()
        document["sources"][0]["params"] = {"listenPort": 70000}
        self.assertConfigError(
            document, "sources[0].params.listenPort", "from 0 to 65535"
        )
        missing = self.folder / "missing.pem"
        listen = f"ssl:8443:privateKey={missing}:certKey={missing}"
        self.assertConfigError(
            minimal_config(listenStatusZ=listen),
            "listenStatusZ",
            f"cannot read {missing}",
        )
        self.assertConfigError(
            minimal_config(portStatusZ="status"), "portStatusZ", "port number"
        )

    def test_empty_buckets(self) -> None:
        """A sink must name at least one bucket."""
        document = minimal_config()
        document["sinks"][0]["buckets"] = []

        self.assertConfigError(document, "sinks[0].buckets", "bucket")

    def test_blank_bucket_names(self) -> None:
        """
        Blank bucket names do not count: C{[""]}, as an unset C{$BUCKET}
        leaves it, is an error rather than a sink the relay always refuses.
        """
        document = minimal_config()
        document["sinks"][0]["buckets"] = ["", " "]

        self.assertConfigError(document, "sinks[0].buckets", "bucket")

    def test_blank_bucket_name_beside_others_ignored(self) -> None:
        """
        A blank bucket name beside real ones is ignored, as the relay ignores
        it in C{RF-BUCKETS}.
        """
        document = minimal_config()
        document["sinks"][0]["buckets"] = ["events", "", "audit"]

        sink = self.load(document).sinks["relay"]

        self.assertEqual(sink.buckets, ["events", "audit"])

    def test_missing_listen_port_for_http(self) -> None:
        """An C{http} source needs C{params.listenPort} (or C{params.listen})."""
        document = minimal_config()
        document["sources"][0]["params"] = {}

        self.assertConfigError(document, "sources[0].params.listenPort", "port")

    def test_no_sinks(self) -> None:
        """A proxy without sinks has nowhere to forward."""
        self.assertConfigError(minimal_config(sinks=[]), "sinks", "sink")

    def test_missing_sink_id(self) -> None:
        """A sink needs an id."""
        document = minimal_config()
        del document["sinks"][0]["id"]

        self.assertConfigError(document, "sinks[0].id", "required")

    def test_bad_hook_interval(self) -> None:
        """A C{hookInterval} that is no duration is an error."""
        document = minimal_config()
        document["sources"][0]["hookInterval"] = "soon"

        self.assertConfigError(document, "sources[0].hookInterval", "'soon'")

    def test_bad_batching_value(self) -> None:
        """A C{batchMaxEvents} below 1 is an error with its nested key path."""
        document = minimal_config()
        document["sinks"][0]["config"] = {"batchMaxEvents": 0}

        self.assertConfigError(document, "sinks[0].config.batchMaxEvents", "at least 1")

    def test_bad_sink_type(self) -> None:
        """A sink C{type} other than C{http} is an error."""
        document = minimal_config()
        document["sinks"][0]["type"] = "kafka"

        self.assertConfigError(document, "sinks[0].type", "'kafka'")
