//! Per-image pools of ready machines, kept at the size `/prealloc` (or an image's first job)
//! asked for, and the one place that makes, hands out, takes back and destroys machines.
//!
//! A pool is named after its image without the extension (Tango's `vm.name`). Its *target*
//! (size, cores, memory) lives in the store, so every manager sees it; its machines belong
//! to this manager (`store.pool_*` with our owner id), because a container on one host is
//! of no use to a manager on another. `/pool` shows the union over live managers.
//!
//! How pools move:
//! - **Grow**: [`Preallocator::reconcile`] compares each target with our pool and starts one
//!   *creator* task per pool that is short. How fast a creator makes machines is the
//!   backend's [`Pacing`]: VM backends keep Tango's, one at a time with `vmms.createvm_secs`
//!   between them (`vmms.create_parallel` at once, with the pause between batches), which
//!   is kind to a cloud API's rate limits; Docker makes containers with no pause, as many at
//!   once as its engines' capacity. A machine is
//!   entered in the pool (busy) *before* it is initialized, so that a manager that dies
//!   half-way through leaves a machine the store knows about and the reaper destroys; it is
//!   put on the free list once `initialize_vm` and `wait_vm` have succeeded.
//! - **Single-use machines** (Docker's containers, [`Vmms::reusable`] false): a pool holds
//!   *spares*, machines ready for a job's first step. A job takes one if one is free
//!   ([`Preallocator::take_spare`]) and otherwise has one made for it alone
//!   ([`Preallocator::make_one_off`]); it never waits for the pool. The spare it took leaves
//!   the pool at once (it is the job's now, destroyed after it) and a replacement is started
//!   at once, so a burst runs at the pace of the backend, bounded by its capacity, and the
//!   pool's size is only how many machines wait ready between bursts.
//! - **Shrink**: free machines beyond the target are destroyed at once; busy ones when their
//!   job hands them back.
//! - **Hand back** ([`Preallocator::release`]): a machine whose job ended normally goes back
//!   on the free list (with `reuse_vms`); a machine that failed, or ran a job that hit an
//!   OS error or had to be killed, is destroyed and replaced. Without `reuse_vms` every
//!   machine is destroyed after its job, and pools made by `/prealloc` are refilled. A
//!   single-use machine is destroyed in the background once its job is over: its output is
//!   already out, and its removal need not hold the job's slot.
//!
//! Waiting for a machine is event driven: [`Preallocator::acquire`] sleeps on a [`Notify`]
//! rung whenever a machine is freed or made, or a creation fails.
//!
//! Machine ids are Tango's: pool machines are numbered from 1000 by one counter in the
//! store (`allocate_vm_id`), which, unlike Tango's, never wraps at 9999, so two machines
//! never share an instance name; a one-off machine (no `reuse_vms`) takes its job's id.
//! Managers with stores of their own (the memory store) on one engine count alike: a
//! create that finds its name held by another manager's machine
//! ([`VmmsError::NameTaken`]) leaves it, and takes the next id from the store instead.
//!
//! Leftovers: [`Preallocator::sweep`] destroys machines with our prefix that no live manager
//! owns — what Tango's `resetTango` did at start, made safe for several managers sharing
//! one engine or account, with or without a shared store (see [`crate::owner`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::model::{Job, Machine, PoolTarget};
use crate::store::StoreError;
use crate::vmms::{Pacing, Vmms, VmmsError, within};

/// How many ids a machine's creation tries while its name is held by another manager's
/// machine. Each failed try costs one refused create and makes nothing; the numbers of two
/// managers with stores of their own meet only while their counters run alike.
const NAME_TRIES: u32 = 32;

/// Extra time past `vmms.destroy_secs` before we stop waiting for a destroy: the backend
/// itself retries within `destroy_secs`, this only keeps a wedged backend from holding us.
const DESTROY_GRACE: Duration = Duration::from_secs(10);

/// Longest pause between two creation attempts for a pool whose creations keep failing.
const MAX_CREATE_BACKOFF: Duration = Duration::from_secs(30);

/// The longest a waiter sleeps without an event before looking again; a safety net only
/// (every change that matters rings the notification).
const ACQUIRE_RECHECK: Duration = Duration::from_secs(5);

