"""
The trusted Lua half of a script's runtime: sandbox, budget and calls.

L{SANDBOX_CHUNK} runs once per runtime with the full standard library,
before any user code.  It builds the environment the script sees, keeps
C{debug.sethook} and the real C{load} to itself, and returns the few
functions L{replayforge.lua.LuaScript} calls: load the script, run
C{Process}/C{TimerHandler}/C{TransformBatch}, tell what is defined.

The sandbox (the default) holds: the base functions except C{dofile},
C{loadfile}, C{require} and C{collectgarbage} (a version limited to
C{"collect"}, C{"count"}, C{"step"} and C{"isrunning"} stands in);
C{load} of text only, into the sandbox unless given another table;
C{string} without C{dump} (also as the strings' own methods), C{table},
C{math}, C{utf8}, C{coroutine}; C{os.getenv}, C{os.time}, C{os.date},
C{os.clock}, C{os.difftime}; and the helpers; C{setmetatable} refuses
C{__gc}, since finalizers run where no budget can stop them.  No C{io}, no C{debug}
library, no C{package}, no Python object.  With C{unsafeLua} the script
sees the whole standard library instead (C{debug} is then the logging
function with the library's functions as fields), still without lupa's
C{python} module.

The budget: a count hook fires every C{step} instructions of any
coroutine and adds them to the call's total; past the budget every hook
raises "instruction budget exceeded".  The script's C{pcall}, C{xpcall}
and C{coroutine.resume} hand that error on instead of returning it, and
an C{xpcall} handler is skipped once it is raised.  C functions cannot be
interrupted: a single C{string.find} with a pathological pattern runs to
its end.  C{json_encode} writes values made of tables without metatables
in a thread without the hook (L{replayforge.lua_json_encode}), and the
pieces it wrote are charged to the total instead; C{json_decode} and the
helpers written in Python are charged an instruction a byte of the text
they are given.

Only Lua 5.1 syntax is used, so LuaJIT loads it too; there the JIT
compiler is turned off, since compiled loops run no hooks.
"""

from __future__ import annotations

