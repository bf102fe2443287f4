//! One contract for every job store: the memory store and the Redis store must pass the
//! same tests. Each case gets two handles on one store: for memory they are the same
//! object; for Redis they are two separate connections, as two processes would have.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tango::model::{Counter, Job, JobId, Machine, PoolTarget};
use tango::store::memory::MemoryStore;
use tango::store::redis::RedisStore;
use tango::store::{Added, CancelRequest, JobStore, Schedule, StoreError};

/// Two handles on one store.
struct Fixture {
    a: Arc<dyn JobStore>,
    b: Arc<dyn JobStore>,
}

async fn memory() -> Fixture {
    let store: Arc<dyn JobStore> = Arc::new(MemoryStore::new());
    Fixture {
        a: store.clone(),
        b: store,
    }
}

async fn redis() -> Fixture {
    let config = support::redis_config();
    Fixture {
        a: support::redis_store(&config).await,
        b: support::redis_store(&config).await,
    }
}

/// Two handles on one store whose claims follow `schedule`.
async fn memory_with(schedule: Schedule) -> Fixture {
    let store: Arc<dyn JobStore> = Arc::new(MemoryStore::new().with_schedule(schedule));
    Fixture {
        a: store.clone(),
        b: store,
    }
}

async fn redis_with(schedule: Schedule) -> Fixture {
    let config = support::redis_config();
    let open = || async {
        let store = RedisStore::connect(&config).await.expect("redis store");
        Arc::new(store.with_schedule(schedule.clone())) as Arc<dyn JobStore>
    };
    Fixture {
        a: open().await,
        b: open().await,
    }
}

/// A new job with a fresh id, as addJob builds it.
async fn new_job(store: &dyn JobStore, name: &str) -> Job {
    let id = store.allocate_job_id().await.expect("allocate id");
    let mut job = Job {
        id,
        name: name.to_string(),
        timeout: 10,
        max_output: 1024,
        vm: Machine {
            name: "img".into(),
            image: "img".into(),
            vmms: "local".into(),
            ..Machine::default()
        },
        ..Job::default()
    };
    job.trace(format!("Added job {} to queue", job.label()));
    job
}

async fn add(store: &dyn JobStore, name: &str) -> Job {
    let job = new_job(store, name).await;
    store.enqueue(&job, 0).await.expect("enqueue");
    job
}

fn machine(id: u64) -> Machine {
    Machine {
        name: "img".into(),
        image: "img".into(),
        vmms: "local".into(),
        id: Some(id),
        instance: Some(format!("instance-{id}")),
        ..Machine::default()
    }
}

const NO_WAIT: Duration = Duration::from_millis(0);
const LEASE: Duration = Duration::from_secs(30);

async fn ids_are_unique_and_increasing(f: Fixture) {
    let first = f.a.allocate_job_id().await.unwrap();
    let second = f.b.allocate_job_id().await.unwrap();
    assert!(second > first);
    assert!(first >= 1);
    let vm = f.a.allocate_vm_id().await.unwrap();
    assert!(vm >= 1000, "vm ids start at 1000, got {vm}");
    assert!(f.b.allocate_vm_id().await.unwrap() > vm);
}

async fn queue_is_fifo(f: Fixture) {
    let jobs = [
        add(&*f.a, "one").await,
        add(&*f.b, "two").await,
        add(&*f.a, "three").await,
    ];
    let want: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(f.b.queued_ids().await.unwrap(), want);
    for expected in &jobs {
        let got = f.b.claim_next("m1", NO_WAIT).await.unwrap().expect("a job");
        assert_eq!(got.id, expected.id);
        assert_eq!(got.name, expected.name);
        assert_eq!(got.owner.as_deref(), Some("m1"));
    }
    assert!(f.a.claim_next("m1", NO_WAIT).await.unwrap().is_none());
    let stats = f.a.stats().await.unwrap();
    assert_eq!((stats.live, stats.queued, stats.dead), (3, 0, 0));
}

