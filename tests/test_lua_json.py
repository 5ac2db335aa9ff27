"""
Tests for C{json_encode} and C{json_decode} as scripts see them
(L{replayforge.lua_json}).
"""

from __future__ import annotations

import json
from typing import Any

from replayforge.lua import LuaScript
from tests.lua_support import LUAJIT_MISSING, ScriptTestCase

ROUND_TRIP = """
function Process(content, emit)
  local value, message = json_decode(content)
  if message then
    emit("error", message)
    return
  end
  local text, problem = json_encode(value)
  emit("json", text or ("error: " .. problem))
end
"""


def typed(value: Any) -> Any:
    """C{value} with the type of every number kept, for exact comparisons."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (type(value).__name__, value)
    return value


class JSONTestCase(ScriptTestCase):
    """Run JSON texts through a decode-then-encode script."""

    def setUp(self) -> None:
        self.round_trip_script: LuaScript | None = None

    def round_trip(self, text: str) -> str:
        """Decode C{text} in Lua and encode the result again."""
        if self.round_trip_script is None:
            self.round_trip_script = self.load(ROUND_TRIP)
        [(sink, content)] = self.round_trip_script.process(text)
        self.assertEqual(sink, "json", content)
        return content

    def assertRoundTrip(self, text: str) -> None:
        """C{text} comes back as the same JSON, every number of its type."""
        self.assertEqual(
            typed(json.loads(self.round_trip(text))), typed(json.loads(text))
        )


class RoundTripTests(JSONTestCase):
    """What C{json_encode(json_decode(text))} keeps, on Lua 5.4."""

    def test_integers_stay_integers(self) -> None:
        """
        Integers come back as integers, exactly: above 2^53, nanosecond
        timestamps, the 64-bit extremes.
        """
        text = (
            '{"big":9007199254740993,"max":9223372036854775807,'
            '"min":-9223372036854775808,"ns":1700000000123456789,"zero":0}'
        )
        self.assertEqual(self.round_trip(text), text)

    def test_integers_are_lua_integers(self) -> None:
        """A decoded JSON integer is a Lua integer, a decimal a float."""
        self.assertEqual(
            self.emitted(
                'local t = json_decode(\'{"i": 3, "f": 3.0}\')\n'
                'emit("s", math.type(t.i) .. " " .. math.type(t.f))'
            ),
            "integer float",
        )

    def test_floats_stay_floats(self) -> None:
        """C{1.0} stays a float, and floats keep their value."""
        self.assertRoundTrip("[1.0, 0.1, -0.0, 1e+20, 1.5e-07, 3.141592653589793]")
        self.assertEqual(self.round_trip("[1.0,2.5]"), "[1.0,2.5]")

    def test_shortest_float_text(self) -> None:
        """Floats are written in the shortest text that reads back the same."""
        self.assertEqual(
            self.round_trip("[0.1,0.30000000000000004]"), "[0.1,0.30000000000000004]"
        )

    def test_huge_integer_becomes_float(self) -> None:
        """A JSON integer beyond 64 bits decodes to the nearest float."""
        self.assertEqual(
            json.loads(self.round_trip("[123456789012345678901234]")),
            [1.2345678901234568e23],
        )

    def test_empty_object_and_array_keep_their_kind(self) -> None:
        """C{{}} stays an object and C{[]} an array, at any depth."""
        text = '{"a":{},"b":[],"c":[[],{},[[]]],"d":{"e":[]}}'
        self.assertEqual(self.round_trip(text), text)
        self.assertEqual(self.round_trip("[]"), "[]")
        self.assertEqual(self.round_trip("{}"), "{}")
        self.assertEqual(self.round_trip('{"a":[ \n ]}'), '{"a":[]}')

    def test_emptied_array_stays_array(self) -> None:
        """A decoded array the script empties still encodes as C{[]}."""
        self.assertEqual(
            self.emitted(
                'local t = json_decode(\'{"tags": ["a", "b"]}\')\n'
                "table.remove(t.tags) table.remove(t.tags)\n"
                "emit('s', json_encode(t))"
            ),
            '{"tags":[]}',
        )

    def test_unicode_intact(self) -> None:
        """Non-ASCII text and escapes come back as the same characters."""
        text = '{"s":"h\\u00e9llo \\u2603 \\ud83d\\ude00 日本"}'
        self.assertEqual(json.loads(self.round_trip(text)), {"s": "héllo ☃ 😀 日本"})
        self.assertIn("é", self.round_trip(text))

    def test_control_characters_escaped(self) -> None:
        """Quotes, backslashes and control characters are escaped."""
        text = json.dumps({'a"b\\': "line\nbreak\ttab\x00nul\x7fdel\x1f"})
        self.assertRoundTrip(text)

    def test_keys_sorted(self) -> None:
        """Object keys are written in sorted order, as Go wrote them."""
        self.assertEqual(self.round_trip('{"b":1,"a":2,"c":3}'), '{"a":2,"b":1,"c":3}')

    def test_nested_tables(self) -> None:
        """Objects and arrays nested 100 deep come back whole."""
        text = '{"a":' * 100 + "[1,2]" + "}" * 100
        self.assertEqual(self.round_trip(text), text)

    def test_huge_string(self) -> None:
        """A string of 8 MiB with characters to escape comes back whole."""
        value = ("x" * 1000 + '"\n') * 8 * 1024
        text = json.dumps({"s": value})
        self.assertEqual(json.loads(self.round_trip(text)), {"s": value})

    def test_call_object(self) -> None:
        """A captured call object survives unchanged."""
        call = {
            "body": '{"id": 1}',
            "headers": {"Content-Type": ["application/json"], "X-Empty": []},
            "ip": "10.0.0.1",
            "method": "POST",
            "params": {},
            "path": "/hook",
        }
        text = json.dumps(call, sort_keys=True, separators=(",", ":"))
        self.assertEqual(self.round_trip(text), text)


class NullTests(JSONTestCase):
    """A JSON C{null}: C{nil} to scripts, C{null} again when encoded."""

    def test_null_member_reads_as_nil(self) -> None:
        """A member that is null reads as C{nil}, and C{pairs} skips it."""
        self.assertEqual(
            self.emitted(
                'local t = json_decode(\'{"a": null, "b": 1}\')\n'
                "local keys = {}\n"
                "for key in pairs(t) do keys[#keys + 1] = key end\n"
                "emit('s', tostring(t.a) .. ' ' .. table.concat(keys, ','))"
            ),
            "nil b",
        )

    def test_null_member_encodes_as_null(self) -> None:
        """A null member the script left alone is written back as C{null}."""
        text = '{"a":null,"b":{"c":null,"d":[null]}}'
        self.assertEqual(self.round_trip(text), text)

    def test_null_member_set_by_script(self) -> None:
        """A null member the script set encodes with its new value."""
        self.assertEqual(
            self.emitted(
                "local t = json_decode('{\"a\": null}')\n"
                "t.a = 5\n"
                "emit('s', json_encode(t))"
            ),
            '{"a":5}',
        )

    def test_nulls_in_arrays(self) -> None:
        """Null elements keep their places, trailing ones too."""
        for text in ("[1,null,3]", "[null]", "[1,null]", "[null,null,{}]"):
            self.assertEqual(self.round_trip(text), text)

    def test_null_element_reads_as_nil(self) -> None:
        """A null element reads as C{nil}."""
        self.assertEqual(
            self.emitted("emit('s', tostring(json_decode('[1, null, 3]')[2]))"),
            "nil",
        )

    def test_top_level_null(self) -> None:
        """A top-level C{null} decodes to C{nil}, without a message."""
        self.assertEqual(
            self.emitted(
                "local value, message = json_decode('null')\n"
                "emit('s', tostring(value) .. ' ' .. tostring(message))"
            ),
            "nil nil",
        )
        self.assertEqual(self.round_trip("null"), "null")

    def test_json_null_value(self) -> None:
        """C{json_null} stored in a table encodes as C{null}."""
        self.assertEqual(
            self.emitted("emit('s', json_encode({a = json_null, b = {json_null}}))"),
            '{"a":null,"b":[null]}',
        )

    def test_json_null_cannot_change(self) -> None:
        """C{json_null} is shared: a script cannot store into it."""
        self.assertEqual(
            self.emitted(
                "local ok = pcall(function() json_null.x = 1 end)\n"
                "emit('s', tostring(ok) .. ' ' .. tostring(json_null))"
            ),
            "false null",
        )


class EncodeTests(JSONTestCase):
    """How C{json_encode} writes tables the script built."""

    def test_sequence_is_array(self) -> None:
        """A table with keys 1..n is an array."""
        self.assertEqual(
            self.emitted("emit('s', json_encode({1, 'a', true}))"), '[1,"a",true]'
        )

    def test_empty_table_is_object(self) -> None:
        """An empty table the script built is an object (Go wrote C{[]})."""
        self.assertEqual(self.emitted("emit('s', json_encode({}))"), "{}")

    def test_json_array_and_object(self) -> None:
        """C{json_array} and C{json_object} choose the kind of a table."""
        self.assertEqual(
            self.emits(
                "emit('s', json_encode(json_array()))\n"
                "emit('s', json_encode(json_array({})))\n"
                "emit('s', json_encode({list = json_array({1, 2})}))\n"
                "emit('s', json_encode(json_object()))\n"
                "emit('s', json_encode(json_object({'a', 'b'})))"
            ),
            ["[]", "[]", '{"list":[1,2]}', "{}", '{"1":"a","2":"b"}'],
        )

    def test_own_metatable_jsontype(self) -> None:
        """A metatable of the script's own with C{__jsontype} is honoured."""
        self.assertEqual(
            self.emitted(
                "emit('s', json_encode(setmetatable({}, {__jsontype = 'array'})))"
            ),
            "[]",
        )

    def test_json_array_refuses_foreign_metatable(self) -> None:
        """C{json_array} does not replace a metatable of the script's own."""
        [content] = self.emits(
            "local ok, message = pcall(json_array, setmetatable({}, {}))\n"
            "emit('s', tostring(ok) .. ' ' .. message)"
        )
        self.assertTrue(content.startswith("false "), content)
        self.assertIn("metatable of its own", content)

    def test_hole_becomes_null(self) -> None:
        """A few holes in a sequence are written as C{null}."""
        self.assertEqual(
            self.emitted("emit('s', json_encode({1, nil, 3, [5] = 5}))"),
            "[1,null,3,null,5]",
        )

    def test_sparse_array_becomes_object(self) -> None:
        """
        A table that would be mostly holes is an object with string keys,
        so a lone high index does not blow up into a huge array.
        """
        self.assertEqual(
            self.emits(
                "emit('s', json_encode({[1] = 'a', [20] = 'b'}))\n"
                "emit('s', json_encode({[1000000] = 1}))"
            ),
            ['{"1":"a","20":"b"}', '{"1000000":1}'],
        )

    def test_mixed_keys_make_object(self) -> None:
        """Integer and string keys together make an object."""
        self.assertEqual(
            self.emitted("emit('s', json_encode({10, 20, x = 'y', [2.5] = 'z'}))"),
            '{"1":10,"2":20,"2.5":"z","x":"y"}',
        )

    def test_nan_and_infinities_refused(self) -> None:
        """NaN and infinities have no JSON form: C{nil} and a message."""
        results = self.emits(
            "for _, value in ipairs({0/0, math.huge, -math.huge}) do\n"
            "  local text, message = json_encode({x = {value}})\n"
            "  emit('s', tostring(text) .. ': ' .. message)\n"
            "end"
        )
        self.assertEqual(len(results), 3)
        for result in results:
            self.assertEqual(result, "nil: json_encode: cannot encode NaN or infinity")

    def test_cycle_refused(self) -> None:
        """A table that contains itself: C{nil} and a message."""
        [content] = self.emits(
            "local t = {} t.self = t\n"
            "local text, message = json_encode(t)\n"
            "emit('s', tostring(text) .. ': ' .. message)"
        )
        self.assertEqual(
            content, "nil: json_encode: tables nested too deeply (or a cycle)"
        )

    def test_functions_encode_as_null(self) -> None:
        """Functions and other values without a JSON form are C{null}, as in Go."""
        self.assertEqual(
            self.emitted("emit('s', json_encode({f = print, n = 1}))"),
            '{"f":null,"n":1}',
        )

    def test_scalars(self) -> None:
        """Strings, numbers, booleans and nil encode on their own."""
        self.assertEqual(
            self.emits(
                "emit('s', json_encode('a'))\n"
                "emit('s', json_encode(42))\n"
                "emit('s', json_encode(false))\n"
                "emit('s', json_encode(nil))"
            ),
            ['"a"', "42", "false", "null"],
        )

    def test_invalid_utf8_replaced(self) -> None:
        """Bytes that are not UTF-8 are written as U+FFFD, not an error."""
        content = self.emitted(
            "emit('s', json_encode({['k\\255'] = 'a\\192b\\237\\160\\128'}))"
        )
        value = json.loads(content)
        self.assertEqual(list(value), ["k\ufffd"])
        self.assertTrue(value["k\ufffd"].startswith("a\ufffdb\ufffd"))


