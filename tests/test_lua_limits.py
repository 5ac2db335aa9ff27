"""
Tests for the limits of a script's runtime: the instruction budget of each
call and the memory cap of the runtime.  Exceeding either fails that call
only; the next one runs as if nothing happened.
"""

from __future__ import annotations

import time

from twisted.trial.unittest import SynchronousTestCase

from replayforge.lua import LuaScript, ScriptError, ScriptFailure
from tests.lua_support import LUAJIT_MISSING, ScriptTestCase

RUNAWAYS = {
    "plain loop": "while true do end",
    "loop in pcall": "while true do pcall(function() while true do end end) end",
    "pcall around loop": "pcall(function() while true do end end) emit('s', 'escaped')",
    "xpcall handler": (
        "xpcall(function() local x = nil; return x.y end,\n"
        "  function() while true do end end)\n"
        "emit('s', 'escaped')"
    ),
    "xpcall after budget": (
        "xpcall(function() while true do end end,\n"
        "  function(message) while true do end end)\n"
        "emit('s', 'escaped')"
    ),
    "coroutine": (
        "local thread = coroutine.create(function() while true do end end)\n"
        "coroutine.resume(thread) emit('s', 'escaped')"
    ),
    "coroutine.wrap in pcall": (
        "pcall(coroutine.wrap(function() while true do end end))\nemit('s', 'escaped')"
    ),
    "many short coroutines": (
        "while true do coroutine.wrap(function() for i = 1, 500 do end end)() end"
    ),
    "gsub callback": (
        "string.gsub(string.rep('a', 10), '.', function() while true do end end)"
    ),
    "gsub callbacks in pcall": (
        "pcall(string.gsub, string.rep('a', 1e6), '.', function()\n"
        "  for i = 1, 100 do end end) emit('s', 'escaped')"
    ),
    "sort comparator": ("table.sort({3, 2, 1}, function(a, b) while true do end end)"),
    "recursion in pcall": ("local function f() pcall(f) while true do end end f()"),
    "encoding in a loop": "while true do json_encode({a = 1, b = {2, 'c'}}) end",
    "encoding in a coroutine": (
        "coroutine.wrap(function() while true do json_encode({1}) end end)()"
    ),
    "metamethod of an encoded table": (
        "json_encode(setmetatable({1, nil, 3},\n"
        "  {__index = function() while true do end end}))"
    ),
}