async fn claim_waits_for_a_job_and_wakes_at_once(f: Fixture) {
    let b = f.b.clone();
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let job = b.claim_next("m1", Duration::from_secs(20)).await;
        (job, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let job = add(&*f.a, "late").await;
    let (claimed, waited) = waiter.await.unwrap();
    let claimed = claimed.unwrap().expect("woken with the job");
    assert_eq!(claimed.id, job.id);
    // Woken by the job, not by the 20 s timeout.
    assert!(waited < Duration::from_secs(15), "waited {waited:?}");
    let none =
        f.a.claim_next("m1", Duration::from_millis(100))
            .await
            .unwrap();
    assert!(none.is_none());
}

async fn assign_update_and_finish(f: Fixture) {
    let job = add(&*f.a, "run").await;
    let mut held = f.b.claim_next("m1", NO_WAIT).await.unwrap().unwrap();
    held.assigned = true;
    held.vm.id = Some(1000);
    held.trace(format!("Dispatched job {} [try 0]", held.label()));
    f.b.update_live(&held).await.unwrap();

    let seen = f.a.live_job(job.id).await.unwrap().unwrap();
    assert!(seen.assigned);
    assert_eq!(seen.vm.id, Some(1000));
    assert_eq!(seen.trace.len(), 2);

    held.assigned = false;
    held.trace("Success: Autodriver returned normally");
    f.b.finish(&held, 0).await.unwrap();
    assert!(f.a.live_job(job.id).await.unwrap().is_none());
    let dead =
        f.a.dead_job(job.id)
            .await
            .unwrap()
            .expect("in the dead list");
    assert!(!dead.assigned);
    assert!(dead.owner.is_none());
    assert!(
        dead.trace
            .last()
            .unwrap()
            .ends_with("|Success: Autodriver returned normally")
    );
    assert_eq!(f.a.dead_jobs().await.unwrap().len(), 1);
    assert!(f.a.live_jobs().await.unwrap().is_empty());

    // A dead job can still be updated (callback state), and only it.
    let mut dead = dead;
    dead.callback = Some(Default::default());
    assert!(f.b.update_dead(&dead).await.unwrap());
    assert!(
        f.a.dead_job(job.id)
            .await
            .unwrap()
            .unwrap()
            .callback
            .is_some()
    );
}

async fn finish_sent_again_after_it_took_effect_succeeds(f: Fixture) {
    let job = add(&*f.a, "resent").await;
    let mut held = f.b.claim_next("m1", NO_WAIT).await.unwrap().unwrap();
    held.trace("Success: Autodriver returned normally");
    f.b.finish(&held, 0).await.unwrap();
    // Its answer was lost and the caller sends it again: done, not a lost lease.
    f.a.finish(&held, 0).await.unwrap();
    assert_eq!(f.a.dead_jobs().await.unwrap().len(), 1);
    assert!(f.a.live_job(job.id).await.unwrap().is_none());
    // Anything else from the old holder is still refused: another text...
    let mut other = held.clone();
    other.trace("Error: something else");
    assert!(matches!(
        f.a.finish(&other, 0).await,
        Err(StoreError::LeaseLost(id)) if id == job.id
    ));
    // ...and the same text once the dead entry has changed (its callback recorded).
    let mut dead = f.a.dead_job(job.id).await.unwrap().unwrap();
    dead.callback = Some(Default::default());
    assert!(f.a.update_dead(&dead).await.unwrap());
    assert!(matches!(
        f.a.finish(&held, 0).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert_eq!(f.a.dead_job(job.id).await.unwrap(), Some(dead));
}

async fn requeue_goes_to_the_front_unassigned(f: Fixture) {
    let first = add(&*f.a, "first").await;
    let second = add(&*f.a, "second").await;
    let mut held = f.b.claim_next("m1", NO_WAIT).await.unwrap().unwrap();
    assert_eq!(held.id, first.id);
    held.assigned = true;
    f.b.update_live(&held).await.unwrap();
    held.retries += 1;
    held.trace(format!("Job {} failed: boom", held.label()));
    f.b.requeue(&held).await.unwrap();

    assert_eq!(f.a.queued_ids().await.unwrap(), vec![first.id, second.id]);
    let again = f.a.claim_next("m2", NO_WAIT).await.unwrap().unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(again.retries, 1);
    assert!(!again.assigned);
    assert_eq!(again.owner.as_deref(), Some("m2"));
    assert!(again.trace.last().unwrap().contains("failed: boom"));
}

async fn writes_need_the_lease(f: Fixture) {
    let job = add(&*f.a, "fenced").await;
    // Not claimed yet: nobody holds it.
    let mut stranger = job.clone();
    stranger.owner = Some("m9".into());
    assert!(matches!(
        f.a.update_live(&stranger).await,
        Err(StoreError::LeaseLost(id)) if id == job.id
    ));
    let held = f.b.claim_next("m1", NO_WAIT).await.unwrap().unwrap();
    let mut other = held.clone();
    other.owner = Some("m2".into());
    assert!(matches!(
        f.a.update_live(&other).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        f.a.finish(&other, 0).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        f.a.requeue(&other).await,
        Err(StoreError::LeaseLost(_))
    ));
    f.b.finish(&held, 0).await.unwrap();
    // Finished: even the old holder cannot write it as live any more.
    assert!(matches!(
        f.b.update_live(&held).await,
        Err(StoreError::LeaseLost(_))
    ));
}

async fn rejected_jobs_go_straight_to_dead(f: Fixture) {
    let mut job = new_job(&*f.a, "bad").await;
    job.trace.clear();
    job.trace("validateJob: Image not found: nosuchimage");
    f.a.add_dead(&job, 0).await.unwrap();
    assert!(f.b.live_job(job.id).await.unwrap().is_none());
    let dead = f.b.dead_job(job.id).await.unwrap().unwrap();
    assert_eq!(dead.trace, job.trace);
    assert!(f.b.queued_ids().await.unwrap().is_empty());
}

async fn dead_list_is_trimmed_oldest_first(f: Fixture) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let job = new_job(&*f.a, &format!("d{i}")).await;
        f.a.add_dead(&job, 3).await.unwrap();
        ids.push(job.id);
    }
    let mut kept: Vec<JobId> =
        f.b.dead_jobs()
            .await
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
    kept.sort_unstable();
    assert_eq!(kept, ids[2..].to_vec());
    assert!(f.b.dead_job(ids[0]).await.unwrap().is_none());
    assert_eq!(f.b.stats().await.unwrap().dead, 3);
}

async fn queue_cap_is_refused_clearly(f: Fixture) {
    for i in 0..2 {
        let job = new_job(&*f.a, &format!("q{i}")).await;
        f.a.enqueue(&job, 2).await.unwrap();
    }
    let job = new_job(&*f.b, "overflow").await;
    let err = f.b.enqueue(&job, 2).await.unwrap_err();
    assert!(matches!(err, StoreError::QueueFull(2)), "{err:?}");
    assert!(err.to_string().contains("queue is full"), "{err}");
    assert!(f.a.live_job(job.id).await.unwrap().is_none());
    // Claiming one makes room.
    f.a.claim_next("m1", NO_WAIT).await.unwrap().unwrap();
    f.b.enqueue(&job, 2).await.unwrap();
}

async fn pools_add_take_free_remove(f: Fixture) {
    f.a.heartbeat("m1", LEASE).await.unwrap();
    f.a.heartbeat("m2", LEASE).await.unwrap();
    f.a.pool_add("m1", "img", &machine(1000)).await.unwrap();
    f.a.pool_add("m1", "img", &machine(1001)).await.unwrap();
    f.b.pool_add("m2", "img", &machine(1002)).await.unwrap();
    // Added machines are busy until freed.
    assert!(f.a.pool_take("m1", "img").await.unwrap().is_none());
    assert!(f.a.pool_free("m1", "img", &machine(1000)).await.unwrap());
    assert!(f.a.pool_free("m1", "img", &machine(1001)).await.unwrap());
    assert!(f.b.pool_free("m2", "img", &machine(1002)).await.unwrap());
    // Not a member: refused, so the caller destroys it.
    assert!(!f.a.pool_free("m1", "img", &machine(4242)).await.unwrap());
    assert!(!f.a.pool_free("m1", "other", &machine(1000)).await.unwrap());

    let pools = f.b.pools().await.unwrap();
    let img = &pools["img"];
    let mut total = img.total.clone();
    total.sort_unstable();
    assert_eq!(total, vec![1000, 1001, 1002]);
    assert_eq!(img.free.len(), 3);

    // Take is per owner, oldest free first, and returns the whole machine.
    let taken = f.b.pool_take("m1", "img").await.unwrap().unwrap();
    assert_eq!(taken.id, Some(1000));
    assert_eq!(taken.instance.as_deref(), Some("instance-1000"));
    let mine = f.a.owner_pools("m1").await.unwrap();
    assert_eq!(mine["img"].total, vec![1000, 1001]);
    assert_eq!(mine["img"].free, vec![1001]);

    assert!(f.a.pool_remove("m1", "img", 1001).await.unwrap());
    assert!(!f.a.pool_remove("m1", "img", 1001).await.unwrap());
    assert!(f.a.pool_take("m1", "img").await.unwrap().is_none());
    // A removed machine cannot come back to the free list.
    assert!(!f.a.pool_free("m1", "img", &machine(1001)).await.unwrap());
    assert_eq!(
        f.b.owner_pools("m1").await.unwrap()["img"].total,
        vec![1000]
    );
}

async fn pool_targets_round_trip(f: Fixture) {
    let target = PoolTarget {
        image: "img".into(),
        vmms: "local".into(),
        size: 4,
        cores: Some(1.5),
        memory: Some(512),
    };
    f.a.set_pool_target("img", &target).await.unwrap();
    let targets = f.b.pool_targets().await.unwrap();
    assert_eq!(targets.get("img"), Some(&target));
    let smaller = PoolTarget { size: 1, ..target };
    f.b.set_pool_target("img", &smaller).await.unwrap();
    assert_eq!(f.a.pool_targets().await.unwrap()["img"].size, 1);
}

async fn counters_add_up(f: Fixture) {
    assert_eq!(f.a.counters().await.unwrap().job_requests, 0);
    f.a.incr(Counter::JobRequests, 1).await.unwrap();
    f.b.incr(Counter::JobRequests, 2).await.unwrap();
    f.b.incr(Counter::RunjobTimeouts, 1).await.unwrap();
    let c = f.a.counters().await.unwrap();
    assert_eq!(c.job_requests, 3);
    assert_eq!(c.runjob_timeouts, 1);
    assert_eq!(c.copyin_errors, 0);
}

async fn dead_manager_jobs_and_machines_come_back(f: Fixture) {
    let first = add(&*f.a, "first").await;
    let second = add(&*f.a, "second").await;
    let third = add(&*f.a, "third").await;
    // Long enough to outlast the eight calls below on two loaded cores; the expiry is then
    // awaited, bounded, rather than slept for.
    let dying_lease = Duration::from_secs(2);
    f.b.heartbeat("dying", dying_lease).await.unwrap();
    f.a.heartbeat("healthy", LEASE).await.unwrap();
    let mut one = f.b.claim_next("dying", NO_WAIT).await.unwrap().unwrap();
    one.assigned = true;
    one.retries = 1;
    f.b.update_live(&one).await.unwrap();
    let two = f.b.claim_next("dying", NO_WAIT).await.unwrap().unwrap();
    assert_eq!((one.id, two.id), (first.id, second.id));
    f.b.pool_add("dying", "img", &machine(1000)).await.unwrap();
    f.b.pool_free("dying", "img", &machine(1000)).await.unwrap();
    f.b.pool_add("dying", "img", &machine(1001)).await.unwrap();

    let mut owners = f.a.live_owners().await.unwrap();
    owners.sort();
    assert_eq!(owners, vec!["dying".to_string(), "healthy".to_string()]);
    // Not yet expired: nothing to reap.
    assert!(f.a.reap_expired().await.unwrap().requeued.is_empty());

    let deadline = std::time::Instant::now() + dying_lease + Duration::from_secs(10);
    while f.a.live_owners().await.unwrap() != vec!["healthy".to_string()] {
        assert!(
            std::time::Instant::now() < deadline,
            "the dying lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Pools of dead managers are not shown.
    assert!(
        f.a.pools()
            .await
            .unwrap()
            .get("img")
            .is_none_or(|p| p.total.is_empty())
    );

    let reaped = f.a.reap_expired().await.unwrap();
    assert_eq!(reaped.owners, vec!["dying".to_string()]);
    assert_eq!(reaped.requeued, vec![first.id, second.id]);
    let mut machine_ids: Vec<u64> = reaped.machines.iter().filter_map(|m| m.id).collect();
    machine_ids.sort_unstable();
    assert_eq!(machine_ids, vec![1000, 1001]);
    // The free one comes back whole, so it can be destroyed by its handle.
    assert!(
        reaped
            .machines
            .iter()
            .any(|m| m.instance.as_deref() == Some("instance-1000"))
    );

    // Back at the front, in order, unassigned, retries kept.
    assert_eq!(
        f.a.queued_ids().await.unwrap(),
        vec![first.id, second.id, third.id]
    );
    let again = f.a.claim_next("healthy", NO_WAIT).await.unwrap().unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(again.retries, 1);
    assert!(!again.assigned);
    // The dead manager's stale writes are refused.
    assert!(matches!(
        f.b.update_live(&one).await,
        Err(StoreError::LeaseLost(_))
    ));
    assert!(matches!(
        f.b.finish(&two, 0).await,
        Err(StoreError::LeaseLost(_))
    ));
    // Reaping twice does nothing more.
    assert!(f.a.reap_expired().await.unwrap().requeued.is_empty());
}

async fn leaving_manager_hands_jobs_back(f: Fixture) {
    let job = add(&*f.a, "handed-back").await;
    f.b.heartbeat("m1", LEASE).await.unwrap();
    let held = f.b.claim_next("m1", NO_WAIT).await.unwrap().unwrap();
    assert_eq!(held.id, job.id);
    f.b.pool_add("m1", "img", &machine(1000)).await.unwrap();
    assert_eq!(f.b.release_owner("m1").await.unwrap(), vec![job.id]);
    assert!(f.a.live_owners().await.unwrap().is_empty());
    assert_eq!(f.a.queued_ids().await.unwrap(), vec![job.id]);
    assert!(f.a.owner_pools("m1").await.unwrap().is_empty());
}

async fn concurrent_adds_get_distinct_ids(f: Fixture) {
    let mut tasks = Vec::new();
    for (side, store) in [("a", f.a.clone()), ("b", f.b.clone())] {
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..500 {
                let job = new_job(&*store, &format!("{side}{i}")).await;
                store.enqueue(&job, 0).await.unwrap();
                ids.push(job.id);
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let distinct: HashSet<JobId> = all.iter().copied().collect();
    assert_eq!(distinct.len(), 1000, "ids must be distinct");
    assert_eq!(f.a.stats().await.unwrap().queued, 1000);
    let live: HashSet<JobId> =
        f.b.live_jobs()
            .await
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
    assert_eq!(live, distinct, "nothing lost");

    // Two managers draining at once never get the same job.
    let mut drains = Vec::new();
    for (owner, store) in [("m1", f.a.clone()), ("m2", f.b.clone())] {
        drains.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(job) = store.claim_next(owner, NO_WAIT).await.unwrap() {
                got.push(job.id);
            }
            got
        }));
    }
    let mut claimed = Vec::new();
    for d in drains {
        claimed.extend(d.await.unwrap());
    }
    let unique: HashSet<JobId> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), 1000);
    assert_eq!(unique, distinct);
}

