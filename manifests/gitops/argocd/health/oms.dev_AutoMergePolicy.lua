-- Argo CD health of an oms.dev AutoMergePolicy, from the operator's kstatus conditions.
-- A policy that does not merge on purpose (disabled, dry run, frozen) is Suspended, not Degraded:
-- it is doing what Git says. A rejected one is Degraded: the operator ignores it until Git changes.
local hs = { status = "Progressing", message = "Waiting for the operator to observe the policy" }
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
if obj.status == nil or obj.status.observedGeneration == nil then
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end
local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.message
  return hs
end
local ready = condition("Ready")
if ready == nil or ready.status ~= "True" then
  if ready ~= nil then
    hs.message = ready.message
  end
  return hs
end
local spec = obj.spec or {}
local governed = obj.status.governedBranches or 0
local matched = obj.status.matchedBranches or 0
local counts = " (governs " .. governed .. " of " .. matched .. " matching branches)"
if spec.enabled == false then
  hs.status = "Suspended"
  hs.message = "Auto-merge disabled" .. counts
elseif spec.freeze ~= nil then
  hs.status = "Suspended"
  hs.message = "Frozen: " .. (spec.freeze.reason or "")
  if spec.freeze["until"] ~= nil then
    hs.message = hs.message .. " (until " .. spec.freeze["until"] .. ")"
  end
  hs.message = hs.message .. counts
elseif spec.dryRun == true then
  hs.status = "Suspended"
  hs.message = "Dry run: records WouldMerge instead of merging" .. counts
else
  hs.status = "Healthy"
  hs.message = ready.message .. counts
end
return hs
