//! Regression tests for the two bugs the Redis outage test found, made repeatable: a store
//! wrapper ([`FaultyStore`]) injects, on cue, the one fault each bug needs, which a real
//! Redis cannot be made to produce at a chosen call:
//!
//! - a claim that the store ran but whose answer was lost (`claim_next` takes the job, then
//!   the caller sees "store unavailable"): the manager must put back the job leased to it
//!   that none of its tasks handles (`Manager::requeue_orphans`);
//! - a pool removal that fails once after its machine was destroyed: the preallocator must
//!   retry it (`Preallocator::forget`), or the pool counts a machine that is gone for ever
//!   and the next job waits for a machine for ever;
//! - a store that does not answer while a pool machine is being recorded: the job waiting
//!   for that machine must not be charged with it (a try spent, `Internal error` in its
//!   trace), as it was in the Redis outage test's second dispatch.
//!
//! Everything else is real: the memory store underneath, the manager, preallocator and
//! worker, and the pipeline's in-test backend.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use support::pipeline::{Action, FakeVmms, Step, When, fake_job, fast_config};
use tango::app::App;
use tango::manager::Manager;
use tango::model::{Counter, Counters, Job, JobId, Machine, PoolTarget, PoolView};
use tango::store::memory::MemoryStore;
use tango::store::{Added, CancelRequest, JobStore, Reaped, StoreError, StoreStats};
use tango::vmms::Vmms;

/// Bound for a job the fix lets end within a few housekeeping ticks (a lease of 2 s, a tick
/// of 2/3 s): generous to two loaded cores; without the fix the job never ends.
const WITHIN: Duration = Duration::from_secs(30);

/// The memory store, with faults a test arms: each counter is how many more calls fail.
struct FaultyStore {
    inner: MemoryStore,
    /// `claim_next` calls that take a job and then report the store unavailable.
    lost_claims: AtomicU32,
    /// `pool_remove` calls that report the store unavailable without removing anything.
    failed_removals: AtomicU32,
    /// `allocate_vm_id` calls that report the store unavailable.
    failed_vm_ids: AtomicU32,
}

/// Takes one from `counter` if it is above zero: whether this call is to fail.
fn armed(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
}

fn unavailable(what: &str) -> StoreError {
    StoreError::Unavailable(format!("{what}: injected by the test"))
}

