//! Where Tango keeps its state: live and dead jobs, the queue of unassigned jobs, the
//! machines of each pool, pool sizes asked for by `/prealloc`, the `/info` counters, and
//! which managers are alive.
//!
//! [`JobStore`] is the one interface; [`memory::MemoryStore`] (embedded, one process) and
//! [`redis::RedisStore`] (durable, shared by processes on several hosts) implement it and
//! pass the same contract tests (`tests/store_contract.rs`).
//!
//! Ownership and leases. A manager *claims* the head of the queue; from then until the job
//! ends or is requeued, the job carries the manager's id in `owner`, and every write to it
//! names that owner ([`StoreError::LeaseLost`] when another holds it now). A manager renews
//! its lease with [`JobStore::heartbeat`]; when it stops doing so for `lease` seconds, any
//! other manager's [`JobStore::reap_expired`] puts its jobs back at the front of the queue
//! (retries kept) and hands back its pool machines for destruction. So no job is ever run
//! by two live managers, and none is lost when one dies.
//!
//! Pools belong to the manager that made their machines (a container on one host cannot
//! serve a manager on another), so every pool operation names its owner; `/pool` shows the
//! union over live managers.

pub mod flight;
pub mod memory;
pub mod redis;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{Config, Scheduling, StoreBackend};
use crate::model::{Counter, Counters, FailedCallback, Job, JobId, Machine, PoolTarget, PoolView};

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached (Redis down, connection refused, timed out).
    #[error("job store unavailable: {0}")]
    Unavailable(String),
    /// The queue holds `max_queued` jobs already.
    #[error("Job queue is full ({0} jobs waiting); try again later")]
    QueueFull(u64),
    /// The job is not live any more, or another manager holds it now.
    #[error("lease lost on job {0}: it is no longer held by this manager")]
    LeaseLost(JobId),
    /// Stored data could not be read back (a bug, or a foreign value under our keys).
    #[error("corrupt store entry {key}: {message}")]
    Corrupt { key: String, message: String },
}

/// Sizes of the job lists, for `/info`-like reports and metrics, without reading every job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub live: u64,
    pub dead: u64,
    pub queued: u64,
    /// Failed callbacks kept ([`JobStore::keep_failed_callback`]), waiting or replaying.
    pub failed_callbacks: u64,
}

/// How [`JobStore::claim_next`] picks the next job: the configuration's `jobs.scheduling` and
/// `jobs.weights`.
///
/// Fair share is stride scheduling over courselabs. Each courselab with jobs waiting has a
/// *pass*; a claim takes the head of the courselab with the lowest pass (ties: by name) and
/// moves that courselab's pass on by `1 / weight`. A courselab that starts waiting enters at
/// the pass of the last claim if its own is behind it (no credit for the time it was idle),
/// so a newcomer's job goes next to a course that has had a turn, however many jobs that
/// course still has queued. Within a courselab, jobs leave in queue order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schedule {
    /// Tango's single FIFO instead of fair share.
    pub fifo: bool,
    /// Courselab name → jobs per turn (1 when absent).
    pub weights: BTreeMap<String, u32>,
    /// Most jobs of one courselab held at once (`jobs.max_running_per_courselab`): a
    /// claim passes over a courselab that many of whose jobs are held; 0: no cap.
    pub max_running_per_lab: u64,
}

impl Schedule {
    pub fn from_config(config: &Config) -> Schedule {
        Schedule {
            fifo: config.jobs.scheduling == Scheduling::Fifo,
            weights: config.jobs.weights.clone(),
            max_running_per_lab: config.jobs.max_running_per_courselab,
        }
    }

    /// How far a claim moves `lab`'s pass (a queue name from [`lab_of`]).
    pub fn stride(&self, lab: &str) -> f64 {
        let name = lab.split_once('-').map_or(lab, |(_, name)| name);
        1.0 / f64::from(self.weights.get(name).copied().unwrap_or(1).max(1))
    }
}

