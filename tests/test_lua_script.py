"""
Tests for L{replayforge.lua.LuaScript}: the entry points a script defines,
what C{emit} accepts, how failures read, the logging helpers, and the
runtime keys of a source or sink (L{replayforge.lua.read_lua_settings}).
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from replayforge.config import ConfigError, Section
from replayforge.lua import (
    DEFAULT_INSTRUCTION_BUDGET,
    DEFAULT_MAX_MEMORY,
    LuaScript,
    LuaSettings,
    ScriptError,
    ScriptFailure,
    read_lua_settings,
)
from tests.log_support import capture_log
from tests.lua_support import LUAJIT_MISSING, ScriptTestCase, script_lines


class EntryPointTests(ScriptTestCase):
    """C{init}, C{Process}, C{TimerHandler} and C{TransformBatch}."""

    def test_init_runs_once_before_events(self) -> None:
        """C{init()} runs once, after loading, before the first event."""
        script = self.load(
            "count = 0\n"
            "function init() count = count + 1 end\n"
            "function Process(content, emit) emit('s', tostring(count)) end\n"
        )
        self.assertEqual(script.process("a"), [("s", "1")])
        self.assertEqual(script.process("b"), [("s", "1")])

    def test_process_emits_in_order(self) -> None:
        """C{Process} gets the content; its emits come back in order."""
        script = self.load(
            "function Process(content, emit)\n"
            "  emit('a', content) emit('b', content .. '!') emit('a', 'x')\n"
            "end\n"
        )
        self.assertEqual(script.process("é"), [("a", "é"), ("b", "é!"), ("a", "x")])

    def test_many_emits(self) -> None:
        """Thousands of emits in one call all come back."""
        script = self.load(
            "function Process(content, emit)\n"
            "  for i = 1, 5000 do emit('s', i) end\n"
            "end\n"
        )
        emitted = script.process("x")
        self.assertEqual(len(emitted), 5000)
        self.assertEqual(emitted[-1], ("s", "5000"))

    def test_timer_handler(self) -> None:
        """C{TimerHandler(emit)} runs on its own and emits."""
        script = self.load(
            "ticks = 0\n"
            "function TimerHandler(emit) ticks = ticks + 1 emit('t', ticks) end\n"
        )
        self.assertEqual(script.timer(), [("t", "1")])
        self.assertEqual(script.timer(), [("t", "2")])

    def test_defines(self) -> None:
        """C{defines} tells which global functions the script has."""
        script = self.load("function Process() end\nTimerHandler = 5\n")
        self.assertTrue(script.defines("Process"))
        self.assertFalse(script.defines("TimerHandler"))
        self.assertFalse(script.defines("TransformBatch"))

    def test_require(self) -> None:
        """A script with none of the wanted entry points is refused, in one line."""
        script = self.load("function init() end\n", name="empty.lua")
        with self.assertRaises(ScriptError) as caught:
            script.require("Process", "TimerHandler")
        message = str(caught.exception)
        self.assertTrue(
            message.endswith(
                "empty.lua: defines neither Process(content, emit) "
                "nor TimerHandler(emit)"
            ),
            message,
        )
        with self.assertRaises(ScriptError) as caught:
            script.require("TransformBatch")
        self.assertTrue(
            str(caught.exception).endswith(
                "empty.lua: defines no TransformBatch(messages, request)"
            )
        )
        self.load("function TimerHandler() end\n").require("Process", "TimerHandler")

    def test_missing_process(self) -> None:
        """An event for a script without C{Process} fails, naming what is missing."""
        script = self.load("function TimerHandler(emit) end\n")
        with self.assertRaises(ScriptFailure) as caught:
            script.process("x")
        self.assertIn("defines no Process function", str(caught.exception))

    def test_transform_batch(self) -> None:
        """
        C{TransformBatch} gets the messages and a request with an empty path
        and headers; what it returns comes back.
        """
        script = self.load(
            "function TransformBatch(messages, request)\n"
            "  local out = {}\n"
            "  for i, m in ipairs(messages) do out[i] = m:upper() end\n"
            "  out[#out + 1] = 'path=' .. request.path .. ' headers=' ..\n"
            "    tostring(next(request.headers))\n"
            "  request.path = '/api/v2/logs'\n"
            "  request.headers['DD-API-KEY'] = 'k'\n"
            "  request.headers['X-Count'] = #messages\n"
            "  return out, request\n"
            "end\n"
        )
        result = script.transform_batch(["a", "b"])
        self.assertEqual(result.messages, ["A", "B", "path= headers=nil"])
        self.assertEqual(result.path, "/api/v2/logs")
        self.assertEqual(
            sorted(result.headers), [("DD-API-KEY", "k"), ("X-Count", "2")]
        )
        self.assertEqual(result.skipped, 0)

    def test_transform_batch_messages_only(self) -> None:
        """Without a returned request, the path and headers stay as they were."""
        script = self.load("function TransformBatch(m) return m end\n")
        result = script.transform_batch(["a"])
        self.assertEqual(
            (result.messages, result.path, result.headers), (["a"], "", [])
        )

    def test_transform_batch_as_go_gathered(self) -> None:
        """
        As in Go, numbers become text, other values and holes are left out
        (and counted), and a request that is not a table is ignored.
        """
        script = self.load(
            "function TransformBatch(messages, request)\n"
            "  return {'a', 2, {}, [5] = 'e', x = 'y'}, 'not a table'\n"
            "end\n"
        )
        result = script.transform_batch(["m"])
        self.assertEqual(result.messages, ["a", "2", "e"])
        self.assertEqual(result.skipped, 2)

    def test_transform_batch_failures(self) -> None:
        """
        A failing C{TransformBatch}, one returning no table, or one asking
        for a header or path that cannot be sent, fails the call.
        """
        for body in (
            "error('no')",
            "return nil",
            "request.headers['Bad\\nName'] = 'x' return messages, request",
            "request.headers['X'] = 'a\\r\\nInjected: 1' return messages, request",
            "request.path = '/a b' return messages, request",
        ):
            script = self.load(
                "function TransformBatch(messages, request)\n" + body + "\nend\n"
            )
            self.assertRaises(ScriptFailure, script.transform_batch, ["a"])

    def test_invalid_header_value_not_told(self) -> None:
        """The failure names a bad header, never its value, which may be a secret."""
        script = self.load(
            "function TransformBatch(messages, request)\n"
            "  request.headers['DD-API-KEY'] = 'secret\\n' return messages, request\n"
            "end\n"
        )
        with self.assertRaises(ScriptFailure) as caught:
            script.transform_batch(["a"])
        self.assertIn("DD-API-KEY", str(caught.exception))
        self.assertNotIn("secret", str(caught.exception))


class EmitTests(ScriptTestCase):
    """What C{emit(sink, content)} accepts."""

    def test_numbers(self) -> None:
        """A number as sink or content is turned into text."""
        self.assertEqual(self.evaluator().process("emit(1, 2.5)"), [("1", "2.5")])

    def test_last_two_arguments(self) -> None:
        """As in Go, C{emit} reads its last two arguments."""
        self.assertEqual(
            self.evaluator().process("emit('ignored', 'sink', 'content')"),
            [("sink", "content")],
        )

    def test_table_refused(self) -> None:
        """A table as content fails the call instead of sending nothing."""
        with self.assertRaises(ScriptFailure) as caught:
            self.evaluator().process("emit('s', {})")
        self.assertIn(
            "emit: content must be a string, got table", str(caught.exception)
        )

    def test_too_few_arguments(self) -> None:
        """C{emit} with one argument fails the call."""
        self.assertRaises(ScriptFailure, self.evaluator().process, "emit('s')")

    def test_invalid_utf8(self) -> None:
        """Bytes that are not UTF-8 reach the sink as U+FFFD, never an error."""
        self.assertEqual(
            self.evaluator().process("emit('s\\255', 'a\\192b\\255')"),
            [("s\ufffd", "a\ufffdb\ufffd")],
        )

    def test_failure_discards_emits(self) -> None:
        """What a failing call emitted before failing is not returned."""
        script = self.evaluator()
        self.assertRaises(
            ScriptFailure, script.process, "emit('s', 'lost') error('then fail')"
        )
        self.assertEqual(script.process("emit('s', 'next')"), [("s", "next")])


class FailureTests(ScriptTestCase):
    """How a failed call reads: script, line, message."""

    nil_index_message = r"route\.lua:3: attempt to index a nil value \(local 'call'\)$"

    def test_runtime_error_line(self) -> None:
        """A runtime error names the script and its line."""
        script = self.load(
            "function Process(content, emit)\n"
            "  local call = nil\n"
            "  return call.path\n"
            "end\n",
            name="route.lua",
        )
        with self.assertRaises(ScriptFailure) as caught:
            script.process("x")
        self.assertEqual(caught.exception.line, 3)
        self.assertRegex(str(caught.exception), self.nil_index_message)

    def test_error_without_position(self) -> None:
        """An error raised without a position gets the line that raised it."""
        script = self.load(
            "function Process(content, emit)\n\n  error('plain', 0)\nend\n",
            name="route.lua",
        )
        with self.assertRaises(ScriptFailure) as caught:
            script.process("x")
        self.assertEqual(caught.exception.line, 3)
        self.assertTrue(str(caught.exception).endswith("route.lua:3: plain"))

    def test_error_with_table(self) -> None:
        """An error object that is not text still reads as a message."""
        script = self.load(
            "function Process(content, emit) error({code = 1}) end\n", name="t.lua"
        )
        with self.assertRaises(ScriptFailure) as caught:
            script.process("x")
        self.assertTrue(
            str(caught.exception).endswith("t.lua:1: (error object is a table value)")
        )

    def test_error_in_nested_function(self) -> None:
        """A failure in a helper function of the script names the helper's line."""
        script = self.load(
            "local function parse(s)\n"
            "  return s.x.y\n"
            "end\n"
            "function Process(content, emit) parse({}) end\n"
        )
        with self.assertRaises(ScriptFailure) as caught:
            script.process("x")
        self.assertEqual(caught.exception.line, 2)

    def test_player_error_raises(self) -> None:
        """For the player, C{error} is Lua's own and fails the call."""
        script = self.load("function Process(c, emit) error('boom') end\n")
        with self.assertRaises(ScriptFailure) as caught:
            script.process("x")
        self.assertIn("boom", str(caught.exception))

    def test_syntax_error(self) -> None:
        """A script that does not compile is a start-up error naming the line."""
        with self.assertRaises(ScriptError) as caught:
            self.load("function Process(\n", name="bad.lua")
        message = str(caught.exception)
        self.assertTrue(message.startswith("syntax error in "), message)
        self.assertIn("bad.lua:2:", message)

    def test_init_failure(self) -> None:
        """An C{init} that fails is a start-up error."""
        with self.assertRaises(ScriptError) as caught:
            self.load("function init() error('no config') end\n", name="i.lua")
        self.assertIn("start-up failed:", str(caught.exception))
        self.assertIn("i.lua:1: no config", str(caught.exception))

    def test_unreadable(self) -> None:
        """A script that cannot be read is a start-up error naming it."""
        with self.assertRaises(ScriptError) as caught:
            LuaScript(self.folder() / "missing.lua", "source:x")
        self.assertIn("missing.lua: cannot read the script", str(caught.exception))


