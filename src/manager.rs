//! The job manager: takes queued jobs in the store's order (fair share across courselabs,
//! or FIFO; `store::Schedule`), gets each a machine from the
//! [`Preallocator`], and hands it to a [`worker`](crate::worker) task; keeps this manager's
//! lease alive; recovers what dead managers left behind.
//!
//! One manager runs in `tango serve` (unless `--no-manager`) or alone in `tango manager`;
//! any number may share one Redis, on one host or several. Each has an *owner id*
//! (`<hostname>-<pid>-<4 hex digits>`), which names it on every job it holds and every
//! machine it makes.
//!
//! - **Leases.** The manager heartbeats (`store.heartbeat`) before it claims anything and
//!   every `jobs.lease_secs / 3` after. A job it claims carries its owner id, and every
//!   write to the job is fenced by it. If the manager dies, its lease runs out and the next
//!   manager to reap (`store.reap_expired`, at the same period) puts its jobs back at the
//!   front of the queue with their retry counts, destroys its machines, and sends the
//!   callbacks it had not delivered (a dead job whose `callback.sender` is the dead
//!   manager). Exactly one manager reaps a given dead manager (the store's reap is atomic),
//!   so a callback is taken over once.
//! - **Dispatch** is event driven and sequential, like Tango's: wait for a concurrency slot
//!   (`vmms.max_concurrent_jobs`, 0 for none), `store.claim_next` (blocks until a job is
//!   queued), then wait for a machine for the job's image (a notification, not a sleep
//!   loop). While it waits the job is claimed but `assigned: false`; once it has a machine
//!   it is traced `Dispatched job NAME:ID [try N]`, marked assigned, and its worker starts.
//!   The head of the queue waits for its machine before the next job is looked at, which
//!   is what keeps the store's order.
//! - **Cancelling.** At each housekeeping the manager ends the jobs asked to be cancelled
//!   that are its to end (`store.take_cancels`): a running job's worker task is stopped
//!   and the job ended by `worker::cancel` (machine destroyed, `Cancelled`, callback); a
//!   job no manager held is ended the same way here.
//! - **Recovery at start** (Tango's `resetTango`, made safe for several managers): reap
//!   dead managers, then destroy machines with our prefix that no live manager owns.
//!   Jobs this process's predecessor held are requeued when its lease runs out.
//! - **Lost answers.** A claim whose answer was lost (Redis killed or paused right after
//!   running it) leaves a job leased to us that no task of ours handles; since we keep
//!   renewing our lease, no reaper would free it. After a failed claim, housekeeping looks
//!   for such jobs and puts back those seen twice in a row. A machine destroyed while its
//!   pool could not be updated is taken out of the pool once the store answers again (see
//!   `preallocator.rs`), or it would count toward the pool's size for ever.
//! - **Shutdown** ([`Manager::shutdown`]): stop claiming, give running jobs and callbacks
//!   up to a grace period, then stop them, destroy our machines and hand our jobs back.
//!
//! What remains at-least-once: a callback that was on the wire when its manager died is
//! sent again by the reaper (Autolab ignores the second); a job that was running when its
//! manager died runs again from the start (its retry count is kept, not increased).

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::app::App;
use crate::callback::{Callbacks, Notifier, NotifierError, Replayer};
use crate::model::{CallbackState, Job, JobId, unix_now};
use crate::preallocator::{AcquireError, Preallocator};
use crate::store::{Reaped, StoreError, persist};
use crate::worker::{self, Assignment};

/// The longest one `claim_next` call blocks. Dispatch does not depend on it (a queued job
/// wakes the claim at once); it only bounds how long a store call stays open.
const CLAIM_WAIT: Duration = Duration::from_secs(5);

/// Why a manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Notifier(#[from] NotifierError),
}

/// A running manager. Stop it with [`Manager::shutdown`].
pub struct Manager {
    shared: Arc<Shared>,
    /// Cancelled to stop claiming jobs.
    stop: CancellationToken,
    dispatcher: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    housekeeper: JoinHandle<()>,
}