/// A job as addJob hands it to `add_job`: no id, no trace yet.
fn unnumbered(name: &str) -> Job {
    Job {
        name: name.to_string(),
        timeout: 10,
        max_output: 1024,
        vm: Machine {
            name: "img".into(),
            image: "img".into(),
            vmms: "local".into(),
            ..Machine::default()
        },
        ..Job::default()
    }
}

/// `n` calls of `add_job` at once, alternating between the two handles, each with the job
/// `make` gives for its index: each call's result and job, in index order.
async fn adds_at_once(
    f: &Fixture,
    n: usize,
    max_queued: u64,
    make: fn(usize) -> Job,
) -> Vec<(Result<(), StoreError>, Job)> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let store = if i % 2 == 0 { f.a.clone() } else { f.b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut job = make(i);
            let result = store.add_job(&mut job, max_queued).await;
            (result, job)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    results
}

async fn add_job_counts_numbers_stamps_and_queues(f: Fixture) {
    let before = f.a.allocate_job_id().await.unwrap();
    let queued = add(&*f.a, "first").await;
    let mut job = unnumbered("lab_hello_1_user@x.edu");
    f.b.add_job(&mut job, 0).await.unwrap();
    assert!(
        job.id > queued.id && queued.id > before,
        "ids keep increasing"
    );
    let last = job.trace.last().expect("a trace line");
    assert!(
        last.ends_with(&format!(
            "|Added job lab_hello_1_user@x.edu:{} to queue",
            job.id
        )),
        "{last}"
    );
    assert!(job.timings.added.is_some());
    assert_eq!(job.owner, None);
    assert!(!job.assigned);
    // Stored as returned, at the tail of the queue, and counted as a request.
    assert_eq!(f.a.live_job(job.id).await.unwrap(), Some(job.clone()));
    assert_eq!(f.a.queued_ids().await.unwrap(), vec![queued.id, job.id]);
    assert_eq!(f.a.counters().await.unwrap().job_requests, 1);
    let claimed = f.a.claim_next("m1", NO_WAIT).await.unwrap().unwrap();
    assert_eq!(claimed.id, queued.id);
    let claimed = f.a.claim_next("m1", NO_WAIT).await.unwrap().unwrap();
    assert_eq!(claimed.id, job.id);
    assert_eq!(claimed.trace, job.trace);
}

