"""
Tests for L{replayforge.grok}: the standard Logstash patterns, type
suffixes, errors, the compile cache and the time limit on a match.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from replayforge.grok import (
    GrokCompiler,
    GrokError,
    GrokTimeout,
    parse_definitions,
    script_helper,
    standard_compiler,
    standard_definitions,
)
from replayforge.lua import LuaScript

NGINX_LINE = (
    '203.0.113.9 - - [04/Dec/2026:10:15:32 +0000] "GET /products?page=2 HTTP/1.1"'
    ' 200 5123 "https://shop.example.com/" "Mozilla/5.0 (X11; Linux x86_64)"'
)
NGINX_IPV6_LINE = (
    '2001:db8::7334 - alice [04/Dec/2026:10:16:11 +0100] "PUT /orders/9 HTTP/2.0"'
    ' 204 - "-" "okhttp/4.12.0"'
)
NGINX_EMPTY_REQUEST = '203.0.113.201 - - [04/Dec/2026:10:17:16 +0000] "-" 400 0 "-" "-"'


class StandardPatternTests(SynchronousTestCase):
    """The standard definitions parse the log formats they are named for."""

    def setUp(self) -> None:
        self.grok = standard_compiler()

    def test_combined_apache_log(self) -> None:
        """
        C{%{COMBINEDAPACHELOG}} reads an nginx combined access line into
        Logstash's field names, as strings; quoted fields keep their quotes.
        """
        self.assertEqual(
            self.grok.parse("%{COMBINEDAPACHELOG}", NGINX_LINE),
            {
                "clientip": "203.0.113.9",
                "ident": "-",
                "auth": "-",
                "timestamp": "04/Dec/2026:10:15:32 +0000",
                "verb": "GET",
                "request": "/products?page=2",
                "httpversion": "1.1",
                "response": "200",
                "bytes": "5123",
                "referrer": '"https://shop.example.com/"',
                "agent": '"Mozilla/5.0 (X11; Linux x86_64)"',
            },
        )

    def test_httpd_combined_log_is_the_same_format(self) -> None:
        """C{%{HTTPD_COMBINEDLOG}} is the current name of the same format."""
        self.assertEqual(
            self.grok.parse("%{HTTPD_COMBINEDLOG}", NGINX_LINE),
            self.grok.parse("%{COMBINEDAPACHELOG}", NGINX_LINE),
        )

    def test_ipv6_client_and_missing_size(self) -> None:
        """
        An IPv6 client address matches, and a size written C{-} is left out
        rather than captured empty.
        """
        fields = self.grok.parse("%{HTTPD_COMBINEDLOG}", NGINX_IPV6_LINE)
        assert fields is not None
        self.assertEqual(fields["clientip"], "2001:db8::7334")
        self.assertEqual(fields["auth"], "alice")
        self.assertEqual(fields["response"], "204")
        self.assertNotIn("bytes", fields)

    def test_request_line_that_is_not_http(self) -> None:
        """
        A request line that is not C{METHOD target HTTP/x} is captured whole
        as C{rawrequest}, and C{verb} is absent.
        """
        fields = self.grok.parse("%{HTTPD_COMBINEDLOG}", NGINX_EMPTY_REQUEST)
        assert fields is not None
        self.assertEqual(fields["rawrequest"], "-")
        self.assertNotIn("verb", fields)

    def test_syslog_line(self) -> None:
        """C{%{SYSLOGLINE}} splits a classic syslog line."""
        self.assertEqual(
            self.grok.parse(
                "%{SYSLOGLINE}",
                "Dec  4 10:15:32 web-1 sshd[4321]: Accepted publickey for deploy",
            ),
            {
                "timestamp": "Dec  4 10:15:32",
                "logsource": "web-1",
                "program": "sshd",
                "pid": "4321",
                "message": "Accepted publickey for deploy",
            },
        )

    def test_syslog_base_in_a_pattern_of_ones_own(self) -> None:
        """
        Definitions compose with text of one's own: C{%{SYSLOGBASE}} brings
        its named fields, an unnamed reference brings none.
        """
        fields = self.grok.parse(
            r"%{SYSLOGBASE} \(%{USER:user}\) CMD \(%{GREEDYDATA:command}\)",
            "Dec 14 03:17:01 web-1 CRON[999]: (root) CMD (run-parts /etc/cron.hourly)",
        )
        self.assertEqual(
            fields,
            {
                "timestamp": "Dec 14 03:17:01",
                "logsource": "web-1",
                "program": "CRON",
                "pid": "999",
                "user": "root",
                "command": "run-parts /etc/cron.hourly",
            },
        )

    def test_rfc5424_syslog_line(self) -> None:
        """C{%{SYSLOG5424LINE}} reads an RFC 5424 line."""
        fields = self.grok.parse(
            "%{SYSLOG5424LINE}",
            "<34>1 2026-12-04T10:15:32.003Z db-2.example.com su - ID47 - "
            "'su root' failed for lonvick",
        )
        assert fields is not None
        self.assertEqual(fields["syslog5424_pri"], "34")
        self.assertEqual(fields["syslog5424_ts"], "2026-12-04T10:15:32.003Z")
        self.assertEqual(fields["syslog5424_host"], "db-2.example.com")
        self.assertEqual(fields["syslog5424_app"], "su")
        self.assertEqual(fields["syslog5424_msg"], "'su root' failed for lonvick")

    def test_every_standard_definition_compiles(self) -> None:
        """Each shipped definition compiles on its own."""
        definitions = standard_definitions()
        self.assertIn("COMBINEDAPACHELOG", definitions)
        self.assertIn("SYSLOGLINE", definitions)
        for name in definitions:
            self.grok.compile("%{" + name + "}")


class TypeSuffixTests(SynchronousTestCase):
    """C{:int} and C{:float} turn captures into numbers."""

    def setUp(self) -> None:
        self.grok = standard_compiler()

    def test_int_and_float(self) -> None:
        """An C{:int} capture is an C{int}, a C{:float} capture a C{float}."""
        fields = self.grok.parse(
            "%{INT:status:int} %{NUMBER:seconds:float}", "took: 200 0.25"
        )
        self.assertEqual(fields, {"status": 200, "seconds": 0.25})
        assert fields is not None
        self.assertIs(type(fields["status"]), int)
        self.assertIs(type(fields["seconds"]), float)

    def test_int_of_a_decimal_truncates(self) -> None:
        """C{:int} of C{1.75} is 1, as in Logstash."""
        self.assertEqual(self.grok.parse("%{NUMBER:n:int}", "1.75"), {"n": 1})

    def test_int_of_text_stays_text(self) -> None:
        """A capture that does not read as a number stays a string."""
        self.assertEqual(self.grok.parse("%{WORD:n:int}", "abc"), {"n": "abc"})

    def test_unknown_suffix_keeps_a_string(self) -> None:
        """A suffix other than C{int} or C{float} keeps the string."""
        self.assertEqual(self.grok.parse("%{INT:n:long}", "42"), {"n": "42"})

    def test_field_names_with_dots_and_brackets(self) -> None:
        """Field names are free text: dots and brackets are kept as written."""
        self.assertEqual(
            self.grok.parse("%{IP:client.ip} %{INT:[http][status]:int}", "::1 404"),
            {"client.ip": "::1", "[http][status]": 404},
        )


class ErrorTests(SynchronousTestCase):
    """What does not match, and what cannot be compiled."""

    def setUp(self) -> None:
        self.grok = standard_compiler()

    def test_no_match(self) -> None:
        """A text the pattern does not match gives C{None}."""
        self.assertIsNone(self.grok.parse("%{COMBINEDAPACHELOG}", "hello"))

    def test_unknown_pattern(self) -> None:
        """An unknown definition is named in the error."""
        error = self.assertRaises(GrokError, self.grok.compile, "%{NOPE:x}")
        self.assertIn("%{NOPE}", str(error))

    def test_malformed_reference(self) -> None:
        """A reference that is not C{%{NAME[:field[:type]]}} is an error."""
        error = self.assertRaises(GrokError, self.grok.compile, "%{INT:a:b:c}")
        self.assertIn("%{INT:a:b:c}", str(error))

    def test_invalid_regular_expression(self) -> None:
        """A pattern that is not a valid regular expression is an error."""
        error = self.assertRaises(GrokError, self.grok.compile, "(%{INT:n}")
        self.assertIn("invalid grok pattern", str(error))

    def test_definition_that_refers_to_itself(self) -> None:
        """A definition reached again while it is being expanded is an error."""
        grok = GrokCompiler({"A": "x%{B}", "B": "y%{A}"})
        error = self.assertRaises(GrokError, grok.compile, "%{A}")
        self.assertIn("refers to itself", str(error))

    def test_expansion_is_bounded(self) -> None:
        """A pattern that expands past the size bound is refused."""
        grok = GrokCompiler({"BIG": "x" * 100_000})
        self.assertRaises(GrokError, grok.compile, "%{BIG}%{BIG}%{BIG}")


class CacheTests(SynchronousTestCase):
    """Each pattern is compiled once, in a bounded cache."""

    def test_same_pattern_same_object(self) -> None:
        """Compiling a pattern again returns the pattern compiled first."""
        grok = GrokCompiler(standard_definitions())
        first = grok.compile("%{COMBINEDAPACHELOG}")
        self.assertIs(grok.compile("%{COMBINEDAPACHELOG}"), first)

    def test_errors_are_cached(self) -> None:
        """A bad pattern raises the same error again, without recompiling."""
        grok = GrokCompiler({})
        first = self.assertRaises(GrokError, grok.compile, "%{NOPE}")
        second = self.assertRaises(GrokError, grok.compile, "%{NOPE}")
        self.assertIs(first, second)

    def test_least_recently_used_is_evicted(self) -> None:
        """Past its size, the cache forgets the pattern used longest ago."""
        grok = GrokCompiler({"N": "[0-9]+"}, cache_size=2)
        one = grok.compile("1 %{N}")
        two = grok.compile("2 %{N}")
        self.assertIs(grok.compile("1 %{N}"), one)
        grok.compile("3 %{N}")
        self.assertIs(grok.compile("1 %{N}"), one)
        self.assertIsNot(grok.compile("2 %{N}"), two)

    def test_cache_size_must_be_positive(self) -> None:
        """A cache that could hold nothing is refused."""
        self.assertRaises(ValueError, GrokCompiler, {}, cache_size=0)


class TimeoutTests(SynchronousTestCase):
    """A hostile line costs at most the time limit."""

    def test_pathological_input_is_cut_short(self) -> None:
        """
        Four lazy C{DATA} captures against a long run of spaces would
        backtrack for minutes; the match gives up at its time limit.
        """
        grok = GrokCompiler(standard_definitions(), timeout=0.05)
        pattern = "%{DATA:a} %{DATA:b} %{DATA:c} %{DATA:d}x$"
        started = time.monotonic()
        error = self.assertRaises(GrokTimeout, grok.parse, pattern, " " * 800)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertIn("gave up", str(error))


class DefinitionRewriteTests(SynchronousTestCase):
    """
    Unnamed groups of definitions are made non-capturing, for speed; what
    the definitions match stays the same.
    """

    def test_parentheses_in_classes_and_escapes(self) -> None:
        """A parenthesis escaped or inside a character class stays literal."""
        grok = GrokCompiler({"P": r"[(]\((a|b)[^)](c)"})
        self.assertEqual(grok.parse("%{P:p}", "((bxc"), {"p": "((bxc"})
        self.assertIsNone(grok.parse("%{P:p}", "((b)c"))

    def test_posix_classes(self) -> None:
        """A POSIX class inside a character class does not end it early."""
        grok = GrokCompiler({"P": "([[:alpha:]](x))+"})
        self.assertEqual(grok.parse("%{P:p}", "axbx"), {"p": "axbx"})

    def test_unnamed_groups_capture_nothing(self) -> None:
        """Unnamed groups of definitions never become fields."""
        grok = GrokCompiler({"PAIR": r"(\w)=(\w)"})
        self.assertEqual(grok.parse("%{PAIR:pair}", "a=b"), {"pair": "a=b"})

    def test_named_groups_of_ones_own(self) -> None:
        """A group named in the pattern itself becomes a field of that name."""
        self.assertEqual(
            standard_compiler().parse(r"(?P<word>\w+)-%{INT:n:int}", "ab-12"),
            {"word": "ab", "n": 12},
        )

    def test_unix_path(self) -> None:
        """C{%{UNIXPATH}} still matches a path as a whole."""
        self.assertEqual(
            standard_compiler().parse("%{UNIXPATH:file}", "/var/log/nginx/a.log"),
            {"file": "/var/log/nginx/a.log"},
        )


class DefinitionFileTests(SynchronousTestCase):
    """The pattern-file format."""

    def test_comments_and_blank_lines(self) -> None:
        """Comments and blank lines are skipped; the name ends at a space."""
        self.assertEqual(
            parse_definitions(["# a comment", "", "WORDS \\w+ \\w+", "  N [0-9]"]),
            {"WORDS": "\\w+ \\w+", "N": "[0-9]"},
        )


class ScriptHelperTests(SynchronousTestCase):
    """C{grok_parse} as scripts call it."""

    def setUp(self) -> None:
        self.grok_parse = script_helper(lambda fields: ("table", fields))

    def test_match_gives_a_table(self) -> None:
        """The fields go through the conversion given for tables."""
        self.assertEqual(self.grok_parse("%{INT:n:int}", "n=7"), ("table", {"n": 7}))

    def test_no_match_gives_nil(self) -> None:
        """No match gives C{None} alone."""
        self.assertIsNone(self.grok_parse("%{INT:n}", "none"))

    def test_bad_pattern_gives_nil_and_message(self) -> None:
        """A bad pattern gives C{None} and the reason."""
        self.assertEqual(
            self.grok_parse("%{NOPE}", "x"), (None, "unknown grok pattern %{NOPE}")
        )

    def test_timeout_gives_nil_and_message(self) -> None:
        """A match that runs out of time gives C{None} and the reason."""
        helper = script_helper(dict, GrokCompiler(standard_definitions(), timeout=0.01))
        result: Any = helper("%{DATA} %{DATA} %{DATA} %{DATA}x$", " " * 800)
        self.assertIsNone(result[0])
        self.assertIn("gave up", result[1])

    def test_arguments_must_be_strings(self) -> None:
        """Anything but strings gives C{None} and a message."""
        self.assertEqual(
            self.grok_parse("%{INT:n}", 5),
            (None, "grok_parse expects (pattern, text) strings"),
        )

    def test_bytes_are_read_as_utf8(self) -> None:
        """Byte strings, as a runtime without decoding passes them, work."""
        self.assertEqual(
            self.grok_parse(b"%{NOTSPACE:w}", "café".encode()),
            ("table", {"w": "café"}),
        )


class LuaGrokParseTests(SynchronousTestCase):
    """Scripts see C{grok_parse} as a global."""

    def run_script(self, body: str, content: str) -> list[tuple[str, str]]:
        """Run C{Process} with C{body} as its code on C{content}."""
        folder = Path(tempfile.mkdtemp(prefix="rf-grok-"))
        self.addCleanup(shutil.rmtree, folder)
        path = folder / "script.lua"
        path.write_text(f"function Process(content, emit)\n{body}\nend\n")
        return LuaScript(path, "source:test").process(content)

    def test_fields_as_a_table_with_numbers(self) -> None:
        """A match is a table; C{:int} captures are Lua integers."""
        emitted = self.run_script(
            """
            local f = grok_parse("%{COMBINEDAPACHELOG} %{INT:ms:int}", content)
            emit("out", f.verb .. " " .. math.type(f.ms) .. " " .. f.ms)
            """,
            NGINX_LINE + " 17",
        )
        self.assertEqual(emitted, [("out", "GET integer 17")])

    def test_no_match_is_nil(self) -> None:
        """No match is C{nil}, with no message."""
        emitted = self.run_script(
            """
            local f, problem = grok_parse("%{INT:n}", content)
            emit("out", tostring(f) .. " " .. tostring(problem))
            """,
            "no digits",
        )
        self.assertEqual(emitted, [("out", "nil nil")])

    def test_bad_pattern_is_nil_and_message(self) -> None:
        """A bad pattern is C{nil} and the message."""
        emitted = self.run_script(
            """
            local f, problem = grok_parse("%{NOPE}", content)
            emit("out", tostring(f) .. " " .. problem)
            """,
            "x",
        )
        self.assertEqual(emitted, [("out", "nil unknown grok pattern %{NOPE}")])