/// What the manager's tasks share.
struct Shared {
    app: Arc<App>,
    /// This manager's owner id.
    owner: String,
    prealloc: Arc<Preallocator>,
    /// What each worker is given (the store, the backend, the pools, the callbacks).
    workers_ctx: Arc<worker::Context>,
    /// One task per running job.
    workers: TaskTracker,
    /// Pool creators.
    background: TaskTracker,
    /// Cancelled when the manager stops hard: every task ends at its next await.
    kill: CancellationToken,
    /// A sweep for leftover machines is due (at start, after a reap, after a failed one).
    sweep_due: AtomicBool,
    /// Jobs this process is handling now (claimed, until put back, given up or finished),
    /// with how many tasks handle each: a worker that puts its job back for a retry still
    /// runs for a moment after the dispatcher has taken the job again.
    held: Mutex<HashMap<JobId, u32>>,
    /// The running workers' cancel tokens, by job, each with the number of its task (a
    /// job retried runs in a new task while the old one ends).
    running: Mutex<HashMap<JobId, (u64, CancellationToken)>>,
    /// Numbers the worker tasks, for `running`.
    worker_count: std::sync::atomic::AtomicU64,
    /// Jobs the store says we hold but we are not handling, seen at the last housekeeping.
    orphan_suspects: Mutex<HashSet<JobId>>,
    /// Looks for such jobs still due: set when a claim failed (its answer may have been
    /// lost after it took a job), counted down by each look that could read the store.
    orphan_checks: AtomicU32,
}

impl Manager {
    /// Registers this manager, recovers what dead managers left, and starts dispatching.
    pub async fn start(app: Arc<App>) -> Result<Manager, ManagerError> {
        let owner = owner_id();
        let kill = CancellationToken::new();
        let stop = CancellationToken::new();
        let background = TaskTracker::new();
        let prealloc =
            Preallocator::new(app.clone(), owner.clone(), background.clone(), kill.clone());
        let notifier = Notifier::new(&app.config.callback)?;
        let replayer = Replayer::new(
            notifier,
            app.store.clone(),
            app.metrics.clone(),
            app.config.server.clone(),
            owner.clone(),
        );
        let callbacks = Callbacks::new(replayer, app.metrics.clone(), kill.clone());
        let workers_ctx = Arc::new(worker::Context {
            config: app.config.clone(),
            store: app.store.clone(),
            vmms: app.vmms.clone(),
            prealloc: prealloc.clone(),
            callbacks,
            metrics: app.metrics.clone(),
            owner: owner.clone(),
            kill: kill.clone(),
        });
        let shared = Arc::new(Shared {
            app,
            owner,
            prealloc,
            workers_ctx,
            workers: TaskTracker::new(),
            background,
            kill,
            sweep_due: AtomicBool::new(true),
            held: Mutex::new(HashMap::new()),
            orphan_suspects: Mutex::new(HashSet::new()),
            running: Mutex::new(HashMap::new()),
            worker_count: std::sync::atomic::AtomicU64::new(0),
            orphan_checks: AtomicU32::new(0),
        });
        // Alive before claiming anything: a claim by an owner without a lease would be
        // reaped at once by another manager.
        shared
            .app
            .store
            .heartbeat(&shared.owner, shared.lease())
            .await?;
        tracing::info!(
            owner = %shared.owner,
            store = shared.app.store.kind(),
            vmms = shared.app.vmms.name(),
            "job manager starting"
        );
        // Its own task, so that slow housekeeping (many machines to destroy) never lets
        // the lease run out.
        let heartbeat = tokio::spawn(shared.clone().heartbeat_loop());
        shared.housekeeping().await;
        let housekeeper = tokio::spawn(shared.clone().housekeeping_loop());
        let dispatcher = tokio::spawn(shared.clone().dispatch_loop(stop.clone()));
        Ok(Manager {
            shared,
            stop,
            dispatcher,
            heartbeat,
            housekeeper,
        })
    }

    /// This manager's owner id.
    pub fn owner(&self) -> &str {
        &self.shared.owner
    }

    /// Callbacks being delivered now.
    pub fn callbacks_in_flight(&self) -> usize {
        self.shared.workers_ctx.callbacks.in_flight()
    }

    /// Jobs running now.
    pub fn running_jobs(&self) -> usize {
        self.shared.workers.len()
    }

