-- Registers a manager as alive, or renews it, until its lease runs out on the server's
-- clock (JobStore::heartbeat).
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace, owner, lease in ms.
-- Returns 1.

redis.call('ZADD', key('owners'), now_ms() + tonumber(ARGV[3]), ARGV[2])
return 1
