-- addJob for several new jobs in one call (see adds.rs): counts the requests first, then
-- gives each job that fits in the queue the next id, writes that id into its JSON and adds
-- it to the live jobs and the tail of the queue, in the order given. Without the prelude,
-- and with its keys given: it is on addJob's path, where each string built and each call
-- made costs Redis time.
--
-- KEYS: counters, queue, next-job-id, live.
-- ARGV: the name of the counter of requests, max_queued (0: no limit), then for each job,
--   in order, the two parts of its JSON that follow `{"id":` and its trace's id (see
--   new_job_parts in values.rs).
-- Returns, for each job, 1 and its id when added, or 0 and the queue's length when it is
-- full, flattened.

local count = (#ARGV - 2) / 2
redis.call('HINCRBY', KEYS[1], ARGV[1], count)
local max = tonumber(ARGV[2])
local n = 0
local fit = count
if max > 0 then
  n = redis.call('LLEN', KEYS[2])
  fit = math.max(0, math.min(count, max - n))
end
local out = {}
if fit > 0 then
  -- One call each for the ids, the jobs and the queue, whatever the number of jobs: each
  -- redis.call costs Redis a command's set-up (about 10% of a call of 6 to 16 jobs).
  local first = redis.call('INCRBY', KEYS[3], fit) - fit
  local fields, ids = {}, {}
  for j = 1, fit do
    local id = string.format('%d', first + j)
    fields[2 * j - 1] = id
    fields[2 * j] = '{"id":' .. id .. ARGV[2 * j + 1] .. id .. ARGV[2 * j + 2]
    ids[j] = id
    out[2 * j - 1] = 1
    out[2 * j] = first + j
  end
  redis.call('HSET', KEYS[4], unpack(fields))
  redis.call('RPUSH', KEYS[2], unpack(ids))
end
for j = fit + 1, count do
  out[2 * j - 1] = 0
  out[2 * j] = n + fit
end
return out
