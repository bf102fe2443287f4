-- Adds a job whose id is already known to the live jobs and the tail of the queue, not
-- leased and not assigned, as the writer of its output file, unless the queue is full (JobStore::enqueue).
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace, job id, job JSON, max_queued (0: no limit), output file.
-- Returns -1 when added, or the queue's length when it is full.

local max = tonumber(ARGV[4])
if max > 0 then
  local n = redis.call('LLEN', key('queue'))
  if n >= max then return n end
end
redis.call('HSET', key('live'), ARGV[2], ARGV[3])
redis.call('HDEL', key('lease'), ARGV[2])
redis.call('SREM', key('assigned'), ARGV[2])
redis.call('RPUSH', key('queue'), ARGV[2])
redis.call('HSET', key('outputs'), ARGV[5], ARGV[2])
redis.call('HSET', key('output-of'), ARGV[2], ARGV[5])
queue_lab(ARGV[2], false)
return -1
