-- Takes the next job for a manager (JobStore::claim_next): with fair share the head of the
-- courselab with the lowest pass (ties by name), whose pass then moves on by 1 / its
-- weight; in FIFO the head of the queue (and with fair share too, for ids queued by a
-- version that kept no courselab lists). The job is leased to the manager and added to its
-- claimed set, and a claim an earlier holder still had on it is dropped. Queue entries
-- whose job is no longer live are dropped on the way. With a cap on the jobs held per
-- courselab, courselabs that many of whose jobs are leased are passed over (fair share:
-- the lowest pass among the others; FIFO: the oldest queued job of the others).
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace, owner, FIFO (1) or fair share (0), most jobs held per courselab (0: no
--   cap), then courselab name and weight pairs (courselabs not listed weigh 1).
-- Returns nil when no live job is queued (or none under its cap), or {job JSON, assigned
--   (0/1)}.

local owner, fifo, cap = ARGV[2], ARGV[3] == '1', tonumber(ARGV[4])
local weights = {}
for i = 5, #ARGV - 1, 2 do weights[ARGV[i]] = tonumber(ARGV[i + 1]) end
local function stride(lab)
  local name = string.match(lab, '^[^-]*%-(.*)$') or lab
  return 1 / math.max(1, weights[name] or 1)
end

-- Jobs held per courselab (leased: claimed and not yet requeued or finished), counted
-- once per call, only with a cap.
local held = nil
local function open(lab)
  if cap <= 0 then return true end
  if not held then
    held = {}
    for _, id in ipairs(redis.call('HKEYS', key('lease'))) do
      local l = lab_of(id)
      held[l] = (held[l] or 0) + 1
    end
  end
  return (held[lab] or 0) < cap
end

-- Under a cap: the oldest queued id of a courselab under it, taken out of the queue and
-- its courselab's list, or nil.
local function take_fifo_capped()
  for _, id in ipairs(redis.call('LRANGE', key('queue'), 0, -1)) do
    local lab = lab_of(id)
    if open(lab) then
      redis.call('LREM', key('queue'), 1, id)
      unqueue_lab(lab, id)
      return id
    end
  end
  return nil
end

-- Under a cap: the courselab with the lowest pass among those under it, or nil.
local function turn_capped()
  local all = redis.call('ZRANGE', key('labs-waiting'), 0, -1, 'WITHSCORES')
  for i = 1, #all, 2 do
    if open(all[i]) then return { all[i], all[i + 1] } end
  end
  return {}
end

local take

-- Courselab `lab`'s next job, its turn at virtual time `pass`: the lab's pass moves on by
-- its stride and it waits again if it has more. A list found empty (its jobs left the
-- queue another way) passes the turn on.
local function take_turn(lab, pass)
  local lk = labq_key(lab)
  local id = redis.call('LPOP', lk)
  local after = pass + stride(lab)
  redis.call('SET', key('vtime'), pass)
  redis.call('HSET', key('lab-pass'), lab, after)
  if redis.call('LLEN', lk) == 0 then
    redis.call('ZREM', key('labs-waiting'), lab)
  else
    redis.call('ZADD', key('labs-waiting'), after, lab)
  end
  if not id then return take() end
  redis.call('LREM', key('queue'), 1, id)
  return id
end

-- The next queued id, taken out of the queue and its courselab's list, or nil.
take = function()
  if cap > 0 then
    if fifo then return take_fifo_capped() end
    local turn = turn_capped()
    if #turn == 0 then
      -- Ids queued by a version that kept no courselab lists are in the queue alone.
      if redis.call('ZCARD', key('labs-waiting')) == 0 then return take_fifo_capped() end
      return nil
    end
    return take_turn(turn[1], tonumber(turn[2]))
  end
  local top = {}
  if not fifo then top = redis.call('ZRANGE', key('labs-waiting'), 0, 0, 'WITHSCORES') end
  if #top == 0 then
    local id = redis.call('LPOP', key('queue'))
    if id then unqueue_lab(lab_of(id), id) end
    return id
  end
  return take_turn(top[1], tonumber(top[2]))
end

while true do
  local id = take()
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
