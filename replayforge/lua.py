"""
Run a user's Lua script on events, sandboxed and bounded.

A L{LuaScript} owns one lupa runtime: Lua 5.4, or LuaJIT 2.1 for a source
or sink configured with C{luaEngine: luajit}.  The script runs in an
environment of its own (L{replayforge.lua_sandbox}) holding the safe part
of the standard library and the helpers: C{json_encode}, C{json_decode},
C{json_null}, C{json_array}, C{json_object} (L{replayforge.lua_json}), and
C{trace}, C{debug}, C{info}, C{warn}, C{error} and C{print}, which log
tagged with the source or sink.  Every call is bounded by an instruction
budget that the script's C{pcall} cannot swallow, the runtime by a memory
cap; a failing call raises L{ScriptFailure} and costs only its event.

The budget's count hook makes CPU-bound Lua about 1.7 times slower; a
pass-through C{Process} still runs well over 200,000 times a second.

What differs under LuaJIT: numbers are doubles, so integers are exact up
to 2^53 only and C{1.0} encodes as C{1}; the JIT compiler is turned off,
because compiled loops run no hooks and the budget would not hold, so
scripts run in LuaJIT's interpreter (with the hook, about as fast as Lua
5.4); the memory cap holds, as lupa builds LuaJIT 2.1 with a 64-bit
allocator that accepts a limit.

lupa copies values into Lua outside Lua's error protection: an allocation
refused there aborts the process.  Every value Python hands to Lua is
therefore copied with the cap lifted (see L{LuaScript._call} and
L{LuaScript._boxed}); helpers written in Python must be installed through
L{LuaScript._helpers}, which wraps them so.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
from twisted.logger import Logger, LogLevel

from replayforge.config import Section
from replayforge.grok import script_helper
from replayforge.lua_json import JSON_CHUNK, LuaJSONDecoder
from replayforge.lua_sandbox import SANDBOX_CHUNK

log = Logger()

ENGINE_MODULES = {"lua54": "lupa.lua54", "luajit": "lupa.luajit21"}
DEFAULT_ENGINE = "lua54"
DEFAULT_INSTRUCTION_BUDGET = 10_000_000
MIN_INSTRUCTION_BUDGET = 10_000
DEFAULT_MAX_MEMORY = 64 * 1024 * 1024
MIB = 1024 * 1024
# How many instructions run between two looks at the budget.
HOOK_STEP = 1000
# Room kept for what lupa allocates besides the strings it pushes.
PUSH_MARGIN = 64 * 1024

Emitted = list[tuple[str, str]]

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_IN_PATH = re.compile(r"[\x00-\x20\x7f]")
_UNSAFE_IN_HEADER = re.compile(r"[\x00\r\n]")

_LOG_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}


@attrs.frozen
class LuaSettings:
    """
    How a script's runtime is built.

    @ivar engine: C{lua54} or C{luajit}.
    @ivar unsafe: give the script the whole standard library.
    @ivar instruction_budget: the most instructions one call may run.
    @ivar max_memory: the most bytes the runtime may hold.
    """

    engine: str = DEFAULT_ENGINE
    unsafe: bool = False
    instruction_budget: int = DEFAULT_INSTRUCTION_BUDGET
    max_memory: int = DEFAULT_MAX_MEMORY


@attrs.frozen
class TransformedBatch:
    """
    What a sink script's C{TransformBatch} made of a batch.

    @ivar path: where to send it instead of C{record-batch}; empty for there.
    @ivar headers: headers to add to the request, or to replace.
    @ivar skipped: values of the returned table left out, as not strings.
    """

    messages: list[str]
    path: str
    headers: list[tuple[str, str]]
    skipped: int


def available_engines() -> frozenset[str]:
    """The values of C{luaEngine} that lupa can run on this machine."""
    found = set()
    for engine, module in ENGINE_MODULES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        found.add(engine)
    return frozenset(found)


def read_lua_settings(
    section: Section, engines: frozenset[str] | None = None
) -> LuaSettings:
    """
    Read the runtime keys of a source or sink: C{luaEngine}, C{unsafeLua},
    C{luaInstructionBudget} and C{luaMaxMemoryMb}.

    @param engines: the engines to accept; by default those installed.
    @raise replayforge.config.ConfigError: for a value that cannot be used.
    """
    engine = section.text("luaEngine", DEFAULT_ENGINE)
    if engine not in ENGINE_MODULES:
        raise section.error(
            "luaEngine",
            f"expected one of {', '.join(ENGINE_MODULES)}, got {engine!r}",
        )
    if engine not in (available_engines() if engines is None else engines):
        raise section.error(
            "luaEngine",
            f"{engine} is not available here: lupa has no "
            f"{ENGINE_MODULES[engine]} module; use {DEFAULT_ENGINE}",
        )
    return LuaSettings(
        engine=engine,
        unsafe=section.boolean("unsafeLua", False),
        instruction_budget=section.integer(
            "luaInstructionBudget",
            DEFAULT_INSTRUCTION_BUDGET,
            minimum=MIN_INSTRUCTION_BUDGET,
        ),
        max_memory=MIB
        * section.integer("luaMaxMemoryMb", DEFAULT_MAX_MEMORY // MIB, minimum=1),
    )


class ScriptError(Exception):
    """A script that cannot be loaded or started: a start-up error."""


class ScriptFailure(Exception):
    """
    One call into a script failed; only its event is lost.

    Its text reads C{script:line: message}, as Lua's own errors do.

    @ivar line: the line of the script where the call failed, when known.
    """

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def _deny_attributes(obj: object, name: Any, is_setting: bool) -> Any:
    if isinstance(name, str) and name.startswith("_"):
        raise AttributeError(f"access to {name!r} is not allowed")
    return name


class LuaScript:
    """
    One user script in its own Lua runtime.

    @ivar path: the script file.
    @ivar tag: what the script's log lines are tagged with (C{source:web}).

    Proxy scripts of the Go era call C{error(message)} to log; player scripts
    call it to fail.  C{error_logs} chooses: when false, C{error} is Lua's own.
    """

    def __init__(
        self,
        path: str | Path,
        tag: str,
        settings: LuaSettings | None = None,
        error_logs: bool = True,
    ) -> None:
        self.path = str(path)
        self.tag = tag
        self.settings = settings if settings is not None else LuaSettings()
        try:
            code = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ScriptError(f"{path}: cannot read the script ({error})") from None

        module = _engine_module(self.settings.engine)
        self._lua_error: type[Exception] = module.LuaError
        self._lua = module.LuaRuntime(
            register_eval=False,
            register_builtins=False,
            unpack_returned_tuples=True,
            attribute_filter=_deny_attributes,
            max_memory=self.settings.max_memory,
            overflow_handler=float,
        )
        self._max_memory = self.settings.max_memory
        self._out_of_memory = (
            f"not enough memory (memory limit {self._max_memory / MIB:g} MiB)"
        )
        self._collect_garbage = self._lua.eval("collectgarbage")
        null_mark, empty_mark = self._lua.table(), self._lua.table()
        # Marks the values a Python helper returns unboxed (see _boxed).
        self._direct = self._lua.table()
        self._table_type = type(self._direct)
        self._decoder = LuaJSONDecoder(self._lua.table_from, null_mark, empty_mark)
        codec = self._lua.execute(JSON_CHUNK, null_mark, empty_mark, self._json_decode)
        budget = self.settings.instruction_budget
        config = self._lua.table_from(
            {
                "budget": budget,
                "step": min(HOOK_STEP, budget),
                "unsafe": self.settings.unsafe,
                "error_logs": error_logs,
                "source": "=" + self.path,
                "memory_limit": f"{self.settings.max_memory / MIB:g} MiB",
            }
        )
        helpers = {name: self._boxed(value) for name, value in self._helpers().items()}
        host = self._lua.table_from(
            {
                "log": self._log,
                "helpers": self._lua.table_from(helpers),
                "direct": self._direct,
            }
        )
        api = self._lua.execute(SANDBOX_CHUNK, config, host, codec)
        self._entries = {name: api[name] for name in ("process", "timer", "transform")}
        self._stage = api["stage"]
        self._run_staged = api["run_staged"]
        self._defines = api["defines"]

        try:
            with self._unbounded():
                self._stage(code)
            started = self._run_staged("start")
        except MemoryError:
            raise ScriptError(
                f"{self.path}: start-up failed: {self._out_of_memory}"
            ) from None
        except self._lua_error as error:
            raise ScriptError(
                f"{self.path}: start-up failed: {_first_line(error)}"
            ) from None
        if started[0] is not True:
            if started[3:] == ("syntax",):
                raise ScriptError(f"syntax error in {started[1]}")
            raise ScriptError(f"start-up failed: {started[1]}")

    def defines(self, name: str) -> bool:
        """Tell whether the script defines the global function C{name}."""
        return bool(self._defines(name))

    def require(self, *names: str) -> None:
        """
        Check that the script defines at least one of the functions C{names}.

        @raise ScriptError: when it defines none of them.
        """
        if any(self.defines(name) for name in names):
            return
        wanted = " nor ".join(_SIGNATURES.get(name, name) for name in names)
        article = "neither " if len(names) > 1 else "no "
        raise ScriptError(f"{self.path}: defines {article}{wanted}")

    def process(self, content: str) -> Emitted:
        """
        Run C{Process(content, emit)} and return what it emitted.

        @raise ScriptFailure: the call failed; its emits are discarded.
        """
        return _emitted(self._call("process", 4 * len(content), content))

    def timer(self) -> Emitted:
        """
        Run C{TimerHandler(emit)} and return what it emitted.

        @raise ScriptFailure: the call failed; its emits are discarded.
        """
        return _emitted(self._call("timer", 0))

    def transform_batch(
        self, messages: Sequence[str], path: str = ""
    ) -> TransformedBatch:
        """
        Run C{TransformBatch(messages, request)} on a sink's batch.

        The script gets the messages as an array of strings and
        C{request = {path = path, headers = {}}}, and returns both (or the
        messages alone).

        @raise ScriptFailure: the call failed, or asked for a path or a
            header that cannot be sent.
        """
        try:
            with self._unbounded():
                table = self._lua.table_from(list(messages))
        except (self._lua_error, MemoryError) as error:
            raise ScriptFailure(f"{self.path}: {_first_line(error)}") from None
        _, texts, count, new_path, flat, flat_count, skipped = self._call(
            "transform", 4 * len(path), table, path
        )
        headers = [
            (flat[index], flat[index + 1]) for index in range(1, flat_count + 1, 2)
        ]
        if _UNSAFE_IN_PATH.search(new_path):
            raise ScriptFailure(
                f"{self.path}: TransformBatch set request.path to {new_path!r}, "
                "which holds spaces or control characters"
            )
        for name, value in headers:
            if not _HEADER_NAME.fullmatch(name) or _UNSAFE_IN_HEADER.search(value):
                # The value may be a secret: only the name is told.
                raise ScriptFailure(
                    f"{self.path}: TransformBatch set header {name!r} to "
                    "something that cannot be sent (an invalid name, or a "
                    "line break in the value)"
                )
        return TransformedBatch(
            messages=[texts[index] for index in range(1, count + 1)],
            path=new_path,
            headers=headers,
            skipped=skipped,
        )

    def _call(self, entry: str, size: int, *args: Any) -> tuple[Any, ...]:
        """
        Call the sandbox's C{entry} function with C{args}, whose strings
        take at most C{size} bytes in Lua.

        lupa copies the arguments into Lua before Lua protects itself from
        errors, and an allocation refused there aborts the whole process.
        When the runtime may lack the room, the arguments are therefore
        handed in first with the cap lifted, and the call made after.
        """
        size += PUSH_MARGIN
        try:
            if self._lua.get_memory_used() + size > self._max_memory:
                # What a failed call left is garbage, which LuaJIT does not
                # collect before refusing an allocation.
                self._collect_garbage()
            if self._lua.get_memory_used() + size <= self._max_memory:
                result: tuple[Any, ...] = self._entries[entry](*args)
            else:
                with self._unbounded():
                    self._stage(*args)
                result = self._run_staged(entry)
        except MemoryError:
            # Even reporting the failure needed memory the script holds.
            raise ScriptFailure(f"{self.path}: {self._out_of_memory}") from None
        except self._lua_error as error:
            # Calls that fail inside return their failure: this is lupa
            # failing around the call.
            raise ScriptFailure(f"{self.path}: {_first_line(error)}") from None
        if result[0] is not True:
            raise ScriptFailure(result[1], result[2])
        return result

    @contextmanager
    def _unbounded(self) -> Iterator[None]:
        """Lift the memory cap while Python hands values to Lua."""
        self._lua.set_max_memory(0)
        try:
            yield
        finally:
            self._lua.set_max_memory(self._max_memory)

    def _boxed(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """
        Wrap a helper written in Python for Lua to call.

        What the helper returns is turned into Lua values while the memory
        cap is lifted, and handed back in one table (the count, then the
        values) that the sandbox unpacks: lupa would otherwise copy them
        into Lua where a refused allocation cannot be caught.  A Lua table
        or C{None}, which take no memory to hand over, is returned as it
        is after the sandbox's mark for unboxed values: no box to build.
        """
        lua = self._lua
        direct = self._direct
        table_type = self._table_type

        def call(*args: Any) -> Any:
            lua.set_max_memory(0)
            try:
                result = function(*args)
                if result is None or type(result) is table_type:
                    return direct, result
                values = result if isinstance(result, tuple) else (result,)
                return lua.table_from(
                    [len(values), *(self._lua_value(value) for value in values)]
                )
            finally:
                lua.set_max_memory(self._max_memory)

        return call

    def _lua_value(self, value: Any) -> Any:
        if isinstance(value, dict | list):
            return self._lua.table_from(value, recursive=True)
        return value

    def _json_decode(self, text: str) -> tuple[Any, Any]:
        """
        Decode C{text} for C{json_decode}, the memory cap lifted meanwhile.

        @return: C{(value, 0)}, or C{(value, 1)} when Lua must restore its
            arrays and nulls, or C{(box, 2)} for a string in a one-element
            table, or C{(None, box)} for an error message in one.  Passing
            a table or a number into Lua allocates nothing; a string would.
        """
        self._lua.set_max_memory(0)
        try:
            value, marked = self._decoder.decode(text)
            if self._lua.get_memory_used() > self._max_memory:
                # Built with the cap lifted, the value is more than the
                # script may hold: drop it at once.
                value = None
                self._collect_garbage()
                marked = f"json_decode: {self._out_of_memory}"
            if isinstance(marked, str):
                return None, self._lua.table_from([marked])
            if value is None:
                return None, None
            if isinstance(value, str):
                return self._lua.table_from([value]), 2
            return value, 1 if marked else 0
        finally:
            self._lua.set_max_memory(self._max_memory)

    def _log(self, level: str, message: str) -> None:
        log.emit(
            _LOG_LEVELS.get(level, LogLevel.info),
            # Not "message": a legacy observer (trial's, twistd's) replaces
            # that key of the shared event with ().
            "[{tag}] {text}",
            tag=self.tag,
            text=message,
            script=self.path,
        )

    def _helpers(self) -> dict[str, Any]:
        """
        The helpers written in Python, installed as the script's globals.

        Each is called with the memory cap lifted and its results boxed (see
        L{_boxed}); one returning a table builds it with C{table_from}.
        """
        helpers: dict[str, Any] = {"grok_parse": script_helper(self._lua.table_from)}
        return helpers


_SIGNATURES = {
    "Process": "Process(content, emit)",
    "TimerHandler": "TimerHandler(emit)",
    "TransformBatch": "TransformBatch(messages, request)",
}


def _engine_module(engine: str) -> ModuleType:
    try:
        return importlib.import_module(ENGINE_MODULES[engine])
    except (KeyError, ImportError):
        raise ScriptError(f"Lua engine {engine!r} is not available") from None


def _emitted(result: tuple[Any, ...]) -> Emitted:
    """Pair the sinks and contents a call returned."""
    count = result[1]
    if count == 0:
        return []
    if len(result) == count + 2:
        values: Sequence[str] = result[2:]
    else:
        table = result[2]
        values = [table[index] for index in range(1, count + 1)]
    return list(zip(values[0::2], values[1::2], strict=True))


def _first_line(error: BaseException) -> str:
    return str(error).split("\n", 1)[0].strip()
