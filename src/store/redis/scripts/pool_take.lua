-- Takes the oldest free machine of a manager's pool (JobStore::pool_take).
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace, owner, pool.
-- Returns nil when none is free, or {machine id, machine JSON (nil when unknown)}.

local owner, pool = ARGV[2], ARGV[3]
local id = redis.call('LPOP', pool_key(owner, pool, 'free'))
if not id then return false end
return { id, redis.call('HGET', pool_key(owner, pool, 'machines'), id) }