#[async_trait]
impl JobStore for FaultyStore {
    fn kind(&self) -> &'static str {
        "faulty"
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn allocate_job_id(&self) -> Result<JobId, StoreError> {
        self.inner.allocate_job_id().await
    }
    async fn allocate_vm_id(&self) -> Result<u64, StoreError> {
        if armed(&self.failed_vm_ids) {
            return Err(unavailable("allocate_vm_id"));
        }
        self.inner.allocate_vm_id().await
    }
    async fn enqueue(&self, job: &Job, max_queued: u64) -> Result<(), StoreError> {
        self.inner.enqueue(job, max_queued).await
    }
    async fn add_job(&self, job: &mut Job, max_queued: u64) -> Result<(), StoreError> {
        self.inner.add_job(job, max_queued).await
    }
    async fn add_job_once(&self, job: &mut Job, max_queued: u64) -> Result<Added, StoreError> {
        self.inner.add_job_once(job, max_queued).await
    }
    async fn claim_next(&self, owner: &str, wait: Duration) -> Result<Option<Job>, StoreError> {
        let claimed = self.inner.claim_next(owner, wait).await?;
        if claimed.is_some() && armed(&self.lost_claims) {
            // The store took the job for `owner`; the answer never reaches it.
            return Err(unavailable("claim_next answer lost"));
        }
        Ok(claimed)
    }
    async fn request_cancel(&self, id: JobId) -> Result<CancelRequest, StoreError> {
        self.inner.request_cancel(id).await
    }
    async fn take_cancels(&self, owner: &str) -> Result<Vec<Job>, StoreError> {
        self.inner.take_cancels(owner).await
    }
    async fn keep_failed_callback(
        &self,
        record: &tango::model::FailedCallback,
        max_kept: u64,
    ) -> Result<Vec<JobId>, StoreError> {
        self.inner.keep_failed_callback(record, max_kept).await
    }
    async fn failed_callbacks(&self) -> Result<Vec<tango::model::FailedCallback>, StoreError> {
        self.inner.failed_callbacks().await
    }
    async fn claim_failed_callback(
        &self,
        id: JobId,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<tango::model::FailedCallback>, StoreError> {
        self.inner.claim_failed_callback(id, owner, lease).await
    }
    async fn settle_failed_callback(
        &self,
        id: JobId,
        owner: &str,
        still_failing: Option<&tango::model::FailedCallback>,
    ) -> Result<bool, StoreError> {
        self.inner
            .settle_failed_callback(id, owner, still_failing)
            .await
    }
    async fn update_live(&self, job: &Job) -> Result<(), StoreError> {
        self.inner.update_live(job).await
    }
    async fn requeue(&self, job: &Job) -> Result<(), StoreError> {
        self.inner.requeue(job).await
    }
    async fn finish(&self, job: &Job, max_dead: u64) -> Result<(), StoreError> {
        self.inner.finish(job, max_dead).await
    }
    async fn add_dead(&self, job: &Job, max_dead: u64) -> Result<(), StoreError> {
        self.inner.add_dead(job, max_dead).await
    }
    async fn update_dead(&self, job: &Job) -> Result<bool, StoreError> {
        self.inner.update_dead(job).await
    }
    async fn live_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.inner.live_job(id).await
    }
    async fn dead_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.inner.dead_job(id).await
    }
    async fn live_jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.inner.live_jobs().await
    }
    async fn dead_jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.inner.dead_jobs().await
    }
    async fn queued_ids(&self) -> Result<Vec<JobId>, StoreError> {
        self.inner.queued_ids().await
    }
    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.inner.stats().await
    }
    async fn heartbeat(&self, owner: &str, lease: Duration) -> Result<(), StoreError> {
        self.inner.heartbeat(owner, lease).await
    }
    async fn release_owner(&self, owner: &str) -> Result<Vec<JobId>, StoreError> {
        self.inner.release_owner(owner).await
    }
    async fn live_owners(&self) -> Result<Vec<String>, StoreError> {
        self.inner.live_owners().await
    }
    async fn reap_expired(&self) -> Result<Reaped, StoreError> {
        self.inner.reap_expired().await
    }
    async fn pool_add(&self, owner: &str, pool: &str, vm: &Machine) -> Result<(), StoreError> {
        self.inner.pool_add(owner, pool, vm).await
    }
    async fn pool_free(&self, owner: &str, pool: &str, vm: &Machine) -> Result<bool, StoreError> {
        self.inner.pool_free(owner, pool, vm).await
    }
    async fn pool_take(&self, owner: &str, pool: &str) -> Result<Option<Machine>, StoreError> {
        self.inner.pool_take(owner, pool).await
    }
    async fn pool_remove(&self, owner: &str, pool: &str, vm_id: u64) -> Result<bool, StoreError> {
        if armed(&self.failed_removals) {
            return Err(unavailable("pool_remove"));
        }
        self.inner.pool_remove(owner, pool, vm_id).await
    }
    async fn pools(&self) -> Result<BTreeMap<String, PoolView>, StoreError> {
        self.inner.pools().await
    }
    async fn owner_pools(&self, owner: &str) -> Result<BTreeMap<String, PoolView>, StoreError> {
        self.inner.owner_pools(owner).await
    }
    async fn set_pool_target(&self, pool: &str, target: &PoolTarget) -> Result<(), StoreError> {
        self.inner.set_pool_target(pool, target).await
    }
    async fn pool_targets(&self) -> Result<BTreeMap<String, PoolTarget>, StoreError> {
        self.inner.pool_targets().await
    }
    async fn incr(&self, counter: Counter, by: u64) -> Result<(), StoreError> {
        self.inner.incr(counter, by).await
    }
    async fn counters(&self) -> Result<Counters, StoreError> {
        self.inner.counters().await
    }
}

/// A faulty store, the in-test backend, and a courselab for inputs and outputs.
struct Rig {
    store: Arc<FaultyStore>,
    fake: Arc<FakeVmms>,
    /// The courselabs directory (workers refuse paths outside it).
    root: tempfile::TempDir,
    /// The one courselab, in `root`.
    dir: std::path::PathBuf,
}

impl Rig {
    fn new() -> Rig {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("t-lab");
        std::fs::create_dir_all(dir.join("output")).expect("output dir");
        Rig {
            store: Arc::new(FaultyStore {
                inner: MemoryStore::new(),
                lost_claims: AtomicU32::new(0),
                failed_removals: AtomicU32::new(0),
                failed_vm_ids: AtomicU32::new(0),
            }),
            fake: FakeVmms::new("t"),
            root,
            dir,
        }
    }

    async fn start(&self, pool_size: u32) -> Manager {
        let mut config = fast_config();
        config.vmms.pool_size = pool_size;
        config.server.courselabs = self.root.path().to_path_buf();
        let store: Arc<dyn JobStore> = self.store.clone();
        let vmms: Arc<dyn Vmms> = self.fake.clone();
        Manager::start(App::new(config, store, vmms))
            .await
            .expect("manager starts")
    }

