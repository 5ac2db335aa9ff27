-- Proxy script for a logfile source that tails an nginx access log in
-- nginx's default "combined" format: each line becomes a row of the
-- nginx_access table of the player's db sink, sent through the relay sink.
--
--   sources:
--     - id: nginx
--       type: logfile
--       transformScript: conf/scripts/nginx-access.lua
--       params: {filePath: /var/log/nginx/access.log}
--
-- Try it on the sample log:
--   replayforge lua conf/scripts/nginx-access.lua \
--     --input conf/samples/nginx-access.log

local SINK = "relay"
local TABLE_PATH = "/rpf-db/nginx_access"

-- The combined format in the standard grok definitions, fields named after
-- nginx's variables. A request line that is not "METHOD target HTTP/x" (an
-- empty request, a TLS handshake sent to the plain-HTTP port) is kept whole
-- as raw_request.
local PATTERN = [[^%{IPORHOST:remote_addr} - %{NOTSPACE:remote_user} ]]
  .. [[\[%{HTTPDATE:time_local}\] ]]
  .. [["(?:%{WORD:method} %{NOTSPACE:request_uri} HTTP/%{NUMBER:http_version}]]
  .. [[|%{DATA:raw_request})" ]]
  .. [[%{INT:status:int} %{INT:body_bytes_sent:int} ]]
  .. [["%{DATA:http_referer}" "%{DATA:http_user_agent}"$]]

-- nginx writes "-" for a value it does not have.
local function present(value)
  if value == "-" or value == "" then
    return nil
  end
  return value
end

local function log_line(content)
  local call, problem = json_decode(content)
  if type(call) ~= "table" then
    return nil, "not a call object: " .. tostring(problem)
  end
  local body = json_decode(call.body or "")
  if type(body) ~= "table" or type(body.content) ~= "string" then
    return nil, "no log line in the call object"
  end
  return body.content
end

function Process(content, emit)
  local line, problem = log_line(content)
  if line == nil then
    warn(problem)
    return
  end
  if line == "" then
    return
  end

  local fields, grok_problem = grok_parse(PATTERN, line)
  if fields == nil then
    warn("not an nginx combined log line (" .. (grok_problem or "no match")
      .. "): " .. string.sub(line, 1, 200))
    return
  end

  local row = {
    timestamp = fields.time_local,
    remote_addr = fields.remote_addr,
    remote_user = present(fields.remote_user),
    method = fields.method,
    request_uri = fields.request_uri,
    path = fields.request_uri and string.match(fields.request_uri, "^[^?]*"),
    http_version = fields.http_version,
    raw_request = present(fields.raw_request),
    status = fields.status,
    body_bytes_sent = fields.body_bytes_sent,
    http_referer = present(fields.http_referer),
    http_user_agent = present(fields.http_user_agent),
  }
  emit(SINK, json_encode({
    method = "POST",
    path = TABLE_PATH,
    params = {},
    headers = {["Content-Type"] = "application/json"},
    body = json_encode(row),
  }))
end