/// The courselab queue a job waits in: the name of its courselab's directory
/// (`<tenant>-<courselab>`), the one two levels above its output file; empty when the
/// path has no such part. The Redis scripts compute the same (`lab_of` in `prelude.lua`).
pub fn lab_of(output_file: &str) -> &str {
    let mut parts = output_file.rsplit('/');
    parts.next();
    parts.next();
    parts.next().unwrap_or("")
}

/// What [`JobStore::add_job_once`] did with a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// Queued under the id now in the job.
    New,
    /// Not queued: this live job (queued or running) already writes the same output file.
    Existing(JobId),
}

/// What [`JobStore::request_cancel`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelRequest {
    /// It was queued: it has left the queue, and a manager ends it.
    Queued,
    /// A manager holds it (waiting for a machine or running): that manager ends it.
    Running,
    /// It has ended already; nothing changed.
    Finished,
    /// No such job.
    Unknown,
}

/// What [`JobStore::reap_expired`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reaped {
    /// Managers found dead.
    pub owners: Vec<String>,
    /// Their jobs, now back at the front of the queue, in queue order.
    pub requeued: Vec<JobId>,
    /// Their pool machines, now forgotten by the store: the caller destroys them.
    pub machines: Vec<Machine>,
}

/// The store interface. Every method is one atomic change as seen by other callers, even
/// across processes (Redis: one Lua script or one command each).
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// `memory` or `redis`, for logs.
    fn kind(&self) -> &'static str;

    /// Succeeds when the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    // ---- ids ----

    /// The next job id: unique and increasing across every process sharing the store.
    async fn allocate_job_id(&self) -> Result<JobId, StoreError>;

    /// The next machine id, from 1000 up (Tango's numbering of pool machines).
    async fn allocate_vm_id(&self) -> Result<u64, StoreError>;

    // ---- the queue and live jobs ----

    /// Adds a new job (its id from [`JobStore::allocate_job_id`]) to the live jobs and the
    /// tail of the queue. With `max_queued > 0`, refused with [`StoreError::QueueFull`] when
    /// that many jobs already wait.
    async fn enqueue(&self, job: &Job, max_queued: u64) -> Result<(), StoreError>;

    /// `addJob`'s whole write, as one atomic change (one Redis round trip): counts the
    /// request ([`Counter::JobRequests`]); then, unless `max_queued > 0` jobs already wait
    /// ([`StoreError::QueueFull`]: the request is still counted, no id is used and `job` is
    /// left as it was), gives `job` the next id (the counter of
    /// [`JobStore::allocate_job_id`]), stamps `timings.added` and appends the trace line
    /// [`added_line`], and adds it to the live jobs and the tail of the queue. On success
    /// `job` is as stored.
    async fn add_job(&self, job: &mut Job, max_queued: u64) -> Result<(), StoreError>;

    /// [`JobStore::add_job`] guarded against a submission sent twice: when a live job
    /// (queued or running) has the same `output_file` (the courselab's directory and the
    /// output name, unique per submission in Autolab), nothing is queued, no id is used, and
    /// that job's id comes back as [`Added::Existing`]; the request is still counted. Atomic
    /// with every other add: of two such calls at the same instant, one queues the job and
    /// the other answers with its id. Jobs added by either method are seen by this one.
    async fn add_job_once(&self, job: &mut Job, max_queued: u64) -> Result<Added, StoreError>;

    /// Takes the next job for `owner`, waiting up to `wait` for one to arrive: the queue's
    /// head with a FIFO [`Schedule`], else the head of the courselab whose turn it is. The
    /// job comes back with `owner` set; it stays live (and `assigned` stays as it was) until
    /// the caller writes it with [`JobStore::update_live`].
    async fn claim_next(&self, owner: &str, wait: Duration) -> Result<Option<Job>, StoreError>;

    /// Writes back a live job held by `job.owner` (trace, machine, assigned, timings, ...).
    async fn update_live(&self, job: &Job) -> Result<(), StoreError>;

    /// Puts a job held by `job.owner` back at the front of the queue, unassigned and with no
    /// owner, keeping the rest of `job` (its retries and trace) as given.
    async fn requeue(&self, job: &Job) -> Result<(), StoreError>;

    /// Moves a job held by `job.owner` from the live jobs to the dead ones, as given (the
    /// caller has appended the final trace line and cleared `assigned`). The oldest dead jobs
    /// are dropped beyond `max_dead` (0: keep all).
    ///
    /// The same call again after it took effect succeeds too: a caller that retried because
    /// the answer was lost (Redis paused past the call's budget) must learn that the job is
    /// finished, not that its lease is lost, or it would never send the job's callback.
    async fn finish(&self, job: &Job, max_dead: u64) -> Result<(), StoreError>;

    /// Records a job that never went live (rejected by validation) among the dead ones.
    async fn add_dead(&self, job: &Job, max_dead: u64) -> Result<(), StoreError>;

    /// Rewrites a dead job (its callback state, say). Returns false when it has been dropped.
    async fn update_dead(&self, job: &Job) -> Result<bool, StoreError>;

    async fn live_job(&self, id: JobId) -> Result<Option<Job>, StoreError>;
    async fn dead_job(&self, id: JobId) -> Result<Option<Job>, StoreError>;
    async fn live_jobs(&self) -> Result<Vec<Job>, StoreError>;
    async fn dead_jobs(&self) -> Result<Vec<Job>, StoreError>;
    /// Ids of the unassigned jobs, head first.
    async fn queued_ids(&self) -> Result<Vec<JobId>, StoreError>;
    async fn stats(&self) -> Result<StoreStats, StoreError>;

    // ---- cancelling ----

    /// Asks for a job to be cancelled. A queued job leaves the queue at once; a queued or
    /// held job is marked, and stays live until a manager ends it
    /// ([`JobStore::take_cancels`]). A marked job is never queued again (a requeue or a
    /// reap leaves it out of the queue for a manager to end); [`JobStore::finish`] clears
    /// the mark.
    async fn request_cancel(&self, id: JobId) -> Result<CancelRequest, StoreError>;

    /// The marked jobs `owner` is to end: those it holds, and those no manager holds, which
    /// are now leased to it (each to one manager only).
    async fn take_cancels(&self, owner: &str) -> Result<Vec<Job>, StoreError>;

    // ---- failed callbacks ----

    /// Keeps a callback that used up its attempts, under its job's id (replacing one kept
    /// for the same job, which keeps its place in age order). Beyond `max_kept` (0: no cap)
    /// the oldest are dropped, claimed or not; their job ids come back, oldest first.
    async fn keep_failed_callback(
        &self,
        record: &FailedCallback,
        max_kept: u64,
    ) -> Result<Vec<JobId>, StoreError>;

    /// Every failed callback kept, oldest first; `replaying` names the claimant of those
    /// whose claim has not run out.
    async fn failed_callbacks(&self) -> Result<Vec<FailedCallback>, StoreError>;

    /// Claims job `id`'s failed callback for `owner` to send, for `lease`: `None` when none
    /// is kept, or another claim on it has not run out. Of several claimants (several
    /// managers on one Redis), one gets it; a claimant that dies leaves it to be claimed
    /// again once `lease` has passed.
    async fn claim_failed_callback(
        &self,
        id: JobId,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<FailedCallback>, StoreError>;

    /// Ends `owner`'s claim on job `id`'s failed callback: with `None` it was delivered and
    /// is forgotten; with `Some(record)` it failed again and waits, as `record` says. False
    /// (and nothing changed) when `owner` no longer holds the claim: it ran out and another
    /// took it, or the record was dropped.
    async fn settle_failed_callback(
        &self,
        id: JobId,
        owner: &str,
        still_failing: Option<&FailedCallback>,
    ) -> Result<bool, StoreError>;

    // ---- managers and leases ----

    /// Registers `owner` as alive for the next `lease`, or renews it.
    async fn heartbeat(&self, owner: &str, lease: Duration) -> Result<(), StoreError>;

    /// `owner` leaves: its claimed jobs go back to the front of the queue (retries kept), it
    /// is no longer alive, and its pools are forgotten. Returns the requeued ids.
    async fn release_owner(&self, owner: &str) -> Result<Vec<JobId>, StoreError>;

    /// Managers whose lease has not run out.
    async fn live_owners(&self) -> Result<Vec<String>, StoreError>;

    /// Finds managers whose lease ran out and undoes their claims (see [`Reaped`]).
    async fn reap_expired(&self) -> Result<Reaped, StoreError>;

    // ---- pools ----

    /// Adds a machine to `owner`'s pool (busy: not on the free list).
    async fn pool_add(&self, owner: &str, pool: &str, vm: &Machine) -> Result<(), StoreError>;

    /// Puts a pool machine on the free list. False when it is not (or no longer) a member:
    /// the caller should destroy it.
    async fn pool_free(&self, owner: &str, pool: &str, vm: &Machine) -> Result<bool, StoreError>;

    /// Takes a free machine of `owner`'s pool, oldest first.
    async fn pool_take(&self, owner: &str, pool: &str) -> Result<Option<Machine>, StoreError>;

    /// Removes a machine (by id) from `owner`'s pool and its free list. False if absent.
    async fn pool_remove(&self, owner: &str, pool: &str, vm_id: u64) -> Result<bool, StoreError>;

    /// Every pool of every live manager, merged by pool name, for `/pool`.
    async fn pools(&self) -> Result<BTreeMap<String, PoolView>, StoreError>;

    /// `owner`'s pools alone.
    async fn owner_pools(&self, owner: &str) -> Result<BTreeMap<String, PoolView>, StoreError>;

    /// Records the size `/prealloc` asked for a pool.
    async fn set_pool_target(&self, pool: &str, target: &PoolTarget) -> Result<(), StoreError>;

    async fn pool_targets(&self) -> Result<BTreeMap<String, PoolTarget>, StoreError>;

    // ---- counters ----

    async fn incr(&self, counter: Counter, by: u64) -> Result<(), StoreError>;
    async fn counters(&self) -> Result<Counters, StoreError>;

    /// The counters and the job counts together, for `/info` and `/metrics`: one round trip
    /// (and one consistent snapshot) where the store is remote.
    async fn overview(&self) -> Result<(Counters, StoreStats), StoreError> {
        let (counters, stats) = tokio::join!(self.counters(), self.stats());
        Ok((counters?, stats?))
    }
}

