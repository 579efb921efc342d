-- Argo CD health of an oms.dev BranchLock. A lock that exists is held: the operator deletes one whose
-- ttlSeconds ran out (audited as lock.expired), so an expired lock never lingers to be judged here.
local hs = { status = "Healthy", message = "" }
local spec = obj.spec or {}
hs.message = (spec.lockType or "?") .. " lock on " .. (spec.branch or "?") .. " held by " .. (spec.holder or "?")
if spec.ttlSeconds ~= nil then
  hs.message = hs.message .. " (ttl " .. spec.ttlSeconds .. "s)"
end
return hs
