"""
Tests for the fast paths of C{json_encode} (L{replayforge.lua_json}): strings
written with C{%q} when that is their JSON text, UTF-8 checked once on the
whole text, strings and integers written inline, key texts and buffers kept
from one call to the next.
"""

from __future__ import annotations

import json

from tests.lua_support import LUAJIT_MISSING, ScriptTestCase

REPLACEMENT = "\ufffd"

# Every character a JSON string escapes, and the way it does.
SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def json_string(text: str) -> str:
    """C{text} as C{json_encode} writes a valid UTF-8 string."""
    out = []
    for char in text:
        if char in SHORT_ESCAPES:
            out.append(SHORT_ESCAPES[char])
        elif ord(char) < 32 or ord(char) == 127:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


# Lua expressions of values whose text must not depend on which path wrote
# them; the same on both engines.
VALUES = [
    "'plain'",
    "'q\"b\\\\c'",
    "'line\\nbreak\\ttab\\0nul\\127del'",
    "'say \"hi\"\\n'",
    "'\\195\\169 \\230\\151\\165 \\240\\159\\152\\128'",
    "{}",
    "json_array()",
    "{1, 'two', {three = 3}, json_null, false}",
    "{a = 'x\"', b = {c = {}, d = json_array()}, e = 0.5}",
    'json_decode(\'{"a": null, "b": [null, 2, []], "c": "\\\\\\\\u0001"}\')',
    "{[1] = 'a', [3] = 'c'}",
    "{1, 2, x = 3, [true] = 4}",
]


