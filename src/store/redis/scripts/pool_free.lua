-- Puts a machine of a manager's pool on the free list, with its JSON as given, unless it is
-- free already (JobStore::pool_free).
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace, owner, pool, machine id, machine JSON.
-- Returns 1, or 0 when the machine is not a member of the pool.

local owner, pool, id = ARGV[2], ARGV[3], ARGV[4]
if redis.call('SISMEMBER', pools_key(owner), pool) == 0 then return 0 end
if not redis.call('LPOS', pool_key(owner, pool, 'total'), id) then return 0 end
if not redis.call('LPOS', pool_key(owner, pool, 'free'), id) then
  redis.call('RPUSH', pool_key(owner, pool, 'free'), id)
  redis.call('HSET', pool_key(owner, pool, 'machines'), id, ARGV[5])
end
return 1