/// The trace line of a job entering the queue, as Python's `JobQueue.add` wrote it.
pub fn added_line(name: &str, id: impl std::fmt::Display) -> String {
    format!("Added job {name}:{id} to queue")
}

/// Opens the store the configuration names.
pub async fn open(config: &Config) -> Result<Arc<dyn JobStore>, StoreError> {
    match config.store.backend {
        StoreBackend::Memory => Ok(Arc::new(
            memory::MemoryStore::new().with_schedule(Schedule::from_config(config)),
        )),
        StoreBackend::Redis => Ok(Arc::new(
            redis::RedisStore::connect(&config.store)
                .await?
                .with_schedule(Schedule::from_config(config)),
        )),
    }
}

/// Runs a store write until it succeeds, retrying with back-off while the store is
/// unavailable: a write that ends a job (its finish, a requeue) must not be lost to a store
/// outage. False when it cannot succeed (the lease is lost, the entry is corrupt) or `stop`
/// is cancelled (the manager is stopping hard).
pub async fn persist<F, Fut>(stop: &tokio_util::sync::CancellationToken, what: &str, op: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(()) => return true,
            Err(e @ (StoreError::LeaseLost(_) | StoreError::Corrupt { .. })) => {
                tracing::warn!(error = %e, "{what}: giving up");
                return false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "{what}: store unavailable, retrying");
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
