"""
The JSON codec of Lua scripts: C{json_encode}, C{json_decode} and friends.

Decoding runs in Python (the C{json} module is fast and strict) and hands
the result to Lua as tables; encoding runs in Lua
(L{replayforge.lua_json_encode}), because walking Lua tables from Python
costs more than the whole encoding does in Lua.

What survives a round trip on Lua 5.4, and how:

  - Integers stay integers (64-bit, so nanosecond timestamps too; beyond
    that range JSON numbers become floats), C{1.0} stays a float.
  - Every array C{json_decode} returns carries the metatable
    C{{__jsontype = "array"}}, so an empty array, or one the script
    emptied, encodes as C{[]}.  A table without a mark encodes by its
    keys: keys C{1..n} make an array, anything else an object, and an
    I{empty unmarked table is an object} (C{{}}), not C{[]} as in the Go
    version.  C{json_array(t)} / C{json_object(t)} mark a table (a new
    one without argument); a metatable of the script's own with a
    C{__jsontype} field is honoured as well.
  - A JSON C{null} member or element is not stored in the table, so
    scripts read it as C{nil} as they always did; the table's metatable
    keeps the list of those keys (C{__jsonnull}) and the encoder writes
    them back as C{null} while they are still unset.  C{json_null} is a
    value the script can store to encode C{null} itself.  A top-level
    C{null} decodes to C{nil}.
  - A table whose keys are all positive integers but that has holes
    encodes as an array with C{null} in the holes, unless more than half
    of it would be holes (and it is longer than 10): then it is an object
    with the keys written as strings, so C{{[1000000] = 1}} stays small.
  - Object keys are written sorted, as Go did; numbers as keys become
    their decimal text.
  - Strings are UTF-8; invalid bytes are replaced by U+FFFD, never an
    error.  NaN and infinities cannot be encoded: C{json_encode} returns
    C{nil} and a message, as it does for a cycle or nesting deeper than
    500.  A decode error returns C{nil} and a message.

Under LuaJIT every number is a double: integers are exact up to 2^53 only,
and an integral float encodes without C{.0}, as Go did.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from replayforge.lua_json_encode import ENCODER_CHUNK

_SPACED_EMPTY_ARRAY = re.compile(r"\[\s+\]")

# Run once per runtime with the full standard library, before any hook is
# set.  Its arguments are two private marker tables and the Python decoder
# (see LuaScript._json_decode for what it returns); it returns the codec,
# whose encode returns the text and the pieces it wrote without the hook.
# Only Lua 5.1 syntax is used, so LuaJIT loads it too.
JSON_CHUNK = (
    r"""
local NULL_MARK, EMPTY_MARK, python_decode = ...
local byte, find, format, gsub, match, sub = string.byte, string.find,
  string.format, string.gsub, string.match, string.sub
local concat, sort = table.concat, table.sort
local floor, huge, math_type = math.floor, math.huge, math.type
local create, resume, status, yield = coroutine.create, coroutine.resume,
  coroutine.status, coroutine.yield
local sethook = debug.sethook
local error, getmetatable, next, pairs, pcall, rawequal, rawget, select,
  setmetatable, tonumber, tostring, type =
  error, getmetatable, next, pairs, pcall, rawequal, rawget, select,
  setmetatable, tonumber, tostring, type
local utf8_len = utf8 and utf8.len

local NESTING_LIMIT = 500
-- Object keys whose JSON text is kept: how many, and how long at most.
local NAMES_KEPT, NAME_LENGTH_KEPT = 256, 64
-- The largest object whose sorted keys are kept.
local ORDERS_KEPT = 64
-- The longest text json_encode remembers having returned.
local RESULT_LENGTH_KEPT = 65536
local REPLACEMENT = "\239\191\189"

-- The position of the first byte at or after i that is not valid UTF-8.
local first_invalid
if utf8_len then
  first_invalid = function(s, i)
    local length, position = utf8_len(s, i)
    if length then return nil end
    return position
  end
else
  first_invalid = function(s, i)
    while true do
      i = find(s, "[\128-\255]", i)
      if not i then return nil end
      local c, size = byte(s, i), nil
      if c >= 0xC2 and c <= 0xDF then size = 1
      elseif c >= 0xE0 and c <= 0xEF then size = 2
      elseif c >= 0xF0 and c <= 0xF4 then size = 3
      else return i end
      local c2 = byte(s, i + 1)
      if not c2 or (c == 0xE0 and c2 < 0xA0) or (c == 0xED and c2 > 0x9F)
          or (c == 0xF0 and c2 < 0x90) or (c == 0xF4 and c2 > 0x8F) then
        return i
      end
      for j = i + 1, i + size do
        local b = byte(s, j)
        if not b or b < 0x80 or b > 0xBF then return i end
      end
      i = i + size + 1
    end
  end
end

-- The last text json_encode returned, if short.  It is valid UTF-8 and
-- holds no control character, which spares checking it again when a
-- script emits it, or encodes it again (as the body of a call object,
-- typically).
local last_result

-- s with every byte that is not valid UTF-8 replaced by U+FFFD.
local function repair(s)
  if s == last_result then return s end
  local bad = first_invalid(s, 1)
  if not bad then return s end
  local parts, n, start, length = {}, 0, 1, #s
  while bad do
    parts[n + 1] = sub(s, start, bad - 1)
    parts[n + 2] = REPLACEMENT
    n = n + 2
    start = bad + 1
    bad = start <= length and first_invalid(s, start) or nil
  end
  parts[n + 1] = sub(s, start)
  return concat(parts, "", 1, n + 1)
end

