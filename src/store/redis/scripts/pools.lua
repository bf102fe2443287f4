-- Every pool of every live manager, for /pool (JobStore::pools).
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace.
-- Returns {pool, total ids, free ids} for each pool, managers in name order and each one's
-- pools in name order.

local owners = redis.call('ZRANGEBYSCORE', key('owners'), '(' .. now_ms(), '+inf')
table.sort(owners)
local out = {}
for _, owner in ipairs(owners) do pool_views(owner, out) end
return out
