-- The jobs marked for cancelling that a manager is to end (JobStore::take_cancels): those
-- it holds, and those no manager holds, which are leased to it now. Marks of jobs no longer
-- live are dropped.
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace, owner.
-- Returns a list of {job JSON, assigned (0/1)}, in id order.

local owner = ARGV[2]
local ids = redis.call('SMEMBERS', key('cancels'))
table.sort(ids, function(a, b) return tonumber(a) < tonumber(b) end)
local out = {}
for _, id in ipairs(ids) do
  local json = redis.call('HGET', key('live'), id)
  if not json then
    redis.call('SREM', key('cancels'), id)
  else
    local holder = redis.call('HGET', key('lease'), id)
    if not holder then
      redis.call('HSET', key('lease'), id, owner)
      redis.call('ZADD', claimed_key(owner), id, id)
      redis.call('SADD', key('claimers'), owner)
      holder = owner
    end
    if holder == owner then
      table.insert(out, { json, redis.call('SISMEMBER', key('assigned'), id) })
    end
  end
end
return out
