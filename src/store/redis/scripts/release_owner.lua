-- A manager leaves (JobStore::release_owner): its claimed jobs go back to the front of the
-- queue, it is no longer alive, and its pools are forgotten (drop_owner in the prelude).
--
-- KEYS: none (the prelude builds them).
-- ARGV: namespace, owner.
-- Returns the requeued ids, in id order.

local requeued, machines = {}, {}
drop_owner(ARGV[2], requeued, machines)
return requeued
