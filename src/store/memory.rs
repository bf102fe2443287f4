//! The embedded store: everything in this process's memory behind one mutex.
//!
//! It is the default because it needs nothing installed; it is lost when the process exits
//! (use Redis to survive restarts). A waiting [`JobStore::claim_next`] is woken by a
//! [`Notify`] the moment a job is queued, so dispatch costs no polling.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    Added, CancelRequest, JobStore, Reaped, Schedule, StoreError, StoreStats, added_line, lab_of,
};
use crate::model::{
    Counter, Counters, FailedCallback, Job, JobId, Machine, PoolTarget, PoolView, unix_now,
};

/// The in-memory store.
pub struct MemoryStore {
    state: Mutex<State>,
    /// Which queued job a claim takes.
    schedule: Schedule,
    /// Wakes claimers when a job enters the queue.
    queued: Notify,
}

#[derive(Default)]
struct State {
    next_job_id: JobId,
    next_vm_id: u64,
    live: HashMap<JobId, Job>,
    /// Dead jobs and the order they died in, oldest first, for trimming.
    dead: HashMap<JobId, Job>,
    dead_order: VecDeque<JobId>,
    queue: VecDeque<JobId>,
    /// The same ids by courselab ([`lab_of`]), each in queue order, for fair share.
    labs: HashMap<String, VecDeque<JobId>>,
    /// The courselabs with jobs queued, and the pass each is at (see [`Schedule`]).
    waiting: HashMap<String, f64>,
    /// The pass of each courselab that has had a job claimed.
    pass: HashMap<String, f64>,
    /// The pass of the last claim: where a courselab that starts waiting enters, at least.
    vtime: f64,
    /// Live jobs asked to be cancelled (see [`JobStore::request_cancel`]).
    cancels: std::collections::HashSet<JobId>,
    /// Output file → the live job writing it, for [`JobStore::add_job_once`].
    outputs: HashMap<String, JobId>,
    /// Jobs each manager has claimed and not yet finished or requeued.
    claimed: HashMap<String, Vec<JobId>>,
    /// When each manager's lease runs out.
    owners: HashMap<String, Instant>,
    /// (owner, pool) → machines.
    pools: BTreeMap<(String, String), Pool>,
    targets: BTreeMap<String, PoolTarget>,
    counters: Counters,
    /// Failed callbacks by job, each with its place in age order and its claim.
    failed: HashMap<JobId, Kept>,
    /// Age order of `failed`: place → job.
    failed_order: BTreeMap<u64, JobId>,
    /// The next place in `failed_order`.
    failed_next: u64,
}

/// A failed callback as kept.
struct Kept {
    record: FailedCallback,
    place: u64,
    /// Who is sending it, and until when the claim holds.
    claim: Option<(String, Instant)>,
}

impl Kept {
    /// The record, its claimant shown while the claim holds.
    fn view(&self, now: Instant) -> FailedCallback {
        let mut record = self.record.clone();
        record.replaying = self
            .claim
            .as_ref()
            .filter(|(_, until)| *until > now)
            .map(|(owner, _)| owner.clone());
        record
    }
}

