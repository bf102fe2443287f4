-- The managers whose lease has not run out (JobStore::live_owners).
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace.
-- Returns their names.

return redis.call('ZRANGEBYSCORE', key('owners'), '(' .. now_ms(), '+inf')