    async fn submit(&self, name: &str) -> JobId {
        let id = self.store.allocate_job_id().await.expect("job id");
        let output = self.dir.join("output").join(format!("{name}.txt"));
        let job = fake_job(id, name, &self.dir, &output, 1 << 20);
        self.store.enqueue(&job, 0).await.expect("enqueue");
        id
    }

    /// The job once dead; fails after [`WITHIN`] with what the store holds of it.
    async fn wait_dead(&self, id: JobId) -> Job {
        let deadline = Instant::now() + WITHIN;
        loop {
            if let Some(job) = self.store.dead_job(id).await.expect("dead job") {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not dead within {WITHIN:?}; live: {:?}; pools: {:?}",
                self.store.live_job(id).await,
                self.store.pools().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The job's trace messages, once its last says it succeeded.
fn succeeded(job: &Job) -> Vec<String> {
    let lines: Vec<String> = job
        .trace
        .iter()
        .map(|l| l.split_once('|').map_or(l.as_str(), |(_, m)| m).to_string())
        .collect();
    assert_eq!(
        lines.last().map(String::as_str),
        Some("Success: Autodriver returned normally"),
        "{lines:#?}"
    );
    lines
}

/// The trace's dispatch lines.
fn dispatches(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| l.starts_with("Dispatched job "))
        .collect()
}

/// The store takes the job for the manager but the answer is lost: the job, leased to a
/// live manager that does not know it holds it, is put back and runs, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_answer_was_lost_is_put_back_and_runs_once() {
    let rig = Rig::new();
    rig.store.lost_claims.store(1, Ordering::Release);
    let manager = rig.start(1).await;
    let id = rig.submit("lost").await;
    let job = rig.wait_dead(id).await;
    let lines = succeeded(&job);
    assert_eq!(dispatches(&lines).len(), 1, "dispatched once: {lines:#?}");
    assert_eq!(rig.fake.state().runs_by_name.get("lost"), Some(&1));
    assert_eq!(
        rig.store.lost_claims.load(Ordering::Acquire),
        0,
        "the fault fired"
    );
    manager.shutdown(Duration::from_secs(5)).await;
}

/// A machine whose making failed is destroyed, and its removal from the pool fails once
/// (the store was unavailable): the removal is retried, so the pool makes a replacement and
/// the job, retried, runs on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pool_removal_is_retried_so_the_pool_recovers() {
    let rig = Rig::new();
    rig.fake.on(
        Step::Initialize,
        When::Calls(1..=1),
        Action::Fail("engine hiccup".into()),
    );
    rig.store.failed_removals.store(1, Ordering::Release);
    let manager = rig.start(1).await;
    let id = rig.submit("recovers").await;
    let job = rig.wait_dead(id).await;
    succeeded(&job);
    assert_eq!(
        rig.store.failed_removals.load(Ordering::Acquire),
        0,
        "the fault fired"
    );
    // The pool lists exactly the machines that exist: the destroyed one is gone from it.
    let pools = rig.store.pools().await.expect("pools");
    let mut listed: Vec<String> = pools
        .get("img")
        .map(|p| p.total.iter().map(|id| format!("t-{id}-img")).collect())
        .unwrap_or_default();
    listed.sort();
    assert_eq!(listed, rig.fake.live_instances());
    manager.shutdown(Duration::from_secs(5)).await;
}

/// The store does not answer three times while the job's pool machine is being made: the
/// pool's creator waits and tries again, and the job, dispatched once, runs at its first try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_while_a_machine_is_made_spends_none_of_the_jobs_tries() {
    let rig = Rig::new();
    rig.store.failed_vm_ids.store(3, Ordering::Release);
    // Queued before the manager starts, so it waits on the pool while the faults fire.
    let id = rig.submit("patient").await;
    let manager = rig.start(1).await;
    let job = rig.wait_dead(id).await;
    let lines = succeeded(&job);
    assert_eq!(
        rig.store.failed_vm_ids.load(Ordering::Acquire),
        0,
        "the faults fired"
    );
    let dispatched = dispatches(&lines);
    assert_eq!(dispatched.len(), 1, "dispatched once: {lines:#?}");
    assert!(dispatched[0].ends_with("[try 0]"), "{lines:#?}");
    assert!(
        !lines.iter().any(|l| l.contains("Internal error")),
        "a store fault charged to the job: {lines:#?}"
    );
    assert_eq!(job.retries, 0);
    manager.shutdown(Duration::from_secs(5)).await;
}
