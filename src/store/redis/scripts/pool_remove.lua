-- Removes a machine from a manager's pool and its free list, and forgets its JSON
-- (JobStore::pool_remove).
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace, owner, pool, machine id.
-- Returns 1, or 0 when it was not in the pool.

local owner, pool, id = ARGV[2], ARGV[3], ARGV[4]
if redis.call('SISMEMBER', pools_key(owner), pool) == 0 then return 0 end
local removed = redis.call('LREM', pool_key(owner, pool, 'total'), 0, id)
redis.call('LREM', pool_key(owner, pool, 'free'), 0, id)
redis.call('HDEL', pool_key(owner, pool, 'machines'), id)
if removed > 0 then return 1 end
return 0