async fn concurrent_add_jobs_each_get_their_id_and_their_own_json(f: Fixture) {
    // Sent all at once from both handles, so that Redis gets them in shared script calls.
    const ADDS: usize = 300;
    let added: Vec<(usize, Job)> = adds_at_once(&f, ADDS, 0, |i| {
        let mut job = unnumbered(&format!("lab_{i}_user{i}@x.edu"));
        job.notify_url = Some(format!("http://127.0.0.1:9/done?submission={i}"));
        job
    })
    .await
    .into_iter()
    .enumerate()
    .map(|(i, (result, job))| {
        result.unwrap();
        (i, job)
    })
    .collect();
    let ids: HashSet<JobId> = added.iter().map(|(_, j)| j.id).collect();
    assert_eq!(ids.len(), ADDS, "ids must be distinct");
    for (i, job) in &added {
        // Each job is stored as returned: its own name, URL and id, in the JSON and trace.
        assert_eq!(job.name, format!("lab_{i}_user{i}@x.edu"));
        let stored = f.a.live_job(job.id).await.unwrap();
        assert_eq!(stored.as_ref(), Some(job), "job {i}");
        let last = job.trace.last().expect("a trace line");
        assert!(
            last.ends_with(&format!("|Added job {}:{} to queue", job.name, job.id)),
            "{last}"
        );
    }
    // Queued in the order the ids were given, every request counted.
    let queued = f.b.queued_ids().await.unwrap();
    let mut sorted = queued.clone();
    sorted.sort_unstable();
    assert_eq!(queued, sorted);
    assert_eq!(queued.iter().copied().collect::<HashSet<_>>(), ids);
    assert_eq!(f.a.counters().await.unwrap().job_requests, ADDS as u64);
}

