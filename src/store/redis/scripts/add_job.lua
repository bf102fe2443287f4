-- addJob for a job whose own text holds the id marker, so that Redis cannot write the id
-- into its JSON: the id was taken first and the JSON comes whole (add_jobs adds every other
-- new job). Counts the request first; then, with the duplicate guard on, answers with the
-- live job writing the same output file if there is one; else adds the job to the live
-- jobs and the tail of the queue, not leased and not assigned, as the writer of its output
-- file and in its courselab's list, unless the queue is full. Its keys given, like
-- add_jobs.
--
-- KEYS: counters, queue, live, lease, assigned, outputs, output-of.
-- ARGV: namespace, the name of the counter of requests, max_queued (0: no limit), job id,
--   job JSON, output file, the guard (1: on, 0: off).
-- Returns {1, id} when added, {0, the queue's length} when it is full, or {2, the live
-- job's id} when it is a duplicate.

redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
if ARGV[7] == '1' then
  local known = redis.call('HGET', KEYS[6], ARGV[6])
  if known and redis.call('HEXISTS', KEYS[3], known) == 1 then
    return { 2, tonumber(known) }
  end
end
local max = tonumber(ARGV[3])
if max > 0 then
  local n = redis.call('LLEN', KEYS[2])
  if n >= max then return { 0, n } end
end
redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
redis.call('HDEL', KEYS[4], ARGV[4])
redis.call('SREM', KEYS[5], ARGV[4])
redis.call('RPUSH', KEYS[2], ARGV[4])
redis.call('HSET', KEYS[6], ARGV[6], ARGV[4])
redis.call('HSET', KEYS[7], ARGV[4], ARGV[6])
queue_lab(ARGV[4], false)
return { 1, tonumber(ARGV[4]) }