class FastEncoderTests(ScriptTestCase):
    """What the fast paths write is what the rules say, on Lua 5.4."""

    def encoded(self, expression: str) -> str:
        """The text C{json_encode} gives the Lua C{expression}."""
        return self.emitted(
            f"local text, problem = json_encode({expression})\n"
            "emit('s', text or ('error: ' .. problem))"
        )

    def test_escapes_in_every_place(self) -> None:
        """
        Quotes, backslashes and every control character are escaped alike at
        the top level, in arrays, in object values and in keys.
        """
        lua = "'q\"b\\\\c\\0d\\1e\\31f\\127g\\b\\f\\n\\r\\t'"
        text = 'q"b\\c\x00d\x01e\x1ff\x7fg\b\f\n\r\t'
        quoted = json_string(text)
        self.assertEqual(self.encoded(lua), quoted)
        self.assertEqual(self.encoded("{" + lua + "}"), f"[{quoted}]")
        self.assertEqual(
            self.encoded("{[" + lua + "] = " + lua + "}"), f"{{{quoted}:{quoted}}}"
        )

    def test_every_control_character(self) -> None:
        """Each byte below 32, and 127, has its escape, alone or in text."""
        for code in [*range(32), 127]:
            alone, within = json_string(chr(code)), json_string(f'a{chr(code)}"')
            with self.subTest(code=code):
                self.assertEqual(
                    self.encoded(f"{{'\\{code}', 'a\\{code}\"'}}"),
                    f"[{alone},{within}]",
                )

    def test_quotes_without_control_characters(self) -> None:
        """Quotes and backslashes alone are escaped too."""
        self.assertEqual(
            self.encoded("{s = 'say \"hi\" \\\\ there'}"),
            '{"s":"say \\"hi\\" \\\\ there"}',
        )

    def test_unicode_kept(self) -> None:
        """Valid UTF-8 is written as it is, line separators included."""
        text = "é 日本 😀 \u2028"
        lua = "".join(f"\\{byte}" for byte in text.encode("utf-8"))
        self.assertEqual(
            self.encoded(f"{{['{lua}'] = '{lua}'}}"), f'{{"{text}":"{text}"}}'
        )

    def test_invalid_utf8_everywhere(self) -> None:
        """
        Every byte that is not UTF-8 becomes U+FFFD, in keys and values at any
        depth, lone surrogates and code points past U+10FFFF too, while the
        valid strings beside them are written as ever.
        """
        self.assertEqual(
            self.encoded(
                "{ok = 'a\"\\n', ['k\\255'] = {'\\237\\160\\128', 'x\\192\\128y',"
                " '\\244\\144\\128\\128', '\\226\\130'}}"
            ),
            '{"k\ufffd":["\ufffd\ufffd\ufffd","x\ufffd\ufffdy",'
            '"\ufffd\ufffd\ufffd\ufffd","\ufffd\ufffd"],"ok":"a\\"\\n"}',
        )

    def test_repairing_writes_the_same_text(self) -> None:
        """
        A value beside an invalid string is written exactly as it is alone:
        the repairing encoder and the fast one agree.
        """
        for expression in VALUES:
            with self.subTest(expression=expression):
                self.assertEqual(
                    self.emitted(
                        f"local value = {expression}\n"
                        "local alone = json_encode(value)\n"
                        "local beside = json_encode({a = value, b = '\\255'})\n"
                        "emit('s', beside == '{\"a\":' .. alone .. "
                        "',\"b\":\"\\239\\191\\189\"}' and 'same' or beside)"
                    ),
                    "same",
                )

    def test_integers_inline(self) -> None:
        """Integers in arrays and objects are exact, the 64-bit extremes too."""
        self.assertEqual(
            self.encoded(
                "{9007199254740993, math.maxinteger, math.mininteger, -0,"
                " 1700000000123456789}"
            ),
            "[9007199254740993,9223372036854775807,-9223372036854775808,0,"
            "1700000000123456789]",
        )
        self.assertEqual(
            self.encoded("{x = math.mininteger, y = 9007199254740993}"),
            '{"x":-9223372036854775808,"y":9007199254740993}',
        )

    def test_floats(self) -> None:
        """Floats keep their value and stay floats, in arrays and objects."""
        self.assertEqual(
            self.encoded(
                "{1.0, -0.0, 0.1, 1e300, 2^63, 2^53, 1e15, 1e21, 1/3, -7.25,"
                " 5e-324, 123456789012345680.0}"
            ),
            "[1.0,-0.0,0.1,1e+300,9.223372036854776e+18,9007199254740992.0,"
            "1e+15,1e+21,0.3333333333333333,-7.25,4.9406564584125e-324,"
            "1.2345678901234568e+17]",
        )
        self.assertEqual(
            self.encoded("{a = 1.0, b = -0.0, c = 2^63, d = 1e15}"),
            '{"a":1.0,"b":-0.0,"c":9.223372036854776e+18,"d":1e+15}',
        )

    def test_nested_empty_tables(self) -> None:
        """Empty objects and arrays keep their kind at every depth."""
        self.assertEqual(
            self.encoded(
                "{a = {}, b = json_array(), c = {{}, json_array(), {json_array()}},"
                " d = json_object()}"
            ),
            '{"a":{},"b":[],"c":[{},[],[[]]],"d":{}}',
        )

    def test_null_marks(self) -> None:
        """C{json_null} and decoded nulls are written as C{null}."""
        self.assertEqual(self.encoded("{json_null, 1, json_null}"), "[null,1,null]")
        self.assertEqual(self.encoded("{a = json_null}"), '{"a":null}')
        self.assertEqual(
            self.encoded('json_decode(\'{"a": null, "b": [null, 2], "c": 3}\')'),
            '{"a":null,"b":[null,2],"c":3}',
        )

    def test_mixed_tables(self) -> None:
        """Tables with keys of several kinds are objects with text keys."""
        cases = {
            "{1, 2, x = 3}": '{"1":1,"2":2,"x":3}',
            "{[true] = 1, a = 2}": '{"a":2,"true":1}',
            "{[1.5] = 'f', b = 1}": '{"1.5":"f","b":1}',
            "{a = 1, [10] = 2, [9] = 3}": '{"10":2,"9":3,"a":1}',
            "{[1] = 1, [3] = 3}": "[1,null,3]",
            "{[20] = 1}": '{"20":1}',
            "{[{}] = 1, a = 2}": "error: json_encode: cannot use a table as an "
            "object key",
        }
        for expression, expected in cases.items():
            with self.subTest(expression=expression):
                self.assertEqual(self.encoded(expression), expected)

    def test_many_and_long_keys(self) -> None:
        """
        Objects with more keys than are remembered, and keys too long to be,
        come out whole and sorted, call after call.
        """
        content = self.emitted(
            "local t = {}\n"
            "for i = 1, 600 do t['key' .. i] = i end\n"
            "t[string.rep('k', 100)] = 'long'\n"
            "local first = json_encode(t)\n"
            "emit('s', first == json_encode(t) and first or 'changed')"
        )
        value = json.loads(content)
        self.assertEqual(len(value), 601)
        self.assertEqual(list(value), sorted(value))
        self.assertEqual(value["key600"], 600)
        self.assertEqual(value["k" * 100], "long")

    def test_key_sets_in_a_row(self) -> None:
        """
        Objects of the same size, with the same keys or not, in any order
        of creation, each come out sorted by their own keys.
        """
        self.assertEqual(
            self.emits(
                "emit('s', json_encode({b = 1, a = 2}))\n"
                "emit('s', json_encode({c = 1, a = 2}))\n"
                "emit('s', json_encode({a = 3, c = 4}))\n"
                "emit('s', json_encode({c = 5, b = 6}))\n"
                "emit('s', json_encode({b = 7, a = 8, c = 9}))"
            ),
            [
                '{"a":2,"b":1}',
                '{"a":2,"c":1}',
                '{"a":3,"c":4}',
                '{"b":6,"c":5}',
                '{"a":8,"b":7,"c":9}',
            ],
        )

    def test_encoding_the_last_text(self) -> None:
        """
        The text C{json_encode} just returned, encoded again as a string, is
        escaped like any other.
        """
        inner = self.emitted(
            "emit('s', json_encode({x = 'a\"b', y = 'c\\n'}))",
        )
        self.assertEqual(inner, '{"x":"a\\"b","y":"c\\n"}')
        self.assertEqual(
            self.emitted(
                "local body = json_encode({x = 'a\"b', y = 'c\\n'})\n"
                "emit('s', json_encode({body = body}))"
            ),
            json.dumps({"body": inner}, separators=(",", ":")),
        )

    def test_encoding_after_an_error(self) -> None:
        """A failed encoding leaves nothing behind for the next one."""
        self.assertEqual(
            self.emits(
                "emit('s', select(2, json_encode({1, {2, 0/0}, 3})))\n"
                "emit('s', json_encode({1, 2}))"
            ),
            ["json_encode: cannot encode NaN or infinity", "[1,2]"],
        )

    def test_encoding_within_encoding(self) -> None:
        """A metamethod that calls C{json_encode} gets its own text."""
        self.assertEqual(
            self.encoded(
                "setmetatable({1, nil, 3}, {__index = function(_, k)"
                " return json_encode({k, 'x'}) end})"
            ),
            '[1,"[2,\\"x\\"]",3]',
        )

    def test_emit_encoded_text(self) -> None:
        """Emitting the text C{json_encode} returned emits it unchanged."""
        self.assertEqual(
            self.emitted("emit('s', json_encode({a = 'é\\n'}))"),
            '{"a":"é\\n"}',
        )