class BudgetTests(ScriptTestCase):
    """A call that runs too long is stopped, however it hides its loop."""

    def assertStopped(self, body: str, script: LuaScript) -> ScriptFailure:
        """Running C{body} fails within a second, on the budget."""
        # The one wall-time bound of the suite: stopping a runaway loop
        # within a second is the requirement itself.  A starved machine
        # could fail it.
        started = time.monotonic()
        with self.assertRaises(ScriptFailure, msg=body) as caught:
            script.process(body)
        self.assertLess(time.monotonic() - started, 1.0, body)
        return caught.exception

    def test_runaway_loops_stopped(self) -> None:
        """
        A loop that never ends is stopped by the budget, within a second,
        also inside C{pcall}, C{xpcall} handlers, coroutines and callbacks
        of C functions; the script cannot catch it and go on.
        """
        script = self.evaluator()
        for name, body in RUNAWAYS.items():
            failure = self.assertStopped(body, script)
            self.assertIn("instruction budget exceeded", str(failure), name)
            self.assertEqual(self.emits("emit('s', 'next')", script), ["next"], name)

    def test_names_script_line(self) -> None:
        """The failure names the script and the line that was running."""
        script = self.load(
            "function Process(content, emit)\n  local n = 0\n  while true do\n"
            "    n = n + 1\n  end\nend\n"
        )
        with self.assertRaises(ScriptFailure) as caught:
            script.process("x")
        self.assertIn(caught.exception.line, (3, 4))
        self.assertRegex(
            str(caught.exception),
            r"script\.lua:[34]: instruction budget exceeded$",
        )

    def test_budget_configurable(self) -> None:
        """
        C{luaInstructionBudget} sets the budget: a loop allowed by the
        default fails under a smaller one.
        """
        body = "for i = 1, 200000 do end emit('s', 'done')"
        self.assertEqual(self.emits(body), ["done"])
        small = self.evaluator(instruction_budget=100_000)
        self.assertRaises(ScriptFailure, small.process, body)

    def test_budget_per_call(self) -> None:
        """Each call has the whole budget: many calls below it all succeed."""
        script = self.evaluator(instruction_budget=100_000)
        for _ in range(50):
            self.assertEqual(
                self.emits("for i = 1, 30000 do end emit('s', 'ok')", script), ["ok"]
            )

    def test_encoding_charged(self) -> None:
        """
        What C{json_encode} writes counts against the budget, though its
        code runs without the hook on Lua 5.4: a table too large for the
        budget fails the call.
        """
        body = (
            "local t = {}\n"
            "for i = 1, 10000 do t[i] = i end\n"
            "local text = json_encode(t)\n"
            "emit('s', #text)"
        )
        self.assertEqual(self.emits(body), ["48895"])
        small = self.evaluator(instruction_budget=100_000)
        with self.assertRaises(ScriptFailure) as caught:
            small.process(body)
        self.assertIn("instruction budget exceeded", str(caught.exception))

    def test_decoding_and_matching_charged(self) -> None:
        """
        C{json_decode} and C{grok_parse} run in Python, out of the hook's
        sight: each is charged for the text it reads, so a loop over them
        meets the budget after a few calls, not after millions.
        """
        for call in [
            "json_decode(text)",
            "grok_parse('%{NUMBER:n}', text)",
        ]:
            body = (
                "local text = '\"' .. string.rep('a', 40000) .. '\"'\n"
                f"for i = 1, 100 do {call} end\n"
                "emit('s', 'done')"
            )
            self.assertEqual(self.emits(body), ["done"], call)
            small = self.evaluator(instruction_budget=1_000_000)
            with self.assertRaises(ScriptFailure, msg=call) as caught:
                small.process(body)
            self.assertIn("instruction budget exceeded", str(caught.exception))

    def test_key_comparison_never_runs(self) -> None:
        """
        A table used as an object key is refused before any of its
        metamethods can run unbounded.
        """
        self.assertEqual(
            self.emitted(
                "local key = setmetatable({},\n"
                "  {__lt = function() while true do end end})\n"
                "emit('s', select(2, json_encode({a = 1, b = 2, [key] = 3})))"
            ),
            "json_encode: cannot use a table as an object key",
        )

    def test_timer_and_init_bounded(self) -> None:
        """C{TimerHandler} and C{init} run within the budget too."""
        script = self.load("function TimerHandler(emit) while true do end end\n")
        self.assertRaises(ScriptFailure, script.timer)
        with self.assertRaises(ScriptError) as caught:
            self.load("function init() while true do end end\n")
        self.assertIn("instruction budget exceeded", str(caught.exception))