class LoggingTests(ScriptTestCase):
    """C{trace}, C{debug}, C{info}, C{warn}, C{error} and C{print}."""

    def test_levels_and_tag(self) -> None:
        """Each helper logs at its level, tagged with the source or sink."""
        events = capture_log(self)
        script = self.load(
            "function Process(content, emit)\n"
            "  trace('t') debug('d') info('i', 2) warn('w') error('e')\n"
            "  print('p', nil, true)\n"
            "end\n",
            error_logs=True,
            tag="source:web",
        )
        self.assertEqual(script.process("x"), [])
        self.assertEqual(
            script_lines(events),
            [
                ("debug", "[source:web] t"),
                ("debug", "[source:web] d"),
                ("info", "[source:web] i 2"),
                ("warn", "[source:web] w"),
                ("error", "[source:web] e"),
                ("debug", "[source:web] p\tnil\ttrue"),
            ],
        )

    def test_invalid_utf8_logged(self) -> None:
        """A log message with bytes that are not UTF-8 is logged, repaired."""
        events = capture_log(self)
        self.evaluator().process("info('a\\255')")
        self.assertEqual(script_lines(events), [("info", "[source:test] a\ufffd")])


class LuaJITScriptTests(EntryPointTests):
    """The entry points on LuaJIT."""

    engine = "luajit"
    skip = LUAJIT_MISSING


