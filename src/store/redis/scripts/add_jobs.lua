-- addJob for several new jobs in one call (see adds.rs): counts the requests first, then
-- gives each job that fits in the queue the next id, writes that id into its JSON and adds
-- it to the live jobs and the tail of the queue, in the order given, and records it as the
-- writer of its output file. With the duplicate guard on (add_job_once), a job whose output
-- file a live job (or an earlier job of this call) writes already is not added: it gets that
-- job's id. Each added job also waits in its courselab's list (fair share, see the
-- prelude). With its most used keys given: it is on addJob's path, where each string built
-- and each call made costs Redis time.
--
-- KEYS: counters, queue, next-job-id, live, outputs, output-of.
-- ARGV: namespace, the name of the counter of requests, max_queued (0: no limit), the guard
--   (1: on, 0: off), then for each job, in order, the two parts of its JSON that follow
--   `{"id":` and its trace's id (see new_job_parts in values.rs), and its output file.
-- Returns, for each job, 1 and its id when added, 0 and the queue's length when it is
-- full, or 2 and the live job's id when it is a duplicate, flattened.

local count = (#ARGV - 4) / 3
redis.call('HINCRBY', KEYS[1], ARGV[2], count)
local max = tonumber(ARGV[3])
local once = ARGV[4] == '1'
local n = 0
if max > 0 then n = redis.call('LLEN', KEYS[2]) end
-- First each job's fate: added (the k-th new one), full, or a duplicate of a known id.
local fate, writers, fit = {}, {}, 0
for j = 1, count do
  local output = ARGV[3 * j + 4]
  local known = nil
  if once then
    known = writers[output]
    if not known then
      local id = redis.call('HGET', KEYS[5], output)
      if id and redis.call('HEXISTS', KEYS[4], id) == 1 then known = tonumber(id) end
    end
  end
  if known then
    fate[j] = { 2, known }
  elseif max > 0 and n + fit >= max then
    fate[j] = { 0 }
  else
    fit = fit + 1
    fate[j] = { 1, fit }
    writers[output] = -fit
  end
end
local out = {}
local first = 0
if fit > 0 then
  -- One call each for the ids, the jobs, the queue and the output files, whatever the
  -- number of jobs: each redis.call costs Redis a command's set-up.
  first = redis.call('INCRBY', KEYS[3], fit) - fit
  local fields, ids, outputs, owners, labs = {}, {}, {}, {}, {}
  for j = 1, count do
    if fate[j][1] == 1 then
      local k = fate[j][2]
      local id = string.format('%d', first + k)
      fields[2 * k - 1] = id
      local output = ARGV[3 * j + 4]
      fields[2 * k] = '{"id":' .. id .. ARGV[3 * j + 2] .. id .. ARGV[3 * j + 3]
      ids[k] = id
      outputs[2 * k - 1] = output
      outputs[2 * k] = id
      owners[2 * k - 1] = id
      owners[2 * k] = output
      local lab = lab_of_output(output)
      if not labs[lab] then labs[lab] = {} end
      table.insert(labs[lab], id)
    end
  end
  redis.call('HSET', KEYS[4], unpack(fields))
  redis.call('RPUSH', KEYS[2], unpack(ids))
  redis.call('HSET', KEYS[5], unpack(outputs))
  redis.call('HSET', KEYS[6], unpack(owners))
  for lab, lab_ids in pairs(labs) do
    redis.call('RPUSH', labq_key(lab), unpack(lab_ids))
    wake_lab(lab)
  end
end
for j = 1, count do
  local f = fate[j]
  out[2 * j - 1] = f[1]
  if f[1] == 1 then
    out[2 * j] = first + f[2]
  elseif f[1] == 2 and f[2] < 0 then
    out[2 * j] = first - f[2]
  elseif f[1] == 2 then
    out[2 * j] = f[2]
  else
    out[2 * j] = n + fit
  end
end
return out
