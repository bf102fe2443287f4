-- Ends a sender's claim on a failed callback: forgets it when delivered, else rewrites it
-- to wait again (JobStore::settle_failed_callback).
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace, job id, owner, record JSON or '' when delivered.
-- Returns 1, or 0 when the owner holds no claim on it (nothing changed).

local id, owner = ARGV[2], ARGV[3]
local claims = key('failed-claims')
local claim = redis.call('HGET', claims, id)
if not claim or string.match(claim, '^%d+ (.*)$') ~= owner then return 0 end
if redis.call('HEXISTS', key('failed-callbacks'), id) == 0 then
  redis.call('HDEL', claims, id)
  return 0
end
redis.call('HDEL', claims, id)
if ARGV[4] == '' then
  redis.call('HDEL', key('failed-callbacks'), id)
  redis.call('ZREM', key('failed-order'), id)
else
  redis.call('HSET', key('failed-callbacks'), id, ARGV[4])
end
return 1