# Arguments: a settings table, the host's Python functions, the JSON codec.
SANDBOX_CHUNK = r"""
local settings, host, codec = ...
local error, getmetatable, pairs, pcall, rawget, select, setmetatable,
  tonumber, tostring, type, xpcall =
  error, getmetatable, pairs, pcall, rawget, select, setmetatable,
  tonumber, tostring, type, xpcall
local concat, find, match, sort, sub = table.concat, string.find,
  string.match, table.sort, string.sub
local floor = math.floor
local unpack = table.unpack or unpack
local sethook, getinfo = debug.sethook, debug.getinfo
local real_load, real_coroutine = load, coroutine
local repair, python_log = codec.repair, host.log

local BUDGET_MESSAGE = "instruction budget exceeded"
local MEMORY_MESSAGE = "not enough memory"
local MAX_UNPACK = 512
local INSTRUCTIONS_PER_PIECE = 30
local budget, step = settings.budget, settings.step
local script_source = settings.source
local script_short = sub(script_source, 2)
local spent, exhausted = 0, false

-- lupa's own module reaches into Python: no script needs it, in any mode.
python = nil
package.loaded.python = nil

if jit then
  jit.off()
  -- LuaJIT does not collect before refusing an allocation, so garbage
  -- would reach the memory cap: collect without pausing.
  collectgarbage("setpause", 100)
end

local function on_count()
  spent = spent + step
  if spent >= budget then
    exhausted = true
    -- Point at the script's line, not at a wrapper of this chunk.
    local info = getinfo(2, "S")
    error(BUDGET_MESSAGE, info and info.source == script_source and 2 or 0)
  end
end

local function arm()
  spent, exhausted = 0, false
  sethook(on_count, "", step)
end

local function copy(source, without)
  local result = {}
  for key, value in pairs(source) do
    if not (without and without[key]) then result[key] = value end
  end
  return result
end

-- What the script's pcall and friends return, unless the budget is spent.
local function pass_on(ok, ...)
  if not ok and exhausted then
    local message = ...
    if type(message) ~= "string" or not find(message, BUDGET_MESSAGE, 1, true) then
      message = BUDGET_MESSAGE
    end
    error(message, 0)
  end
  return ok, ...
end

local function safe_pcall(f, ...)
  return pass_on(pcall(f, ...))
end

local function safe_xpcall(f, handler, ...)
  if type(handler) ~= "function" then
    error("bad argument #2 to 'xpcall' (function expected)", 2)
  end
  local function guarded(message)
    if exhausted then return message end
    return handler(message)
  end
  return pass_on(xpcall(f, guarded, ...))
end

local coroutine_library = copy(real_coroutine)
local create, resume = real_coroutine.create, real_coroutine.resume
-- A coroutine counts from zero: what it runs before its first hook would
-- go uncounted, so creating one is charged a full step.
function coroutine_library.create(f)
  local thread = create(f)
  sethook(thread, on_count, "", step)
  on_count()
  return thread
end
function coroutine_library.resume(thread, ...)
  return pass_on(resume(thread, ...))
end
local function unwrap(ok, ...)
  if not ok then error((...), 0) end
  return ...
end
function coroutine_library.wrap(f)
  local thread = coroutine_library.create(f)
  return function(...)
    return unwrap(coroutine_library.resume(thread, ...))
  end
end

local function logger(level, separator)
  return function(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    python_log(level, repair(concat(parts, separator)))
  end
end

-- Work done where the hook cannot count it, charged to the call's total;
-- the error points at the script's call of the helper.
local function charge(instructions)
  spent = spent + instructions
  if spent >= budget then
    exhausted = true
    error(BUDGET_MESSAGE, 3)
  end
end

local function json_encode(...)
  local count = select("#", ...)
  local ok, text, pieces = pcall(codec.encode, (select(count > 0 and count or 1, ...)))
  if ok then
    -- What the codec wrote where the hook does not count, charged at
    -- about what the hook counts for it.
    charge(pieces * INSTRUCTIONS_PER_PIECE)
    return text
  end
  if exhausted then error(text, 0) end
  return nil, text
end

-- Python decodes and matches outside the hook's sight: each call is charged
-- an instruction a byte of the text it reads, about what they cost.
local decode = codec.decode
local function json_decode(text, ...)
  if type(text) == "string" then charge(#text) end
  return decode(text, ...)
end

-- XXX: a grok match that runs into its time limit costs its 50 ms but is
-- charged only its text's length; charging the time a helper took (or a
-- fixed amount for a timed-out match) would bound a script looping on one.
local function charged(...)
  local total = 0
  for i = 1, select("#", ...) do
    local value = select(i, ...)
    if type(value) == "string" then total = total + #value end
  end
  charge(total)
end

local helpers = {
  json_encode = json_encode,
  json_decode = json_decode,
  json_null = codec.null,
  json_array = codec.array,
  json_object = codec.object,
  trace = logger("debug", " "),
  info = logger("info", " "),
  warn = logger("warn", " "),
  print = logger("debug", "\t"),
}
local log_debug, log_error = logger("debug", " "), logger("error", " ")

local env
if settings.unsafe then
  env = copy(_G)
  env.debug = setmetatable(copy(debug), {
    __call = function(_, ...) return log_debug(...) end,
  })
  env.load = function(chunk, name, mode, chunk_env)
    return real_load(chunk, name, mode, chunk_env or env)
  end
else
  local collect = collectgarbage
  local allowed = {collect = true, count = true, step = true, isrunning = true}
  -- XXX: a pattern match is a single C call the budget cannot stop; wrap
  -- string.find, match, gmatch and gsub to refuse patterns with many
  -- repetitions on long subjects if scripts ever stall the reactor so.
  local sandbox_string = copy(string, {dump = true})
  -- A finalizer runs with hooks off, at any later allocation: a loop there
  -- would hold the daemon with no budget to stop it.
  local set = setmetatable
  local function sandbox_setmetatable(value, metatable)
    if type(metatable) == "table" and rawget(metatable, "__gc") ~= nil then
      error("setmetatable: __gc finalizers are not allowed here", 2)
    end
    return set(value, metatable)
  end
  getmetatable("").__index = sandbox_string
  env = {
    _VERSION = _VERSION, assert = assert, error = error, ipairs = ipairs,
    next = next, pairs = pairs, rawequal = rawequal, rawget = rawget,
    rawlen = rawlen, rawset = rawset, select = select,
    setmetatable = sandbox_setmetatable, tonumber = tonumber,
    tostring = tostring,
    type = type, unpack = unpack,
    string = sandbox_string, table = copy(table), math = copy(math),
    utf8 = utf8 and copy(utf8), bit = bit and copy(bit),
    os = {
      getenv = os.getenv, time = os.time, date = os.date,
      clock = os.clock, difftime = os.difftime,
    },
    debug = log_debug,
  }
  env.table.unpack = unpack
  env.getmetatable = function(value)
    if type(value) == "string" then return nil end
    return getmetatable(value)
  end
  env.load = function(chunk, name, mode, chunk_env)
    return real_load(chunk, name, "t", chunk_env or env)
  end
  env.collectgarbage = function(option, ...)
    option = option or "collect"
    if not allowed[option] then
      error("collectgarbage: option '" .. tostring(option)
        .. "' is not allowed here", 2)
    end
    return collect(option, ...)
  end
end
env.pcall, env.xpcall = safe_pcall, safe_xpcall
env.coroutine = coroutine_library
for name, value in pairs(helpers) do env[name] = value end
-- Helpers written in Python hand back their values boxed in one table,
-- or after the mark for values that needed no box.
local direct = host.direct
local function unbox(box, ...)
  if rawequal(box, direct) then return ... end
  return unpack(box, 2, box[1] + 1)
end
for name, helper in pairs(host.helpers) do
  env[name] = function(...)
    charged(...)
    return unbox(helper(...))
  end
end
if settings.error_logs then env.error = log_error end
env._G = env

-- The message handler of every call: the message, and the script's line.
local DESCRIBED = {}
local function describe(err)
  sethook()
  local message
  if type(err) == "string" then
    message = err
  elseif type(err) == "number" then
    message = tostring(err)
  else
    message = "(error object is a " .. type(err) .. " value)"
  end
  message = repair(sub(message, 1, 2000))
  local where, line, rest = match(message, "^(.-):(%d+): (.*)$")
  if where == script_short then
    return {DESCRIBED, message, tonumber(line)}
  end
  for level = 2, 200 do
    local info = getinfo(level, "Sl")
    if not info then break end
    if info.source == script_source and info.currentline > 0 then
      line = info.currentline
      return {DESCRIBED, script_short .. ":" .. line .. ": " .. message, line}
    end
  end
  return {DESCRIBED, script_short .. ": " .. message, nil}
end

-- false, the message and the line (or nil) of a failed call.
local function failure(err)
  sethook()
  if type(err) == "table" and err[1] == DESCRIBED then
    return false, err[2], err[3]
  end
  local message = tostring(err)
  if message == MEMORY_MESSAGE then
    collectgarbage()
    message = message .. " (memory limit " .. settings.memory_limit .. ")"
  end
  return false, script_short .. ": " .. message, nil
end

-- What the call emits, in one table kept from call to call.  Nothing here
-- may allocate at the end of a call, where memory may have run out.
local emitted, emitted_count, emitted_last = {}, 0, 0

local function begin()
  -- Python has read what the last call emitted by now.
  for i = 1, emitted_last do emitted[i] = nil end
  emitted_count, emitted_last = 0, 0
  arm()
end

local function emit(...)
  local count = select("#", ...)
  if count < 2 then error("emit expects a sink and a content", 2) end
  local sink, content = select(count - 1, ...)
  local kind = type(content)
  if kind == "number" then
    content = tostring(content)
  elseif kind ~= "string" then
    error("emit: content must be a string, got " .. kind, 2)
  end
  kind = type(sink)
  if kind == "number" then
    sink = tostring(sink)
  elseif kind ~= "string" then
    error("emit: sink must be a string, got " .. kind, 2)
  end
  emitted[emitted_count + 1] = repair(sink)
  emitted[emitted_count + 2] = repair(content)
  emitted_count = emitted_count + 2
end

-- true, the number of values, then sink and content pairs (or one table
-- holding them when there are many).
local function finish(ok, err)
  local count = emitted_count
  emitted_count, emitted_last = 0, count
  if not ok then return failure(err) end
  sethook()
  if count == 0 then return true, 0 end
  if count > MAX_UNPACK then return true, count, emitted end
  return true, count, unpack(emitted, 1, count)
end

local function missing(name)
  return false, script_short .. ": the script defines no " .. name
    .. " function", nil
end

local function process(content)
  local f = rawget(env, "Process")
  if type(f) ~= "function" then return missing("Process") end
  begin()
  return finish(xpcall(f, describe, content, emit))
end

local function timer()
  local f = rawget(env, "TimerHandler")
  if type(f) ~= "function" then return missing("TimerHandler") end
  begin()
  return finish(xpcall(f, describe, emit))
end

-- Call TransformBatch; gather what it returned as Go did: the string and
-- number values at the message table's integer keys, in order (the rest is
-- left out and counted), the request's path and string headers.
local function transform_checked(f, messages, request)
  local new_messages, new_request = f(messages, request)
  if type(new_messages) ~= "table" then
    error("TransformBatch returned " .. type(new_messages)
      .. " instead of the messages table", 0)
  end
  if type(new_request) ~= "table" then new_request = request end
  local keys, key_count, skipped = {}, 0, 0
  for key in pairs(new_messages) do
    if type(key) == "number" and key >= 1 and key == floor(key) then
      key_count = key_count + 1
      keys[key_count] = key
    else
      skipped = skipped + 1
    end
  end
  sort(keys)
  local texts, count = {}, 0
  for i = 1, key_count do
    local value = new_messages[keys[i]]
    local kind = type(value)
    if kind == "string" or kind == "number" then
      count = count + 1
      texts[count] = kind == "string" and repair(value) or tostring(value)
    else
      skipped = skipped + 1
    end
  end
  local path = new_request.path
  if type(path) == "number" then path = tostring(path) end
  if type(path) ~= "string" then path = "" end
  local headers, flat, flat_count = new_request.headers, {}, 0
  if type(headers) == "table" then
    for name, value in pairs(headers) do
      if type(value) == "number" then value = tostring(value) end
      if type(name) == "string" and type(value) == "string" then
        flat[flat_count + 1] = repair(name)
        flat[flat_count + 2] = repair(value)
        flat_count = flat_count + 2
      end
    end
  end
  return texts, count, repair(path), flat, flat_count, skipped
end

local function transform(messages, path)
  local f = rawget(env, "TransformBatch")
  if type(f) ~= "function" then return missing("TransformBatch") end
  local request = {path = path, headers = {}}
  arm()
  local ok, texts, count, new_path, headers, header_count, skipped =
    xpcall(transform_checked, describe, f, messages, request)
  if not ok then return failure(texts) end
  sethook()
  return true, texts, count, new_path, headers, header_count, skipped
end

-- Compile the script and run its main chunk and init().
local function start(code)
  local chunk, message = real_load(code, script_source, "t", env)
  if not chunk then return false, repair(message), nil, "syntax" end
  script_short = getinfo(chunk, "S").short_src
  arm()
  local ok, err = xpcall(chunk, describe)
  if not ok then return failure(err) end
  local init = rawget(env, "init")
  if type(init) == "function" then
    arm()
    ok, err = xpcall(init, describe)
    if not ok then return failure(err) end
  end
  sethook()
  return true, nil
end

local function defines(name)
  return type(rawget(env, name)) == "function"
end

-- The host hands in arguments first when memory is short (stage, with the
-- cap lifted), then makes the call without any (run_staged).
local entries = {process = process, timer = timer, transform = transform,
  start = start}
local staged, staged_count = nil, 0

local function stage(...)
  staged, staged_count = {...}, select("#", ...)
end

local function run_staged(name)
  local args, count = staged, staged_count
  staged, staged_count = nil, 0
  return entries[name](unpack(args, 1, count))
end

return {start = start, process = process, timer = timer,
  transform = transform, defines = defines, stage = stage,
  run_staged = run_staged}
"""
