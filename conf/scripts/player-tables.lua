-- Player script: store each captured webhook in the "events" db sink, in a
-- table named after the provider (/hooks/github -> table github).
local function first(headers, name)
  local values = headers and headers[name]
  if type(values) == "table" then
    return values[1]
  end
  return values
end

function Process(content, emit)
  local call = json_decode(content)
  local provider = string.match(call.path or "", "^/hooks/([%w_]+)")
  if provider == nil then
    warn("no provider in path " .. tostring(call.path))
    return
  end
  local payload, err = json_decode(call.body or "")
  if type(payload) ~= "table" then
    warn("payload of " .. provider .. " is not a JSON object: " .. tostring(err))
    return
  end

  local row = {
    id = first(call.headers, "X-Delivery-Id") or payload.id,
    event = first(call.headers, "X-Event-Type") or payload.type,
    received_at = os.time(),
    payload = payload,
  }
  emit("events", json_encode({
    method = "POST",
    path = "/rpf-db/" .. provider,
    headers = {},
    params = {},
    body = json_encode(row),
  }))
end
