"""
Run a user's Lua script on events, sandboxed and bounded.

A L{LuaScript} owns one Lua 5.4 runtime.  The script runs in an environment
of its own that holds the safe part of the standard library and the
ReplayForge helpers (C{json_encode}, C{json_decode}, logging); every call into
it is bounded by an instruction budget, enforced by a count hook that the
script's own C{pcall} cannot swallow, and the runtime by a memory cap.  A
failing call raises L{ScriptFailure} and costs only the event it was given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lupa import lua54
from twisted.logger import Logger

log = Logger()

DEFAULT_INSTRUCTION_BUDGET = 10_000_000
DEFAULT_MAX_MEMORY = 64 * 1024 * 1024

Emitted = list[tuple[str, str]]

# The trusted half of the sandbox: it runs with the full standard library and
# returns the functions the host needs, keeping debug.sethook out of reach.
_HOST_CHUNK = """
local helpers = ...
local pcall, xpcall, error, select, type = pcall, xpcall, error, select, type
local sethook, pack, unpack = debug.sethook, table.pack, table.unpack
local BUDGET = "instruction budget exceeded"
local exhausted = false
local budget = 0

local function on_count()
  exhausted = true
  error(BUDGET, 2)
end

local function rethrow_budget(ok, ...)
  if not ok and exhausted then error(BUDGET, 0) end
  return ok, ...
end

local function copy(source, without)
  local result = {}
  for key, value in pairs(source) do
    if not (without and without[key]) then result[key] = value end
  end
  return result
end

local sandbox_coroutine = copy(coroutine)
function sandbox_coroutine.create(f)
  local thread = coroutine.create(f)
  sethook(thread, on_count, "", budget)
  return thread
end
function sandbox_coroutine.resume(thread, ...)
  return rethrow_budget(coroutine.resume(thread, ...))
end
function sandbox_coroutine.wrap(f)
  local thread = sandbox_coroutine.create(f)
  return function(...)
    local result = pack(sandbox_coroutine.resume(thread, ...))
    if not result[1] then error(result[2], 0) end
    return unpack(result, 2, result.n)
  end
end

local function make_env()
  local env = {
    assert = assert, error = error, ipairs = ipairs, next = next,
    pairs = pairs, rawequal = rawequal, rawget = rawget, rawlen = rawlen,
    rawset = rawset, select = select, setmetatable = setmetatable,
    tonumber = tonumber, tostring = tostring, type = type,
    string = copy(string, {dump = true}), table = copy(table),
    math = copy(math), utf8 = copy(utf8), coroutine = sandbox_coroutine,
    os = {
      getenv = os.getenv, time = os.time, date = os.date,
      clock = os.clock, difftime = os.difftime,
    },
  }
  env.pcall = function(f, ...) return rethrow_budget(pcall(f, ...)) end
  env.xpcall = function(f, handler, ...)
    return rethrow_budget(xpcall(f, handler, ...))
  end
  env.getmetatable = function(value)
    if type(value) == "string" then return nil end
    return getmetatable(value)
  end
  env.load = function(chunk, name, mode, chunk_env)
    return load(chunk, name, "t", chunk_env or env)
  end
  for name, value in pairs(helpers) do env[name] = value end
  env._G = env
  return env
end

local function call(limit, f, ...)
  exhausted = false
  budget = limit
  sethook(on_count, "", limit)
  local result = pack(pcall(f, ...))
  sethook()
  if not result[1] then error(result[2], 0) end
  return unpack(result, 2, result.n)
end

local function load_script(code, name, env)
  local chunk, message = load(code, name, "t", env)
  return chunk, message
end

