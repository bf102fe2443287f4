-- Puts a job its owner holds back at the front of the queue, unassigned and not leased, as
-- given (JobStore::requeue); a job to be cancelled is left out of the queue.
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace, job id, owner, job JSON.
-- Returns 1, or 0 when the lease is lost.

local id, owner = ARGV[2], ARGV[3]
if not held(id, owner) then return 0 end
redis.call('HSET', key('live'), id, ARGV[4])
redis.call('SREM', key('assigned'), id)
redis.call('HDEL', key('lease'), id)
unclaim(owner, id)
queue_front(id)
return 1
