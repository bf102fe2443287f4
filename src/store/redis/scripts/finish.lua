-- Moves a job its owner holds from the live jobs to the dead ones, as given, dropping the
-- oldest dead jobs beyond max_dead (JobStore::finish). A finish sent again after it took
-- effect (its answer lost: Redis paused or slow past the call's budget, and the caller
-- retried) finds the very text it sent among the dead, and succeeds, so that its caller
-- goes on to the callback.
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace, job id, owner, job JSON, max_dead (0: keep all).
-- Returns 1, or 0 when the lease is lost.

local id, owner = ARGV[2], ARGV[3]
if not held(id, owner) then
  if redis.call('HEXISTS', key('live'), id) == 0
    and redis.call('HGET', key('dead'), id) == ARGV[4] then
    return 1
  end
  return 0
end
redis.call('HDEL', key('live'), id)
forget_output(id)
redis.call('SREM', key('cancels'), id)
redis.call('HDEL', key('lease'), id)
redis.call('SREM', key('assigned'), id)
unclaim(owner, id)
push_dead(id, ARGV[4], tonumber(ARGV[5]))
return 1