    /// Stops claiming, lets running jobs and callbacks finish for up to `grace`, then stops
    /// the rest: their jobs go back to the front of the queue, our machines are destroyed,
    /// and the lease is given up. If callbacks are still undelivered, the lease is instead
    /// left to run out, so that the manager that reaps us sends them.
    pub async fn shutdown(self, grace: Duration) {
        let shared = self.shared.clone();
        tracing::info!(owner = %shared.owner, ?grace, "job manager stopping");
        self.stop.cancel();
        let _ = self.dispatcher.await;
        let deadline = tokio::time::Instant::now() + grace;
        shared.workers.close();
        let _ = tokio::time::timeout_at(deadline, shared.workers.wait()).await;
        let callbacks = &shared.workers_ctx.callbacks;
        callbacks.close();
        let _ = tokio::time::timeout_at(deadline, callbacks.wait()).await;
        let undelivered = callbacks.in_flight();
        shared.kill.cancel();
        shared.workers.wait().await;
        callbacks.wait().await;
        shared.background.close();
        shared.background.wait().await;
        let _ = self.housekeeper.await;
        let _ = self.heartbeat.await;

        shared.prealloc.destroy_all().await;
        let store = &shared.app.store;
        if undelivered == 0 {
            match store.release_owner(&shared.owner).await {
                Ok(ids) if !ids.is_empty() => {
                    tracing::warn!(jobs = ?ids, "jobs still running at shutdown handed back")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "cannot hand jobs back; they return when the lease runs out")
                }
            }
        } else {
            shared.hand_back_jobs().await;
            tracing::warn!(
                undelivered,
                "callbacks still undelivered at shutdown: the manager that reaps this one sends them"
            );
        }
        tracing::info!(owner = %shared.owner, "job manager stopped");
    }

    /// Stops every task at once, as `kill -9` would: nothing is handed back, no machine is
    /// destroyed, the lease just runs out. For tests of recovery.
    pub async fn abort(self) {
        self.shared.kill.cancel();
        self.stop.cancel();
        for task in [&self.dispatcher, &self.heartbeat, &self.housekeeper] {
            task.abort();
        }
        let _ = self.dispatcher.await;
        let _ = self.heartbeat.await;
        let _ = self.housekeeper.await;
        for tracker in [&self.shared.workers, &self.shared.background] {
            tracker.close();
            tracker.wait().await;
        }
        let callbacks = &self.shared.workers_ctx.callbacks;
        callbacks.close();
        callbacks.wait().await;
    }
}

impl Shared {
    fn lease(&self) -> Duration {
        Duration::from_secs(self.app.config.jobs.lease_secs.max(1))
    }

    /// How often the lease is renewed and housekeeping done: a third of the lease, so two
    /// renewals can fail before it runs out.
    fn tick(&self) -> Duration {
        (self.lease() / 3).max(Duration::from_millis(100))
    }

