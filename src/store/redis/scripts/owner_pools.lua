-- One manager's pools (JobStore::owner_pools).
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace, owner.
-- Returns {pool, total ids, free ids} for each of its pools, in name order.

local out = {}
pool_views(ARGV[2], out)
return out
