-- Writes back a live job its owner holds, and whether it is assigned
-- (JobStore::update_live).
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace, job id, owner, job JSON, assigned (0/1).
-- Returns 1, or 0 when the lease is lost.

local id, owner = ARGV[2], ARGV[3]
if not held(id, owner) then return 0 end
redis.call('HSET', key('live'), id, ARGV[4])
if ARGV[5] == '1' then
  redis.call('SADD', key('assigned'), id)
else
  redis.call('SREM', key('assigned'), id)
end
return 1
