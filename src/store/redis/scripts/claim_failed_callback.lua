-- Claims a failed callback for one sender until its lease runs out on the server's clock,
-- unless another's claim on it still holds (JobStore::claim_failed_callback).
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace, job id, owner, lease in ms.
-- Returns the record JSON, or false.

local id, owner = ARGV[2], ARGV[3]
local json = redis.call('HGET', key('failed-callbacks'), id)
if not json then return false end
local claims = key('failed-claims')
local now = now_ms()
local claim = redis.call('HGET', claims, id)
if claim then
  local until_ms = string.match(claim, '^(%d+) ')
  if until_ms and tonumber(until_ms) > now then return false end
end
redis.call('HSET', claims, id, string.format('%d %s', now + tonumber(ARGV[4]), owner))
return json
