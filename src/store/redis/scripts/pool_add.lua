-- Adds a machine to a manager's pool, busy (not on the free list), making the pool if it
-- is new (JobStore::pool_add). A machine without an id only makes the pool; one already in
-- the pool is left as it is.
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace, owner, pool, machine id ('' when it has none), machine JSON.
-- Returns 1.

local owner, pool, id = ARGV[2], ARGV[3], ARGV[4]
redis.call('SADD', pools_key(owner), pool)
if id ~= '' and not redis.call('LPOS', pool_key(owner, pool, 'total'), id) then
  redis.call('RPUSH', pool_key(owner, pool, 'total'), id)
  redis.call('HSET', pool_key(owner, pool, 'machines'), id, ARGV[5])
end
return 1
