-- Proxy script: forward every captured call to the relay sink, except the
-- load balancer's health checks, which nobody wants to replay.
function Process(content, emit)
  local call, err = json_decode(content)
  if call == nil then
    warn("not a call object: " .. err)
    return
  end
  if call.path == "/healthz" then
    return
  end
  emit("relay", content)
end