async fn add_job_cap_holds_under_concurrent_adds(f: Fixture) {
    const CAP: u64 = 5;
    const ADDS: usize = 40;
    let mut added = Vec::new();
    let mut refused = 0;
    for result in adds_at_once(&f, ADDS, CAP, |i| unnumbered(&format!("c{i}"))).await {
        match result {
            (Ok(()), job) => added.push(job.id),
            (Err(StoreError::QueueFull(n)), job) => {
                assert_eq!(n, CAP, "refused with the queue's length");
                assert_eq!(job.id, 0, "a refused job is left as it was");
                assert!(job.trace.is_empty());
                refused += 1;
            }
            (Err(e), _) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(added.len() as u64, CAP, "exactly the cap gets in");
    assert_eq!(refused, ADDS - CAP as usize);
    added.sort_unstable();
    let mut queued = f.a.queued_ids().await.unwrap();
    queued.sort_unstable();
    assert_eq!(queued, added);
    assert_eq!(f.b.stats().await.unwrap().live, CAP);
    // Every request counted; a refused one used no id.
    assert_eq!(f.a.counters().await.unwrap().job_requests, ADDS as u64);
    let last = *added.last().unwrap();
    assert_eq!(added, (last - CAP + 1..=last).collect::<Vec<_>>());
    assert_eq!(f.b.allocate_job_id().await.unwrap(), last + 1);
}

/// A submission as addJob hands it to `add_job_once`: its output file names it.
fn submission(output: &str) -> Job {
    let mut job = unnumbered("lab_hello_1_user@x.edu");
    job.output_file = format!("/courselabs/0123456789abcdef-course/output/{output}");
    job
}

async fn add_job_once_answers_a_live_duplicate_with_its_id(f: Fixture) {
    let mut first = submission("1_user@x.edu_hello.txt");
    assert_eq!(f.a.add_job_once(&mut first, 0).await.unwrap(), Added::New);
    assert!(first.id > 0);
    // Sent again while queued (from another process): nothing queued, no id used.
    let mut again = submission("1_user@x.edu_hello.txt");
    let answer = f.b.add_job_once(&mut again, 0).await.unwrap();
    assert_eq!(answer, Added::Existing(first.id));
    assert_eq!(again.id, 0, "the duplicate is left as it was");
    assert!(again.trace.is_empty());
    assert_eq!(f.a.queued_ids().await.unwrap(), vec![first.id]);
    assert_eq!(f.a.stats().await.unwrap().live, 1);
    assert_eq!(f.a.counters().await.unwrap().job_requests, 2);
    // Another submission of the same course is a job of its own.
    let mut other = submission("2_user@x.edu_hello.txt");
    assert_eq!(f.b.add_job_once(&mut other, 0).await.unwrap(), Added::New);
    assert_eq!(other.id, first.id + 1, "the duplicate used no id");
    // The same output name in another courselab directory is another submission.
    let mut elsewhere = submission("1_user@x.edu_hello.txt");
    elsewhere.output_file = elsewhere.output_file.replace("-course/", "-other/");
    assert_eq!(
        f.a.add_job_once(&mut elsewhere, 0).await.unwrap(),
        Added::New
    );
    // Running, it is still the one answered.
    let mut running = f.a.claim_next("m1", NO_WAIT).await.unwrap().unwrap();
    assert_eq!(running.id, first.id);
    running.assigned = true;
    f.a.update_live(&running).await.unwrap();
    let mut again = submission("1_user@x.edu_hello.txt");
    let answer = f.b.add_job_once(&mut again, 0).await.unwrap();
    assert_eq!(answer, Added::Existing(first.id));
    // Once it has ended, the same output file may be written by a new job (a regrade).
    running.assigned = false;
    running.trace("done");
    f.a.finish(&running, 0).await.unwrap();
    let mut regrade = submission("1_user@x.edu_hello.txt");
    assert_eq!(f.b.add_job_once(&mut regrade, 0).await.unwrap(), Added::New);
    assert!(regrade.id > elsewhere.id);
    assert_eq!(
        f.a.queued_ids().await.unwrap(),
        vec![other.id, elsewhere.id, regrade.id]
    );
    // A full queue still refuses a new submission, but not a duplicate.
    let mut full = submission("3_user@x.edu_hello.txt");
    assert!(matches!(
        f.a.add_job_once(&mut full, 3).await,
        Err(StoreError::QueueFull(3))
    ));
    let mut again = submission("2_user@x.edu_hello.txt");
    let answer = f.a.add_job_once(&mut again, 3).await.unwrap();
    assert_eq!(answer, Added::Existing(other.id));
}

async fn add_job_once_sees_jobs_added_without_the_guard(f: Fixture) {
    let mut plain = submission("1_user@x.edu_hello.txt");
    f.a.add_job(&mut plain, 0).await.unwrap();
    let mut again = submission("1_user@x.edu_hello.txt");
    let answer = f.b.add_job_once(&mut again, 0).await.unwrap();
    assert_eq!(answer, Added::Existing(plain.id));
    // Without the guard, a second job is queued (Tango's behaviour, `deduplicate = false`).
    let mut twice = submission("1_user@x.edu_hello.txt");
    f.b.add_job(&mut twice, 0).await.unwrap();
    assert_eq!(f.a.queued_ids().await.unwrap(), vec![plain.id, twice.id]);
}

async fn add_job_once_at_the_same_instant_queues_one_job(f: Fixture) {
    // Eight submissions each sent five times, all at once from both handles, so that Redis
    // gets copies of one submission in one script call and in several.
    const SUBMISSIONS: usize = 8;
    const COPIES: usize = 5;
    let mut tasks = Vec::new();
    for i in 0..SUBMISSIONS * COPIES {
        let store = if i % 2 == 0 { f.a.clone() } else { f.b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut job = submission(&format!("{}_user@x.edu_hello.txt", i % SUBMISSIONS));
            let answer = store.add_job_once(&mut job, 0).await.unwrap();
            (i % SUBMISSIONS, answer, job.id)
        }));
    }
    let mut new: Vec<Option<JobId>> = vec![None; SUBMISSIONS];
    let mut answered: Vec<Vec<JobId>> = vec![Vec::new(); SUBMISSIONS];
    for task in tasks {
        let (submission, answer, id) = task.await.unwrap();
        match answer {
            Added::New => {
                assert!(
                    new[submission].is_none(),
                    "submission {submission} queued twice"
                );
                new[submission] = Some(id);
            }
            Added::Existing(existing) => answered[submission].push(existing),
        }
    }
    let queued = f.a.queued_ids().await.unwrap();
    assert_eq!(queued.len(), SUBMISSIONS);
    for (submission, id) in new.iter().enumerate() {
        let id = id.unwrap_or_else(|| panic!("submission {submission} never queued"));
        assert!(queued.contains(&id));
        assert_eq!(answered[submission], vec![id; COPIES - 1]);
    }
    assert_eq!(
        f.b.counters().await.unwrap().job_requests,
        (SUBMISSIONS * COPIES) as u64
    );
}

/// A job of `courselab` (its directory `<tenant>-<courselab>`), queued by addJob.
async fn add_to(store: &dyn JobStore, courselab: &str, n: usize) -> JobId {
    let mut job = unnumbered(&format!("{courselab}_{n}"));
    job.output_file = format!("/labs/0123456789abcdef-{courselab}/output/{n}.txt");
    store.add_job(&mut job, 0).await.expect("add_job");
    job.id
}

/// The courselab of each of the next `n` claims, by `owner`.
async fn claim_labs(store: &dyn JobStore, owner: &str, n: usize) -> Vec<String> {
    let mut labs = Vec::new();
    for _ in 0..n {
        let job = store
            .claim_next(owner, NO_WAIT)
            .await
            .unwrap()
            .expect("a job");
        labs.push(job.name.split('_').next().unwrap_or_default().to_string());
    }
    labs
}