#[derive(Default)]
struct Pool {
    total: Vec<u64>,
    free: VecDeque<Machine>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore {
            state: Mutex::new(State {
                next_job_id: 1,
                next_vm_id: 1000,
                ..State::default()
            }),
            queued: Notify::new(),
            schedule: Schedule::default(),
        }
    }

    /// The store, its claims made in `schedule`'s order.
    #[must_use]
    pub fn with_schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// `add_job`, and with `once` `add_job_once`.
    fn add(&self, job: &mut Job, max_queued: u64, once: bool) -> Result<Added, StoreError> {
        {
            let mut s = self.lock();
            s.counters.job_requests += 1;
            if once && let Some(id) = s.writer_of(&job.output_file) {
                return Ok(Added::Existing(id));
            }
            if max_queued > 0 && s.queue.len() as u64 >= max_queued {
                return Err(StoreError::QueueFull(s.queue.len() as u64));
            }
            let id = s.next_job_id;
            s.next_job_id += 1;
            job.id = id;
            job.owner = None;
            job.assigned = false;
            job.timings.added = Some(unix_now());
            job.trace(added_line(&job.name, id));
            s.outputs.insert(job.output_file.clone(), id);
            s.live.insert(id, job.clone());
            s.push_queued(id, false);
        }
        self.queued.notify_waiters();
        self.queued.notify_one();
        Ok(Added::New)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind, never a half-applied
        // change that matters more than losing the whole store would.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// The live job `job.id`, if `job.owner` holds it.
    fn held(&mut self, job: &Job) -> Result<&mut Job, StoreError> {
        match self.live.get_mut(&job.id) {
            Some(live) if live.owner.is_some() && live.owner == job.owner => Ok(live),
            _ => Err(StoreError::LeaseLost(job.id)),
        }
    }

    /// Queues a live job at the tail, or with `front` at the head, of the queue and of its
    /// courselab's queue; a courselab that was not waiting enters at its pass, or at the
    /// last claim's if it is behind.
    fn push_queued(&mut self, id: JobId, front: bool) {
        if self.cancels.contains(&id) {
            // Cancelled: it waits, out of the queue, for a manager to end it.
            return;
        }
        let lab = self
            .live
            .get(&id)
            .map(|job| lab_of(&job.output_file).to_string())
            .unwrap_or_default();
        let lab_queue = self.labs.entry(lab.clone()).or_default();
        if front {
            self.queue.push_front(id);
            lab_queue.push_front(id);
        } else {
            self.queue.push_back(id);
            lab_queue.push_back(id);
        }
        if !self.waiting.contains_key(&lab) {
            let pass = self.pass.get(&lab).copied().unwrap_or(0.0).max(self.vtime);
            self.waiting.insert(lab, pass);
        }
    }

    /// Takes the next id out of the queue: its head with a FIFO schedule, else the head of
    /// the courselab with the lowest pass (ties by name), whose pass moves on.
    fn take_next(&mut self, schedule: &Schedule) -> Option<JobId> {
        if schedule.max_running_per_lab > 0 {
            return self.take_next_capped(schedule);
        }
        let turn = self
            .waiting
            .iter()
            .min_by(|a, b| a.1.total_cmp(b.1).then_with(|| a.0.cmp(b.0)))
            .map(|(lab, pass)| (lab.clone(), *pass));
        let (id, lab) = match turn {
            Some((lab, pass)) if !schedule.fifo => (self.take_turn(&lab, pass, schedule), lab),
            _ => {
                let (id, lab) = self.take_queued_at(0)?;
                (Some(id), lab)
            }
        };
        if self.labs.get(&lab).is_none_or(VecDeque::is_empty) {
            self.labs.remove(&lab);
            self.waiting.remove(&lab);
        }
        id.or_else(|| self.queue.pop_front())
    }

    /// Courselab `lab`'s turn at virtual time `pass`: its next id (`None` when its list is
    /// empty), and its pass moves on by its stride.
    fn take_turn(&mut self, lab: &str, pass: f64, schedule: &Schedule) -> Option<JobId> {
        let id = self.labs.get_mut(lab).and_then(VecDeque::pop_front);
        let next = pass + schedule.stride(lab);
        self.vtime = pass;
        self.pass.insert(lab.to_string(), next);
        self.waiting.insert(lab.to_string(), next);
        if let Some(id) = id
            && let Some(at) = self.queue.iter().position(|&queued| queued == id)
        {
            self.queue.remove(at);
        }
        id
    }

    /// The id at place `at` of the queue, taken out of it and of its courselab's list, with
    /// that courselab.
    fn take_queued_at(&mut self, at: usize) -> Option<(JobId, String)> {
        let id = self.queue.remove(at)?;
        let lab = self
            .live
            .get(&id)
            .map(|job| lab_of(&job.output_file).to_string())
            .unwrap_or_default();
        if let Some(ids) = self.labs.get_mut(&lab) {
            ids.retain(|&queued| queued != id);
        }
        Some((id, lab))
    }

    /// [`State::take_next`] passing over the courselabs that hold
    /// `schedule.max_running_per_lab` jobs already: with fair share the lowest pass among
    /// the others, in FIFO the oldest queued job of the others. `None` when every job
    /// waiting is of a courselab at its cap.
    fn take_next_capped(&mut self, schedule: &Schedule) -> Option<JobId> {
        let mut held: HashMap<&str, u64> = HashMap::new();
        for id in self.claimed.values().flatten() {
            if let Some(job) = self.live.get(id) {
                *held.entry(lab_of(&job.output_file)).or_default() += 1;
            }
        }
        let cap = schedule.max_running_per_lab;
        let open = |lab: &str| held.get(lab).copied().unwrap_or(0) < cap;
        let (id, lab) = if schedule.fifo {
            let at = self.queue.iter().position(|id| {
                self.live
                    .get(id)
                    .is_none_or(|job| open(lab_of(&job.output_file)))
            })?;
            let (id, lab) = self.take_queued_at(at)?;
            (Some(id), lab)
        } else {
            let (lab, pass) = self
                .waiting
                .iter()
                .filter(|(lab, _)| open(lab))
                .min_by(|a, b| a.1.total_cmp(b.1).then_with(|| a.0.cmp(b.0)))
                .map(|(lab, pass)| (lab.clone(), *pass))?;
            (self.take_turn(&lab, pass, schedule), lab)
        };
        if self.labs.get(&lab).is_none_or(VecDeque::is_empty) {
            self.labs.remove(&lab);
            self.waiting.remove(&lab);
        }
        // A stale entry (its job gone) is passed back for the caller to skip, as
        // `take_next` does; an empty courselab list has just been forgotten: look again.
        match id {
            Some(id) => Some(id),
            None => self.take_next_capped(schedule),
        }
    }

    /// The live job writing `output_file`, if any.
    fn writer_of(&self, output_file: &str) -> Option<JobId> {
        self.outputs
            .get(output_file)
            .copied()
            .filter(|id| self.live.contains_key(id))
    }

    /// A job leaves the live ones: its output file is free for a new submission.
    fn forget_output(&mut self, job: &Job) {
        if self.outputs.get(&job.output_file) == Some(&job.id) {
            self.outputs.remove(&job.output_file);
        }
    }

    fn unclaim(&mut self, owner: &str, id: JobId) {
        if let Some(ids) = self.claimed.get_mut(owner) {
            ids.retain(|&i| i != id);
            if ids.is_empty() {
                self.claimed.remove(owner);
            }
        }
    }

    fn push_dead(&mut self, job: Job, max_dead: u64) {
        let id = job.id;
        if self.dead.insert(id, job).is_none() {
            self.dead_order.push_back(id);
        }
        if max_dead > 0 {
            while self.dead_order.len() as u64 > max_dead {
                if let Some(old) = self.dead_order.pop_front() {
                    self.dead.remove(&old);
                }
            }
        }
    }

    /// Requeues `owner`'s claimed jobs at the front in their original order, forgets its
    /// pools, and returns (requeued ids, its machines).
    fn drop_owner(&mut self, owner: &str) -> (Vec<JobId>, Vec<Machine>) {
        self.owners.remove(owner);
        let mut ids = self.claimed.remove(owner).unwrap_or_default();
        ids.retain(|id| self.live.contains_key(id));
        ids.sort_unstable();
        for id in ids.iter().rev() {
            if let Some(job) = self.live.get_mut(id) {
                job.owner = None;
                job.assigned = false;
            }
            self.push_queued(*id, true);
        }
        let keys: Vec<_> = self
            .pools
            .keys()
            .filter(|(o, _)| o == owner)
            .cloned()
            .collect();
        let mut machines = Vec::new();
        for key in keys {
            if let Some(pool) = self.pools.remove(&key) {
                let free: Vec<Machine> = pool.free.into_iter().collect();
                for id in pool.total {
                    match free.iter().find(|m| m.id == Some(id)) {
                        Some(m) => machines.push(m.clone()),
                        None => machines.push(Machine {
                            name: key.1.clone(),
                            id: Some(id),
                            owner: Some(owner.to_string()),
                            ..Machine::default()
                        }),
                    }
                }
            }
        }
        (ids, machines)
    }
}

