//! The job pipeline end to end (manager, preallocator, worker, callback) against a store
//! and an in-test backend whose steps can be told to fail, hang or succeed
//! (`support::pipeline::FakeVmms`), with a real HTTP receiver for callbacks.
//!
//! Every case takes its store as an argument, so the same cases run on the memory store
//! and (once it is merged) on Redis.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::pipeline::{
    Action, FakeVmms, JobScript, Receiver, Reply, Rig, Step, When, fast_config as config,
};
use tango::config::Config;
use tango::model::{Counter, Job, JobId, Machine, PoolTarget};
use tango::store::memory::MemoryStore;
use tango::store::{CancelRequest, JobStore};
use tango::vmms::RunOutcome;

/// Generous bound for a test's jobs to end: only to turn a hang into a failure.
const HANG: Duration = Duration::from_secs(90);

/// Bound for clean-up that happens after a job is recorded dead (the worker destroys a
/// one-off machine once the job's end is stored): generous to two loaded cores, short
/// enough that a leaked machine fails the test quickly.
const CLEANUP: Duration = Duration::from_secs(30);

impl Rig {
    /// Waits until every job in `ids` is dead; returns them in the order of `ids`.
    async fn wait_dead(&self, ids: &[JobId]) -> Vec<Job> {
        let deadline = Instant::now() + HANG;
        loop {
            // Cheap check first, so polling does not slow the jobs down.
            if (self.store.stats().await.expect("stats").dead as usize) < ids.len() {
                assert!(
                    Instant::now() < deadline,
                    "jobs still not dead after {HANG:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let mut dead = Vec::new();
            for id in ids {
                if let Some(job) = self.store.dead_job(*id).await.expect("dead job") {
                    dead.push(job);
                }
            }
            if dead.len() == ids.len() {
                return dead;
            }
            assert!(
                Instant::now() < deadline,
                "jobs still not dead: {:?}",
                ids.iter()
                    .filter(|id| !dead.iter().any(|j| j.id == **id))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn output(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.output_path(name)).expect("output file")
    }

    /// Waits, bounded by [`CLEANUP`], until the backend holds no machine. Checked before
    /// `manager.shutdown`, whose `destroy_all` would hide a machine a worker leaked.
    async fn wait_no_machine(&self, what: &str) {
        let deadline = Instant::now() + CLEANUP;
        while !self.fake.live_instances().is_empty() {
            assert!(
                Instant::now() < deadline,
                "{what}: machines still there after {CLEANUP:?}: {:?}",
                self.fake.live_instances()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Names in the output directory (to check no temporary file is left).
    fn output_dir_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.join("output"))
            .expect("read output dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// Waits for a condition on the store or the fake, polling; fails after [`HANG`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + HANG;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The trace's messages without their timestamps, checking each stamp looks like ctime.
fn messages(job: &Job) -> Vec<String> {
    job.trace
        .iter()
        .map(|line| {
            let (stamp, message) = line.split_once('|').expect("stamp|message");
            assert_eq!(stamp.len(), 24, "ctime stamp: {line}");
            message.to_string()
        })
        .collect()
}

fn last_message(job: &Job) -> String {
    messages(job).pop().expect("a trace")
}

/// The output file's lines with the `Autograder [<ctime>]: ` prefix removed from header lines.
fn output_lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|line| match line.strip_prefix("Autograder [") {
            Some(rest) => {
                let (stamp, message) = rest.split_once("]: ").expect("header line");
                assert_eq!(stamp.len(), 24, "ctime stamp: {line}");
                message.to_string()
            }
            None => line.to_string(),
        })
        .collect()
}

/// Makes every destroy take a while, as a real backend's does, so a check that a machine
/// is gone sees the destroy that follows a job's end still going on (every run, not by luck).
fn slow_destroys(fake: &FakeVmms) {
    fake.on(
        Step::Destroy,
        When::Always,
        Action::Delay(Duration::from_millis(300)),
    );
}

fn one_off(mut c: Config) -> Config {
    c.vmms.reuse_vms = false;
    c
}

async fn counter(store: &Arc<dyn JobStore>, c: Counter) -> u64 {
    store.counters().await.expect("counters").get(c)
}

// ---------------------------------------------------------------------------------------
// The normal path
// ---------------------------------------------------------------------------------------

async fn a_job_runs_with_tangos_trace_and_output(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    let mut c = config();
    c.vmms.pool_size = 1;
    let (_app, manager) = rig.start(c).await;
    let id = rig.submit("hello").await;
    let job = rig.wait_dead(&[id]).await.remove(0);
    let label = format!("hello:{id}");
    assert_eq!(
        messages(&job),
        vec![
            format!("Added job {label} to queue"),
            format!("Dispatched job {label} [try 0]"),
            format!("Assigned job {label} existing VM t-1000-img"),
            format!("Job {label} waiting for VM t-1000-img"),
            format!("VM t-1000-img ready for job {label}"),
            format!("Input copied for job {label} [status=0]"),
            format!("Job {label} executed [status=0]"),
            format!("Output copied for job {label} [status=0]"),
            "Success: Autodriver returned normally".to_string(),
        ]
    );
    assert!(!job.assigned);
    assert_eq!(job.retries, 0);
    assert_eq!(job.vm.id, Some(1000));
    assert!(job.callback.is_none(), "no callback URL, no callback");
    assert!(job.timings.finished.is_some() && job.timings.dispatched.is_some());

    let output = rig.output("hello");
    let mut want = vec![
        format!("Received job {label}"),
        "Success: Autodriver returned normally".into(),
        "Here is the output from the autograder:".into(),
        "---".into(),
    ];
    want.extend(
        String::from_utf8(JobScript::default().output)
            .unwrap()
            .lines()
            .map(str::to_string),
    );
    assert_eq!(output_lines(&output), want);
    assert!(
        output.ends_with(b"{\"scores\": {\"q\": 1}}\n"),
        "job's last line last"
    );
    assert_eq!(rig.output_dir_entries(), vec!["hello.txt".to_string()]);

    // The machine went back to the pool, and no error was counted.
    eventually("machine freed", || async {
        store
            .pools()
            .await
            .unwrap()
            .get("img")
            .map(|p| p.free.clone())
            == Some(vec![1000])
    })
    .await;
    let counters = store.counters().await.unwrap();
    for c in Counter::ALL {
        assert_eq!(counters.get(c), 0, "{}", c.name());
    }
    manager.shutdown(Duration::from_secs(5)).await;
    assert!(rig.fake.live_instances().is_empty(), "no machine left");
}

async fn jobs_run_in_fifo_order(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store);
    let mut c = config();
    c.vmms.pool_size = 1;
    c.vmms.max_concurrent_jobs = 1;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(rig.submit(&format!("fifo{i}")).await);
    }
    let (_app, manager) = rig.start(c).await;
    for i in 10..15 {
        ids.push(rig.submit(&format!("fifo{i}")).await);
    }
    rig.wait_dead(&ids).await;
    assert_eq!(rig.fake.state().runs, ids);
    assert_eq!(rig.fake.state().max_running, 1);
    manager.shutdown(Duration::from_secs(5)).await;
}

async fn an_idle_manager_starts_a_new_job_at_once(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store);
    let (_app, manager) = rig.start(config()).await;
    // Let the dispatcher block on an empty queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let id = rig.submit("prompt").await;
    rig.wait_dead(&[id]).await;
    // Woken by the job, not by a poll period: the longest wait of a claim is 5 s, begun
    // at the manager's start, so a dispatcher that polled would take about 4.5 s here.
    // The job itself takes milliseconds: 4 s is slack for two loaded cores.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    manager.shutdown(Duration::from_secs(5)).await;
}

async fn concurrency_is_bounded(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store);
    let mut c = config();
    c.vmms.pool_size = 4;
    c.vmms.max_concurrent_jobs = 2;
    let mut ids = Vec::new();
    for i in 0..6 {
        let name = format!("slot{i}");
        ids.push(rig.submit_running(&name, Duration::from_millis(200)).await);
    }
    let (_app, manager) = rig.start(c).await;
    rig.wait_dead(&ids).await;
    assert_eq!(rig.fake.state().max_running, 2);
    manager.shutdown(Duration::from_secs(5)).await;
}

async fn a_running_job_shows_its_machine(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    rig.fake.script(
        "partial",
        JobScript {
            run_time: Duration::from_secs(2),
            output: b"partial output so far\n".to_vec(),
            ..JobScript::default()
        },
    );
    let (app, manager) = rig.start(config()).await;
    let id = rig.submit("partial").await;
    eventually("job running", || async { rig.fake.state().running == 1 }).await;
    let live = store.live_job(id).await.unwrap().expect("live");
    assert!(live.assigned);
    assert!(
        live.vm.instance.is_some(),
        "getPartialOutput needs the instance"
    );
    assert!(
        app.vmms.get_partial_output(&live.vm, 1000).await.is_ok(),
        "the backend finds the machine from the stored job"
    );
    rig.wait_dead(&[id]).await;
    manager.shutdown(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------
// Final messages
// ---------------------------------------------------------------------------------------

async fn every_final_message(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    let script = |outcome: RunOutcome| JobScript {
        outcome,
        ..JobScript::default()
    };
    rig.fake.script("usage", script(RunOutcome::Exited(1)));
    rig.fake.script("timeout", script(RunOutcome::Exited(2)));
    rig.fake.script("oserror", script(RunOutcome::Exited(3)));
    rig.fake.script("unknown", script(RunOutcome::Exited(7)));
    rig.fake.script("killed", script(RunOutcome::Killed));
    rig.fake.on(
        Step::CopyOut,
        When::Job("nocopyout".into()),
        Action::Io("disk full".into()),
    );
    let cases = [
        ("success", "Success: Autodriver returned normally"),
        ("usage", "Error: Autodriver usage error (status=1)"),
        ("timeout", "Error: Job timed out after 10 seconds"),
        ("oserror", "Error: OS error while running job on VM"),
        ("unknown", "Error: Unknown autodriver error (status=7)"),
        ("killed", "Error: Job timed out after 10 seconds"),
        ("nocopyin", "Error: Copy in to VM failed (status=-1)"),
        (
            "nocopyout",
            "Success: Autodriver returned normallyError: Copy out from VM failed (status=-1)",
        ),
    ];
    let mut ids = Vec::new();
    for (name, _) in cases {
        ids.push(rig.submit(name).await);
    }
    // An input file that vanished before the job ran: copy-in fails on this host.
    std::fs::remove_file(rig.dir.join("nocopyin.mk")).unwrap();
    let mut c = config();
    c.vmms.pool_size = 2;
    c.vmms.max_concurrent_jobs = 1;
    let (_app, manager) = rig.start(c).await;
    let dead = rig.wait_dead(&ids).await;
    for ((name, message), job) in cases.iter().zip(&dead) {
        assert_eq!(&last_message(job), message, "{name}");
        assert_eq!(job.retries, 0, "{name}: final errors are not retried");
        let lines = output_lines(&rig.output(name));
        assert_eq!(lines[1], *message, "{name}: output header");
        assert_eq!(
            lines[2], "Here is the output from the autograder:",
            "{name}"
        );
    }
    // A job whose input could not be copied in is not run.
    assert!(!rig.fake.state().runs_by_name.contains_key("nocopyin"));
    assert_eq!(
        output_lines(&rig.output("nocopyin")).len(),
        4,
        "header only"
    );
    // Without its output, the copy-out failure's file has the header only.
    assert_eq!(output_lines(&rig.output("nocopyout")).len(), 4);
    // Tango's counters: every non-zero run status is a runjob error, -1 also a timeout.
    assert_eq!(counter(&store, Counter::RunjobErrors).await, 5);
    assert_eq!(counter(&store, Counter::RunjobTimeouts).await, 1);
    assert_eq!(counter(&store, Counter::CopyinErrors).await, 1);
    assert_eq!(counter(&store, Counter::CopyoutErrors).await, 1);
    assert_eq!(counter(&store, Counter::JobRetries).await, 0);

    // The machines that ran the OS-error and the killed job were destroyed, and the pool
    // was refilled with new machines.
    let ran_on = |name: &str| {
        let job = &dead[cases.iter().position(|(n, _)| *n == name).unwrap()];
        format!("t-{}-img", job.vm.id.unwrap())
    };
    let mut destroyed = rig.fake.state().destroyed.clone();
    destroyed.sort();
    let mut expected = vec![ran_on("oserror"), ran_on("killed")];
    expected.sort();
    assert_eq!(destroyed, expected, "only those; the others were returned");
    eventually("pool refilled", || async {
        store
            .pools()
            .await
            .unwrap()
            .get("img")
            .is_some_and(|p| p.total.len() == 2 && p.free.len() == 2)
    })
    .await;
    manager.shutdown(Duration::from_secs(5)).await;
    assert!(rig.fake.live_instances().is_empty());
}

// ---------------------------------------------------------------------------------------
// Timeouts and retries
// ---------------------------------------------------------------------------------------

fn fast_timeouts(mut c: Config) -> Config {
    c.timeouts.initialize_vm = 1;
    c.timeouts.wait_vm = 1;
    c.timeouts.copy_in = 1;
    c.timeouts.copy_out = 1;
    c
}

/// Checks the retry trace: three tries, each dispatched and failed with `error`.
fn assert_tried_three_times(job: &Job, error: &str) {
    let label = job.label();
    let lines = messages(job);
    for try_number in 0..3 {
        assert!(
            lines.contains(&format!("Dispatched job {label} [try {try_number}]")),
            "try {try_number} in {lines:#?}"
        );
    }
    let failed = format!("Job {label} failed: {error}");
    assert_eq!(
        lines.iter().filter(|l| **l == failed).count(),
        3,
        "{failed} in {lines:#?}"
    );
    assert_eq!(lines.last().unwrap(), error);
    assert_eq!(job.retries, 2);
}

async fn initialize_timeout_is_retried_then_given_up(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    rig.fake.on(Step::Initialize, When::Always, Action::Hang);
    let (_app, manager) = rig.start(fast_timeouts(one_off(config()))).await;
    let id = rig.submit("slowvm").await;
    let job = rig.wait_dead(&[id]).await.remove(0);
    assert_tried_three_times(
        &job,
        "Internal error: initializeVM timed out after 1 seconds",
    );
    assert_eq!(counter(&store, Counter::JobRetries).await, 2);
    // A one-off machine is numbered with its job's id; every half-made one is destroyed.
    assert_eq!(rig.fake.state().created.len(), 3);
    assert!(
        rig.fake
            .state()
            .created
            .iter()
            .all(|i| *i == format!("t-{id}-img"))
    );
    rig.wait_no_machine("one-off machines destroyed").await;
    manager.shutdown(Duration::from_secs(5)).await;
}

async fn wait_timeout_is_tangos_retry(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    rig.fake.on(Step::Wait, When::Always, Action::Hang);
    let receiver = Receiver::start(|_| Reply::Status(204)).await;
    let (_app, manager) = rig.start(fast_timeouts(one_off(config()))).await;
    let id = rig.submit_with("nowait", Some(&receiver.url)).await;
    let job = rig.wait_dead(&[id]).await.remove(0);
    assert_tried_three_times(&job, "Internal error: waitVM timeout after 1 secs");
    assert_eq!(counter(&store, Counter::WaitvmTimeouts).await, 3);
    // Tango's give-up header, and nothing after it.
    let output = rig.output("nowait");
    assert_eq!(
        output_lines(&output),
        vec![
            format!("Received job nowait:{id}"),
            "Internal error: Unable to complete job after 2 tries. Pleae resubmit".into(),
            "Job status: waitVM=-1 copyIn=None runJob=None copyOut=None".into(),
            "Here is the output from the autograder:".into(),
            "---".into(),
        ]
    );
    // Given up jobs are called back too.
    eventually("callback", || async { receiver.requests().len() == 1 }).await;
    assert_eq!(
        receiver.requests()[0].multipart()[0].1,
        output,
        "the callback carries the output file"
    );
    rig.wait_no_machine("one-off machines destroyed").await;
    manager.shutdown(Duration::from_secs(5)).await;
}

async fn copy_and_run_timeouts(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    rig.fake
        .on(Step::CopyIn, When::Job("hangin".into()), Action::Hang);
    rig.fake
        .on(Step::CopyOut, When::Job("hangout".into()), Action::Hang);
    rig.fake
        .on(Step::Run, When::Job("hangrun".into()), Action::Hang);
    slow_destroys(&rig.fake);
    let mut c = fast_timeouts(one_off(config()));
    c.timeouts.kill_margin_secs = 0;
    let (_app, manager) = rig.start(c).await;
    let mut ids = Vec::new();
    for name in ["hangin", "hangout", "hangrun"] {
        let mut job = rig.job(name, None).await;
        job.timeout = 1;
        rig.store.enqueue(&job, 0).await.unwrap();
        ids.push(job.id);
    }
    let dead = rig.wait_dead(&ids).await;
    assert_tried_three_times(&dead[0], "Internal error: copyIn timed out after 1 seconds");
    assert_tried_three_times(
        &dead[1],
        "Internal error: copyOut timed out after 1 seconds",
    );
    // A run that does not end is killed after its timeout (plus margins) and not retried.
    assert_eq!(
        last_message(&dead[2]),
        "Error: Job timed out after 1 seconds"
    );
    assert_eq!(dead[2].retries, 0);
    assert!(messages(&dead[2]).contains(&format!("Job {} executed [status=-1]", dead[2].label())));
    assert_eq!(rig.fake.state().runs_by_name["hangrun"], 1);
    assert_eq!(rig.fake.state().runs_by_name["hangout"], 3);
    assert_eq!(counter(&store, Counter::CopyinErrors).await, 3);
    assert_eq!(counter(&store, Counter::CopyoutErrors).await, 3);
    assert_eq!(counter(&store, Counter::RunjobTimeouts).await, 1);
    rig.wait_no_machine("one-off machines destroyed").await;
    manager.shutdown(Duration::from_secs(5)).await;
}

async fn cancel_ends_a_queued_and_a_running_job(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    let receiver = Receiver::start(|_| Reply::Status(204)).await;
    rig.fake
        .on(Step::Run, When::Job("runaway".into()), Action::Hang);
    let mut c = one_off(config());
    c.vmms.max_concurrent_jobs = 1;
    // The manager looks for cancelled jobs every lease_secs / 3.
    c.jobs.lease_secs = 1;
    let (_app, manager) = rig.start(c).await;
    let mut runaway = rig.job("runaway", Some(&receiver.url)).await;
    runaway.timeout = 600;
    rig.store.enqueue(&runaway, 0).await.unwrap();
    eventually("the runaway job runs", || async {
        rig.fake.state().runs_by_name.get("runaway") == Some(&1)
    })
    .await;
    let waiting = rig.submit_with("waiting", Some(&receiver.url)).await;
    assert_eq!(
        store.request_cancel(waiting).await.unwrap(),
        CancelRequest::Queued
    );
    assert_eq!(
        store.request_cancel(runaway.id).await.unwrap(),
        CancelRequest::Running
    );
    let dead = rig.wait_dead(&[runaway.id, waiting]).await;
    for job in &dead {
        assert_eq!(last_message(job), "Cancelled", "{:?}", job.trace);
    }
    assert_eq!(
        output_lines(&rig.output("runaway")),
        vec![
            format!("Received job runaway:{}", runaway.id),
            "Cancelled".into(),
            "Here is the output from the autograder:".into(),
            "---".into()
        ]
    );
    assert!(output_lines(&rig.output("waiting")).contains(&"Cancelled".to_string()));
    // Autolab hears of both; the waiting job never ran; the runaway's machine is gone.
    eventually("both callbacks", || async {
        receiver.requests().len() == 2
    })
    .await;
    assert_eq!(rig.fake.state().runs_by_name.get("waiting"), None);
    eventually("the machine destroyed", || async {
        rig.fake.live_instances().is_empty()
    })
    .await;
    assert_eq!(
        store.request_cancel(runaway.id).await.unwrap(),
        CancelRequest::Finished
    );
    manager.shutdown(Duration::from_secs(5)).await;
}

async fn a_machine_error_is_retried_on_a_fresh_machine(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    rig.fake.on(
        Step::Wait,
        When::Calls(1..=2),
        Action::Fail("engine hiccup".into()),
    );
    slow_destroys(&rig.fake);
    let (_app, manager) = rig.start(one_off(config())).await;
    let id = rig.submit("flaky").await;
    let job = rig.wait_dead(&[id]).await.remove(0);
    let label = job.label();
    let lines = messages(&job);
    let failed = format!("Job {label} failed: Internal error: waitVM failed: engine hiccup");
    let expected_order = [
        format!("Dispatched job {label} [try 0]"),
        failed.clone(),
        format!("Dispatched job {label} [try 1]"),
        failed,
        format!("Dispatched job {label} [try 2]"),
        format!("Job {label} executed [status=0]"),
        "Success: Autodriver returned normally".to_string(),
    ];
    let mut at = 0;
    for line in &expected_order {
        at += lines[at..]
            .iter()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("{line} after line {at} in {lines:#?}"));
    }
    assert_eq!(job.retries, 2);
    assert_eq!(counter(&store, Counter::JobRetries).await, 2);
    assert_eq!(rig.fake.state().created.len(), 3, "a fresh machine per try");
    rig.wait_no_machine("one-off machines destroyed").await;
    manager.shutdown(Duration::from_secs(5)).await;
}

async fn pool_creation_failure_is_charged_to_the_job(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    rig.fake.on(
        Step::Initialize,
        When::Always,
        Action::Fail("no such image".into()),
    );
    let (_app, manager) = rig.start(config()).await;
    let id = rig.submit("noimage").await;
    let job = rig.wait_dead(&[id]).await.remove(0);
    assert_tried_three_times(&job, "Internal error: initializeVM failed: no such image");
    rig.wait_no_machine("half-made machines destroyed").await;
    manager.shutdown(Duration::from_secs(5)).await;
}

async fn an_unsupported_step_is_given_up_at_once(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store);
    rig.fake.on(Step::Run, When::Always, Action::Unsupported);
    let (_app, manager) = rig.start(config()).await;
    let id = rig.submit("cannot").await;
    let job = rig.wait_dead(&[id]).await.remove(0);
    assert_eq!(job.retries, 0);
    assert_eq!(
        last_message(&job),
        "Internal error: runJob failed: not here"
    );
    let lines = output_lines(&rig.output("cannot"));
    assert_eq!(lines[1], "Internal error: runJob failed: not here");
    assert_eq!(
        lines[2],
        "Job status: waitVM=0 copyIn=0 runJob=-1 copyOut=None"
    );
    manager.shutdown(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------
// Callbacks
// ---------------------------------------------------------------------------------------

async fn the_callback_is_what_autolab_parses(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    let receiver = Receiver::start(|_| Reply::Status(204)).await;
    let raw = b"Autodriver: Job exited with status 0\nhello \xff world\n{\"scores\": {\"q\": 5}}\n";
    rig.fake.script(
        "bob@x.edu_1_lab",
        JobScript {
            output: raw.to_vec(),
            ..JobScript::default()
        },
    );
    let (_app, manager) = rig.start(config()).await;
    let id = rig
        .submit_with("bob@x.edu_1_lab", Some(&receiver.url))
        .await;
    rig.wait_dead(&[id]).await;
    eventually("callback recorded", || async {
        store
            .dead_job(id)
            .await
            .unwrap()
            .and_then(|j| j.callback)
            .is_some_and(|c| !c.pending())
    })
    .await;

    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.target,
        "/courses/c/assessments/a/autograde_done?dave=X"
    );
    assert_eq!(request.header("filename"), Some("bob@x.edu_1_lab.txt"));
    assert!(
        request
            .header("content-type")
            .unwrap()
            .starts_with("multipart/form-data; boundary=")
    );
    let parts = request.multipart();
    assert_eq!(parts.len(), 1, "one part");
    let (headers, content) = &parts[0];
    let disposition = headers
        .iter()
        .find(|(n, _)| n == "content-disposition")
        .map(|(_, v)| v.as_str());
    assert_eq!(
        disposition,
        Some("form-data; name=\"file\"; filename=\"file\"")
    );
    assert!(
        !headers.iter().any(|(n, _)| n == "content-type"),
        "no part content type, as Python sent: {headers:?}"
    );
    // The whole output file, with the invalid byte dropped (not replaced).
    let file = rig.output("bob@x.edu_1_lab");
    assert!(
        file.windows(1).any(|w| w == b"\xff"),
        "the file keeps its bytes"
    );
    let expected: Vec<u8> = file.iter().copied().filter(|b| *b != 0xff).collect();
    assert_eq!(content, &expected);
    assert!(std::str::from_utf8(content).is_ok());
    assert!(String::from_utf8_lossy(content).contains("hello  world"));

    let state = store.dead_job(id).await.unwrap().unwrap().callback.unwrap();
    assert!(state.delivered);
    assert_eq!(state.status, Some(204));
    assert_eq!(state.attempts, 1);
    assert!(state.sender.is_none());
    manager.shutdown(Duration::from_secs(5)).await;
}

async fn the_callback_is_retried_until_the_server_answers(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    // A gateway error, then a dropped connection, then Autolab itself.
    let receiver = Receiver::start(|n| match n {
        1 => Reply::Status(503),
        2 => Reply::Drop,
        _ => Reply::Status(204),
    })
    .await;
    let (_app, manager) = rig.start(config()).await;
    let id = rig.submit_with("retried", Some(&receiver.url)).await;
    rig.wait_dead(&[id]).await;
    eventually("callback delivered", || async {
        store
            .dead_job(id)
            .await
            .unwrap()
            .and_then(|j| j.callback)
            .is_some_and(|c| c.delivered)
    })
    .await;
    let state = store.dead_job(id).await.unwrap().unwrap().callback.unwrap();
    assert_eq!(state.attempts, 3);
    assert_eq!(state.status, Some(204));
    let requests = receiver.requests();
    assert_eq!(requests.len(), 3);
    let content = rig.output("retried");
    assert!(
        requests.iter().all(|r| r.multipart()[0].1 == content),
        "every attempt carries the whole output"
    );
    manager.shutdown(Duration::from_secs(5)).await;
}

async fn a_dead_callback_server_delays_no_other_job(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    let silent = Receiver::start(|_| Reply::Hang).await;
    let mut c = config();
    c.callback.timeout_secs = 1;
    c.callback.attempts = 3;
    c.vmms.pool_size = 1;
    let (_app, manager) = rig.start(c).await;
    let stuck = rig.submit_with("stuck", Some(&silent.url)).await;
    let mut others = Vec::new();
    for i in 0..5 {
        others.push(rig.submit(&format!("other{i}")).await);
    }
    rig.wait_dead(&others).await;
    // Every other job has ended while the first job's callback is still being tried.
    assert_eq!(manager.callbacks_in_flight(), 1);
    let pending = store
        .dead_job(stuck)
        .await
        .unwrap()
        .unwrap()
        .callback
        .unwrap();
    assert!(pending.pending());

    eventually("callback given up", || async {
        store
            .dead_job(stuck)
            .await
            .unwrap()
            .and_then(|j| j.callback)
            .is_some_and(|c| !c.pending())
    })
    .await;
    let state = store
        .dead_job(stuck)
        .await
        .unwrap()
        .unwrap()
        .callback
        .unwrap();
    assert!(!state.delivered);
    assert_eq!(state.attempts, 3);
    assert!(
        state
            .error
            .as_deref()
            .is_some_and(|e| e.contains("timed out")),
        "{state:?}"
    );
    assert!(state.sender.is_none());
    assert_eq!(silent.requests().len(), 3);
    manager.shutdown(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------
// Pools
// ---------------------------------------------------------------------------------------

async fn prealloc_grows_and_shrinks_pools(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    slow_destroys(&rig.fake);
    let (app, manager) = rig.start(config()).await;
    let target = |size| PoolTarget {
        image: "img".into(),
        vmms: "fake".into(),
        size,
        cores: None,
        memory: None,
    };
    store.set_pool_target("img", &target(3)).await.unwrap();
    app.pools_changed.notify_waiters();
    eventually("pool of 3, all free", || async {
        store
            .pools()
            .await
            .unwrap()
            .get("img")
            .is_some_and(|p| p.total.len() == 3 && p.free.len() == 3)
    })
    .await;
    let mut total = store.pools().await.unwrap()["img"].total.clone();
    total.sort_unstable();
    assert_eq!(
        total,
        vec![1000, 1001, 1002],
        "machine ids from 1000, as Tango"
    );

    store.set_pool_target("img", &target(1)).await.unwrap();
    app.pools_changed.notify_waiters();
    eventually("pool of 1", || async {
        store.pools().await.unwrap()["img"].total.len() == 1
    })
    .await;
    // The pool's record shrinks first; the two machines it dropped are destroyed after.
    eventually("two of three machines destroyed", || async {
        rig.fake.state().destroyed.len() == 2
    })
    .await;
    assert_eq!(rig.fake.live_instances().len(), 1);
    manager.shutdown(Duration::from_secs(5)).await;
    assert!(rig.fake.live_instances().is_empty());
}

/// `vmms.create_parallel` machines of a pool are made at once; the default is Tango's one at
/// a time.
async fn pools_are_made_as_many_at_once_as_configured(store: Arc<dyn JobStore>) {
    for (parallel, expected) in [(1, 1), (4, 4)] {
        let rig = Rig::new(store.clone());
        // Slow enough that machines made at once are seen initializing together.
        rig.fake.on(
            Step::Initialize,
            When::Always,
            Action::Delay(Duration::from_millis(300)),
        );
        let mut c = config();
        c.vmms.createvm_secs = 0.0;
        c.vmms.create_parallel = parallel;
        let (app, manager) = rig.start(c).await;
        let pool = format!("par{parallel}");
        let target = PoolTarget {
            image: format!("{pool}.img"),
            vmms: "fake".into(),
            size: 4,
            cores: None,
            memory: None,
        };
        store.set_pool_target(&pool, &target).await.unwrap();
        app.pools_changed.notify_waiters();
        eventually("pool of 4, all free", || async {
            store
                .pools()
                .await
                .unwrap()
                .get(&pool)
                .is_some_and(|p| p.total.len() == 4 && p.free.len() == 4)
        })
        .await;
        assert_eq!(
            rig.fake.state().max_initializing,
            expected,
            "create_parallel = {parallel}"
        );
        store
            .set_pool_target(&pool, &PoolTarget { size: 0, ..target })
            .await
            .unwrap();
        manager.shutdown(Duration::from_secs(5)).await;
    }
}

async fn first_job_creates_a_pool_of_pool_size(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    let mut c = config();
    c.vmms.pool_size = 3;
    let (_app, manager) = rig.start(c).await;
    assert!(store.pool_targets().await.unwrap().is_empty());
    let id = rig.submit("first").await;
    rig.wait_dead(&[id]).await;
    assert_eq!(store.pool_targets().await.unwrap()["img"].size, 3);
    eventually("pool of 3", || async {
        store.pools().await.unwrap()["img"].total.len() == 3
    })
    .await;
    manager.shutdown(Duration::from_secs(5)).await;
}

/// Tango's pool settings as a school carries them over (pool of 2, one creation at a time,
/// a second between them).
fn tangos_pool_settings(mut c: Config) -> Config {
    c.vmms.reuse_vms = true;
    c.vmms.pool_size = 2;
    c.vmms.createvm_secs = 1.0;
    c.vmms.create_parallel = 1;
    c.vmms.max_concurrent_jobs = 0;
    c
}

/// On a backend of single-use machines, a burst runs as many jobs at once as the backend
/// takes, each on a machine of its own, whatever the pool's size and Tango's pacing say: the
/// pool only keeps spares.
async fn single_use_machines_run_a_burst_at_the_backends_capacity(store: Arc<dyn JobStore>) {
    let rig = Rig::single_use(store.clone(), 6);
    let mut ids = Vec::new();
    for i in 0..12 {
        let name = format!("burst{i}");
        ids.push(rig.submit_running(&name, Duration::from_millis(1500)).await);
    }
    let (_app, manager) = rig.start(tangos_pool_settings(config())).await;
    let dead = rig.wait_dead(&ids).await;
    for job in &dead {
        assert_eq!(
            last_message(job),
            "Success: Autodriver returned normally",
            "{:?}",
            job.trace
        );
    }
    let (max_running, run_on) = {
        let s = rig.fake.state();
        (s.max_running, s.run_on.clone())
    };
    assert_eq!(max_running, 6, "as many at once as the backend takes");
    let machines: HashSet<&String> = run_on.iter().collect();
    assert_eq!(
        machines.len(),
        run_on.len(),
        "one job per machine: {run_on:?}"
    );
    eventually("every machine that ran a job destroyed", || async {
        let destroyed = rig.fake.state().destroyed.clone();
        run_on.iter().all(|m| destroyed.contains(m))
    })
    .await;
    manager.shutdown(Duration::from_secs(5)).await;
}

/// A spare a job takes leaves the pool at once and is replaced at once, however long
/// Tango's pause between creations; it is destroyed after its job, never put back.
async fn single_use_spares_are_replaced_as_soon_as_taken(store: Arc<dyn JobStore>) {
    let rig = Rig::single_use(store.clone(), 4);
    let mut c = tangos_pool_settings(config());
    c.vmms.createvm_secs = 3600.0;
    let (_app, manager) = rig.start(c).await;
    let first = rig.submit("first").await;
    rig.wait_dead(&[first]).await;
    let spares = || async {
        store
            .pools()
            .await
            .unwrap()
            .get("img")
            .map(|p| (p.total.clone(), p.free.clone()))
            .unwrap_or_default()
    };
    eventually("two spares", || async {
        let (total, free) = spares().await;
        total.len() == 2 && free.len() == 2
    })
    .await;
    let (before, _) = spares().await;
    let second = rig.submit("second").await;
    let dead = rig.wait_dead(&[second]).await;
    let used = dead[0].vm.id.expect("the job's machine");
    assert!(
        before.contains(&used),
        "it took a spare: {used} of {before:?}"
    );
    assert!(
        messages(&dead[0])
            .iter()
            .any(|m| m.starts_with("Assigned job") && m.contains("existing VM")),
        "{:?}",
        dead[0].trace
    );
    eventually("two spares again, the used one not among them", || async {
        let (total, free) = spares().await;
        total.len() == 2 && free.len() == 2 && !total.contains(&used)
    })
    .await;
    let instance = format!("t-{used}-img");
    eventually("the used spare destroyed", || async {
        rig.fake.state().destroyed.contains(&instance)
    })
    .await;
    manager.shutdown(Duration::from_secs(5)).await;
}

/// A backend of reusable machines (a VM backend) keeps Tango's pause between creations.
async fn reusable_machines_keep_tangos_pause(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    let mut c = config();
    c.vmms.createvm_secs = 1.0;
    c.vmms.create_parallel = 1;
    let (app, manager) = rig.start(c).await;
    let target = PoolTarget {
        image: "img".into(),
        vmms: "fake".into(),
        size: 3,
        cores: None,
        memory: None,
    };
    store.set_pool_target("img", &target).await.unwrap();
    app.pools_changed.notify_waiters();
    eventually("pool of 3", || async {
        store
            .pools()
            .await
            .unwrap()
            .get("img")
            .is_some_and(|p| p.free.len() == 3)
    })
    .await;
    let times = rig.fake.state().created_at.clone();
    assert_eq!(times.len(), 3);
    for pair in times.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= Duration::from_millis(950),
            "paused {gap:?} between creations"
        );
    }
    manager.shutdown(Duration::from_secs(5)).await;
}

async fn leftover_machines_are_destroyed_at_start(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    let machine = |id: u64, owner: Option<&str>| Machine {
        name: "img".into(),
        image: "img".into(),
        id: Some(id),
        owner: owner.map(str::to_string),
        ..Machine::default()
    };
    store
        .heartbeat("other-live-manager", Duration::from_secs(60))
        .await
        .unwrap();
    // A manager of this host whose process is gone (no pid is that high).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let dead = format!("{}-99999999.1-abcd", host.trim());
    rig.fake.plant(machine(1500, Some(&dead)));
    rig.fake.plant(machine(1501, None));
    rig.fake.plant(machine(1502, Some("other-live-manager")));
    // An ownerless machine a live manager's pool names is not ours to destroy either.
    store
        .pool_add("other-live-manager", "img", &machine(1503, None))
        .await
        .unwrap();
    rig.fake.plant(machine(1503, None));
    let (_app, manager) = rig.start(config()).await;
    assert_eq!(
        rig.fake.live_instances(),
        vec!["t-1502-img".to_string(), "t-1503-img".to_string()]
    );
    let mut destroyed = rig.fake.state().destroyed.clone();
    destroyed.sort();
    assert_eq!(destroyed, vec!["t-1500-img", "t-1501-img"]);
    manager.shutdown(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------
// Leases, recovery, shutdown
// ---------------------------------------------------------------------------------------

async fn a_dead_managers_jobs_end_exactly_once(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    let receiver = Receiver::start(|_| Reply::Status(204)).await;
    let url = format!("{}&job={{id}}", receiver.url);
    let mut c = config();
    c.jobs.lease_secs = 1;
    c.vmms.pool_size = 3;
    let mut ids = Vec::new();
    for i in 0..12 {
        let name = format!("lease{i}");
        rig.fake.script(
            &name,
            JobScript {
                run_time: Duration::from_millis(300),
                ..JobScript::default()
            },
        );
        ids.push(rig.submit_with(&name, Some(&url)).await);
    }
    let (_app_a, a) = rig.start(c.clone()).await;
    let owner_a = a.owner().to_string();
    // Kill A while it runs jobs. (Not while a callback is on the wire: such a callback
    // can be sent twice, which Autolab ignores; this test counts exact deliveries.)
    let deadline = Instant::now() + HANG;
    loop {
        let dead = store.stats().await.unwrap().dead;
        if dead >= 3 && a.running_jobs() > 0 && a.callbacks_in_flight() == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "A never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.abort().await;
    let held: Vec<Job> = store
        .live_jobs()
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.owner.as_deref() == Some(&owner_a))
        .collect();
    let running: Vec<JobId> = held.iter().filter(|j| j.assigned).map(|j| j.id).collect();
    assert!(!running.is_empty(), "A died running jobs");

    let (_app_b, b) = rig.start(c).await;
    let dead = rig.wait_dead(&ids).await;
    assert!(store.live_jobs().await.unwrap().is_empty());
    assert_eq!(
        store.dead_jobs().await.unwrap().len(),
        ids.len(),
        "each ended once"
    );
    for job in &dead {
        let name = &job.name;
        let lines = output_lines(&rig.output(name));
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with("Received job"))
                .count(),
            1,
            "{name}: one whole output"
        );
        assert_eq!(lines.last().unwrap(), "{\"scores\": {\"q\": 1}}");
        assert_eq!(last_message(job), "Success: Autodriver returned normally");
        assert_eq!(job.retries, 0, "a requeue after a crash is not a retry");
    }
    // The jobs A was running were dispatched again by B, still as try 0.
    for id in &running {
        let job = dead.iter().find(|j| j.id == *id).unwrap();
        let again = format!("Dispatched job {} [try 0]", job.label());
        let dispatched = messages(job).iter().filter(|l| **l == again).count();
        assert_eq!(dispatched, 2, "{:#?}", job.trace);
    }
    eventually("every callback delivered", || async {
        let mut all = true;
        for id in &ids {
            let job = store.dead_job(*id).await.unwrap().unwrap();
            all &= job.callback.is_some_and(|c| c.delivered);
        }
        all
    })
    .await;
    for id in &ids {
        assert_eq!(receiver.for_job(*id), 1, "job {id}: one callback");
    }
    // A's machines were destroyed by B; B's own go at its shutdown.
    eventually("A's machines gone", || async {
        rig.fake
            .state()
            .live
            .values()
            .all(|vm| vm.owner.as_deref() != Some(&owner_a))
    })
    .await;
    b.shutdown(Duration::from_secs(5)).await;
    assert!(rig.fake.live_instances().is_empty(), "no machine left");
    assert!(store.live_owners().await.unwrap().is_empty());
}

async fn a_dead_managers_pending_callback_is_sent_once(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    // The first attempt reaches the server but gets no answer; the next is answered.
    let receiver = Receiver::start(|n| {
        if n == 1 {
            Reply::Drop
        } else {
            Reply::Status(204)
        }
    })
    .await;
    let mut slow_retry = config();
    slow_retry.jobs.lease_secs = 1;
    slow_retry.callback.backoff_secs = 60.0;
    slow_retry.callback.max_backoff_secs = 60.0;
    let (_app_a, a) = rig.start(slow_retry).await;
    let id = rig.submit_with("orphan", Some(&receiver.url)).await;
    rig.wait_dead(&[id]).await;
    eventually("first attempt made", || async {
        receiver.requests().len() == 1
    })
    .await;
    // A now sleeps before its second attempt; it dies there.
    a.abort().await;
    let pending = store.dead_job(id).await.unwrap().unwrap().callback.unwrap();
    assert!(pending.pending());

    let mut c = config();
    c.jobs.lease_secs = 1;
    let (_app_b, b) = rig.start(c).await;
    eventually("callback taken over and delivered", || async {
        store
            .dead_job(id)
            .await
            .unwrap()
            .and_then(|j| j.callback)
            .is_some_and(|c| c.delivered)
    })
    .await;
    let requests = receiver.requests();
    assert_eq!(
        requests.len(),
        2,
        "one lost attempt by A, one delivery by B"
    );
    assert_eq!(requests[1].multipart()[0].1, rig.output("orphan"));
    let state = store.dead_job(id).await.unwrap().unwrap().callback.unwrap();
    assert_eq!(state.status, Some(204));
    assert!(state.sender.is_none());
    b.shutdown(Duration::from_secs(5)).await;
}

async fn shutdown_hands_running_jobs_back(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    rig.fake.script(
        "long",
        JobScript {
            run_time: Duration::from_secs(60),
            ..JobScript::default()
        },
    );
    let (_app, manager) = rig.start(config()).await;
    let owner = manager.owner().to_string();
    let id = rig.submit("long").await;
    eventually("job running", || async { rig.fake.state().running == 1 }).await;
    manager.shutdown(Duration::from_millis(200)).await;
    assert_eq!(
        store.queued_ids().await.unwrap(),
        vec![id],
        "back in the queue"
    );
    let job = store.live_job(id).await.unwrap().unwrap();
    assert!(!job.assigned);
    assert!(job.owner.is_none());
    assert_eq!(job.retries, 0);
    assert!(!store.live_owners().await.unwrap().contains(&owner));
    assert!(rig.fake.live_instances().is_empty(), "machines destroyed");
}

// ---------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------

async fn a_thousand_jobs_from_many_clients_all_end(store: Arc<dyn JobStore>) {
    let rig = Arc::new(Rig::new(store.clone()));
    let mut c = config();
    c.vmms.pool_size = 8;
    let (_app, manager) = rig.start(c).await;
    let mut clients = Vec::new();
    for client in 0..20 {
        let rig = rig.clone();
        clients.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..50 {
                ids.push(rig.submit(&format!("load{client}-{i}")).await);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for client in clients {
        ids.extend(client.await.unwrap());
    }
    let distinct: HashSet<JobId> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), 1000, "distinct ids");
    let dead = rig.wait_dead(&ids).await;
    assert!(
        dead.iter()
            .all(|j| last_message(j) == "Success: Autodriver returned normally")
    );
    assert_eq!(
        rig.output_dir_entries().len(),
        1000,
        "one output each, no temp files"
    );
    let runs = rig.fake.state().runs.len();
    assert_eq!(runs, 1000, "each ran once");
    manager.shutdown(Duration::from_secs(5)).await;
    assert!(rig.fake.live_instances().is_empty());
}

// ---------------------------------------------------------------------------------------
// Process wiring
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_separate_manager_refuses_the_memory_store() {
    let failure = tango::daemon::manager(Config::default())
        .await
        .expect_err("refused");
    assert_eq!(failure.exit_code(), 78, "a configuration error");
    let err = failure.to_string();
    assert!(err.contains("memory") && err.contains("redis"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
}

#[tokio::test]
async fn serving_without_a_manager_refuses_the_memory_store() {
    let failure = tango::daemon::serve(Config::default(), false)
        .await
        .expect_err("refused");
    assert_eq!(failure.exit_code(), 78, "a configuration error");
    let err = failure.to_string();
    assert!(
        err.contains("--no-manager") && err.contains("redis"),
        "{err}"
    );
    assert!(!err.contains('\n'), "one line: {err}");
}

// ---------------------------------------------------------------------------------------

/// `jobs.max_running_per_courselab` holds across two managers with machines to spare, and
/// every job still runs (a job ending lets the courselab's next one go).
async fn the_courselab_cap_holds_across_managers(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store);
    let mut c = config();
    c.vmms.pool_size = 3;
    // The store holds the cap (store::open builds its Schedule from this key).
    c.jobs.max_running_per_courselab = 1;
    let mut ids = Vec::new();
    for i in 0..5 {
        let name = format!("capped{i}");
        ids.push(rig.submit_running(&name, Duration::from_millis(200)).await);
    }
    let (_a, a) = rig.start(c.clone()).await;
    let (_b, b) = rig.start(c).await;
    rig.wait_dead(&ids).await;
    assert_eq!(
        rig.fake.state().max_running,
        1,
        "one job of the courselab at a time, over both managers"
    );
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
}

/// At most one job of a courselab held at once.
fn capped() -> tango::store::Schedule {
    tango::store::Schedule {
        max_running_per_lab: 1,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_courselab_cap_holds_across_managers_in_memory() {
    the_courselab_cap_holds_across_managers(Arc::new(MemoryStore::new().with_schedule(capped())))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_courselab_cap_holds_across_managers_on_redis() {
    let store = tango::store::redis::RedisStore::connect(&support::redis_config())
        .await
        .expect("redis store")
        .with_schedule(capped());
    the_courselab_cap_holds_across_managers(Arc::new(store)).await;
}

async fn memory() -> Arc<dyn JobStore> {
    Arc::new(MemoryStore::new())
}

async fn redis() -> Arc<dyn JobStore> {
    support::redis_store(&support::redis_config()).await
}

macro_rules! cases {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::$backend().await).await;
                }
            )*
            /// One thread, so the test can kill a manager at a moment it chooses.
            #[tokio::test(flavor = "current_thread")]
            async fn a_dead_managers_jobs_end_exactly_once() {
                super::a_dead_managers_jobs_end_exactly_once(super::$backend().await).await;
            }
        }
    };
}

macro_rules! every_store {
    ($($case:ident),* $(,)?) => {
        cases!(memory: $($case),*);
        cases!(redis: $($case),*);
    };
}

every_store!(
    a_job_runs_with_tangos_trace_and_output,
    jobs_run_in_fifo_order,
    an_idle_manager_starts_a_new_job_at_once,
    concurrency_is_bounded,
    a_running_job_shows_its_machine,
    every_final_message,
    initialize_timeout_is_retried_then_given_up,
    wait_timeout_is_tangos_retry,
    copy_and_run_timeouts,
    a_machine_error_is_retried_on_a_fresh_machine,
    pool_creation_failure_is_charged_to_the_job,
    an_unsupported_step_is_given_up_at_once,
    the_callback_is_what_autolab_parses,
    the_callback_is_retried_until_the_server_answers,
    a_dead_callback_server_delays_no_other_job,
    prealloc_grows_and_shrinks_pools,
    pools_are_made_as_many_at_once_as_configured,
    single_use_machines_run_a_burst_at_the_backends_capacity,
    single_use_spares_are_replaced_as_soon_as_taken,
    reusable_machines_keep_tangos_pause,
    first_job_creates_a_pool_of_pool_size,
    leftover_machines_are_destroyed_at_start,
    a_dead_managers_pending_callback_is_sent_once,
    shutdown_hands_running_jobs_back,
    a_thousand_jobs_from_many_clients_all_end,
    cancel_ends_a_queued_and_a_running_job,
);
