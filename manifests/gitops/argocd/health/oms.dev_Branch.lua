-- Argo CD health of an oms.dev Branch, from its phase and the operator's kstatus conditions.
-- READY is Healthy: the branch is indexed and usable; whether and when it merges (a window, a block)
-- is in the message, and a branch waiting for a merge window is not unhealthy.
local hs = { status = "Progressing", message = "Waiting for the operator to initialise the branch" }
local function condition(name)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == name then
      return c
    end
  end
  return nil
end
if obj.status == nil or obj.status.phase == nil then
  return hs
end
local phase = obj.status.phase
local ready = condition("Ready")
local message = phase
if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
  message = ready.message
end
if phase == "LOCKED_FOR_WRITE" then
  local reconciling = condition("Reconciling")
  hs.message = (reconciling ~= nil and reconciling.message) or "Indexing in progress"
elseif phase == "ERROR" then
  local stalled = condition("Stalled")
  hs.status = "Degraded"
  hs.message = (stalled ~= nil and stalled.message) or "Indexing failed"
elseif phase == "READY" then
  hs.status = "Healthy"
  local merge = obj.status.merge
  if merge ~= nil and merge.decision ~= nil then
    hs.message = "Indexed; auto-merge " .. merge.decision .. ": " .. (merge.message or "")
  else
    hs.message = message
  end
elseif phase == "ACTIVE" then
  hs.status = "Healthy"
  hs.message = message
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. phase
end
return hs
