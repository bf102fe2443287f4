-- addJob for a job whose own text holds the id marker, so that Redis cannot write the id
-- into its JSON: the id was taken first and the JSON comes whole (add_jobs adds every other
-- new job). Counts the request first, then adds the job to the live jobs and the tail of
-- the queue, not leased and not assigned, unless the queue is full. Without the prelude,
-- like add_jobs.
--
-- KEYS: counters, queue, live, lease, assigned.
-- ARGV: the name of the counter of requests, max_queued (0: no limit), job id, job JSON.
-- Returns {1, id} when added, or {0, the queue's length} when it is full.

redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local max = tonumber(ARGV[2])
if max > 0 then
  local n = redis.call('LLEN', KEYS[2])
  if n >= max then return { 0, n } end
end
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
redis.call('HDEL', KEYS[4], ARGV[3])
redis.call('SREM', KEYS[5], ARGV[3])
redis.call('RPUSH', KEYS[2], ARGV[3])
return { 1, tonumber(ARGV[3]) }