return make_env, call, load_script
"""


class ScriptError(Exception):
    """A script that cannot be loaded or started: a start-up error."""


class ScriptFailure(Exception):
    """One call into a script failed; only its event is lost."""


def _deny_attributes(obj: object, name: Any, is_setting: bool) -> Any:
    if isinstance(name, str) and name.startswith("_"):
        raise AttributeError(f"access to {name!r} is not allowed")
    return name


class LuaScript:
    """
    One user script in its own Lua runtime.

    @ivar tag: the source or sink id the script serves, used in its logs.

    Proxy scripts of the Go era call C{error(message)} to log; player scripts
    call it to fail.  C{error_logs} chooses: when false, C{error} is Lua's own.
    """

    def __init__(
        self,
        path: str | Path,
        tag: str,
        instruction_budget: int = DEFAULT_INSTRUCTION_BUDGET,
        max_memory: int = DEFAULT_MAX_MEMORY,
        error_logs: bool = True,
    ) -> None:
        self.path = str(path)
        self.tag = tag
        self._error_logs = error_logs
        self._budget = instruction_budget
        try:
            code = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ScriptError(f"{path}: cannot read the script ({error})") from None

        self._lua = lua54.LuaRuntime(
            register_eval=False,
            register_builtins=False,
            unpack_returned_tuples=True,
            attribute_filter=_deny_attributes,
            max_memory=max_memory,
        )
        make_env, self._call, load_script = self._lua.execute(
            _HOST_CHUNK, self._lua.table_from(self._helpers())
        )
        self._env = make_env()
        chunk, message = load_script(code, f"={self.path}", self._env)
        if chunk is None:
            raise ScriptError(f"syntax error in {message}")
        try:
            self._call(self._budget, chunk)
            init = self._env["init"]
            if init is not None:
                self._call(self._budget, init)
        except lua54.LuaError as error:
            raise ScriptError(f"start-up failed: {_first_line(error)}") from None

    def defines(self, name: str) -> bool:
        """Tell whether the script defines the global function C{name}."""
        kind: str | None = lua54.lua_type(self._env[name])
        return kind == "function"

    def process(self, content: str) -> Emitted:
        """
        Run C{Process(content, emit)} and return what it emitted.

        @raise ScriptFailure: the call failed; its emits are discarded.
        """
        return self._run("Process", content)

    def timer(self) -> Emitted:
        """Run C{TimerHandler(emit)} and return what it emitted."""
        return self._run("TimerHandler")

    def _run(self, name: str, *args: Any) -> Emitted:
        emitted: Emitted = []

        def emit(target: Any, content: Any) -> None:
            emitted.append((str(target), _emitted_text(content)))

        try:
            self._call(self._budget, self._env[name], *args, emit)
        except (lua54.LuaError, MemoryError) as error:
            raise ScriptFailure(_first_line(error)) from None
        return emitted

    def _helpers(self) -> dict[str, Any]:
        tag = self.tag

        def logger(level: str) -> Callable[..., None]:
            def write(*parts: Any) -> None:
                message = " ".join(str(part) for part in parts)
                getattr(log, level)(
                    "[{tag}] {message}", tag=tag, message=message, script=True
                )

            return write

        helpers = {
            "json_encode": self._json_encode,
            "json_decode": self._json_decode,
            "trace": logger("debug"),
            "debug": logger("debug"),
            "info": logger("info"),
            "warn": logger("warn"),
            "print": logger("debug"),
        }
        if self._error_logs:
            helpers["error"] = logger("error")
        return helpers

    def _json_encode(self, value: Any) -> str:
        return json.dumps(
            lua_to_python(value), ensure_ascii=False, separators=(",", ":")
        )

    def _json_decode(self, text: Any) -> Any:
        if not isinstance(text, str | bytes):
            return None, "json_decode expects a string"
        try:
            value = json.loads(text)
        except ValueError as error:
            return None, f"invalid JSON: {error}"
        return self._to_lua(value)

    def _to_lua(self, value: Any) -> Any:
        if isinstance(value, dict | list):
            return self._lua.table_from(value, recursive=True)
        return value


def _first_line(error: BaseException) -> str:
    return str(error).split("\nstack traceback:", 1)[0].strip()


def _emitted_text(content: Any) -> str:
    if isinstance(content, bytes):
        return content.decode("utf-8", "replace")
    if isinstance(content, str):
        return content
    return str(content)


def lua_to_python(value: Any) -> Any:
    """
    Convert a Lua value to the Python value JSON would encode.

    A table whose keys are exactly 1..n becomes a list; any other table a
    mapping with string keys.  NaN and infinities have no JSON form and
    become C{None}.
    """
    if lua54.lua_type(value) != "table":
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        return value
    items = list(value.items())
    count = len(items)
    if count and all(
        isinstance(key, int) and not isinstance(key, bool) for key, _ in items
    ):
        keys = sorted(key for key, _ in items)
        if keys == list(range(1, count + 1)):
            return [lua_to_python(value[index]) for index in keys]
    return {_key_text(key): lua_to_python(item) for key, item in items}


def _key_text(key: Any) -> str:
    if isinstance(key, bytes):
        return key.decode("utf-8", "replace")
    if isinstance(key, float) and key.is_integer():
        return str(int(key))
    return str(key)