async fn fair_share_puts_a_lone_job_before_a_burst(f: Fixture) {
    let mut burst = Vec::new();
    for n in 0..200 {
        burst.push(add_to(&*f.a, "A", n).await);
    }
    // The pool is busy with A's first jobs when B's one job arrives.
    let mut claimed = Vec::new();
    for _ in 0..3 {
        claimed.push(f.a.claim_next("m1", NO_WAIT).await.unwrap().unwrap().id);
    }
    let lone = add_to(&*f.b, "B", 0).await;
    // `/jobs` still lists the queue in the order jobs came.
    let mut waiting = burst[3..].to_vec();
    waiting.push(lone);
    assert_eq!(f.a.queued_ids().await.unwrap(), waiting);
    let next: Vec<JobId> = [
        f.b.claim_next("m2", NO_WAIT).await.unwrap().unwrap().id,
        f.a.claim_next("m1", NO_WAIT).await.unwrap().unwrap().id,
    ]
    .to_vec();
    assert!(
        next.contains(&lone),
        "B's job waits behind A's burst: {next:?}"
    );
    claimed.extend(next.iter().filter(|&&id| id != lone));
    while let Some(job) = f.b.claim_next("m2", NO_WAIT).await.unwrap() {
        claimed.push(job.id);
    }
    assert_eq!(claimed, burst, "A's jobs leave in their order");
}

async fn fair_share_alternates_and_requeued_jobs_keep_their_place(f: Fixture) {
    for n in 0..4 {
        add_to(&*f.a, "A", n).await;
        add_to(&*f.a, "A", 10 + n).await;
    }
    for n in 0..2 {
        add_to(&*f.b, "B", n).await;
        add_to(&*f.b, "C", n).await;
    }
    let first = f.a.claim_next("m1", NO_WAIT).await.unwrap().unwrap();
    assert_eq!(first.name, "A_0");
    // A requeued job goes back to the head of its courselab, and its turn was used.
    f.a.requeue(&first).await.unwrap();
    let labs = claim_labs(&*f.b, "m2", 8).await;
    assert_eq!(labs, ["B", "C", "A", "B", "C", "A", "A", "A"]);
    let rest = f.a.claim_next("m2", NO_WAIT).await.unwrap().unwrap();
    assert_eq!(
        rest.name, "A_2",
        "A's jobs in their order: A_0, A_10, A_1, A_11, ..."
    );
}

async fn fair_share_weights_give_a_courselab_more_turns(f: Fixture) {
    for n in 0..9 {
        add_to(&*f.a, "A", n).await;
        add_to(&*f.a, "B", n).await;
    }
    let labs = claim_labs(&*f.b, "m2", 9).await;
    assert_eq!(labs, ["A", "B", "A", "A", "B", "A", "A", "B", "A"]);
}

async fn fifo_takes_the_oldest_job_whatever_its_courselab(f: Fixture) {
    for n in 0..5 {
        add_to(&*f.a, "A", n).await;
    }
    add_to(&*f.a, "B", 0).await;
    let first = f.a.claim_next("m1", NO_WAIT).await.unwrap().unwrap();
    f.a.requeue(&first).await.unwrap();
    let labs = claim_labs(&*f.b, "m2", 6).await;
    assert_eq!(labs, ["A", "A", "A", "A", "A", "B"]);
}

async fn fair_share_claims_by_several_managers_take_each_job_once(f: Fixture) {
    let mut all = HashSet::new();
    for n in 0..300 {
        let lab = ["A", "B", "C", "D", "E"][n % 5];
        all.insert(add_to(&*f.a, lab, n).await);
    }
    let mut drains = Vec::new();
    for (i, store) in [f.a.clone(), f.b.clone(), f.a.clone(), f.b.clone()]
        .into_iter()
        .enumerate()
    {
        drains.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(job) = store.claim_next(&format!("m{i}"), NO_WAIT).await.unwrap() {
                got.push(job.id);
            }
            got
        }));
    }
    let mut claimed = Vec::new();
    for d in drains {
        claimed.extend(d.await.unwrap());
    }
    assert_eq!(claimed.len(), all.len(), "no job taken twice, none left");
    assert_eq!(claimed.into_iter().collect::<HashSet<_>>(), all);
    assert!(f.a.queued_ids().await.unwrap().is_empty());
}

async fn cancel_takes_a_queued_job_out_and_marks_a_running_one(f: Fixture) {
    let queued = add_to(&*f.a, "A", 0).await;
    let running = add_to(&*f.a, "A", 1).await;
    let other = add_to(&*f.a, "B", 0).await;
    f.a.heartbeat("m1", LEASE).await.unwrap();
    f.a.heartbeat("m2", LEASE).await.unwrap();
    // A queued job leaves the queue at once.
    assert_eq!(
        f.b.request_cancel(queued).await.unwrap(),
        CancelRequest::Queued
    );
    assert_eq!(f.a.queued_ids().await.unwrap(), vec![running, other]);
    let mut held = f.a.claim_next("m1", NO_WAIT).await.unwrap().unwrap();
    assert_eq!(held.id, running, "the cancelled job is never claimed");
    held.assigned = true;
    f.a.update_live(&held).await.unwrap();
    assert_eq!(
        f.b.request_cancel(running).await.unwrap(),
        CancelRequest::Running
    );
    // The queued one is ended by whichever manager looks first; the running one by its own.
    let for_m2 = f.b.take_cancels("m2").await.unwrap();
    assert_eq!(
        for_m2.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![queued]
    );
    assert_eq!(for_m2[0].owner.as_deref(), Some("m2"));
    let for_m1 = f.a.take_cancels("m1").await.unwrap();
    assert_eq!(
        for_m1.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![running]
    );
    assert!(for_m1[0].assigned);
    // A marked job put back (a retry, or its manager gone) does not return to the queue.
    let mut again = held.clone();
    again.assigned = false;
    f.a.requeue(&again).await.unwrap();
    assert_eq!(f.a.queued_ids().await.unwrap(), vec![other]);
    f.b.release_owner("m2").await.unwrap();
    assert_eq!(f.a.queued_ids().await.unwrap(), vec![other]);
    let retaken = f.a.take_cancels("m1").await.unwrap();
    assert_eq!(
        retaken.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![queued, running]
    );
    // Ended, it is finished for a cancel, and no longer to be ended.
    for mut job in retaken {
        job.trace("Cancelled");
        f.a.finish(&job, 0).await.unwrap();
    }
    assert!(f.a.take_cancels("m1").await.unwrap().is_empty());
    assert_eq!(
        f.b.request_cancel(queued).await.unwrap(),
        CancelRequest::Finished
    );
    assert_eq!(
        f.b.request_cancel(987_654).await.unwrap(),
        CancelRequest::Unknown
    );
    // The rest of the queue is untouched.
    let next = f.a.claim_next("m1", NO_WAIT).await.unwrap().unwrap();
    assert_eq!(next.id, other);
}

