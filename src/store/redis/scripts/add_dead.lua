-- Records a job that never went live among the dead ones, dropping the oldest beyond
-- max_dead (JobStore::add_dead).
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace, job id, job JSON, max_dead (0: keep all).
-- Returns 1.

push_dead(ARGV[2], ARGV[3], tonumber(ARGV[4]))
return 1
