-- Keeps a failed callback under its job's id, a new one at the young end of the age order
-- and one kept already in its place, then drops the oldest beyond the cap, claimed or not
-- (JobStore::keep_failed_callback).
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace, job id, record JSON, most kept (0: no cap).
-- Returns the ids dropped, oldest first.

local records, order, claims = key('failed-callbacks'), key('failed-order'), key('failed-claims')
local id, most = ARGV[2], tonumber(ARGV[4])
redis.call('HSET', records, id, ARGV[3])
if not redis.call('ZSCORE', order, id) then
  redis.call('ZADD', order, redis.call('INCR', key('failed-next')), id)
end
local dropped = {}
if most > 0 then
  local over = redis.call('ZCARD', order) - most
  if over > 0 then
    dropped = redis.call('ZRANGE', order, 0, over - 1)
    for _, old in ipairs(dropped) do
      redis.call('HDEL', records, old)
      redis.call('HDEL', claims, old)
      redis.call('ZREM', order, old)
    end
  end
end
return dropped