/// A failed callback for job `id`.
fn failed(id: JobId, error: &str) -> tango::model::FailedCallback {
    tango::model::FailedCallback {
        job_id: id,
        job_name: format!("job{id}"),
        courselab: "lab".into(),
        url: format!("http://127.0.0.1:9/cb?job={id}"),
        output_file: format!("/labs/t-lab/output/job{id}.txt"),
        first_failed: 1000.0 + id as f64,
        last_failed: 1000.0 + id as f64,
        attempts: 3,
        last_error: error.into(),
        replaying: None,
    }
}

async fn failed_callbacks_are_kept_oldest_first_and_capped(f: Fixture) {
    assert!(f.a.failed_callbacks().await.unwrap().is_empty());
    for id in [5, 3, 9] {
        assert!(
            f.a.keep_failed_callback(&failed(id, "refused"), 3)
                .await
                .unwrap()
                .is_empty()
        );
    }
    // Kept again (a newer failure of job 5): rewritten in its place, not moved.
    assert!(
        f.a.keep_failed_callback(&failed(5, "again"), 3)
            .await
            .unwrap()
            .is_empty()
    );
    let kept = f.b.failed_callbacks().await.unwrap();
    assert_eq!(kept.iter().map(|r| r.job_id).collect::<Vec<_>>(), [5, 3, 9]);
    assert_eq!(kept[0].last_error, "again");
    assert_eq!(kept[1], failed(3, "refused"), "read back as kept");
    assert_eq!(f.b.stats().await.unwrap().failed_callbacks, 3);
    // Beyond the cap the oldest go, and say so.
    let dropped =
        f.a.keep_failed_callback(&failed(7, "refused"), 2)
            .await
            .unwrap();
    assert_eq!(dropped, [5, 3]);
    let kept = f.b.failed_callbacks().await.unwrap();
    assert_eq!(kept.iter().map(|r| r.job_id).collect::<Vec<_>>(), [9, 7]);
    assert_eq!(f.b.overview().await.unwrap().1.failed_callbacks, 2);
}

async fn a_failed_callback_is_claimed_by_one_sender_at_a_time(f: Fixture) {
    f.a.keep_failed_callback(&failed(1, "refused"), 0)
        .await
        .unwrap();
    let lease = Duration::from_secs(60);
    let claimed = f.a.claim_failed_callback(1, "m1", lease).await.unwrap();
    assert_eq!(claimed.map(|r| r.job_id), Some(1));
    assert!(
        f.b.claim_failed_callback(1, "m2", lease)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        f.b.claim_failed_callback(2, "m2", lease)
            .await
            .unwrap()
            .is_none(),
        "not kept"
    );
    let listed = f.b.failed_callbacks().await.unwrap();
    assert_eq!(listed[0].replaying.as_deref(), Some("m1"));
    // Only the claimant settles it; failed again, it waits, unclaimed, with the news.
    let mut again = failed(1, "still refused");
    again.attempts = 4;
    assert!(
        !f.b.settle_failed_callback(1, "m2", Some(&again))
            .await
            .unwrap()
    );
    assert!(
        f.a.settle_failed_callback(1, "m1", Some(&again))
            .await
            .unwrap()
    );
    let listed = f.b.failed_callbacks().await.unwrap();
    assert_eq!(listed, [again]);
    // Claimed again by the other; delivered, it is forgotten.
    assert!(
        f.b.claim_failed_callback(1, "m2", lease)
            .await
            .unwrap()
            .is_some()
    );
    assert!(f.b.settle_failed_callback(1, "m2", None).await.unwrap());
    assert!(f.a.failed_callbacks().await.unwrap().is_empty());
    assert!(
        !f.a.settle_failed_callback(1, "m2", None).await.unwrap(),
        "gone"
    );
}

async fn a_dead_senders_claim_runs_out(f: Fixture) {
    f.a.keep_failed_callback(&failed(1, "refused"), 0)
        .await
        .unwrap();
    let short = Duration::from_millis(200);
    assert!(
        f.a.claim_failed_callback(1, "dead", short)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        f.b.claim_failed_callback(1, "m2", short)
            .await
            .unwrap()
            .is_none()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(f.b.failed_callbacks().await.unwrap()[0].replaying, None);
    assert!(
        f.b.claim_failed_callback(1, "m2", Duration::from_secs(60))
            .await
            .unwrap()
            .is_some()
    );
    // The one whose claim ran out cannot settle it any more.
    assert!(!f.a.settle_failed_callback(1, "dead", None).await.unwrap());
    assert_eq!(f.a.failed_callbacks().await.unwrap().len(), 1);
}

async fn concurrent_claims_of_failed_callbacks_take_each_once(f: Fixture) {
    for id in 1..=20 {
        f.a.keep_failed_callback(&failed(id, "refused"), 0)
            .await
            .unwrap();
    }
    let lease = Duration::from_secs(60);
    let claim_all = |store: Arc<dyn JobStore>, owner: &'static str| async move {
        let mut got = Vec::new();
        for id in 1..=20 {
            if store
                .claim_failed_callback(id, owner, lease)
                .await
                .unwrap()
                .is_some()
            {
                got.push(id);
            }
        }
        got
    };
    let (a, b) = tokio::join!(
        tokio::spawn(claim_all(f.a.clone(), "m1")),
        tokio::spawn(claim_all(f.b.clone(), "m2"))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut all: Vec<JobId> = a.iter().chain(&b).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=20).collect::<Vec<_>>(),
        "each claimed once: {a:?} {b:?}"
    );
}

/// The courselab a job claimed by [`claim_labs`]-style names belongs to.
fn lab_name(job: &Job) -> String {
    job.name.split('_').next().unwrap_or_default().to_string()
}

