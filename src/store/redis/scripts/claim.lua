-- Takes the head of the queue for a manager (JobStore::claim_next): the job is leased to it
-- and added to its claimed set, and a claim an earlier holder still had on it is dropped.
-- Queue entries whose job is no longer live are dropped on the way.
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace, owner.
-- Returns nil when no live job is queued, or {job JSON, assigned (0/1)}.

local owner = ARGV[2]
while true do
  local id = redis.call('LPOP', key('queue'))
  if not id then return false end
  local json = redis.call('HGET', key('live'), id)
  if json then
    local previous = redis.call('HGET', key('lease'), id)
    if previous and previous ~= owner then unclaim(previous, id) end
    redis.call('HSET', key('lease'), id, owner)
    redis.call('ZADD', claimed_key(owner), id, id)
    redis.call('SADD', key('claimers'), owner)
    return { json, redis.call('SISMEMBER', key('assigned'), id) }
  end
end
