-- Asks for a job to be cancelled (JobStore::request_cancel): marks a live job in `cancels`;
-- a queued one (not leased) also leaves the queue and its courselab's list at once.
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace, job id.
-- Returns 'queued', 'running' (a manager holds it), 'finished' (dead) or 'unknown'.

local id = ARGV[2]
if redis.call('HEXISTS', key('live'), id) == 0 then
  if redis.call('HEXISTS', key('dead'), id) == 1 then return 'finished' end
  return 'unknown'
end
redis.call('SADD', key('cancels'), id)
if redis.call('HEXISTS', key('lease'), id) == 1 then return 'running' end
redis.call('LREM', key('queue'), 0, id)
unqueue_lab(lab_of(id), id)
return 'queued'
