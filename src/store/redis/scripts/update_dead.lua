-- Rewrites a dead job, if it is still kept (JobStore::update_dead).
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace, job id, job JSON.
-- Returns 1, or 0 when the job is not among the dead.

if redis.call('HEXISTS', key('dead'), ARGV[2]) == 0 then return 0 end
redis.call('HSET', key('dead'), ARGV[2], ARGV[3])
return 1
