//! The Lua scripts by which every change touching several keys is one atomic step in Redis.
//!
//! Each script is a file under `scripts/`, read in at build time with `include_str!`, whose
//! opening comment says what it does, its KEYS and its ARGV: so each can be read and
//! reviewed as Lua. Each starts with `scripts/prelude.lua`, which takes the namespace from
//! `ARGV[1]`, builds key names from it, and holds the helpers several scripts share.
//! `add_job` and `add_jobs` also take their most used keys as KEYS: they are on addJob's
//! path, where each string built and each call made costs Redis time.
//!
//! A [`Script`] is sent by its SHA-1 (`EVALSHA`), and its text only when Redis answers that
//! it lacks it (the first call on a server, or after a restart), so a call carries the
//! hash, not the script.

use std::sync::LazyLock;

use redis::Script;

/// One script per store operation that needs one, named after it.
pub(super) struct Scripts {
    pub(super) enqueue: Script,
    pub(super) add_job: Script,
    pub(super) add_jobs: Script,
    pub(super) claim: Script,
    pub(super) update_live: Script,
    pub(super) requeue: Script,
    pub(super) finish: Script,
    pub(super) add_dead: Script,
    pub(super) update_dead: Script,
    pub(super) heartbeat: Script,
    pub(super) live_owners: Script,
    pub(super) release_owner: Script,
    pub(super) reap_expired: Script,
    pub(super) pool_add: Script,
    pub(super) pool_free: Script,
    pub(super) pool_take: Script,
    pub(super) pool_remove: Script,
    pub(super) pools: Script,
    pub(super) owner_pools: Script,
    pub(super) request_cancel: Script,
    pub(super) take_cancels: Script,
    pub(super) keep_failed_callback: Script,
    pub(super) failed_callbacks: Script,
    pub(super) claim_failed_callback: Script,
    pub(super) settle_failed_callback: Script,
}

/// What the scripts that name their keys from the namespace start with.
const PRELUDE: &str = include_str!("scripts/prelude.lua");

/// A script whose body follows the prelude.
fn with_prelude(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

/// Hashed once, on first use.
pub(super) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    enqueue: with_prelude(include_str!("scripts/enqueue.lua")),
    add_job: with_prelude(include_str!("scripts/add_job.lua")),
    add_jobs: with_prelude(include_str!("scripts/add_jobs.lua")),
    claim: with_prelude(include_str!("scripts/claim.lua")),
    update_live: with_prelude(include_str!("scripts/update_live.lua")),
    requeue: with_prelude(include_str!("scripts/requeue.lua")),
    finish: with_prelude(include_str!("scripts/finish.lua")),
    add_dead: with_prelude(include_str!("scripts/add_dead.lua")),
    update_dead: with_prelude(include_str!("scripts/update_dead.lua")),
    heartbeat: with_prelude(include_str!("scripts/heartbeat.lua")),
    live_owners: with_prelude(include_str!("scripts/live_owners.lua")),
    release_owner: with_prelude(include_str!("scripts/release_owner.lua")),
    reap_expired: with_prelude(include_str!("scripts/reap_expired.lua")),
    pool_add: with_prelude(include_str!("scripts/pool_add.lua")),
    pool_free: with_prelude(include_str!("scripts/pool_free.lua")),
    pool_take: with_prelude(include_str!("scripts/pool_take.lua")),
    pool_remove: with_prelude(include_str!("scripts/pool_remove.lua")),
    pools: with_prelude(include_str!("scripts/pools.lua")),
    owner_pools: with_prelude(include_str!("scripts/owner_pools.lua")),
    request_cancel: with_prelude(include_str!("scripts/request_cancel.lua")),
    take_cancels: with_prelude(include_str!("scripts/take_cancels.lua")),
    keep_failed_callback: with_prelude(include_str!("scripts/keep_failed_callback.lua")),
    failed_callbacks: with_prelude(include_str!("scripts/failed_callbacks.lua")),
    claim_failed_callback: with_prelude(include_str!("scripts/claim_failed_callback.lua")),
    settle_failed_callback: with_prelude(include_str!("scripts/settle_failed_callback.lua")),
});
