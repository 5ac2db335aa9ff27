"""
Tests for L{replayforge.config} and L{replayforge.relay.config}.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from replayforge.config import (
    ConfigError,
    Section,
    load_document,
    parse_duration,
    substitute_environment,
)
from replayforge.relay.config import (
    DEFAULT_DB_MAX_SIZE_KB,
    DEFAULT_MAX_BATCH,
    load_relay_config,
    parse_relay_config,
)
from tests.log_support import capture_log, warnings_in


def temporary_folder(test: SynchronousTestCase) -> Path:
    """
    Make an empty folder outside the working tree, removed when C{test} ends.
    """
    folder = Path(tempfile.mkdtemp(prefix="replayforge-test-"))
    test.addCleanup(shutil.rmtree, folder, ignore_errors=True)
    return folder


def write_file(test: SynchronousTestCase, name: str, text: str | bytes) -> Path:
    """Write C{text} to a file called C{name} in a fresh folder of C{test}."""
    path = temporary_folder(test) / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def section(raw: dict[str, Any], source: str = "conf.yaml") -> Section:
    """Make the top-level L{Section} of a document holding C{raw}."""
    return Section(raw, source, "", Path("."))


class LoadDocumentTests(SynchronousTestCase):
    """
    L{load_document} reads JSON or YAML into a L{Section}, or raises a
    one-line L{ConfigError} naming the file.
    """

    def assertLoadFails(self, path: Path | str, *fragments: str) -> ConfigError:
        """
        Assert that loading C{path} raises a one-line L{ConfigError} starting
        with the file's name and holding every one of C{fragments}.
        """
        error = self.assertRaises(ConfigError, load_document, path, {})
        message = str(error)
        self.assertTrue(message.startswith(f"{path}: "), message)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return error

    def test_json(self) -> None:
        """
        A C{.json} file is read as JSON; its top mapping becomes the section.
        """
        path = write_file(self, "relay.json", '{"port": 8081, "buckets": {}}')

        document = load_document(path, {})

        self.assertEqual(document.raw, {"port": 8081, "buckets": {}})
        self.assertEqual(document.source, str(path))
        self.assertEqual(document.path, "")

    def test_yaml_extensions(self) -> None:
        """
        C{.yaml}, C{.yml} and upper-case extensions are read as YAML.
        """
        for name in ("relay.yaml", "relay.yml", "RELAY.YML"):
            path = write_file(self, name, "port: 8081\nbuckets:\n  logs: {}\n")
            document = load_document(path, {})
            self.assertEqual(document.raw, {"port": 8081, "buckets": {"logs": {}}})

    def test_base_is_the_file_folder(self) -> None:
        """
        The section remembers the folder of the file, for relative paths.
        """
        path = write_file(self, "relay.json", "{}")
        self.assertEqual(load_document(path, {}).base, path.parent.resolve())

    def test_missing_file(self) -> None:
        """
        A file that does not exist cannot be read.
        """
        path = temporary_folder(self) / "absent.json"
        error = self.assertLoadFails(path, "cannot read the file")
        self.assertEqual(error.source, str(path))
        self.assertEqual(error.key_path, "")

    def test_folder(self) -> None:
        """
        A folder in place of the file cannot be read.
        """
        folder = temporary_folder(self) / "conf.json"
        folder.mkdir()
        self.assertLoadFails(folder, "cannot read the file")

    def test_not_utf8(self) -> None:
        """
        A file that is not UTF-8 cannot be read.
        """
        path = write_file(self, "relay.yaml", b"port: \xff\xfe\n")
        self.assertLoadFails(path, "cannot read the file")

    def test_unknown_extension(self) -> None:
        """
        Only C{.json}, C{.yaml} and C{.yml} files are accepted.
        """
        for name in ("relay.toml", "relay", "relay.json.bak"):
            path = write_file(self, name, "{}")
            self.assertLoadFails(path, "expected a file ending in .json, .yaml or .yml")

    def test_invalid_json(self) -> None:
        """
        Invalid JSON is reported with the line of the mistake.
        """
        path = write_file(
            self, "relay.json", '{\n  "port": 8081,\n  "buckets": {,}\n}\n'
        )
        self.assertLoadFails(path, "invalid JSON at line 3")

    def test_json_is_not_yaml(self) -> None:
        """
        A C{.json} file is parsed strictly as JSON, not as YAML.
        """
        path = write_file(self, "relay.json", "port: 8081\n")
        self.assertLoadFails(path, "invalid JSON at line 1")

    def test_invalid_yaml(self) -> None:
        """
        Invalid YAML is reported with the line of the mistake and the problem.
        """
        path = write_file(self, "relay.yaml", "port: 8081\nbuckets: [a, b\nx: 1\n")
        self.assertLoadFails(path, "invalid YAML at line 3", "expected ','")

    def test_top_level_not_a_mapping(self) -> None:
        """
        A document whose top level is a list, a scalar or nothing is refused.
        """
        for name, text in [
            ("list.json", "[1, 2]"),
            ("string.json", '"relay"'),
            ("list.yaml", "- port: 8081\n"),
            ("scalar.yaml", "8081\n"),
            ("empty.yaml", ""),
        ]:
            path = write_file(self, name, text)
            self.assertLoadFails(path, "expected a mapping of keys at the top level")

    def test_environment_defaults_to_process(self) -> None:
        """
        Without an explicit environment the process environment is used.
        """
        name = "REPLAYFORGE_TEST_TOKEN"
        os.environ[name] = "from-process"
        self.addCleanup(os.environ.pop, name, None)
        path = write_file(self, "relay.yaml", "auth: $REPLAYFORGE_TEST_TOKEN\n")

        self.assertEqual(load_document(path).raw, {"auth": "from-process"})


class EnvironmentSubstitutionTests(SynchronousTestCase):
    """
    C{$NAME} and C{${NAME}} in string values are replaced by the environment;
    C{\\$} is a literal C{$}.
    """

    def substitute(self, text: str, **environ: str) -> tuple[str, set[str]]:
        """Substitute C{environ} in C{text}; return it and the unset names."""
        unset: set[str] = set()
        return substitute_environment(text, environ, unset), unset

    def test_plain_reference(self) -> None:
        """
        C{$NAME} is replaced by the variable's value; a name runs as long as
        letters, digits and underscores follow.
        """
        self.assertEqual(
            self.substitute("Bearer $TOKEN", TOKEN="abc"), ("Bearer abc", set())
        )
        self.assertEqual(
            self.substitute("$HOST_NAME/x", HOST_NAME="web-1", HOST="no"),
            ("web-1/x", set()),
        )

    def test_braced_reference(self) -> None:
        """
        C{${NAME}} ends where the brace does, so text may follow directly.
        """
        self.assertEqual(
            self.substitute("${DIR}_data/${DIR}", DIR="var"), ("var_data/var", set())
        )

    def test_escaped_dollar(self) -> None:
        """
        C{\\$} stands for a literal dollar sign and is never substituted.
        """
        self.assertEqual(
            self.substitute("price \\$HOME and $HOME", HOME="/root"),
            ("price $HOME and /root", set()),
        )

    def test_lone_dollar_kept(self) -> None:
        """
        A dollar sign not followed by a name is left as it is.
        """
        self.assertEqual(self.substitute("5$ or $1 or $"), ("5$ or $1 or $", set()))

    def test_unset_variable(self) -> None:
        """
        An unset variable becomes the empty string and its name is reported.
        """
        self.assertEqual(
            self.substitute("a${MISSING}b$ALSO_MISSING", SET="x"),
            ("ab", {"MISSING", "ALSO_MISSING"}),
        )

    def test_empty_value_is_set(self) -> None:
        """
        A variable set to the empty string is not reported as unset.
        """
        self.assertEqual(self.substitute("[$EMPTY]", EMPTY=""), ("[]", set()))

    def test_document_strings_substituted(self) -> None:
        """
        Every string value of the document is substituted, at any depth, while
        keys, numbers and booleans are left alone.
        """
        path = write_file(
            self,
            "relay.yaml",
            "$KEY: $VALUE\n"
            "buckets:\n"
            "  logs:\n"
            "    auth: ${TOKEN}\n"
            "    tags: [$VALUE, plain]\n"
            "port: 8081\n"
            "useTailnet: true\n",
        )

        document = load_document(path, {"KEY": "k", "VALUE": "v", "TOKEN": "t"})

        self.assertEqual(
            document.raw,
            {
                "$KEY": "v",
                "buckets": {"logs": {"auth": "t", "tags": ["v", "plain"]}},
                "port": 8081,
                "useTailnet": True,
            },
        )

    def test_substituted_number_converts(self) -> None:
        """
        A number given through a variable is read by the number readers.
        """
        path = write_file(self, "relay.json", '{"port": "$PORT"}')
        document = load_document(path, {"PORT": "9000"})
        self.assertEqual(document.integer("port"), 9000)

    def test_unset_variable_warned_once(self) -> None:
        """
        Each unset variable is warned about once, by name and file, however
        often it is used; set variables are not mentioned.
        """
        events = capture_log(self)
        path = write_file(
            self,
            "relay.yaml",
            "a: $NOPE\nb: ${NOPE}\nc: $ALSO_NOPE\nd: $HERE\n",
        )

        document = load_document(path, {"HERE": "yes"})

        self.assertEqual(document.raw, {"a": "", "b": "", "c": "", "d": "yes"})
        self.assertEqual(
            warnings_in(events),
            [
                f"{path}: environment variable ALSO_NOPE is not set; "
                "using an empty string",
                f"{path}: environment variable NOPE is not set; using an empty string",
            ],
        )


class ParseDurationTests(SynchronousTestCase):
    """
    L{parse_duration} reads Go durations and numbers of seconds.
    """

    def test_go_durations(self) -> None:
        """
        Go duration strings, with one or several units, become seconds.
        """
        for text, seconds in [
            ("300ms", 0.3),
            ("1m30s", 90.0),
            ("1h", 3600.0),
            ("1h2m3s", 3723.0),
            ("1.5s", 1.5),
            ("2m0.5s", 120.5),
            ("250us", 0.00025),
            ("250µs", 0.00025),
            ("100ns", 1e-7),
            ("0s", 0.0),
            (" 5s ", 5.0),
        ]:
            self.assertAlmostEqual(parse_duration(text), seconds, msg=text)

    def test_numbers_are_seconds(self) -> None:
        """
        A number, or a string holding one, is a number of seconds.
        """
        self.assertEqual(parse_duration(2), 2.0)
        self.assertEqual(parse_duration(0.25), 0.25)
        self.assertEqual(parse_duration("2.5"), 2.5)
        self.assertEqual(parse_duration("7"), 7.0)
        self.assertIsInstance(parse_duration(2), float)

    def test_bad_durations(self) -> None:
        """
        Anything else raises L{ValueError}: unknown or missing units, negative
        or endless values, spaces inside, booleans and other types.
        """
        for value in [
            "",
            "soon",
            "5 s",
            "5x",
            "1m30",
            "s",
            "ms5",
            "1m 30s",
            "-1s",
            "-2",
            -1,
            -0.5,
            "nan",
            "inf",
            float("nan"),
            float("inf"),
            True,
            None,
            [1],
            {"seconds": 1},
        ]:
            self.assertRaises(ValueError, parse_duration, value)


class SectionReaderTests(SynchronousTestCase):
    """
    Each L{Section} reader converts one key or raises L{ConfigError} naming
    the file, the key path and what was expected.
    """

    def assertReadFails(
        self, reader: Any, key: str, expected: str, *args: Any, **kwargs: Any
    ) -> ConfigError:
        """
        Assert that C{reader(key, *args, **kwargs)} raises a L{ConfigError}
        whose problem starts with C{expected}.
        """
        error: ConfigError = self.assertRaises(
            ConfigError, reader, key, *args, **kwargs
        )
        self.assertTrue(error.problem.startswith(expected), error.problem)
        return error

    def test_error_names_file_path_and_expectation(self) -> None:
        """
        The message is one line: file, key path inside nested mappings, what
        was expected and the value found.
        """
        document = section(
            {"buckets": {"logs": {"dbMaxSizeKb": "big"}}}, source="relay.yaml"
        )
        logs = document.section("buckets").section("logs")

        error = self.assertRaises(ConfigError, logs.integer, "dbMaxSizeKb")

        self.assertEqual(
            str(error),
            "relay.yaml: buckets.logs.dbMaxSizeKb: expected a whole number, got 'big'",
        )
        self.assertEqual(error.source, "relay.yaml")
        self.assertEqual(error.key_path, "buckets.logs.dbMaxSizeKb")

    def test_error_path_through_list(self) -> None:
        """
        Inside a list of mappings the key path carries the item's index.
        """
        document = section(
            {"sinks": [{"buckets": ["a"]}, {"buckets": 5}]}, source="proxy.json"
        )
        first, second = document.sections("sinks")

        self.assertEqual(first.text_list("buckets"), ["a"])
        error = self.assertRaises(ConfigError, second.text_list, "buckets")
        self.assertEqual(
            str(error),
            "proxy.json: sinks[1].buckets: expected a list of strings, got 5",
        )

    def test_required_key_missing(self) -> None:
        """
        Every reader without a default refuses an absent or null key.
        """
        document = section({"present": None})
        for reader in (
            document.text,
            document.integer,
            document.number,
            document.boolean,
            document.duration,
            document.text_list,
            document.sections,
            document.plain,
        ):
            for key in ("absent", "present"):
                error = self.assertReadFails(reader, key, "is required")
                self.assertEqual(error.key_path, key)
        self.assertReadFails(document.section, "absent", "is required", required=True)

    def test_defaults(self) -> None:
        """
        An absent or null key reads as the default given, unconverted.
        """
        document = section({"null": None})
        for key in ("absent", "null"):
            self.assertEqual(document.text(key, "dflt"), "dflt")
            self.assertEqual(document.integer(key, 7, minimum=10), 7)
            self.assertEqual(document.number(key, 1.5), 1.5)
            self.assertIs(document.boolean(key, False), False)
            self.assertEqual(document.duration(key, 1.0), 1.0)
            self.assertEqual(document.text_list(key, []), [])
            self.assertEqual(document.sections(key, []), [])
            self.assertIsNone(document.plain(key, None))
            self.assertEqual(document.section(key).raw, {})

    def test_has(self) -> None:
        """
        L{Section.has} tells present, non-null keys.
        """
        document = section({"a": 0, "b": None})
        self.assertTrue(document.has("a"))
        self.assertFalse(document.has("b"))
        self.assertFalse(document.has("c"))

    def test_text(self) -> None:
        """
        Strings are read as they are and numbers as their text; booleans,
        lists and mappings are refused.
        """
        document = section(
            {"s": "relay", "i": 12, "f": 1.5, "b": True, "l": ["a"], "m": {}}
        )
        self.assertEqual(document.text("s"), "relay")
        self.assertEqual(document.text("i"), "12")
        self.assertEqual(document.text("f"), "1.5")
        for key in ("b", "l", "m"):
            self.assertReadFails(document.text, key, "expected a string, got ")

    def test_integer(self) -> None:
        """
        Whole numbers, whole floats and numeric strings are read; fractions,
        words, booleans and lists are refused.
        """
        document = section(
            {
                "i": 42,
                "s": "42",
                "f": 3.0,
                "frac": 2.5,
                "sfrac": "2.5",
                "word": "many",
                "b": True,
                "l": [1],
                "inf": float("inf"),
            }
        )
        self.assertEqual(document.integer("i"), 42)
        self.assertEqual(document.integer("s"), 42)
        self.assertEqual(document.integer("f"), 3)
        for key in ("frac", "sfrac", "word", "b", "l", "inf"):
            self.assertReadFails(document.integer, key, "expected a whole number")

    def test_integer_minimum(self) -> None:
        """
        A whole number below the minimum is refused and the bound is named;
        the minimum itself is accepted.
        """
        document = section({"low": 0, "edge": 1})
        error = self.assertReadFails(document.integer, "low", "", minimum=1)
        self.assertEqual(error.problem, "expected a whole number of at least 1, got 0")
        self.assertEqual(document.integer("edge", minimum=1), 1)

    def test_number(self) -> None:
        """
        Numbers and numeric strings are read; words, booleans, lists and
        values that are not finite are refused.
        """
        document = section(
            {
                "i": 2,
                "f": 2.5,
                "s": "0.5",
                "word": "half",
                "b": False,
                "l": [],
                "nan": "nan",
                "inf": float("inf"),
            }
        )
        self.assertEqual(document.number("i"), 2.0)
        self.assertEqual(document.number("f"), 2.5)
        self.assertEqual(document.number("s"), 0.5)
        for key in ("word", "b", "l", "nan", "inf"):
            self.assertReadFails(document.number, key, "expected a number")

    def test_number_minimum(self) -> None:
        """
        A number below the minimum is refused and the bound is named.
        """
        document = section({"low": -0.1, "edge": 0})
        error = self.assertReadFails(document.number, "low", "", minimum=0)
        self.assertEqual(error.problem, "expected a number of at least 0, got -0.1")
        self.assertEqual(document.number("edge", minimum=0), 0.0)

    def test_boolean(self) -> None:
        """
        C{true}/C{false} and their strings in any case are read; numbers and
        other words are refused.
        """
        document = section(
            {"t": True, "f": False, "st": "TRUE", "sf": "false", "one": 1, "y": "yes"}
        )
        self.assertIs(document.boolean("t"), True)
        self.assertIs(document.boolean("f"), False)
        self.assertIs(document.boolean("st"), True)
        self.assertIs(document.boolean("sf"), False)
        for key in ("one", "y"):
            self.assertReadFails(document.boolean, key, "expected true or false")

    def test_duration(self) -> None:
        """
        Go durations and numbers of seconds are read; anything else is
        refused with an example of what would do.
        """
        document = section({"go": "1m30s", "n": 2, "s": "2.5", "bad": "soon"})
        self.assertEqual(document.duration("go"), 90.0)
        self.assertEqual(document.duration("n"), 2.0)
        self.assertEqual(document.duration("s"), 2.5)
        error = self.assertReadFails(document.duration, "bad", "expected a duration")
        self.assertIn('"300ms"', error.problem)
        self.assertIn("got 'soon'", error.problem)

    def test_text_list(self) -> None:
        """
        Lists of strings are read trimmed, and a comma-separated string is
        split; lists holding other things, numbers and mappings are refused.
        """
        document = section(
            {
                "l": [" a", "b "],
                "s": " a, b ,,c ",
                "mixed": ["a", 1],
                "n": 5,
                "m": {"a": "b"},
            }
        )
        self.assertEqual(document.text_list("l"), ["a", "b"])
        self.assertEqual(document.text_list("s"), ["a", "b", "c"])
        for key in ("mixed", "n", "m"):
            self.assertReadFails(document.text_list, key, "expected a list of strings")

    def test_section(self) -> None:
        """
        A nested mapping is read as a section whose paths extend this one's;
        anything else is refused.
        """
        document = section({"config": {"batchMaxEvents": 10}, "bad": [1]})
        config = document.section("config")
        self.assertEqual(config.integer("batchMaxEvents"), 10)
        self.assertEqual(config.key_path("x"), "config.x")
        error = self.assertReadFails(document.section, "bad", "expected a mapping")
        self.assertEqual(error.key_path, "bad")

    def test_sections(self) -> None:
        """
        A list of mappings is read as sections; a non-list is refused at the
        key and a non-mapping item at its index.
        """
        document = section(
            {"sinks": [{"id": "a"}], "one": {"id": "a"}, "mixed": [{}, "x"]},
            source="proxy.yaml",
        )
        [sink] = document.sections("sinks")
        self.assertEqual(sink.text("id"), "a")
        self.assertEqual(sink.path, "sinks[0]")

        error = self.assertReadFails(document.sections, "one", "expected a list")
        self.assertEqual(error.key_path, "one")
        error = self.assertReadFails(document.sections, "mixed", "expected a mapping")
        self.assertEqual(
            str(error), "proxy.yaml: mixed[1]: expected a mapping, got 'x'"
        )

    def test_named_sections(self) -> None:
        """
        A mapping of names to mappings is read in file order; an entry that is
        not a mapping is refused at its path.
        """
        document = section({"buckets": {"b": {}, "a": {"auth": "x"}}})
        self.assertEqual(
            [
                (name, bucket.path)
                for name, bucket in document.named_sections("buckets")
            ],
            [("b", "buckets.b"), ("a", "buckets.a")],
        )

        bad = section({"buckets": {"logs": "token"}})
        error = self.assertRaises(ConfigError, list, bad.named_sections("buckets"))
        self.assertEqual(error.key_path, "buckets.logs")

    def test_plain(self) -> None:
        """
        A free-form value is returned as the document has it.
        """
        document = section({"params": {"a": [1, {"b": None}]}})
        self.assertEqual(document.plain("params"), {"a": [1, {"b": None}]})


class UnknownKeyTests(SynchronousTestCase):
    """
    L{Section.finish} warns about keys nobody read; they are never fatal.
    """

    def test_unread_keys_warned(self) -> None:
        """
        Every unread key is warned about with its full path; read keys, even
        those read with a default, are not.
        """
        events = capture_log(self)
        document = section(
            {"port": 1, "colour": "red", "sub": {"known": 1, "typo": 2}},
            source="relay.yaml",
        )
        document.integer("port")
        document.text("absent", "")
        sub = document.section("sub")
        sub.integer("known")

        sub.finish()
        document.finish()

        self.assertEqual(
            warnings_in(events),
            [
                "relay.yaml: sub.typo: unknown key, ignored",
                "relay.yaml: colour: unknown key, ignored",
            ],
        )

    def test_null_key_read_not_warned(self) -> None:
        """
        A key that was read counts as known even when it was null.
        """
        events = capture_log(self)
        document = section({"port": None})
        document.integer("port", 8081)
        document.finish()
        self.assertEqual(warnings_in(events), [])


GO_RELAY_CONFIG = {
    "port": 8090,
    "portStatusZ": 8091,
    "useTailnet": True,
    "tailnetHostname": "relay-eu",
    "buckets": {
        "logs": {"auth": "logs-token", "dbMaxSizeKb": 2048, "tls": 86400},
        "metrics": {"auth": "metrics-token"},
    },
}


class RelayConfigTests(SynchronousTestCase):
    """
    L{load_relay_config} reads the Go relay's JSON unchanged, plus our keys.
    """

    def load(self, document: dict[str, Any], name: str = "relay.json") -> Any:
        """Write C{document} as JSON and load it as a relay configuration."""
        return load_relay_config(write_file(self, name, json.dumps(document)))

    def assertConfigError(
        self, document: dict[str, Any], key_path: str, expected: str
    ) -> None:
        """
        Assert that C{document} is refused at C{key_path} with a problem
        starting with C{expected}.
        """
        error = self.assertRaises(ConfigError, self.load, document)
        self.assertEqual(error.key_path, key_path)
        self.assertTrue(error.problem.startswith(expected), error.problem)

    def test_go_config_loads_unchanged(self) -> None:
        """
        A Go-era relay file loads with every key understood: ports become TCP
        endpoints, buckets keep their token, cap and time to live, and nothing
        is warned about.
        """
        events = capture_log(self)

        config = self.load(GO_RELAY_CONFIG)

        self.assertEqual(config.listen, "tcp:8090")
        self.assertEqual(config.listen_status, "tcp:8091")
        self.assertIs(config.use_tailnet, True)
        self.assertEqual(config.tailnet_hostname, "relay-eu")
        self.assertEqual(list(config.buckets), ["logs", "metrics"])
        logs = config.buckets["logs"]
        self.assertEqual(
            (logs.name, logs.auth, logs.db_max_size_kb, logs.ttl_seconds),
            ("logs", "logs-token", 2048, 86400),
        )
        self.assertEqual(logs.max_bytes, 2048 * 1024)
        metrics = config.buckets["metrics"]
        self.assertEqual(metrics.auth, "metrics-token")
        self.assertEqual(metrics.db_max_size_kb, DEFAULT_DB_MAX_SIZE_KB)
        self.assertEqual(metrics.ttl_seconds, 0)
        self.assertEqual(warnings_in(events), [])

    def test_defaults(self) -> None:
        """
        With only buckets, the relay listens on 8081, has no status listener,
        keeps data in the working directory and hands out 1000 records at most.
        """
        config = self.load({"buckets": {"logs": {"auth": "t"}}})

        self.assertEqual(config.listen, "tcp:8081")
        self.assertIsNone(config.listen_status)
        self.assertEqual(config.data_dir, Path("."))
        self.assertEqual(config.max_batch, DEFAULT_MAX_BATCH)
        self.assertIs(config.use_tailnet, False)

    def test_our_keys(self) -> None:
        """
        C{dataDir}, C{maxBatch} and C{maxBodyBytes} are read.
        """
        config = self.load(
            {
                "buckets": {"logs": {"auth": "t"}},
                "dataDir": "/var/lib/replayforge",
                "maxBatch": 50,
                "maxBodyBytes": 2048,
            }
        )
        self.assertEqual(config.data_dir, Path("/var/lib/replayforge"))
        self.assertEqual(config.max_batch, 50)
        self.assertEqual(config.max_body_bytes, 2048)

    def test_listen_wins_over_port(self) -> None:
        """
        C{listen} and C{listenStatusZ} endpoint strings win over the ports.
        """
        config = self.load(
            {
                **GO_RELAY_CONFIG,
                "listen": "tcp:9000:interface=127.0.0.1",
                "listenStatusZ": "unix:/run/relay-status.sock",
            }
        )
        self.assertEqual(config.listen, "tcp:9000:interface=127.0.0.1")
        self.assertEqual(config.listen_status, "unix:/run/relay-status.sock")

    def test_yaml_with_environment(self) -> None:
        """
        A YAML file works the same, with tokens taken from the environment.
        """
        path = write_file(
            self,
            "relay.yaml",
            "port: 8090\nbuckets:\n  logs:\n    auth: ${LOGS_TOKEN}\n    tls: 60\n",
        )
        config = parse_relay_config(load_document(path, {"LOGS_TOKEN": "from-env"}))
        self.assertEqual(config.buckets["logs"].auth, "from-env")
        self.assertEqual(config.buckets["logs"].ttl_seconds, 60)

    def test_token_not_in_repr(self) -> None:
        """
        A bucket's token never shows in its representation, hence in logs.
        """
        config = self.load(GO_RELAY_CONFIG)
        self.assertNotIn("logs-token", repr(config))
        self.assertNotIn("logs-token", repr(config.buckets["logs"]))

    def test_unlimited_bucket(self) -> None:
        """
        C{dbMaxSizeKb: 0} means no size cap.
        """
        config = self.load({"buckets": {"logs": {"auth": "t", "dbMaxSizeKb": 0}}})
        self.assertIsNone(config.buckets["logs"].max_bytes)

    def test_no_main_listener(self) -> None:
        """
        Port 0 without C{listen} would leave the relay deaf, and is refused.
        """
        self.assertConfigError(
            {**GO_RELAY_CONFIG, "port": 0}, "port", "expected a port number"
        )

    def test_bad_port(self) -> None:
        """
        A port that is not a whole number from 0 to 65535 is refused at its
        key.
        """
        expected = "expected a port number from 0 to 65535"
        self.assertConfigError(
            {**GO_RELAY_CONFIG, "portStatusZ": "eighty"}, "portStatusZ", expected
        )
        self.assertConfigError({**GO_RELAY_CONFIG, "port": -1}, "port", expected)
        self.assertConfigError({**GO_RELAY_CONFIG, "port": 70000}, "port", expected)

    def test_bad_listeners(self) -> None:
        """
        C{listen} and C{listenStatusZ} are parsed when the file is read: a
        string the relay could not listen on is refused at its key.
        """
        self.assertConfigError(
            {**GO_RELAY_CONFIG, "listen": "tcp:abc"},
            "listen",
            "cannot listen on 'tcp:abc': ",
        )
        self.assertConfigError(
            {
                **GO_RELAY_CONFIG,
                "listenStatusZ": "ssl:8443:privateKey=/nonexistent/key.pem",
            },
            "listenStatusZ",
            "cannot listen on 'ssl:8443:privateKey=/nonexistent/key.pem': "
            "cannot read /nonexistent/key.pem",
        )

    def test_bad_bucket_names(self) -> None:
        """
        Bucket names become folder names, so only letters, digits, C{.},
        C{_} and C{-} are accepted, starting with a letter or digit.
        """
        for name in ("has space", "../escape", "a/b", ".hidden", "-dash", "é"):
            self.assertConfigError(
                {"buckets": {name: {"auth": "t"}}},
                f"buckets.{name}",
                "expected a bucket name",
            )

    def test_good_bucket_names(self) -> None:
        """
        Dots, dashes, underscores and digits are fine in bucket names.
        """
        config = self.load({"buckets": {"app-1.logs_v2": {"auth": "t"}}})
        self.assertEqual(list(config.buckets), ["app-1.logs_v2"])

    def test_missing_auth(self) -> None:
        """
        A bucket without a token is refused at its C{auth} key.
        """
        self.assertConfigError(
            {"buckets": {"logs": {"dbMaxSizeKb": 10}}},
            "buckets.logs.auth",
            "is required",
        )

    def test_empty_auth(self) -> None:
        """
        An empty token, such as an unset variable, is refused.
        """
        self.assertConfigError(
            {"buckets": {"logs": {"auth": ""}}},
            "buckets.logs.auth",
            "expected a non-empty token",
        )

    def test_no_buckets(self) -> None:
        """
        A relay without buckets, absent or empty, is refused.
        """
        for document in ({"port": 8081}, {"buckets": {}}, {"buckets": None}):
            self.assertConfigError(document, "buckets", "expected at least one bucket")

    def test_buckets_not_a_mapping(self) -> None:
        """
        C{buckets} must map names to settings.
        """
        self.assertConfigError({"buckets": ["logs"]}, "buckets", "expected a mapping")
        self.assertConfigError(
            {"buckets": {"logs": "token"}}, "buckets.logs", "expected a mapping"
        )

    def test_bad_bucket_settings(self) -> None:
        """
        A wrongly typed or negative cap or time to live is refused at its path.
        """
        for settings, key in [
            ({"dbMaxSizeKb": "big"}, "dbMaxSizeKb"),
            ({"dbMaxSizeKb": -1}, "dbMaxSizeKb"),
            ({"tls": "1h"}, "tls"),
            ({"tls": -5}, "tls"),
        ]:
            self.assertConfigError(
                {"buckets": {"logs": {"auth": "t", **settings}}},
                f"buckets.logs.{key}",
                "expected a whole number",
            )

    def test_bad_top_level_settings(self) -> None:
        """
        Our own keys are checked too: C{maxBatch} at least 1, C{maxBodyBytes}
        at least 1024, C{useTailnet} a boolean.
        """
        bucket = {"buckets": {"logs": {"auth": "t"}}}
        self.assertConfigError({**bucket, "maxBatch": 0}, "maxBatch", "expected a")
        self.assertConfigError(
            {**bucket, "maxBodyBytes": 10}, "maxBodyBytes", "expected a"
        )
        self.assertConfigError(
            {**bucket, "useTailnet": "yes"}, "useTailnet", "expected true or false"
        )

    def test_unknown_keys_warned(self) -> None:
        """
        Unknown keys at the top and in buckets are warned about, not fatal.
        """
        events = capture_log(self)
        path = write_file(
            self,
            "relay.json",
            json.dumps({"buckets": {"logs": {"auth": "t", "ttl": 5}}, "verbose": True}),
        )

        config = load_relay_config(path)

        self.assertEqual(list(config.buckets), ["logs"])
        self.assertEqual(
            warnings_in(events),
            [
                f"{path}: buckets.logs.ttl: unknown key, ignored",
                f"{path}: verbose: unknown key, ignored",
            ],
        )

    def test_error_names_the_file(self) -> None:
        """
        A relay config error names the file and the key path in one line.
        """
        path = write_file(
            self, "relay.json", json.dumps({"buckets": {"logs": {"tls": 1}}})
        )
        error = self.assertRaises(ConfigError, load_relay_config, path)
        self.assertEqual(str(error), f"{path}: buckets.logs.auth: is required")