local NULL = setmetatable({}, {
  __metatable = "json_null",
  __newindex = function() error("json_null cannot be changed", 2) end,
  __tostring = function() return "null" end,
})
local ARRAY = {__jsontype = "array"}
local OBJECT = {__jsontype = "object"}
-- Metatables made here; json_array and json_object may replace them.
local ours = setmetatable({[ARRAY] = true, [OBJECT] = true}, {__mode = "k"})

"""
    + ENCODER_CHUNK
    + r"""
-- Give decoded tables their marks: arrays, empty arrays, nulls.
local function restore(t)
  local array = type(next(t)) == "number"
  local nulls
  for k, v in pairs(t) do
    if type(v) == "table" then
      if rawequal(v, NULL_MARK) then
        t[k] = nil
        nulls = nulls or {}
        nulls[k] = true
      elseif rawequal(v, EMPTY_MARK) then
        t[k] = setmetatable({}, ARRAY)
      else
        restore(v)
      end
    end
  end
  if nulls then
    local meta = {__jsontype = array and "array" or "object", __jsonnull = nulls}
    ours[meta] = true
    setmetatable(t, meta)
  elseif array then
    setmetatable(t, ARRAY)
  end
end

-- json_decode(text): the value, or nil and a message.  Like Go's, it
-- reads its last argument.
local function decode(...)
  local count = select("#", ...)
  local text = count > 0 and select(count, ...) or nil
  local kind = type(text)
  if kind == "number" then
    text = tostring(text)
  elseif kind ~= "string" then
    return nil, "json_decode: expected a string, got " .. kind
  end
  -- lupa decodes the text from UTF-8 on its way to Python, and refuses
  -- invalid bytes: only then is it repaired.
  local ok, value, marked = pcall(python_decode, text)
  if not ok then value, marked = python_decode(repair(text)) end
  if value == nil then
    if marked then return nil, marked[1] end
    return nil
  end
  if marked == 2 then return value[1] end
  if marked == 1 then
    if rawequal(value, EMPTY_MARK) then return setmetatable({}, ARRAY) end
    restore(value)
  end
  return value
end

local function mark(meta, name)
  return function(t)
    if t == nil then return setmetatable({}, meta) end
    if type(t) ~= "table" then
      error(name .. ": expected a table, got " .. type(t), 2)
    end
    local current = getmetatable(t)
    if current ~= nil and not ours[current] then
      error(name .. ": the table has a metatable of its own; set "
        .. "__jsontype in it instead", 2)
    end
    return setmetatable(t, meta)
  end
end

return {
  encode = encode,
  decode = decode,
  repair = repair,
  null = NULL,
  array = mark(ARRAY, "json_array"),
  object = mark(OBJECT, "json_object"),
}
"""
)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_JSON = json.JSONDecoder(parse_constant=_reject_constant)
# What JSONDecoder.decode calls once it has skipped white space; the
# stubs leave this attribute out.
_SCAN: Callable[[str, int], tuple[Any, int]] = _JSON.scan_once  # type: ignore[attr-defined]


def _may_hold_null_or_empty_array(text: str) -> bool:
    return (
        "null" in text or "[]" in text or _SPACED_EMPTY_ARRAY.search(text) is not None
    )


class LuaJSONDecoder:
    """
    Decode JSON text for Lua: Python parses, Lua receives tables.

    Lua cannot tell an empty list from an empty mapping, nor keep a
    C{None}; when the text may hold either, they are swapped for the two
    marker tables, which the Lua side of the codec turns into an empty
    array and a recorded null.

    @ivar null_mark: the Lua table standing for a JSON C{null}.
    @ivar empty_mark: the Lua table standing for an empty JSON array.
    """

    def __init__(
        self, table_from: Callable[..., Any], null_mark: Any, empty_mark: Any
    ) -> None:
        self._table_from = table_from
        self.null_mark = null_mark
        self.empty_mark = empty_mark

    def decode(self, text: str) -> tuple[Any, Any]:
        """
        Decode C{text}.

        @return: C{(value, marked)} where C{marked} tells whether Lua must
            restore arrays and nulls; C{(None, message)} on invalid JSON.
        """
        try:
            try:
                value, end = _SCAN(text, 0)
            except StopIteration:
                end = -1
            if end != len(text):
                # White space around the value, or no value: the decoder
                # skips the one and words the error for the other.
                value = _JSON.decode(text)
        except (ValueError, RecursionError) as error:
            return None, f"json_decode: invalid JSON: {error}"
        kind = type(value)
        if kind is not dict and kind is not list:
            if kind is str:
                return _scrubbed(value), False
            return value, None if value is None else False
        if _may_hold_null_or_empty_array(text):
            value = self._marked(value)
            if value is self.empty_mark:
                return value, True
        elif "[" not in text:
            return self._to_lua(value), False
        return self._to_lua(value), True

    def _to_lua(self, value: Any) -> Any:
        try:
            return self._table_from(value, recursive=True)
        except UnicodeEncodeError:
            # JSON may escape lone surrogates, which UTF-8 cannot hold.
            return self._table_from(_scrubbed(value), recursive=True)

    def _marked(self, value: Any) -> Any:
        if value is None:
            return self.null_mark
        if isinstance(value, list):
            if not value:
                return self.empty_mark
            return [self._marked(item) for item in value]
        if isinstance(value, dict):
            return {key: self._marked(item) for key, item in value.items()}
        return value


def _scrubbed(value: Any) -> Any:
    """Replace lone surrogates, which UTF-8 cannot encode, by U+FFFD."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        return value
    if isinstance(value, list):
        return [_scrubbed(item) for item in value]
    if isinstance(value, dict):
        return {_scrubbed(key): _scrubbed(item) for key, item in value.items()}
    return value
