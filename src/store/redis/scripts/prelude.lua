-- The prelude: put before the body of every script but add_job and add_jobs. It builds key
-- names from the namespace (escaping owner and pool names, so that a name holding ':'
-- cannot reach another's key), reads the server's clock, and holds the steps several
-- scripts share: checking a lease, dropping a claim, recording a dead job, listing a
-- manager's pools and forgetting a manager.
--
-- KEYS: none. The scripts build their key names themselves, so the store needs one Redis
-- (or a primary with replicas), not Redis Cluster.
-- ARGV[1]: the namespace. Each script's own arguments follow it.

local ns = ARGV[1]
local function key(name) return ns .. ':' .. name end
local escapes = { ['%'] = '%25', [':'] = '%3A' }
local function part(name) return (string.gsub(name, '[%%:]', escapes)) end
local function claimed_key(owner) return key('claimed:' .. part(owner)) end
local function pools_key(owner) return key('pools:' .. part(owner)) end
local function pool_key(owner, pool, what)
  return key('pool:' .. part(owner) .. ':' .. part(pool) .. ':' .. what)
end
-- Fair share (store::Schedule): each queued id also waits in its courselab's list
-- `labq:<lab>`; `labs-waiting` scores each courselab with jobs waiting by its pass,
-- `lab-pass` keeps every courselab's pass and `vtime` the pass of the last claim. A job's
-- courselab is the directory two levels above its output file (store::lab_of).
local function lab_of_output(output)
  return (output and string.match(output, '([^/]*)/[^/]*/[^/]*$')) or ''
end
local function lab_of(id) return lab_of_output(redis.call('HGET', key('output-of'), id)) end
local function labq_key(lab) return key('labq:' .. part(lab)) end
-- A courselab that starts waiting enters at its pass, or the last claim's if behind it.
local function wake_lab(lab)
  if redis.call('ZSCORE', key('labs-waiting'), lab) then return end
  local pass = tonumber(redis.call('HGET', key('lab-pass'), lab) or '0')
  local vtime = tonumber(redis.call('GET', key('vtime')) or '0')
  redis.call('ZADD', key('labs-waiting'), math.max(pass, vtime), lab)
end
-- Queues a live job (already in `queue`) in its courselab's list: at the head with `front`.
local function queue_lab(id, front)
  local lab = lab_of(id)
  redis.call(front and 'LPUSH' or 'RPUSH', labq_key(lab), id)
  wake_lab(lab)
end
-- Takes an id out of its courselab's list, and the courselab out of the waiting ones when
-- that was its last.
local function unqueue_lab(lab, id)
  local lk = labq_key(lab)
  redis.call('LREM', lk, 1, id)
  if redis.call('LLEN', lk) == 0 then redis.call('ZREM', key('labs-waiting'), lab) end
end
-- Puts a live job back at the head of the queue, unless it is to be cancelled: then it
-- waits, out of the queue, for a manager to end it (take_cancels).
local function queue_front(id)
  if redis.call('SISMEMBER', key('cancels'), id) == 1 then return end
  redis.call('LPUSH', key('queue'), id)
  queue_lab(id, true)
end
-- Leases use the server's clock: managers on several hosts share one Redis.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function held(id, owner)
  return redis.call('HGET', key('lease'), id) == owner
    and redis.call('HEXISTS', key('live'), id) == 1
end
local function unclaim(owner, id)
  local ck = claimed_key(owner)
  redis.call('ZREM', ck, id)
  if redis.call('EXISTS', ck) == 0 then redis.call('SREM', key('claimers'), owner) end
end
-- A job leaves the live ones: its output file is free for a new submission.
local function forget_output(id)
  local output = redis.call('HGET', key('output-of'), id)
  if not output then return end
  redis.call('HDEL', key('output-of'), id)
  if redis.call('HGET', key('outputs'), output) == id then
    redis.call('HDEL', key('outputs'), output)
  end
end
local function push_dead(id, json, max_dead)
  if redis.call('HSET', key('dead'), id, json) == 1 then
    redis.call('RPUSH', key('dead-order'), id)
  end
  if max_dead > 0 then
    local extra = redis.call('LLEN', key('dead-order')) - max_dead
    for _ = 1, extra do
      local old = redis.call('LPOP', key('dead-order'))
      if old then redis.call('HDEL', key('dead'), old) end
    end
  end
end
local function pool_views(owner, out)
  local names = redis.call('SMEMBERS', pools_key(owner))
  table.sort(names)
  for _, pool in ipairs(names) do
    table.insert(out, {
      pool,
      redis.call('LRANGE', pool_key(owner, pool, 'total'), 0, -1),
      redis.call('LRANGE', pool_key(owner, pool, 'free'), 0, -1),
    })
  end
end
-- Forgets a manager: its jobs go back to the front of the queue in id order (appended to
-- `requeued`), its pools are dropped and their machines appended to `machines` as
-- owner, pool, id, machine JSON (false when unknown).
local function drop_owner(owner, requeued, machines)
  redis.call('ZREM', key('owners'), owner)
  redis.call('SREM', key('claimers'), owner)
  local ck = claimed_key(owner)
  local ids = redis.call('ZRANGE', ck, 0, -1)
  redis.call('DEL', ck)
  local mine = {}
  for _, id in ipairs(ids) do
    if redis.call('HGET', key('lease'), id) == owner then
      redis.call('HDEL', key('lease'), id)
      if redis.call('HEXISTS', key('live'), id) == 1 then
        redis.call('SREM', key('assigned'), id)
        table.insert(mine, id)
      end
    end
  end
  for i = #mine, 1, -1 do queue_front(mine[i]) end
  for _, id in ipairs(mine) do table.insert(requeued, id) end
  local pk = pools_key(owner)
  local names = redis.call('SMEMBERS', pk)
  table.sort(names)
  for _, pool in ipairs(names) do
    local total = pool_key(owner, pool, 'total')
    local free = pool_key(owner, pool, 'free')
    local stored = pool_key(owner, pool, 'machines')
    for _, id in ipairs(redis.call('LRANGE', total, 0, -1)) do
      table.insert(machines, owner)
      table.insert(machines, pool)
      table.insert(machines, id)
      table.insert(machines, redis.call('HGET', stored, id))
    end
    redis.call('DEL', total, free, stored)
  end
  redis.call('DEL', pk)
end