class DecodeTests(JSONTestCase):
    """What C{json_decode} answers."""

    def test_errors_return_nil_and_message(self) -> None:
        """Invalid JSON: C{nil} and a message naming the problem."""
        for text in ("{bad", "", "[1,]", "[1] x", "NaN", "-Infinity", "{'a': 1}"):
            [(sink, content)] = self.load(ROUND_TRIP).process(text)
            self.assertEqual(sink, "error", text)
            self.assertTrue(content.startswith("json_decode: invalid JSON"), content)

    def test_not_a_string(self) -> None:
        """A table instead of text: C{nil} and a message."""
        self.assertEqual(
            self.emitted(
                "local value, message = json_decode({})\n"
                "emit('s', tostring(value) .. ': ' .. message)"
            ),
            "nil: json_decode: expected a string, got table",
        )

    def test_last_argument(self) -> None:
        """As in Go, C{json_decode} reads its last argument."""
        self.assertEqual(
            self.emitted("emit('s', json_decode('ignored', '{\"a\": 7}').a)"), "7"
        )

    def test_invalid_utf8_input(self) -> None:
        """Text with bytes that are not UTF-8 decodes with U+FFFD in their place."""
        self.assertEqual(
            self.emitted("emit('s', json_decode('[\"a\\255b\"]')[1])"), "a\ufffdb"
        )

    def test_lone_surrogate(self) -> None:
        """An escaped lone surrogate decodes to U+FFFD, not an error."""
        content = self.emitted("emit('s', json_decode('{\"s\": \"x\\\\ud800y\"}').s)")
        self.assertTrue(content.startswith("x\ufffd"), content)
        self.assertTrue(content.endswith("y"), content)

    def test_deep_nesting(self) -> None:
        """Nesting too deep for the parser is an error, not a crash."""
        [(sink, content)] = self.load(ROUND_TRIP).process("[" * 100_000 + "]" * 100_000)
        self.assertEqual(sink, "error")
        self.assertIn("invalid JSON", content)