class LuaJITFailureTests(FailureTests):
    """Failures read the same on LuaJIT."""

    engine = "luajit"
    skip = LUAJIT_MISSING
    # LuaJIT's wording.
    nil_index_message = r"route\.lua:3: attempt to index"


class SettingsTests(SynchronousTestCase):
    """The runtime keys of a source or sink."""

    def read(self, raw: dict[str, object], **kwargs: frozenset[str]) -> LuaSettings:
        """Read the settings of a source section holding C{raw}."""
        return read_lua_settings(
            Section(raw, "proxy.yaml", "sources[0]", Path(".")), **kwargs
        )

    def test_defaults(self) -> None:
        """Lua 5.4, the sandbox, 10M instructions and 64 MiB by default."""
        self.assertEqual(
            self.read({}),
            LuaSettings("lua54", False, DEFAULT_INSTRUCTION_BUDGET, DEFAULT_MAX_MEMORY),
        )

    def test_keys(self) -> None:
        """C{luaEngine}, C{unsafeLua}, C{luaInstructionBudget}, C{luaMaxMemoryMb}."""
        self.assertEqual(
            self.read(
                {
                    "luaEngine": "luajit",
                    "unsafeLua": True,
                    "luaInstructionBudget": 500_000,
                    "luaMaxMemoryMb": 8,
                },
                engines=frozenset({"lua54", "luajit"}),
            ),
            LuaSettings("luajit", True, 500_000, 8 * 1024 * 1024),
        )

    def test_unknown_engine(self) -> None:
        """An engine we do not know is a config error naming the key."""
        with self.assertRaises(ConfigError) as caught:
            self.read({"luaEngine": "lua51"})
        self.assertEqual(caught.exception.key_path, "sources[0].luaEngine")
        self.assertIn("expected one of lua54, luajit", str(caught.exception))

    def test_luajit_missing(self) -> None:
        """
        C{luaEngine: luajit} where lupa has no LuaJIT module is a config error
        that says so.
        """
        with self.assertRaises(ConfigError) as caught:
            self.read({"luaEngine": "luajit"}, engines=frozenset({"lua54"}))
        self.assertEqual(caught.exception.key_path, "sources[0].luaEngine")
        self.assertIn(
            "luajit is not available here: lupa has no lupa.luajit21 module",
            str(caught.exception),
        )

    def test_budget_minimum(self) -> None:
        """A budget too small to run anything is refused."""
        with self.assertRaises(ConfigError) as caught:
            self.read({"luaInstructionBudget": 10})
        self.assertEqual(caught.exception.key_path, "sources[0].luaInstructionBudget")