/// Why [`Preallocator::acquire`] returned without a machine.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// The manager is stopping.
    #[error("the manager is stopping")]
    Stopped,
    /// Making machines for the pool fails and it has none left: charged to the job.
    #[error("{0}")]
    Creation(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The pools of one manager.
pub struct Preallocator {
    app: Arc<App>,
    /// Our manager's owner id: the owner of every machine we make.
    owner: String,
    /// Where creator tasks are spawned, so shutdown can wait for them.
    tasks: TaskTracker,
    /// Cancelled when the manager dies or stops hard: creators stop at once.
    kill: CancellationToken,
    /// Rung when one of our machines is freed or made, or a creation fails.
    machine_event: Notify,
    /// Pools with a creator running; the flag asks it to look again before it exits (so a
    /// request that arrives while it finishes is not lost).
    creators: Mutex<HashMap<String, bool>>,
    /// Creation failures per pool since start, and the last error.
    failures: Mutex<HashMap<String, (u64, String)>>,
    /// Ids of one-off machines (not in any pool) that exist or are being made now.
    one_off: Mutex<HashSet<u64>>,
    /// Set when a destroy failed: the next sweep also looks for our own strays.
    strays: AtomicBool,
}

impl Preallocator {
    pub fn new(
        app: Arc<App>,
        owner: String,
        tasks: TaskTracker,
        kill: CancellationToken,
    ) -> Arc<Preallocator> {
        Arc::new(Preallocator {
            app,
            owner,
            tasks,
            kill,
            machine_event: Notify::new(),
            creators: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            one_off: Mutex::new(HashSet::new()),
            strays: AtomicBool::new(false),
        })
    }

    /// Makes sure the job's pool has a target: with `reuse_vms`, an image's first job sets
    /// it to `vmms.pool_size` (Tango re-grew a pool found empty the same way).
    pub async fn ensure_pool(self: &Arc<Self>, job: &Job) -> Result<(), StoreError> {
        let pool = &job.vm.name;
        let targets = self.app.store.pool_targets().await?;
        if targets.get(pool).is_none_or(|t| t.size == 0) {
            let target = PoolTarget {
                image: job.vm.image.clone(),
                vmms: job.vm.vmms.clone(),
                // A pool of none would leave the job waiting for ever.
                size: self.app.config.vmms.pool_size.max(1),
                cores: job.vm.cores,
                memory: job.vm.memory,
            };
            tracing::info!(pool, size = target.size, "creating pool for its first job");
            self.app.store.set_pool_target(pool, &target).await?;
        }
        self.kick(pool);
        Ok(())
    }

    /// A free machine of `pool`, waiting until one is freed or made. Fails when the pool
    /// has no machine at all and making one failed while we waited, so the job is charged
    /// with the failure (and retried) instead of waiting for ever.
    pub async fn acquire(
        self: &Arc<Self>,
        pool: &str,
        stop: &CancellationToken,
    ) -> Result<Machine, AcquireError> {
        let failures_at_start = self.failure_count(pool);
        loop {
            let event = self.machine_event.notified();
            tokio::pin!(event);
            event.as_mut().enable();
            if let Some(vm) = self.app.store.pool_take(&self.owner, pool).await? {
                return Ok(vm);
            }
            if self.failure_count(pool) > failures_at_start && self.pool_is_empty(pool).await? {
                let message = self.last_failure(pool);
                return Err(AcquireError::Creation(message));
            }
            tokio::select! {
                _ = stop.cancelled() => return Err(AcquireError::Stopped),
                _ = &mut event => {}
                _ = tokio::time::sleep(ACQUIRE_RECHECK) => {
                    // Nothing happened for a while: make sure a creator is at work.
                    self.kick(pool);
                }
            }
        }
    }

    /// A free machine of `pool` if there is one now (Tango's `allocVM`, used without
    /// `reuse_vms` to take a machine `/prealloc` made, and for single-use machines). A
    /// single-use machine leaves its pool as it is taken (it is the job's alone, destroyed
    /// after it), and a replacement is started at once.
    pub async fn take_spare(self: &Arc<Self>, pool: &str) -> Result<Option<Machine>, StoreError> {
        let Some(vm) = self.app.store.pool_take(&self.owner, pool).await? else {
            return Ok(None);
        };
        if !self.app.vmms.reusable()
            && let Some(id) = vm.id
        {
            self.track_one_off(id);
            self.forget(pool, id).await;
            self.kick(pool);
        }
        Ok(Some(vm))
    }

    /// Makes a machine for one job alone (in no pool), through `vmms` (the configured
    /// backend, or one acting with the job's own credentials, whose machines are not in our
    /// listing and need no guarding from the sweep). `vm` names the job's id, image and owner.
    pub async fn make_one_off(
        &self,
        vmms: &Arc<dyn Vmms>,
        vm: &mut Machine,
    ) -> Result<(), VmmsError> {
        let guarded = Arc::ptr_eq(vmms, &self.app.vmms);
        let limit = Duration::from_secs(self.app.config.timeouts.initialize_vm);
        let mut tries = 0;
        loop {
            if guarded && let Some(id) = vm.id {
                self.track_one_off(id);
            }
            match within(limit, "initializeVM", vmms.initialize_vm(vm)).await {
                // Nothing was made under that name: another id, which the job's trace and
                // record then carry.
                Err(VmmsError::NameTaken(name)) if tries + 1 < NAME_TRIES => {
                    tries += 1;
                    if guarded && let Some(id) = vm.id {
                        lock(&self.one_off).remove(&id);
                    }
                    let id = self.app.store.allocate_vm_id().await.map_err(|e| {
                        VmmsError::Backend(format!("cannot take another machine id: {e}"))
                    })?;
                    tracing::info!(taken = %name, vm = id, "machine name held by another manager; taking another id");
                    vm.id = Some(id);
                }
                other => return other,
            }
        }
    }

    /// Notes a one-off machine (made for one job, in no pool) before it is made, so a sweep
    /// does not take it for a stray.
    fn track_one_off(&self, id: u64) {
        lock(&self.one_off).insert(id);
    }

    /// Takes back a machine after its job. `reusable`: the job ended normally, so the
    /// machine may serve another (with `reuse_vms`, and when the backend's machines are not
    /// single-use, as Docker's are); otherwise it is destroyed, and replaced if it belonged
    /// to a pool.
    pub async fn release(self: &Arc<Self>, vm: Machine, reusable: bool) {
        let pool = vm.name.clone();
        let Some(id) = vm.id else {
            self.destroy(&vm).await;
            return;
        };
        let one_off = lock(&self.one_off).remove(&id);
        if one_off {
            if self.app.vmms.reusable() {
                self.destroy(&vm).await;
            } else {
                // The job is over and its output out: the removal need not hold its slot.
                let this = self.clone();
                self.spawn(async move { this.destroy(&vm).await });
            }
            return;
        }
        let store = &self.app.store;
        if reusable
            && self.app.vmms.reusable()
            && self.app.config.vmms.reuse_vms
            && !self.over_target(&pool).await
        {
            match store.pool_free(&self.owner, &pool, &vm).await {
                Ok(true) => {
                    self.machine_event.notify_waiters();
                    return;
                }
                // No longer a member (the pool shrank): it goes.
                Ok(false) => {
                    self.destroy(&vm).await;
                    return;
                }
                Err(e) => tracing::warn!(vm = id, error = %e, "cannot free machine; destroying it"),
            }
        }
        self.destroy(&vm).await;
        self.forget(&pool, id).await;
        // A replacement, if the pool is now short.
        self.kick(&pool);
        self.machine_event.notify_waiters();
    }

    /// Brings every pool to its target: starts creators for short pools, destroys free
    /// machines of pools that are too big.
    pub async fn reconcile(self: &Arc<Self>) -> Result<(), StoreError> {
        let targets = self.app.store.pool_targets().await?;
        let mine = self.app.store.owner_pools(&self.owner).await?;
        for (pool, target) in &targets {
            let have = mine.get(pool).map_or(0, |p| p.total.len() as u64);
            let want = u64::from(target.size);
            if have < want {
                self.kick(pool);
            } else if have > want {
                self.shrink(pool, have - want).await;
            }
        }
        Ok(())
    }

    /// Destroys machines with our prefix that no live manager owns: those whose owner's
    /// lease ran out, and those with no owner that no live manager's pool or job names. Our
    /// own machines are destroyed only when a destroy failed earlier and they are in none
    /// of our pools and run none of our jobs. Returns how many were destroyed.
    pub async fn sweep(&self) -> Result<usize, SweepError> {
        let check_ours = self.strays.swap(false, Ordering::AcqRel);
        let result = self.sweep_once(check_ours).await;
        if result.is_err() && check_ours {
            // Look again next time.
            self.strays.store(true, Ordering::Release);
        }
        result
    }

    async fn sweep_once(&self, check_ours: bool) -> Result<usize, SweepError> {
        let vms = self.app.vmms.get_vms().await?;
        if vms.is_empty() {
            return Ok(0);
        }
        let store = &self.app.store;
        let live: HashSet<String> = store.live_owners().await?.into_iter().collect();
        // Read after the machine list: a machine made since is not in the list, and one
        // entered in a pool or a job before it was made is known here.
        let mut known: HashSet<u64> = HashSet::new();
        for pool in store.pools().await?.values() {
            known.extend(&pool.total);
        }
        for job in store.live_jobs().await? {
            if job.owner.as_ref().is_some_and(|o| live.contains(o))
                && let Some(id) = job.vm.id
            {
                known.insert(id);
            }
        }
        let mut ours: HashSet<u64> = HashSet::new();
        if check_ours {
            for pool in store.owner_pools(&self.owner).await?.values() {
                ours.extend(&pool.total);
            }
            ours.extend(lock(&self.one_off).iter().copied());
        }
        let mut destroyed = 0;
        for vm in vms {
            let stray = match vm.owner.as_deref() {
                Some(owner) if owner == self.owner => {
                    check_ours && vm.id.is_none_or(|id| !ours.contains(&id))
                }
                Some(owner) => !live.contains(owner) && self.owner_gone(owner),
                None => vm.id.is_none_or(|id| !known.contains(&id)),
            };
            if stray {
                tracing::warn!(
                    instance = %self.app.vmms.instance_name(&vm),
                    owner = vm.owner.as_deref().unwrap_or("none"),
                    "destroying leftover machine"
                );
                if self.destroy(&vm).await {
                    destroyed += 1;
                }
            }
        }
        Ok(destroyed)
    }

    /// Whether another owner, absent from the store's live owners, is known to be gone: its
    /// process, on this host, is not running; or, on another host, a shared store (which
    /// every manager on the engine then uses) no longer holds its lease. With the memory
    /// store another host's owner is never known gone: a daemon sharing the engine but not
    /// the store keeps its machines.
    fn owner_gone(&self, owner: &str) -> bool {
        match crate::owner::liveness(owner) {
            crate::owner::Liveness::Running => false,
            crate::owner::Liveness::Gone => true,
            crate::owner::Liveness::Unknown => {
                self.app.config.store.backend != crate::config::StoreBackend::Memory
            }
        }
    }

    /// Destroys the machines a reaped manager left in its pools.
    pub async fn destroy_reaped(&self, machines: &[Machine]) {
        for vm in machines {
            self.destroy(vm).await;
        }
    }

    /// At shutdown: destroys every machine of ours, free or not (the workers are gone).
    pub async fn destroy_all(&self) {
        let store = &self.app.store;
        match store.owner_pools(&self.owner).await {
            Ok(pools) => {
                for pool in pools.keys() {
                    while let Ok(Some(vm)) = store.pool_take(&self.owner, pool).await {
                        self.destroy(&vm).await;
                        if let Some(id) = vm.id {
                            let _ = store.pool_remove(&self.owner, pool, id).await;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list our pools at shutdown"),
        }
        // Busy machines were held by workers that are gone: the backend still knows them.
        match self.app.vmms.get_vms().await {
            Ok(vms) => {
                for vm in vms
                    .iter()
                    .filter(|vm| vm.owner.as_deref() == Some(&self.owner))
                {
                    self.destroy(vm).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list machines at shutdown"),
        }
        self.app.vmms.shutdown().await;
    }

    /// Destroys a machine within `vmms.destroy_secs` (plus a grace). False if that failed;
    /// the machine is then looked for by the next sweep.
    pub async fn destroy(&self, vm: &Machine) -> bool {
        let limit = Duration::from_secs_f64(self.app.config.vmms.destroy_secs) + DESTROY_GRACE;
        let result = within(limit, "destroyVM", self.app.vmms.safe_destroy_vm(vm)).await;
        match result {
            Ok(()) => true,
            Err(VmmsError::NotFound(_)) => true,
            Err(e) => {
                tracing::error!(
                    instance = %self.app.vmms.instance_name(vm),
                    error = %e,
                    "cannot destroy machine"
                );
                self.strays.store(true, Ordering::Release);
                false
            }
        }
    }

    /// Asks for a look at the pool soon (the next sweep) for machines a destroy missed.
    pub fn strays_suspected(&self) -> bool {
        self.strays.load(Ordering::Acquire)
    }

    // ---- internals ----

    /// Starts a creator for `pool` unless one runs; a running one is asked to look again.
    fn kick(self: &Arc<Self>, pool: &str) {
        {
            let mut creators = lock(&self.creators);
            if let Some(again) = creators.get_mut(pool) {
                *again = true;
                return;
            }
            creators.insert(pool.to_string(), false);
        }
        let this = self.clone();
        let pool = pool.to_string();
        self.spawn(async move { this.create_until_full(&pool).await });
    }

    /// Runs `work` in a task of ours (shutdown waits for it), ended at once when the manager
    /// is killed.
    fn spawn<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) {
        let kill = self.kill.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = kill.cancelled() => {}
                _ = work => {}
            }
        });
    }

    /// A creator: makes machines for `pool`, at the backend's pace, until it reaches its
    /// target.
    async fn create_until_full(self: &Arc<Self>, pool: &str) {
        let pacing = self
            .app
            .vmms
            .pacing()
            .unwrap_or_else(|| Pacing::configured(&self.app.config));
        let pause = pacing.pause;
        let mut backoff = pause.max(Duration::from_secs(1));
        loop {
            if let Some(again) = lock(&self.creators).get_mut(pool) {
                *again = false;
            }
            let short = match self.shortfall(pool).await {
                Ok(short) => short,
                Err(e) => {
                    tracing::warn!(pool, error = %e, "cannot read pool; retrying");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            let Some((target, missing)) = short else {
                let mut creators = lock(&self.creators);
                if creators.get(pool).copied().unwrap_or(false) {
                    continue;
                }
                creators.remove(pool);
                return;
            };
            let batch = missing.min(u64::from(pacing.parallel.max(1)));
            let made =
                futures::future::join_all((0..batch).map(|_| self.create_one(pool, &target))).await;
            let mut failed = false;
            for result in made {
                match result {
                    Ok(id) => tracing::info!(pool, vm = id, "added machine to pool"),
                    Err(CreateError::Store(e)) => {
                        // Not the machine's fault: a waiting job is not charged with it (it
                        // would spend one of its tries); the creator backs off and tries again.
                        tracing::warn!(pool, error = %e, "cannot record a new machine; retrying");
                        failed = true;
                    }
                    Err(CreateError::Machine(message)) => {
                        tracing::error!(pool, error = %message, "cannot create machine");
                        let mut failures = lock(&self.failures);
                        let entry = failures.entry(pool.to_string()).or_default();
                        entry.0 += 1;
                        entry.1 = message;
                        failed = true;
                    }
                }
            }
            if failed {
                self.machine_event.notify_waiters();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_CREATE_BACKOFF);
            } else {
                backoff = pause.max(Duration::from_secs(1));
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// The pool's target and how many machines it lacks, if we have fewer than it asks for.
    async fn shortfall(&self, pool: &str) -> Result<Option<(PoolTarget, u64)>, StoreError> {
        let targets = self.app.store.pool_targets().await?;
        let Some(target) = targets.get(pool) else {
            return Ok(None);
        };
        let mine = self.app.store.owner_pools(&self.owner).await?;
        let have = mine.get(pool).map_or(0, |p| p.total.len() as u64);
        let want = u64::from(target.size);
        Ok((have < want).then(|| (target.clone(), want - have)))
    }

    /// Makes one machine and puts it on the pool's free list. Returns its id.
    async fn create_one(&self, pool: &str, target: &PoolTarget) -> Result<u64, CreateError> {
        let store = &self.app.store;
        let config = &self.app.config;
        let mut vm = Machine {
            name: pool.to_string(),
            image: target.image.clone(),
            vmms: if target.vmms.is_empty() {
                self.app.vmms.name().to_string()
            } else {
                target.vmms.clone()
            },
            cores: target.cores,
            memory: target.memory,
            owner: Some(self.owner.clone()),
            ..Machine::default()
        };
        let mut tries = 0;
        let id = loop {
            let id = store.allocate_vm_id().await?;
            vm.id = Some(id);
            store.pool_add(&self.owner, pool, &vm).await?;
            let limit = Duration::from_secs(config.timeouts.initialize_vm);
            match within(limit, "initializeVM", self.app.vmms.initialize_vm(&mut vm)).await {
                Ok(()) => break id,
                // Nothing was made under that name: no destroy, only another id.
                Err(VmmsError::NameTaken(name)) if tries + 1 < NAME_TRIES => {
                    tries += 1;
                    tracing::info!(taken = %name, "machine name held by another manager; taking another id");
                    self.forget(pool, id).await;
                }
                Err(e) => {
                    self.destroy(&vm).await;
                    self.forget(pool, id).await;
                    return Err(CreateError::Machine(step_error("initializeVM", e)));
                }
            }
        };
        let wait = Duration::from_secs(config.timeouts.wait_vm);
        let ready = within(wait, "waitVM", self.app.vmms.wait_vm(&vm, wait))
            .await
            .map_err(|e| step_error("waitVM", e));
        if let Err(message) = ready {
            self.destroy(&vm).await;
            self.forget(pool, id).await;
            return Err(CreateError::Machine(message));
        }
        match store.pool_free(&self.owner, pool, &vm).await {
            Ok(true) => {
                self.machine_event.notify_waiters();
                Ok(id)
            }
            Ok(false) => {
                // Removed while we made it (a shrink, or the pools were reset).
                self.destroy(&vm).await;
                Ok(id)
            }
            Err(e) => {
                self.destroy(&vm).await;
                self.forget(pool, id).await;
                Err(CreateError::Store(e))
            }
        }
    }

    /// Takes destroyed machine `id` out of our pool `pool`, retrying while the store is
    /// unavailable (until the manager is killed). A machine left listed after it was
    /// destroyed would count toward the pool's size for ever: no replacement would be made,
    /// and a job waiting for a machine of that pool would wait for ever.
    async fn forget(&self, pool: &str, id: u64) {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.app.store.pool_remove(&self.owner, pool, id).await {
                Ok(_) => return,
                Err(e @ StoreError::Unavailable(_)) => {
                    tracing::warn!(vm = id, error = %e, "cannot remove machine from its pool; retrying");
                }
                Err(e) => {
                    tracing::warn!(vm = id, error = %e, "cannot remove machine from its pool");
                    return;
                }
            }
            tokio::select! {
                _ = self.kill.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Destroys up to `count` free machines of `pool`.
    async fn shrink(&self, pool: &str, count: u64) {
        let store = &self.app.store;
        for _ in 0..count {
            match store.pool_take(&self.owner, pool).await {
                Ok(Some(vm)) => {
                    if let Some(id) = vm.id {
                        self.forget(pool, id).await;
                    }
                    tracing::info!(pool, vm = ?vm.id, "shrinking pool");
                    self.destroy(&vm).await;
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(pool, error = %e, "cannot shrink pool");
                    return;
                }
            }
        }
    }

    /// True when we hold more machines in `pool` than its target (it was shrunk while some
    /// were busy): a machine handed back then is destroyed instead of freed.
    async fn over_target(&self, pool: &str) -> bool {
        let (Ok(targets), Ok(mine)) = (
            self.app.store.pool_targets().await,
            self.app.store.owner_pools(&self.owner).await,
        ) else {
            return false;
        };
        match (targets.get(pool), mine.get(pool)) {
            (Some(target), Some(have)) => have.total.len() as u64 > u64::from(target.size),
            _ => false,
        }
    }

    async fn pool_is_empty(&self, pool: &str) -> Result<bool, StoreError> {
        let mine = self.app.store.owner_pools(&self.owner).await?;
        Ok(mine.get(pool).is_none_or(|p| p.total.is_empty()))
    }

    fn failure_count(&self, pool: &str) -> u64 {
        lock(&self.failures).get(pool).map_or(0, |f| f.0)
    }

    fn last_failure(&self, pool: &str) -> String {
        lock(&self.failures)
            .get(pool)
            .map(|f| f.1.clone())
            .unwrap_or_else(|| "cannot create a machine".into())
    }
}

/// Why [`Preallocator::create_one`] made no machine.
#[derive(Debug, thiserror::Error)]
enum CreateError {
    /// The store did not answer: nothing is wrong with the machines, and no job pays for it.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The backend could not make or ready the machine: counted against the pool, and a job
    /// waiting on an empty pool is charged with it.
    #[error("{0}")]
    Machine(String),
}

/// `<step> failed: <error>`, or the timeout's own words (`waitVM timed out after N seconds`).
fn step_error(step: &str, error: VmmsError) -> String {
    match error {
        VmmsError::Timeout { .. } => error.to_string(),
        other => format!("{step} failed: {other}"),
    }
}

/// Why a sweep could not run.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("cannot list machines: {0}")]
    Vmms(#[from] VmmsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent at every point a panic could happen.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