class LuaJITJSONTests(JSONTestCase):
    """What holds and what does not on LuaJIT, where numbers are doubles."""

    engine = "luajit"
    skip = LUAJIT_MISSING

    def test_integers_up_to_2_53(self) -> None:
        """Integers up to 2^53 stay exact."""
        text = '{"a":9007199254740992,"b":-42,"c":1700000000}'
        self.assertEqual(self.round_trip(text), text)

    def test_large_integers_lose_precision(self) -> None:
        """Beyond 2^53 integers are rounded: a nanosecond timestamp is not exact."""
        self.assertEqual(
            self.round_trip("[1700000000123456789,9007199254740993]"),
            "[1700000000123456768,9007199254740992]",
        )

    def test_integral_float_loses_point(self) -> None:
        """C{1.0} is written C{1}, as Go wrote it; other floats keep their value."""
        self.assertEqual(self.round_trip("[1.0,0.1,2.5]"), "[1,0.1,2.5]")

    def test_kinds_and_nulls_kept(self) -> None:
        """Empty arrays, empty objects and nulls survive as on Lua 5.4."""
        text = '{"a":{},"b":[],"c":[1,null],"d":null,"u":"\u00e9\u2603"}'
        self.assertEqual(self.round_trip(text), text)

    def test_nan_refused(self) -> None:
        """NaN cannot be encoded: C{nil} and a message."""
        self.assertEqual(
            self.emitted(
                "local text, message = json_encode(0/0)\n"
                "emit('s', tostring(text) .. ': ' .. message)"
            ),
            "nil: json_encode: cannot encode NaN or infinity",
        )

    def test_invalid_utf8_replaced(self) -> None:
        """Without a utf8 library, invalid bytes are still replaced."""
        content = self.emitted("emit('s', json_encode('a\\255b\\224\\128'))")
        self.assertEqual(json.loads(content), "a\ufffdb\ufffd\ufffd")