/// Schedule: fair share, at most 2 jobs of a courselab held at once.
async fn a_courselab_at_its_cap_is_passed_over(f: Fixture) {
    for n in 0..5 {
        add_to(&*f.a, "A", n).await;
    }
    for n in 0..2 {
        add_to(&*f.a, "B", n).await;
    }
    // Two managers claiming in turn hold at most two of A's jobs between them.
    let mut held = Vec::new();
    for (store, owner) in [(&f.a, "m1"), (&f.b, "m2"), (&f.a, "m1"), (&f.b, "m2")] {
        held.push(
            store
                .claim_next(owner, NO_WAIT)
                .await
                .unwrap()
                .expect("a job"),
        );
    }
    let labs: Vec<String> = held.iter().map(lab_name).collect();
    assert_eq!(labs.iter().filter(|l| *l == "A").count(), 2, "{labs:?}");
    assert_eq!(labs.iter().filter(|l| *l == "B").count(), 2, "{labs:?}");
    assert!(
        f.b.claim_next("m2", NO_WAIT).await.unwrap().is_none(),
        "A holds its cap and B has nothing queued"
    );
    // One of A's ends: the next of A's may go.
    let a_job = held
        .iter()
        .find(|j| lab_name(j) == "A")
        .expect("an A job")
        .clone();
    f.a.finish(&a_job, 0).await.unwrap();
    let next =
        f.b.claim_next("m2", NO_WAIT)
            .await
            .unwrap()
            .expect("A's next");
    assert_eq!(lab_name(&next), "A");
    // A requeued job no longer counts against its courselab.
    f.b.requeue(&next).await.unwrap();
    let again =
        f.a.claim_next("m1", NO_WAIT)
            .await
            .unwrap()
            .expect("A's requeued job");
    assert_eq!(again.id, next.id);
}

/// Schedule: FIFO, at most 1 job of a courselab held at once.
async fn fifo_with_a_cap_takes_the_oldest_job_under_it(f: Fixture) {
    let a1 = add_to(&*f.a, "A", 1).await;
    let a2 = add_to(&*f.a, "A", 2).await;
    let b1 = add_to(&*f.a, "B", 1).await;
    add_to(&*f.a, "A", 3).await;
    let first = f.a.claim_next("m1", NO_WAIT).await.unwrap().unwrap();
    assert_eq!(first.id, a1);
    let second = f.b.claim_next("m2", NO_WAIT).await.unwrap().unwrap();
    assert_eq!(
        second.id, b1,
        "A's next is passed over while A holds its cap"
    );
    assert!(f.b.claim_next("m2", NO_WAIT).await.unwrap().is_none());
    f.a.finish(&first, 0).await.unwrap();
    let third = f.b.claim_next("m2", NO_WAIT).await.unwrap().unwrap();
    assert_eq!(third.id, a2, "the oldest job of a courselab under its cap");
}

/// Schedule: fair share, at most 1 job of a courselab held at once.
async fn a_claim_waiting_on_a_capped_courselab_wakes_when_its_job_ends(f: Fixture) {
    add_to(&*f.a, "A", 1).await;
    let a2 = add_to(&*f.a, "A", 2).await;
    let first = f.a.claim_next("m1", NO_WAIT).await.unwrap().unwrap();
    let waiting = {
        let store = f.b.clone();
        tokio::spawn(async move { store.claim_next("m2", Duration::from_secs(60)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "A's next waits while A holds its cap"
    );
    f.a.finish(&first, 0).await.unwrap();
    let next = waiting.await.unwrap().unwrap();
    assert_eq!(
        next.map(|j| j.id),
        Some(a2),
        "woken by the end, not the wait's end"
    );
}

macro_rules! scheduled {
    ($($case:ident: $schedule:expr),* $(,)?) => {
        mod scheduled {
            $(
                mod $case {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn memory() {
                        super::super::$case(super::super::memory_with($schedule).await).await;
                    }
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn redis() {
                        super::super::$case(super::super::redis_with($schedule).await).await;
                    }
                }
            )*
        }
    };
}

scheduled!(
    fair_share_weights_give_a_courselab_more_turns: tango::store::Schedule {
        fifo: false,
        weights: [("A".to_string(), 2)].into_iter().collect(),
        ..Default::default()
    },
    fifo_takes_the_oldest_job_whatever_its_courselab: tango::store::Schedule {
        fifo: true,
        ..Default::default()
    },
    a_courselab_at_its_cap_is_passed_over: tango::store::Schedule {
        max_running_per_lab: 2,
        ..Default::default()
    },
    fifo_with_a_cap_takes_the_oldest_job_under_it: tango::store::Schedule {
        fifo: true,
        max_running_per_lab: 1,
        ..Default::default()
    },
    a_claim_waiting_on_a_capped_courselab_wakes_when_its_job_ends: tango::store::Schedule {
        max_running_per_lab: 1,
        ..Default::default()
    },
);

macro_rules! contract {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::$backend().await).await;
                }
            )*
        }
    };
}

macro_rules! every_backend {
    ($($case:ident),* $(,)?) => {
        contract!(memory: $($case),*);
        contract!(redis: $($case),*);
    };
}

every_backend!(
    ids_are_unique_and_increasing,
    queue_is_fifo,
    claim_waits_for_a_job_and_wakes_at_once,
    assign_update_and_finish,
    finish_sent_again_after_it_took_effect_succeeds,
    requeue_goes_to_the_front_unassigned,
    writes_need_the_lease,
    rejected_jobs_go_straight_to_dead,
    dead_list_is_trimmed_oldest_first,
    queue_cap_is_refused_clearly,
    pools_add_take_free_remove,
    pool_targets_round_trip,
    counters_add_up,
    dead_manager_jobs_and_machines_come_back,
    leaving_manager_hands_jobs_back,
    concurrent_adds_get_distinct_ids,
    add_job_counts_numbers_stamps_and_queues,
    add_job_cap_holds_under_concurrent_adds,
    concurrent_add_jobs_each_get_their_id_and_their_own_json,
    add_job_once_answers_a_live_duplicate_with_its_id,
    add_job_once_sees_jobs_added_without_the_guard,
    add_job_once_at_the_same_instant_queues_one_job,
    fair_share_puts_a_lone_job_before_a_burst,
    fair_share_alternates_and_requeued_jobs_keep_their_place,
    fair_share_claims_by_several_managers_take_each_job_once,
    cancel_takes_a_queued_job_out_and_marks_a_running_one,
    failed_callbacks_are_kept_oldest_first_and_capped,
    a_failed_callback_is_claimed_by_one_sender_at_a_time,
    a_dead_senders_claim_runs_out,
    concurrent_claims_of_failed_callbacks_take_each_once,
);
