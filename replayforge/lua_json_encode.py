"""
The Lua source of C{json_encode}, part of the codec of
L{replayforge.lua_json} (whose module documentation gives the rules the
text follows).

It runs in Lua, because walking Lua tables from Python costs more than the
whole encoding does in Lua, and is written for the few things that cost
there: each Lua instruction (the budget's count hook runs at every one),
each function call, and C functions that step through a string a byte at a
time.  Hence:

  - strings are written with C{string.format("%q")}, a plain C loop,
    whenever its result is their JSON text, and UTF-8 is checked once on
    the whole text rather than string by string; only a text that is not
    valid UTF-8 is written again, repairing each string;
  - in arrays and objects, strings and integers are written inline, with
    what precedes them in one piece; object keys keep their text for the
    next call, the buffer too, and the last set of keys of each size its
    sorted order;
  - values made only of tables without metatables, where no code of the
    script can run, are encoded in a coroutine of the codec's own, which
    the count hook does not slow down (a hook belongs to a thread), and
    the number of pieces written is returned so that the sandbox charges
    them to the budget.  Anything else is encoded under the hook.

The chunk uses the locals the codec defines before it (C{repair},
C{first_invalid}, C{NULL}, ...) and defines C{encode}.
"""

from __future__ import annotations

ENCODER_CHUNK = r"""
local escapes = {['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b",
  ["\f"] = "\\f", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t"}
for code = 0, 31 do
  local c = string.char(code)
  if not escapes[c] then escapes[c] = format("\\u%04x", code) end
end
escapes["\127"] = "\\u007f"

-- Strings are written with %q when it gives their JSON text.  Pattern
-- matching steps through a string in Lua's matcher; %q is a plain C loop
-- that escapes exactly the characters JSON must ([%c"\\]): " and \ as
-- JSON does, control characters otherwise.  Its result is therefore the
-- JSON text when it escaped nothing, or when the string holds no control
-- character; only then is the string written with escapes.
local function escaped(s)
  return '"' .. gsub(s, '[%c"\\]', escapes) .. '"'
end

-- A stand-in without math.type (LuaJIT): no number takes the integer path.
local number_kind = math_type or function() return "float" end

local function number_text(v)
  if v ~= v or v == huge or v == -huge then
    error("json_encode: cannot encode NaN or infinity", 0)
  end
  if math_type then
    if math_type(v) == "integer" then return format("%d", v) end
  elseif v == floor(v) and v > -1e21 and v < 1e21 then
    return format("%.0f", v)
  end
  local text = format("%.14g", v)
  if tonumber(text) ~= v then
    text = format("%.16g", v)
    if tonumber(text) ~= v then text = format("%.17g", v) end
  end
  if math_type and not find(text, "[%.eEn]") then text = text .. ".0" end
  return text
end

local is_integer
if math_type then
  is_integer = function(v) return math_type(v) == "integer" end
else
  is_integer = function(v) return v == floor(v) and v > -2^63 and v < 2^63 end
end

local function key_text(k)
  local kind = type(k)
  if kind == "string" then return k end
  if kind == "number" then
    if is_integer(k) then return format("%d", k) end
    return tostring(k)
  end
  if kind == "boolean" then return tostring(k) end
  error("json_encode: cannot use a " .. kind .. " as an object key", 0)
end

local function by_text(a, b) return key_text(a) < key_text(b) end

-- The length of t as an array, or nil when it is not one.
local function array_length(t, nulls)
  local count, max = 0, 0
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or not is_integer(k) then return nil end
    count = count + 1
    if k > max then max = k end
  end
  if nulls then
    for k in pairs(nulls) do
      if type(k) == "number" and rawget(t, k) == nil then
        count = count + 1
        if k > max then max = k end
      end
    end
  end
  if max > 10 and max > 2 * count then return nil end
  return max
end

-- What an encoder for plain values raises on a table with a metatable.
local NOT_PLAIN = {}

-- An encoder: its functions append a value's text to buf after position
-- n and return the new last position.  Strings are written as they are,
-- or repaired first when careful.  In arrays and objects, strings and
-- integers are written inline (the code of quote repeated), with what
-- precedes them in one piece: each function call costs more than the
-- work it would do.  Short object keys keep their text for next time.
-- With plain_only, a table with a metatable raises NOT_PLAIN: nothing
-- but the encoder's own code runs then (see encode).
local function encoder(careful, plain_only)
  local encode_value
  local names, names_count = {}, 0
  -- The last set of string keys sorted, by how many there are.
  local orders = {}

  local function quote(s)
    if careful then s = repair(s) end
    local quoted = format("%q", s)
    if #quoted ~= #s + 2 and s ~= last_result and not match(s, "^%C*$") then
      quoted = escaped(s)
    end
    return quoted
  end

  -- The text of key k and its colon.
  local function name_text(k)
    local text = quote(key_text(k)) .. ":"
    if #text <= NAME_LENGTH_KEPT then
      if names_count >= NAMES_KEPT then names, names_count = {}, 0 end
      names[k] = text
      names_count = names_count + 1
    end
    return text
  end

  local function encode_array(t, length, buf, n, depth)
    local separator = "["
    for i = 1, length do
      local v = t[i]
      local kind = type(v)
      n = n + 1
      if kind == "string" then
        if careful then v = repair(v) end
        local quoted = format("%q", v)
        if #quoted ~= #v + 2 and v ~= last_result and not match(v, "^%C*$") then
          quoted = escaped(v)
        end
        buf[n] = separator .. quoted
      elseif kind == "number" and number_kind(v) == "integer" then
        buf[n] = separator .. v
      else
        buf[n] = separator
        n = encode_value(v, buf, n, depth)
      end
      separator = ","
    end
    n = n + 1
    buf[n] = length == 0 and "[]" or "]"
    return n
  end

  -- Write t's members, keys holding its keys from 1 to count, sorted.
  local function encode_object(t, keys, count, buf, n, depth)
    local separator = "{"
    for i = 1, count do
      local k = keys[i]
      local v = t[k]
      local kind = type(v)
      local name = names[k] or name_text(k)
      n = n + 1
      if kind == "string" then
        if careful then v = repair(v) end
        local quoted = format("%q", v)
        if #quoted ~= #v + 2 and v ~= last_result and not match(v, "^%C*$") then
          quoted = escaped(v)
        end
        buf[n] = separator .. name .. quoted
      elseif kind == "number" and number_kind(v) == "integer" then
        buf[n] = separator .. name .. v
      else
        buf[n] = separator .. name
        n = encode_value(v, buf, n, depth)
      end
      separator = ","
    end
    n = n + 1
    buf[n] = count == 0 and "{}" or "}"
    return n
  end

  local function encode_table(t, buf, n, depth)
    if depth > NESTING_LIMIT then
      error("json_encode: tables nested too deeply (or a cycle)", 0)
    end
    local meta = getmetatable(t)
    if meta == nil then
      -- A table without metatable: a string key makes it an object.
      local first = next(t)
      if first == nil then
        n = n + 1
        buf[n] = "{}"
        return n
      end
      if type(first) == "string" then
        local keys, count, plain = {}, 0, true
        for k in next, t do
          count = count + 1
          keys[count] = k
          if type(k) ~= "string" then plain = false end
        end
        if not plain then
          sort(keys, by_text)
        else
          -- Tables of one kind come in a row with the same keys: sorting
          -- costs more than seeing that t has all the keys of the last
          -- sorted set of its size (it has no others then).
          local order = orders[count]
          local i = order and 1 or count + 1
          while i <= count and t[order[i]] ~= nil do i = i + 1 end
          if order and i > count then
            keys = order
          else
            sort(keys)
            if count <= ORDERS_KEPT then orders[count] = keys end
          end
        end
        return encode_object(t, keys, count, buf, n, depth)
      end
    elseif plain_only then
      error(NOT_PLAIN, 0)
    end
    local kind, nulls
    if type(meta) == "table" then
      kind, nulls = rawget(meta, "__jsontype"), rawget(meta, "__jsonnull")
      if type(nulls) ~= "table" then nulls = nil end
    end
    if kind ~= "object" and (kind == "array" or next(t) ~= nil) then
      local length = array_length(t, nulls)
      if length then return encode_array(t, length, buf, n, depth) end
    end
    local keys, count, plain = {}, 0, true
    for k in pairs(t) do
      count = count + 1
      keys[count] = k
      if plain and type(k) ~= "string" then plain = false end
    end
    if nulls then
      for k in pairs(nulls) do
        if rawget(t, k) == nil then
          count = count + 1
          keys[count] = k
          if plain and type(k) ~= "string" then plain = false end
        end
      end
    end
    if plain then sort(keys) else sort(keys, by_text) end
    return encode_object(t, keys, count, buf, n, depth)
  end

  function encode_value(v, buf, n, depth)
    local kind = type(v)
    if kind == "table" and not rawequal(v, NULL) then
      return encode_table(v, buf, n, depth + 1)
    end
    n = n + 1
    if kind == "string" then
      buf[n] = quote(v)
    elseif kind == "number" then
      buf[n] = number_text(v)
    elseif kind == "boolean" then
      buf[n] = v and "true" or "false"
    else
      buf[n] = "null"
    end
    return n
  end

  return encode_value
end

local encode_valid, encode_repaired = encoder(false, false), encoder(true, false)
local encode_plain = encoder(false, true)

-- Encode v, raising on what has no JSON form.  Strings are first written
-- as they are, and the text checked once: JSON puts an ASCII character on
-- both sides of every string, so the text is valid UTF-8 exactly when
-- every string in it is.  When one is not, strings are repaired one by
-- one.
local function encode_any(v)
  local buf = {}
  local text = concat(buf, "", 1, encode_valid(v, buf, 0, 0))
  if first_invalid(text, 1) then
    buf = {}
    text = concat(buf, "", 1, encode_repaired(v, buf, 0, 0))
  end
  return text
end

-- The buffer of plain encodings, kept from one to the next unless its
-- text was long: growing a new one costs more than encoding a row.
local plain_buffer = {}

-- The text of v and the number of pieces it was written in, or nil when
-- v holds a table with a metatable, or anything encode_any would repair
-- or refuse.
local function encode_plain_text(v)
  local n = encode_plain(v, plain_buffer, 0, 0)
  local text = concat(plain_buffer, "", 1, n)
  if #text > RESULT_LENGTH_KEPT then plain_buffer = {} end
  if first_invalid(text, 1) then return nil end
  return text, n
end

-- Run f(arg), then whatever the next resume hands in, each in pcall.
local function run_forever(f, arg)
  while true do
    f, arg = yield(pcall(f, arg))
  end
end

-- A script's calls run under the instruction budget's count hook, which
-- slows every Lua instruction down.  A hook belongs to a thread: work in
-- which no code of the script can run (encoding values made of tables
-- without metatables) is done in a thread of the codec's own, without
-- hook.  LuaJIT keeps one hook for all threads: there, everything runs
-- under it.
local free_thread
local function new_free_thread()
  free_thread = create(run_forever)
  sethook(free_thread)
end
if not jit then new_free_thread() end

-- f(arg) in the thread without hook: true and its results, or false and
-- its error; nil when that thread cannot run it (LuaJIT, or a finalizer
-- called from it while it runs).
local function without_hook(f, arg)
  if not free_thread or status(free_thread) ~= "suspended" then return nil end
  local resumed, ok, first, second = resume(free_thread, f, arg)
  if not resumed then
    -- Only a memory error ends the thread.
    new_free_thread()
    return false, ok
  end
  return ok, first, second
end

-- Encode v: its text, and the pieces written without hook (or 0), which
-- the caller charges to the budget.
local function encode(v)
  local ok, text, pieces = without_hook(encode_plain_text, v)
  if not (ok and text) then text, pieces = encode_any(v), 0 end
  if #text <= RESULT_LENGTH_KEPT then last_result = text end
  return text, pieces
end
"""