    /// Renews the lease every [`Shared::tick`] until the manager is killed.
    async fn heartbeat_loop(self: Arc<Self>) {
        let mut interval = tokio::time::interval(self.tick());
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.kill.cancelled() => return,
                _ = interval.tick() => {}
            }
            tokio::select! {
                _ = self.kill.cancelled() => return,
                renewed = self.app.store.heartbeat(&self.owner, self.lease()) => {
                    if let Err(e) = renewed {
                        tracing::error!(error = %e, "heartbeat failed");
                    }
                }
            }
        }
    }

    /// Reap, sweep and reconcile every [`Shared::tick`]; reconcile at once when `/prealloc`
    /// runs in this process.
    async fn housekeeping_loop(self: Arc<Self>) {
        let mut interval = tokio::time::interval(self.tick());
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            let full = tokio::select! {
                _ = self.kill.cancelled() => return,
                _ = interval.tick() => true,
                _ = self.app.pools_changed.notified() => false,
            };
            let work = async {
                if full {
                    self.housekeeping().await;
                } else if let Err(e) = self.prealloc.reconcile().await {
                    tracing::warn!(error = %e, "cannot reconcile pools");
                }
            };
            tokio::select! {
                _ = self.kill.cancelled() => return,
                _ = work => {}
            }
        }
    }

    /// Reaps dead managers, sweeps leftover machines when due, brings pools to target.
    async fn housekeeping(self: &Arc<Self>) {
        match self.app.store.reap_expired().await {
            Ok(reaped) => self.take_over(reaped).await,
            Err(e) => tracing::warn!(error = %e, "cannot reap expired managers"),
        }
        self.end_cancelled().await;
        if self.orphan_checks.load(Ordering::Acquire) > 0 {
            self.requeue_orphans().await;
        }
        if self.sweep_due.swap(false, Ordering::AcqRel) || self.prealloc.strays_suspected() {
            match self.prealloc.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(destroyed = n, "leftover machines destroyed"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot sweep leftover machines; will retry");
                    self.sweep_due.store(true, Ordering::Release);
                }
            }
        }
        if let Err(e) = self.prealloc.reconcile().await {
            tracing::warn!(error = %e, "cannot reconcile pools");
        }
    }

    /// Takes over what dead managers left: their machines are destroyed (their jobs are
    /// already back in the queue) and their undelivered callbacks sent.
    async fn take_over(self: &Arc<Self>, reaped: Reaped) {
        if reaped.owners.is_empty() {
            return;
        }
        tracing::warn!(
            owners = ?reaped.owners,
            requeued = ?reaped.requeued,
            machines = reaped.machines.len(),
            "managers stopped heartbeating: their jobs are back in the queue"
        );
        self.prealloc.destroy_reaped(&reaped.machines).await;
        // Their one-off machines are in no pool: the sweep finds them by owner.
        self.sweep_due.store(true, Ordering::Release);

        let dead = match self.app.store.dead_jobs().await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!(error = %e, "cannot read dead jobs: pending callbacks of dead managers are not resent");
                return;
            }
        };
        for mut job in dead {
            let orphaned = job.callback.as_ref().is_some_and(|c| {
                c.pending() && c.sender.as_ref().is_some_and(|s| reaped.owners.contains(s))
            });
            if !orphaned {
                continue;
            }
            job.callback = Some(CallbackState {
                sender: Some(self.owner.clone()),
                ..CallbackState::default()
            });
            if let Err(e) = self.app.store.update_dead(&job).await {
                tracing::error!(job = job.id, error = %e, "cannot take over callback");
                continue;
            }
            tracing::info!(job = job.id, "sending the callback of a dead manager");
            // The path came from the store: read it only if addJob could have made it.
            let checked = crate::labs::check_stored_paths(&self.app.config.server, &job);
            let read = match checked {
                Ok(()) => tokio::fs::read(&job.output_file).await,
                Err(reason) => Err(std::io::Error::other(reason)),
            };
            match read {
                Ok(content) => self.workers_ctx.callbacks.spawn(job, content),
                Err(e) => {
                    job.callback = Some(CallbackState {
                        error: Some(format!("cannot read the output file: {e}")),
                        ..CallbackState::default()
                    });
                    let _ = self.app.store.update_dead(&job).await;
                }
            }
        }
    }

    /// Puts back jobs the store says we hold but no task of ours handles. A claim whose
    /// answer was lost (Redis killed or paused just after running it) leaves such a job:
    /// its lease is ours and we renew it, so no reaper would ever free it. A job is put
    /// back only when seen so at two housekeepings in a row, so that a claim whose answer
    /// is merely on its way is not taken for one (and a late answer is harmless anyway:
    /// every write of the job is fenced by its lease, so a dispatch of a job put back
    /// meanwhile stops at its first write).
    async fn requeue_orphans(&self) {
        let jobs = match self.app.store.live_jobs().await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for orphaned jobs");
                return;
            }
        };
        let _ = self
            .orphan_checks
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        let candidates: Vec<Job> = {
            let held = lock(&self.held);
            jobs.into_iter()
                .filter(|j| j.owner.as_deref() == Some(&self.owner) && !held.contains_key(&j.id))
                .collect()
        };
        let previous = std::mem::replace(
            &mut *lock(&self.orphan_suspects),
            candidates.iter().map(|j| j.id).collect(),
        );
        for mut job in candidates {
            if !previous.contains(&job.id) || lock(&self.held).contains_key(&job.id) {
                continue;
            }
            tracing::warn!(
                job = job.id,
                "job held in the store by no task of ours (a claim whose answer was lost): put back"
            );
            job.assigned = false;
            match self.app.store.requeue(&job).await {
                Ok(()) => {
                    lock(&self.orphan_suspects).remove(&job.id);
                }
                Err(e) => tracing::warn!(job = job.id, error = %e, "cannot put back orphaned job"),
            }
        }
    }

    /// Marks `id` as handled by this process until the guard is dropped.
    fn hold(self: &Arc<Self>, id: JobId) -> Held {
        *lock(&self.held).entry(id).or_insert(0) += 1;
        Held(self.clone(), id)
    }

    async fn dispatch_loop(self: Arc<Self>, stop: CancellationToken) {
        // `vmms.max_concurrent_jobs`, and the backend's own bound where it has one (Docker:
        // its engines' capacity), whichever is smaller; 0 and none mean no bound.
        let configured = Some(self.app.config.vmms.max_concurrent_jobs).filter(|n| *n > 0);
        let bound = match (configured, self.app.vmms.job_capacity()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let slots = bound.map(|n| Arc::new(Semaphore::new(n.max(1) as usize)));
        loop {
            let permit = match &slots {
                Some(slots) => tokio::select! {
                    _ = stop.cancelled() => return,
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => Some(permit),
                        Err(_) => return,
                    },
                },
                None => None,
            };
            let claimed = tokio::select! {
                _ = stop.cancelled() => return,
                claimed = self.app.store.claim_next(&self.owner, CLAIM_WAIT) => claimed,
            };
            match claimed {
                Ok(Some(job)) => {
                    let span = crate::logging::job_span(&job);
                    let held = self.hold(job.id);
                    self.dispatch(job, permit, held, &stop)
                        .instrument(span)
                        .await
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "cannot take jobs from the queue");
                    // Look twice (a job is put back when seen at two looks in a row),
                    // and once more for good measure.
                    self.orphan_checks.store(3, Ordering::Release);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Gets `job` a machine and starts its worker.
    async fn dispatch(
        self: &Arc<Self>,
        mut job: Job,
        permit: Option<OwnedSemaphorePermit>,
        held: Held,
        stop: &CancellationToken,
    ) {
        let config = &self.app.config;
        let pool = job.vm.name.clone();
        tracing::debug!(job = job.id, pool, "claimed job");
        let assignment = if job.access_key.is_some() {
            // Legacy per-job credentials: a machine of its own, never pooled (as in Tango).
            Assignment::Fresh
        } else if !self.app.vmms.reusable() {
            // Single-use machines: a spare if one is ready, else one made for the job; the job
            // never waits for the pool, which only keeps spares (see preallocator.rs).
            if config.vmms.reuse_vms
                && let Err(e) = self.prealloc.ensure_pool(&job).await
            {
                tracing::warn!(job = job.id, error = %e, "cannot record the pool's target");
            }
            match self.prealloc.take_spare(&pool).await {
                Ok(Some(vm)) => Assignment::Pooled(Box::new(vm)),
                _ => Assignment::Fresh,
            }
        } else if config.vmms.reuse_vms {
            let acquired = match self.prealloc.ensure_pool(&job).await {
                Ok(()) => self.prealloc.acquire(&pool, stop).await,
                Err(e) => Err(AcquireError::Store(e)),
            };
            match acquired {
                Ok(vm) => Assignment::Pooled(Box::new(vm)),
                Err(AcquireError::Creation(error)) => {
                    job.trace(format!(
                        "Dispatched job {} [try {}]",
                        job.label(),
                        job.retries
                    ));
                    let ctx = self.workers_ctx.clone();
                    self.spawn_worker(job.id, permit, held, async move {
                        worker::run_failed(ctx, job, error).await
                    });
                    return;
                }
                Err(AcquireError::Stopped) => {
                    self.put_back(&job).await;
                    return;
                }
                Err(AcquireError::Store(e)) => {
                    tracing::error!(job = job.id, error = %e, "cannot get a machine; job put back");
                    self.put_back(&job).await;
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    return;
                }
            }
        } else {
            // Without reuse, a machine `/prealloc` made is used if one is free (Tango's
            // allocVM); otherwise one is made for the job.
            match self.prealloc.take_spare(&pool).await {
                Ok(Some(vm)) => Assignment::Pooled(Box::new(vm)),
                _ => Assignment::Fresh,
            }
        };

        job.trace(format!(
            "Dispatched job {} [try {}]",
            job.label(),
            job.retries
        ));
        job.assigned = true;
        job.timings.dispatched = Some(unix_now());
        if let Err(e) = self.app.store.update_live(&job).await {
            if matches!(e, StoreError::LeaseLost(_)) {
                tracing::warn!(job = job.id, "lease lost before dispatch");
                if let Assignment::Pooled(vm) = assignment {
                    self.prealloc.release(*vm, true).await;
                }
                return;
            }
            tracing::warn!(job = job.id, error = %e, "cannot record dispatch");
        }
        let ctx = self.workers_ctx.clone();
        let id = job.id;
        self.spawn_worker(id, permit, held, async move {
            worker::run(ctx, job, assignment).await
        });
    }

    /// Runs a worker in its own task, ended by `kill`; a panic gives the job up cleanly.
    fn spawn_worker(
        self: &Arc<Self>,
        id: u64,
        permit: Option<OwnedSemaphorePermit>,
        held: Held,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let ctx = self.workers_ctx.clone();
        let kill = self.kill.clone();
        let cancel = CancellationToken::new();
        let number = self.worker_count.fetch_add(1, Ordering::Relaxed);
        lock(&self.running).insert(id, (number, cancel.clone()));
        let shared = self.clone();
        self.workers.spawn(async move {
            let _slot = permit;
            let _held = held;
            tokio::select! {
                _ = kill.cancelled() => {}
                // The worker stops at its next await; the job is ended as cancelled.
                _ = cancel.cancelled() => worker::cancel(ctx, id).await,
                result = AssertUnwindSafe(work).catch_unwind() => {
                    if result.is_err() {
                        tracing::error!(job = id, "worker panicked; giving the job up");
                        worker::recover_from_panic(ctx, id).await;
                    }
                }
            }
            let mut running = lock(&shared.running);
            if running.get(&id).is_some_and(|(n, _)| *n == number) {
                running.remove(&id);
            }
        });
    }

    /// Ends the jobs asked to be cancelled that are ours to end (`store::take_cancels`): a
    /// running one's worker is stopped, one we took from outside the queue is ended here.
    /// One waiting for its machine is stopped once its worker starts, at the next look.
    async fn end_cancelled(self: &Arc<Self>) {
        let jobs = match self.app.store.take_cancels(&self.owner).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the jobs to cancel");
                return;
            }
        };
        for job in jobs {
            if let Some((_, cancel)) = lock(&self.running).get(&job.id) {
                cancel.cancel();
                continue;
            }
            if lock(&self.held).contains_key(&job.id) {
                continue;
            }
            let held = self.hold(job.id);
            let ctx = self.workers_ctx.clone();
            self.workers.spawn(async move {
                let _held = held;
                worker::cancel(ctx, job.id).await;
            });
        }
    }

    /// Puts a claimed job back at the front of the queue, as it was (not a retry).
    async fn put_back(&self, job: &Job) {
        let store = self.app.store.clone();
        persist(&self.kill, "put back", || {
            let store = store.clone();
            let job = job.clone();
            async move { store.requeue(&job).await }
        })
        .await;
    }

    /// At shutdown with callbacks undelivered: our jobs go back to the queue one by one,
    /// and our lease is left to run out.
    async fn hand_back_jobs(&self) {
        match self.app.store.live_jobs().await {
            Ok(jobs) => {
                for mut job in jobs
                    .into_iter()
                    .filter(|j| j.owner.as_deref() == Some(&self.owner))
                {
                    job.assigned = false;
                    if let Err(e) = self.app.store.requeue(&job).await {
                        tracing::warn!(job = job.id, error = %e, "cannot hand job back");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand jobs back; they return when the lease runs out")
            }
        }
    }
}

/// A job marked as handled by this process, unmarked when dropped.
struct Held(Arc<Shared>, JobId);

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = lock(&self.0.held);
        if let Some(count) = held.get_mut(&self.1) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.1);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

pub use crate::owner::owner_id;
