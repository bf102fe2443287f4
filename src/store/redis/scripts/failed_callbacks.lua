-- Lists the failed callbacks, oldest first, each with its claimant while the claim holds
-- (JobStore::failed_callbacks).
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace.
-- Returns { {record JSON, claimant or false}, ... }.

local records, claims = key('failed-callbacks'), key('failed-claims')
local now = now_ms()
local out = {}
for _, id in ipairs(redis.call('ZRANGE', key('failed-order'), 0, -1)) do
  local json = redis.call('HGET', records, id)
  if json then
    local claimant = false
    local claim = redis.call('HGET', claims, id)
    if claim then
      local until_ms, owner = string.match(claim, '^(%d+) (.*)$')
      if until_ms and tonumber(until_ms) > now then claimant = owner end
    end
    table.insert(out, { json, claimant })
  end
end
return out
