//! The names of the store's keys in Redis, all under one namespace.
//!
//! Every key starts with `<ns>:` (`store.namespace`, `tango` by default), so one Redis can
//! serve several deployments, and Python Tango's keys (`liveJobs`, `queue:…`, pickled
//! values) are never read or written. In the names below, `<owner>` and `<pool>` are escaped
//! (`%` → `%25`, `:` → `%3A`) so that an owner or pool name containing `:` cannot reach
//! another's key.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<ns>:next-job-id` | string | the last job id handed out (`INCR`) |
//! | `<ns>:vm-ids` | string | how many machine ids were handed out; id = 999 + `INCR` |
//! | `<ns>:live` | hash | job id → job JSON, for every live job |
//! | `<ns>:lease` | hash | job id → the manager holding it (claimed, not yet requeued or finished) |
//! | `<ns>:assigned` | set | ids of live jobs dispatched to a machine |
//! | `<ns>:queue` | list | ids of unassigned jobs, head first |
//! | `<ns>:labq:<lab>` | list | the queued ids of one courselab (`store::lab_of`), head first: fair share |
//! | `<ns>:labs-waiting` | sorted set | courselabs with jobs queued → their pass |
//! | `<ns>:lab-pass` | hash | courselab → its pass, kept while it has nothing queued |
//! | `<ns>:vtime` | string | the pass of the last fair-share claim |
//! | `<ns>:cancels` | set | live job ids asked to be cancelled, until a manager ends them |
//! | `<ns>:outputs` | hash | output file → the id of the job added last to write it (the duplicate guard; stale once that job is not live) |
//! | `<ns>:output-of` | hash | live job id → its output file, so that its `outputs` entry goes when it ends |
//! | `<ns>:claimed:<owner>` | sorted set | ids a manager holds (score = id, for requeueing in order) |
//! | `<ns>:claimers` | set | managers with a `claimed:` set, so claims of a manager that never heartbeat are found |
//! | `<ns>:owners` | sorted set | manager → when its lease runs out (ms, Redis server clock) |
//! | `<ns>:dead` | hash | job id → job JSON, for finished and rejected jobs |
//! | `<ns>:dead-order` | list | dead job ids, oldest first, for trimming beyond `max_dead` |
//! | `<ns>:pools:<owner>` | set | names of a manager's pools |
//! | `<ns>:pool:<owner>:<pool>:total` | list | ids of the pool's machines, in the order added |
//! | `<ns>:pool:<owner>:<pool>:free` | list | ids of its free machines, oldest first |
//! | `<ns>:pool:<owner>:<pool>:machines` | hash | machine id → machine JSON |
//! | `<ns>:pool-targets` | hash | pool → what `/prealloc` asked for (JSON) |
//! | `<ns>:counters` | hash | `/info` counter name → integer |
//! | `<ns>:failed-callbacks` | hash | job id → failed callback JSON (`FailedCallback`) |
//! | `<ns>:failed-order` | sorted set | job ids of `failed-callbacks` → their place in age order, for dropping the oldest |
//! | `<ns>:failed-next` | string | the last place handed out in `failed-order` |
//! | `<ns>:failed-claims` | hash | job id → `<until ms> <owner>`: who sends it now, until when (Redis server clock) |
//!
//! A live job's `owner` and `assigned` are kept outside its JSON (`lease`, `assigned`) and
//! laid over it when it is read: reaping a dead manager then changes them without decoding
//! and re-encoding job JSON in Lua (whose number formatting would lose precision). The copies
//! of those two fields inside the stored JSON are whatever the last writer sent; ignore them.
//!
//! [`Keys`] names the keys the Rust side uses directly. The per-owner keys are built by the
//! scripts themselves (`scripts/prelude.lua`), from the namespace they are given, so this
//! store needs a single Redis (or a primary with replicas), not Redis Cluster.

/// The names of the keys the Rust side uses directly (scripts derive the rest).
#[derive(Clone)]
pub(super) struct Keys {
    /// The namespace itself: the scripts' `ARGV[1]`.
    pub(super) ns: String,
    pub(super) next_job_id: String,
    pub(super) vm_ids: String,
    pub(super) live: String,
    pub(super) lease: String,
    pub(super) assigned: String,
    pub(super) queue: String,
    pub(super) outputs: String,
    pub(super) output_of: String,
    pub(super) dead: String,
    pub(super) dead_order: String,
    pub(super) pool_targets: String,
    pub(super) counters: String,
    pub(super) failed_callbacks: String,
}

impl Keys {
    pub(super) fn new(ns: &str) -> Keys {
        let key = |name: &str| format!("{ns}:{name}");
        Keys {
            ns: ns.to_string(),
            next_job_id: key("next-job-id"),
            vm_ids: key("vm-ids"),
            live: key("live"),
            lease: key("lease"),
            assigned: key("assigned"),
            queue: key("queue"),
            outputs: key("outputs"),
            output_of: key("output-of"),
            dead: key("dead"),
            dead_order: key("dead-order"),
            pool_targets: key("pool-targets"),
            counters: key("counters"),
            failed_callbacks: key("failed-callbacks"),
        }
    }

    // The names below only go into error messages, for a person looking under the
    // namespace: owner and pool names appear as given, not escaped.

    /// Every key of the namespace: for errors that cannot tell which key is at fault.
    pub(super) fn all(&self) -> String {
        format!("{}:*", self.ns)
    }

    /// The keys of every pool of every manager.
    pub(super) fn any_pool(&self) -> String {
        format!("{}:pool:*", self.ns)
    }

    /// The keys of the pools named `pool`, whichever manager's.
    pub(super) fn any_owners_pool(&self, pool: &str) -> String {
        format!("{}:pool:*:{pool}", self.ns)
    }

    /// The machines of `owner`'s pool `pool`.
    pub(super) fn pool_machines(&self, owner: &str, pool: &str) -> String {
        format!("{}:pool:{owner}:{pool}:machines", self.ns)
    }
}
