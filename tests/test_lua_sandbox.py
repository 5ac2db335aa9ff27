"""
Tests for the sandbox scripts run in (L{replayforge.lua_sandbox}): what a
script can reach, and the escapes it cannot take.
"""

from __future__ import annotations

import os

from replayforge.lua import ScriptFailure
from tests.lua_support import LUAJIT_MISSING, ScriptTestCase


class SandboxTests(ScriptTestCase):
    """What the default sandbox holds and withholds, on Lua 5.4."""

    def test_allowed_library(self) -> None:
        """C{string}, C{table}, C{math} and the C{os} clock functions stay."""
        self.assertEqual(
            self.emitted(
                "emit('s', table.concat({string.upper('a'), math.floor(2.5),\n"
                "  type(os.time()), type(os.clock()), os.date('!%Y', 0),\n"
                "  type(os.difftime(2, 1))}, ' '))"
            ),
            "A 2 number number 1970 number",
        )

    def test_getenv(self) -> None:
        """C{os.getenv} reads the daemon's environment."""
        os.environ["REPLAYFORGE_LUA_TEST"] = "seen"
        self.addCleanup(os.environ.pop, "REPLAYFORGE_LUA_TEST")
        self.assertEqual(
            self.emitted("emit('s', os.getenv('REPLAYFORGE_LUA_TEST'))"), "seen"
        )

    def test_no_io(self) -> None:
        """There is no C{io} library."""
        self.assertEqual(self.emitted("emit('s', tostring(io))"), "nil")

    def test_no_dangerous_os_functions(self) -> None:
        """C{os.execute}, C{remove}, C{rename}, C{exit} and friends are gone."""
        self.assertEqual(
            self.emitted(
                "local found = {}\n"
                "for _, name in ipairs({'execute', 'remove', 'rename', 'exit',\n"
                "    'tmpname', 'setlocale'}) do\n"
                "  if os[name] then found[#found + 1] = name end\n"
                "end\n"
                "emit('s', table.concat(found, ','))"
            ),
            "",
        )

    def test_no_file_loading(self) -> None:
        """C{loadfile}, C{dofile}, C{require} and C{package} are gone."""
        self.assertEqual(
            self.emitted(
                "emit('s', tostring(loadfile) .. tostring(dofile)\n"
                "  .. tostring(require) .. tostring(package))"
            ),
            "nilnilnilnil",
        )

    def test_no_string_dump(self) -> None:
        """C{string.dump} is gone, also as a method of strings."""
        self.assertEqual(
            self.emitted("emit('s', tostring(string.dump) .. tostring(('').dump))"),
            "nilnil",
        )

    def test_no_bytecode(self) -> None:
        """C{load} refuses a binary chunk."""
        self.assertEqual(
            self.emitted(
                "local chunk, message = load('\\27Lua\\84\\0')\n"
                "emit('s', tostring(chunk) .. ': ' .. tostring(message ~= nil))"
            ),
            "nil: true",
        )

    def test_no_bytecode_through_reader(self) -> None:
        """C{load} with a reader function refuses a binary chunk too."""
        self.assertEqual(
            self.emitted(
                "local parts = {'\\27', 'Lua'}\n"
                "local chunk = load(function() return table.remove(parts, 1) end)\n"
                "emit('s', tostring(chunk))"
            ),
            "nil",
        )

    def test_load_runs_in_sandbox(self) -> None:
        """Text loaded by the script sees the sandbox, not the real globals."""
        self.assertEqual(
            self.emitted("emit('s', tostring(load('return io')()))"), "nil"
        )

    def test_no_debug_library(self) -> None:
        """C{debug} is the logging function; the library is out of reach."""
        with self.assertRaises(ScriptFailure) as caught:
            self.emits("debug.sethook()")
        self.assertIn("attempt to index", str(caught.exception))
        self.assertEqual(self.emitted("emit('s', type(debug))"), "function")

    def test_no_string_metatable(self) -> None:
        """C{getmetatable("")} gives nothing, so its C{__index} is out of reach."""
        with self.assertRaises(ScriptFailure):
            self.emits("local x = getmetatable('').__index")
        self.assertEqual(self.emitted("emit('s', tostring(getmetatable('')))"), "nil")

    def test_string_methods_see_sandbox_copy(self) -> None:
        """
        Strings' methods come from the sandbox's own C{string} table, so a
        script's change there cannot reach the host's.
        """
        self.assertEqual(
            self.emitted(
                "string.upper = function() return 'patched' end\n"
                "emit('s', ('a'):upper() .. ' ' .. json_encode('b'))"
            ),
            'patched "b"',
        )

    def test_no_finalizers(self) -> None:
        """
        A C{__gc} finalizer would run with the budget's hook off, at any
        later allocation: C{setmetatable} refuses it, and other metatables
        still work.
        """
        with self.assertRaises(ScriptFailure) as caught:
            self.emits("setmetatable({}, {__gc = function() while true do end end})")
        self.assertIn("__gc finalizers are not allowed", str(caught.exception))
        self.assertEqual(
            self.emitted(
                "local t = setmetatable({}, {__index = function() return 'x' end})\n"
                "emit('s', t.anything)"
            ),
            "x",
        )

    def test_rawget_globals(self) -> None:
        """C{rawget(_G, ...)} finds only the sandbox's globals."""
        self.assertEqual(
            self.emitted(
                "emit('s', tostring(rawget(_G, 'io')) .. tostring(rawget(_G, 'debug'))"
                " == 'nil' .. tostring(debug) and 'ok' or 'leak')"
            ),
            "ok",
        )

    def test_no_python(self) -> None:
        """No C{python} module, and no helper is a Python object."""
        self.assertEqual(
            self.emitted(
                "local kinds = {tostring(python)}\n"
                "for _, name in ipairs({'json_encode', 'json_decode', 'info',\n"
                "    'warn', 'print', 'debug'}) do\n"
                "  kinds[#kinds + 1] = type(_G[name])\n"
                "end\n"
                "emit('s', table.concat(kinds, ' '))"
            ),
            "nil function function function function function function",
        )

    def test_collectgarbage_limited(self) -> None:
        """C{collectgarbage} may collect and count, not stop the collector."""
        self.assertEqual(
            self.emitted("emit('s', type(collectgarbage('count')))"), "number"
        )
        with self.assertRaises(ScriptFailure) as caught:
            self.emits("collectgarbage('stop')")
        self.assertIn("'stop' is not allowed", str(caught.exception))

    def test_globals_are_the_scripts_own(self) -> None:
        """Two scripts do not share globals."""
        first = self.evaluator()
        second = self.evaluator()
        self.emits("shared = 'first'", first)
        self.assertEqual(self.emits("emit('s', tostring(shared))", second), ["nil"])