class FastDecoderTests(ScriptTestCase):
    """C{json_decode} repairs invalid UTF-8 only when there is some."""

    def test_invalid_utf8_in_keys_and_values(self) -> None:
        """Invalid bytes anywhere in the text become U+FFFD."""
        self.assertEqual(
            self.emitted(
                'local t = json_decode(\'{"k\\255": ["\\237\\160\\128"]}\')\n'
                "emit('s', json_encode(t))"
            ),
            '{"k\ufffd":["\ufffd\ufffd\ufffd"]}',
        )

    def test_valid_text_after_invalid(self) -> None:
        """Decoding valid text after invalid text is not affected by it."""
        self.assertEqual(
            self.emits(
                "emit('s', json_decode('\"a\\255\"'))\n"
                "emit('s', json_decode('\"b\\195\\169\"'))"
            ),
            [f"a{REPLACEMENT}", "bé"],
        )


class LuaJITFastEncoderTests(FastEncoderTests):
    """The fast paths on LuaJIT, where numbers are doubles."""

    engine = "luajit"
    skip = LUAJIT_MISSING

    def test_integers_inline(self) -> None:
        """Integral numbers are written without a point, exact up to 2^53."""
        self.assertEqual(
            self.encoded("{9007199254740992, -42, 0, 1700000000, 2^63}"),
            "[9007199254740992,-42,0,1700000000,9223372036854775808]",
        )

    def test_floats(self) -> None:
        """Floats keep their value; integral ones lose their point."""
        self.assertEqual(
            self.encoded(
                "{1.0, -0.0, 0.1, 1e300, 2^53, 1e15, 1e21, 1/3, -7.25, 5e-324,"
                " 123456789012345680.0}"
            ),
            "[1,-0,0.1,1e+300,9007199254740992,1000000000000000,1e+21,"
            "0.3333333333333333,-7.25,4.9406564584125e-324,123456789012345680]",
        )
        self.assertEqual(
            self.encoded("{a = 1.0, b = -0.0, c = 2^63, d = 1e15}"),
            '{"a":1,"b":-0,"c":9223372036854775808,"d":1000000000000000}',
        )


class LuaJITFastDecoderTests(FastDecoderTests):
    """C{json_decode}'s repair on LuaJIT."""

    engine = "luajit"
    skip = LUAJIT_MISSING