fn view(pool: &Pool) -> PoolView {
    PoolView {
        total: pool.total.clone(),
        free: pool.free.iter().filter_map(|m| m.id).collect(),
    }
}

#[async_trait]
impl JobStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn allocate_job_id(&self) -> Result<JobId, StoreError> {
        let mut s = self.lock();
        let id = s.next_job_id;
        s.next_job_id += 1;
        Ok(id)
    }

    async fn allocate_vm_id(&self) -> Result<u64, StoreError> {
        let mut s = self.lock();
        let id = s.next_vm_id;
        s.next_vm_id += 1;
        Ok(id)
    }

    async fn enqueue(&self, job: &Job, max_queued: u64) -> Result<(), StoreError> {
        {
            let mut s = self.lock();
            if max_queued > 0 && s.queue.len() as u64 >= max_queued {
                return Err(StoreError::QueueFull(s.queue.len() as u64));
            }
            let mut job = job.clone();
            job.owner = None;
            job.assigned = false;
            let id = job.id;
            s.outputs.insert(job.output_file.clone(), id);
            s.live.insert(id, job);
            s.push_queued(id, false);
        }
        self.queued.notify_waiters();
        self.queued.notify_one();
        Ok(())
    }

    async fn add_job(&self, job: &mut Job, max_queued: u64) -> Result<(), StoreError> {
        self.add(job, max_queued, false).map(|_| ())
    }

    async fn add_job_once(&self, job: &mut Job, max_queued: u64) -> Result<Added, StoreError> {
        self.add(job, max_queued, true)
    }

    async fn claim_next(&self, owner: &str, wait: Duration) -> Result<Option<Job>, StoreError> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.queued.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                while let Some(id) = s.take_next(&self.schedule) {
                    let Some(job) = s.live.get_mut(&id) else {
                        continue;
                    };
                    job.owner = Some(owner.to_string());
                    let job = job.clone();
                    s.claimed.entry(owner.to_string()).or_default().push(id);
                    return Ok(Some(job));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(None);
            }
        }
    }

    async fn update_live(&self, job: &Job) -> Result<(), StoreError> {
        let mut s = self.lock();
        let live = s.held(job)?;
        *live = job.clone();
        Ok(())
    }

    async fn requeue(&self, job: &Job) -> Result<(), StoreError> {
        {
            let mut s = self.lock();
            let owner = job.owner.clone().unwrap_or_default();
            let live = s.held(job)?;
            *live = job.clone();
            live.owner = None;
            live.assigned = false;
            s.unclaim(&owner, job.id);
            s.push_queued(job.id, true);
        }
        self.queued.notify_waiters();
        self.queued.notify_one();
        Ok(())
    }

    async fn finish(&self, job: &Job, max_dead: u64) -> Result<(), StoreError> {
        let mut s = self.lock();
        let mut dead = job.clone();
        dead.owner = None;
        dead.assigned = false;
        if let Err(lost) = s.held(job) {
            // The same finish again, after it took effect (see the trait).
            let done = !s.live.contains_key(&job.id) && s.dead.get(&job.id) == Some(&dead);
            return if done { Ok(()) } else { Err(lost) };
        }
        let owner = job.owner.clone().unwrap_or_default();
        s.live.remove(&job.id);
        s.cancels.remove(&job.id);
        s.forget_output(job);
        s.unclaim(&owner, job.id);
        s.push_dead(dead, max_dead);
        drop(s);
        if self.schedule.max_running_per_lab > 0 {
            // A courselab at its cap may have a job waiting that can go now.
            self.queued.notify_waiters();
        }
        Ok(())
    }

    async fn add_dead(&self, job: &Job, max_dead: u64) -> Result<(), StoreError> {
        let mut dead = job.clone();
        dead.owner = None;
        dead.assigned = false;
        self.lock().push_dead(dead, max_dead);
        Ok(())
    }

    async fn update_dead(&self, job: &Job) -> Result<bool, StoreError> {
        let mut s = self.lock();
        match s.dead.get_mut(&job.id) {
            Some(dead) => {
                *dead = job.clone();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn live_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        Ok(self.lock().live.get(&id).cloned())
    }

    async fn dead_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        Ok(self.lock().dead.get(&id).cloned())
    }

    async fn live_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let s = self.lock();
        let mut jobs: Vec<Job> = s.live.values().cloned().collect();
        jobs.sort_unstable_by_key(|j| j.id);
        Ok(jobs)
    }

    async fn dead_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let s = self.lock();
        Ok(s.dead_order
            .iter()
            .filter_map(|id| s.dead.get(id).cloned())
            .collect())
    }

    async fn queued_ids(&self) -> Result<Vec<JobId>, StoreError> {
        Ok(self.lock().queue.iter().copied().collect())
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let s = self.lock();
        Ok(StoreStats {
            live: s.live.len() as u64,
            dead: s.dead.len() as u64,
            queued: s.queue.len() as u64,
            failed_callbacks: s.failed.len() as u64,
        })
    }

    async fn request_cancel(&self, id: JobId) -> Result<CancelRequest, StoreError> {
        let mut s = self.lock();
        let Some(job) = s.live.get(&id) else {
            return Ok(if s.dead.contains_key(&id) {
                CancelRequest::Finished
            } else {
                CancelRequest::Unknown
            });
        };
        let held = job.owner.is_some();
        let lab = lab_of(&job.output_file).to_string();
        s.cancels.insert(id);
        if held {
            return Ok(CancelRequest::Running);
        }
        s.queue.retain(|&queued| queued != id);
        if let Some(ids) = s.labs.get_mut(&lab) {
            ids.retain(|&queued| queued != id);
            if ids.is_empty() {
                s.labs.remove(&lab);
                s.waiting.remove(&lab);
            }
        }
        Ok(CancelRequest::Queued)
    }

    async fn take_cancels(&self, owner: &str) -> Result<Vec<Job>, StoreError> {
        let mut s = self.lock();
        let mut ids: Vec<JobId> = s.cancels.iter().copied().collect();
        ids.sort_unstable();
        let mut taken = Vec::new();
        for id in ids {
            let Some(job) = s.live.get_mut(&id) else {
                continue;
            };
            match job.owner.as_deref() {
                Some(holder) if holder == owner => taken.push(job.clone()),
                Some(_) => {}
                None => {
                    job.owner = Some(owner.to_string());
                    taken.push(job.clone());
                    s.claimed.entry(owner.to_string()).or_default().push(id);
                }
            }
        }
        Ok(taken)
    }

    async fn keep_failed_callback(
        &self,
        record: &FailedCallback,
        max_kept: u64,
    ) -> Result<Vec<JobId>, StoreError> {
        let mut s = self.lock();
        let mut record = record.clone();
        record.replaying = None;
        let id = record.job_id;
        if let Some(kept) = s.failed.get_mut(&id) {
            kept.record = record;
        } else {
            let place = s.failed_next;
            s.failed_next += 1;
            s.failed_order.insert(place, id);
            s.failed.insert(
                id,
                Kept {
                    record,
                    place,
                    claim: None,
                },
            );
        }
        let mut dropped = Vec::new();
        while max_kept > 0 && s.failed.len() as u64 > max_kept {
            let Some((_, oldest)) = s.failed_order.pop_first() else {
                break;
            };
            s.failed.remove(&oldest);
            dropped.push(oldest);
        }
        Ok(dropped)
    }

    async fn failed_callbacks(&self) -> Result<Vec<FailedCallback>, StoreError> {
        let s = self.lock();
        let now = Instant::now();
        Ok(s.failed_order
            .values()
            .filter_map(|id| s.failed.get(id))
            .map(|kept| kept.view(now))
            .collect())
    }

    async fn claim_failed_callback(
        &self,
        id: JobId,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<FailedCallback>, StoreError> {
        let mut s = self.lock();
        let now = Instant::now();
        let Some(kept) = s.failed.get_mut(&id) else {
            return Ok(None);
        };
        if kept.claim.as_ref().is_some_and(|(_, until)| *until > now) {
            return Ok(None);
        }
        kept.claim = Some((owner.to_string(), now + lease));
        Ok(Some(kept.view(now)))
    }

    async fn settle_failed_callback(
        &self,
        id: JobId,
        owner: &str,
        still_failing: Option<&FailedCallback>,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock();
        let held = s
            .failed
            .get(&id)
            .and_then(|kept| kept.claim.as_ref())
            .is_some_and(|(holder, _)| holder == owner);
        if !held {
            return Ok(false);
        }
        match still_failing {
            None => {
                if let Some(kept) = s.failed.remove(&id) {
                    s.failed_order.remove(&kept.place);
                }
            }
            Some(record) => {
                if let Some(kept) = s.failed.get_mut(&id) {
                    kept.record = record.clone();
                    kept.record.replaying = None;
                    kept.claim = None;
                }
            }
        }
        Ok(true)
    }

    async fn heartbeat(&self, owner: &str, lease: Duration) -> Result<(), StoreError> {
        self.lock()
            .owners
            .insert(owner.to_string(), Instant::now() + lease);
        Ok(())
    }

    async fn release_owner(&self, owner: &str) -> Result<Vec<JobId>, StoreError> {
        let (ids, _) = self.lock().drop_owner(owner);
        if !ids.is_empty() {
            self.queued.notify_waiters();
            self.queued.notify_one();
        }
        Ok(ids)
    }

    async fn live_owners(&self) -> Result<Vec<String>, StoreError> {
        let now = Instant::now();
        let s = self.lock();
        let mut owners: Vec<String> = s
            .owners
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(o, _)| o.clone())
            .collect();
        owners.sort();
        Ok(owners)
    }

    async fn reap_expired(&self) -> Result<Reaped, StoreError> {
        let now = Instant::now();
        let mut reaped = Reaped::default();
        {
            let mut s = self.lock();
            let mut expired: Vec<String> = s
                .owners
                .iter()
                .filter(|(_, until)| **until <= now)
                .map(|(o, _)| o.clone())
                .collect();
            // Claims by a manager that never heartbeat (or was already forgotten) are as
            // orphaned as those of one whose lease ran out.
            for owner in s.claimed.keys() {
                if !s.owners.contains_key(owner) && !expired.contains(owner) {
                    expired.push(owner.clone());
                }
            }
            expired.sort();
            for owner in expired {
                let (ids, machines) = s.drop_owner(&owner);
                reaped.requeued.extend(ids);
                reaped.machines.extend(machines);
                reaped.owners.push(owner);
            }
        }
        if !reaped.requeued.is_empty() {
            self.queued.notify_waiters();
            self.queued.notify_one();
        }
        Ok(reaped)
    }

    async fn pool_add(&self, owner: &str, pool: &str, vm: &Machine) -> Result<(), StoreError> {
        let mut s = self.lock();
        let entry = s
            .pools
            .entry((owner.to_string(), pool.to_string()))
            .or_default();
        if let Some(id) = vm.id
            && !entry.total.contains(&id)
        {
            entry.total.push(id);
        }
        Ok(())
    }

    async fn pool_free(&self, owner: &str, pool: &str, vm: &Machine) -> Result<bool, StoreError> {
        let mut s = self.lock();
        let Some(entry) = s.pools.get_mut(&(owner.to_string(), pool.to_string())) else {
            return Ok(false);
        };
        let Some(id) = vm.id else {
            return Ok(false);
        };
        if !entry.total.contains(&id) {
            return Ok(false);
        }
        if !entry.free.iter().any(|m| m.id == Some(id)) {
            entry.free.push_back(vm.clone());
        }
        Ok(true)
    }

    async fn pool_take(&self, owner: &str, pool: &str) -> Result<Option<Machine>, StoreError> {
        let mut s = self.lock();
        Ok(s.pools
            .get_mut(&(owner.to_string(), pool.to_string()))
            .and_then(|p| p.free.pop_front()))
    }

    async fn pool_remove(&self, owner: &str, pool: &str, vm_id: u64) -> Result<bool, StoreError> {
        let mut s = self.lock();
        let Some(entry) = s.pools.get_mut(&(owner.to_string(), pool.to_string())) else {
            return Ok(false);
        };
        let before = entry.total.len();
        entry.total.retain(|&id| id != vm_id);
        entry.free.retain(|m| m.id != Some(vm_id));
        Ok(entry.total.len() != before)
    }

    async fn pools(&self) -> Result<BTreeMap<String, PoolView>, StoreError> {
        let now = Instant::now();
        let s = self.lock();
        let mut out: BTreeMap<String, PoolView> = BTreeMap::new();
        for ((owner, name), pool) in &s.pools {
            let alive = s.owners.get(owner).is_some_and(|until| *until > now);
            if !alive {
                continue;
            }
            let v = view(pool);
            let merged = out.entry(name.clone()).or_default();
            merged.total.extend(v.total);
            merged.free.extend(v.free);
        }
        Ok(out)
    }

    async fn owner_pools(&self, owner: &str) -> Result<BTreeMap<String, PoolView>, StoreError> {
        let s = self.lock();
        Ok(s.pools
            .iter()
            .filter(|((o, _), _)| o == owner)
            .map(|((_, name), pool)| (name.clone(), view(pool)))
            .collect())
    }

    async fn set_pool_target(&self, pool: &str, target: &PoolTarget) -> Result<(), StoreError> {
        self.lock().targets.insert(pool.to_string(), target.clone());
        Ok(())
    }

    async fn pool_targets(&self) -> Result<BTreeMap<String, PoolTarget>, StoreError> {
        Ok(self.lock().targets.clone())
    }

    async fn incr(&self, counter: Counter, by: u64) -> Result<(), StoreError> {
        *self.lock().counters.slot(counter) += by;
        Ok(())
    }

    async fn counters(&self) -> Result<Counters, StoreError> {
        Ok(self.lock().counters.clone())
    }
}