class UnsafeTests(ScriptTestCase):
    """C{unsafeLua: true}: the whole standard library."""

    def test_full_library(self) -> None:
        """C{io}, C{os.remove}, C{require} and C{string.dump} are there."""
        script = self.evaluator(unsafe=True)
        self.assertEqual(
            self.emits(
                "emit('s', type(io.open) .. type(os.remove) .. type(require)\n"
                "  .. type(string.dump) .. type(debug.traceback))",
                script,
            ),
            ["functionfunctionfunctionfunctionfunction"],
        )

    def test_debug_still_logs(self) -> None:
        """C{debug(...)} still logs, as Go's scripts expect."""
        script = self.evaluator(unsafe=True)
        self.assertEqual(
            self.emits("debug('a message') emit('s', 'ok')", script), ["ok"]
        )

    def test_python_attributes_filtered(self) -> None:
        """
        Even a Python function reached through C{debug.getupvalue} shows no
        attribute starting with an underscore, the way out to Python.
        """
        script = self.evaluator(unsafe=True)
        self.assertEqual(
            self.emits(
                "local found\n"
                "local function search(f, depth)\n"
                "  for i = 1, 50 do\n"
                "    local name, value = debug.getupvalue(f, i)\n"
                "    if not name then break end\n"
                "    if type(value) == 'userdata' then found = value end\n"
                "    if type(value) == 'function' and depth < 3 then\n"
                "      search(value, depth + 1)\n"
                "    end\n"
                "  end\n"
                "end\n"
                "search(json_decode, 1)\n"
                "local results = {type(found)}\n"
                "for _, name in ipairs({'__class__', '__globals__', '__self__',\n"
                "    '__dict__', '_lua'}) do\n"
                "  results[#results + 1] = tostring(pcall(function()\n"
                "    return found[name] end))\n"
                "end\n"
                "emit('s', table.concat(results, ' '))",
                script,
            ),
            ["userdata false false false false false"],
        )

    def test_no_python_module(self) -> None:
        """Unsafe mode opens Lua's library, not Python's: no C{python}."""
        script = self.evaluator(unsafe=True)
        self.assertEqual(self.emits("emit('s', tostring(python))", script), ["nil"])

    def test_still_bounded(self) -> None:
        """The instruction budget holds in unsafe mode too."""
        script = self.evaluator(unsafe=True)
        self.assertRaises(ScriptFailure, self.emits, "while true do end", script)


class LuaJITSandboxTests(SandboxTests):
    """The same sandbox on LuaJIT."""

    engine = "luajit"
    skip = LUAJIT_MISSING

    def test_jit_off(self) -> None:
        """The JIT compiler is off, so the budget's hook runs everywhere."""
        script = self.evaluator(unsafe=True)
        self.assertEqual(
            self.emits("emit('s', tostring(jit.status()))", script), ["false"]
        )