class MemoryTests(ScriptTestCase):
    """A runtime that needs more memory than its cap fails the call."""

    def memory_bombs(self) -> dict[str, str]:
        """Scripts that allocate without end, by table and by string."""
        return {
            "table of strings": (
                "local t = {} while true do t[#t + 1] = string.rep('x', 1e5) .. #t end"
            ),
            "string.rep": "local s = string.rep('x', 1e9)",
            "doubling string": "local s = 'x' while true do s = s .. s end",
            "many tables": "local t = {} for i = 1, 1e8 do t[i] = {i} end",
            "in pcall": (
                "pcall(function() local s = string.rep('x', 1e9) end)\n"
                "local t = {} for i = 1, 1e8 do t[i] = i end"
            ),
        }

    def test_bomb_then_normal_event(self) -> None:
        """
        A call past the memory cap fails, and the next call of the same
        runtime works.
        """
        script = self.evaluator(max_memory=16 * 1024 * 1024)
        for name, body in self.memory_bombs().items():
            with self.assertRaises(ScriptFailure, msg=name):
                script.process(body)
            self.assertEqual(
                self.emits("emit('s', json_encode({ok = true}))", script),
                ['{"ok":true}'],
                name,
            )

    def test_message(self) -> None:
        """The failure says memory ran out, and what the cap is."""
        script = self.evaluator(max_memory=16 * 1024 * 1024)
        with self.assertRaises(ScriptFailure) as caught:
            script.process("local s = string.rep('x', 1e9)")
        self.assertIn("not enough memory (memory limit 16 MiB)", str(caught.exception))

    def test_hoarding_script_fails_alone(self) -> None:
        """
        A script that keeps its memory in a global fails each call while it
        holds it, with a clear message, and never takes the process down.
        """
        script = self.evaluator(max_memory=16 * 1024 * 1024)
        self.assertRaises(
            ScriptFailure,
            script.process,
            "hoard = {} for i = 1, 1e8 do hoard[i] = string.rep('x', 100) .. i end",
        )
        for _ in range(3):
            with self.assertRaises(ScriptFailure) as caught:
                script.process("-- " + "x" * 8 * 1024 * 1024 + "\nemit('s', 'ok')")
            self.assertIn("not enough memory", str(caught.exception))

    def test_decode_beyond_cap(self) -> None:
        """
        A document that decodes to more than the cap allows makes
        C{json_decode} answer C{nil} and a message; the runtime goes on.
        """
        script = self.load(
            "function Process(content, emit)\n"
            "  local value, message = json_decode(content)\n"
            "  emit('s', message or 'decoded')\n"
            "end\n",
            max_memory=16 * 1024 * 1024,
        )
        document = "[" + ",".join(['{"a": [1, 2], "b": "xx"}'] * 100_000) + "]"
        [(_, message)] = script.process(document)
        self.assertEqual(
            message, "json_decode: not enough memory (memory limit 16 MiB)"
        )
        self.assertEqual(script.process("[1]"), [("s", "decoded")])

    def test_script_beyond_cap(self) -> None:
        """A script file larger than the cap is a start-up error, not a crash."""
        with self.assertRaises(ScriptError) as caught:
            self.load(
                "-- " + "x" * 32 * 1024 * 1024 + "\nfunction Process() end\n",
                max_memory=16 * 1024 * 1024,
            )
        self.assertIn("not enough memory", str(caught.exception))

    def test_content_beyond_cap(self) -> None:
        """An event larger than the whole cap fails alone, without a crash."""
        script = self.evaluator(max_memory=16 * 1024 * 1024)
        self.assertRaises(ScriptFailure, script.process, "-- " + "x" * 32 * 1024 * 1024)
        self.assertEqual(self.emits("emit('s', 'after')", script), ["after"])


class LuaJITBudgetTests(BudgetTests):
    """The budget holds on LuaJIT, whose JIT compiler is off for it."""

    engine = "luajit"
    skip = LUAJIT_MISSING


class LuaJITMemoryTests(MemoryTests):
    """The memory cap holds on LuaJIT 2.1 as lupa builds it."""

    engine = "luajit"
    skip = LUAJIT_MISSING


class LuaJITCompilerTests(SynchronousTestCase):
    """Why LuaJIT runs with its JIT compiler off."""

    skip = LUAJIT_MISSING

    def test_compiled_loop_runs_no_hook(self) -> None:
        """
        A loop LuaJIT compiles never calls the count hook the budget rests
        on; with the compiler off, the hook fires as it should.
        """
        from lupa import luajit21

        fired = {}
        for mode in ("on", "off"):
            runtime = luajit21.LuaRuntime()
            fired[mode] = runtime.execute(
                f"jit.{mode}()\n"
                "local fired = 0\n"
                "debug.sethook(function() fired = fired + 1 end, '', 1000)\n"
                "local x = 0\n"
                "for i = 1, 10000000 do x = x + i end\n"
                "debug.sethook()\n"
                "return fired\n"
            )
        self.assertLess(fired["on"], 100)
        self.assertGreater(fired["off"], 10_000)
