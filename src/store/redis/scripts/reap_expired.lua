-- Forgets every manager whose lease ran out, and every one holding claims without being
-- registered (it never heartbeat, or was forgotten), as drop_owner in the prelude does
-- (JobStore::reap_expired).
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace.
-- Returns {owners, requeued ids, machines}, owners in name order; machines flattened as
-- owner, pool, machine id, machine JSON (false when unknown).

local expired = redis.call('ZRANGEBYSCORE', key('owners'), '-inf', now_ms())
local seen = {}
for _, owner in ipairs(expired) do seen[owner] = true end
-- Claims by a manager that never heartbeat (or was forgotten) are orphans too.
for _, owner in ipairs(redis.call('SMEMBERS', key('claimers'))) do
  if not seen[owner] and not redis.call('ZSCORE', key('owners'), owner) then
    table.insert(expired, owner)
    seen[owner] = true
  end
end
table.sort(expired)
local requeued, machines = {}, {}
for _, owner in ipairs(expired) do drop_owner(owner, requeued, machines) end
return { expired, requeued, machines }
