//! No lost grades: a callback that used up its attempts is kept in the store, and sent
//! again once its host answers, exactly once, on both stores and with several managers.
//!
//! The pipeline cases run managers in this process on the in-test backend
//! (`support::pipeline::FakeVmms`) against a real HTTP callback receiver on loopback; the
//! daemon case runs `tango serve` on Redis, restarts it, and replays through the API and
//! the `tango callbacks` command.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::daemon::{Daemon, DaemonOptions, JobOptions, tango_cli as tango};
use support::pipeline::{Receiver, Reply, Rig, fast_config};
use tango::app::App;
use tango::config::Config;
use tango::model::JobId;
use tango::store::JobStore;
use tango::store::memory::MemoryStore;

/// Only to turn a hang into a failure.
const HANG: Duration = Duration::from_secs(120);

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + HANG;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A receiver that refuses (503, or a dropped connection, in turn) until `up` is set,
/// then answers 204.
async fn flaky_receiver(up: Arc<AtomicBool>) -> Receiver {
    Receiver::start(move |n| {
        if up.load(Ordering::Acquire) {
            Reply::Status(204)
        } else if n % 2 == 0 {
            Reply::Drop
        } else {
            Reply::Status(503)
        }
    })
    .await
}

/// Callbacks `receiver` accepted (answered 2xx) for job `id` (tests put `job=ID` in the URL).
fn accepted(receiver: &Receiver, id: JobId) -> usize {
    let tag = format!("job={id}");
    receiver
        .requests()
        .iter()
        .filter(|r| r.answered.is_some_and(|s| (200..300).contains(&s)))
        .filter(|r| r.target.split(['?', '&']).any(|p| p == tag))
        .count()
}

impl Rig {
    /// Queues a job whose callback goes to `url` with `job=ID` added.
    async fn submit_to(&self, name: &str, url: &str) -> JobId {
        self.submit_with(name, Some(&format!("{url}&job={{id}}")))
            .await
    }

    async fn failed_count(&self) -> usize {
        self.store
            .failed_callbacks()
            .await
            .expect("failed callbacks")
            .len()
    }
}

/// Retries that end in well under a second, no timed retries of kept callbacks: only a
/// success to the same host brings them back.
fn config() -> Config {
    let mut c = fast_config();
    c.callback.timeout_secs = 2;
    c.callback.attempts = 2;
    c.callback.backoff_secs = 0.01;
    c.callback.max_backoff_secs = 0.02;
    c.callback.retry_failed_secs = 0;
    c
}

/// The value of a metric line `name` in `text` (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn metrics_of(app: &App) -> String {
    tango::metrics::render(
        app.store.as_ref(),
        app.started,
        &app.metrics,
        tango::metrics::Format::Text,
    )
    .await
    .expect("metrics")
}

/// The test: the callback server refuses for longer than every attempt while 100
/// jobs run on two managers, then comes back; a job's callback that then gets through
/// brings the rest: each of the 100 outputs arrives once, none lost, none twice.
async fn no_grade_is_lost_while_the_callback_server_is_down(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    let up = Arc::new(AtomicBool::new(false));
    let receiver = flaky_receiver(up.clone()).await;
    let (app_a, a) = rig.start(config()).await;
    let (app_b, b) = rig.start(config()).await;

    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(rig.submit_to(&format!("job{i}"), &receiver.url).await);
    }
    eventually("every callback given up and kept", || async {
        rig.failed_count().await == ids.len()
    })
    .await;
    assert!(
        ids.iter().all(|&id| accepted(&receiver, id) == 0),
        "nothing got through while the server refused"
    );
    let listed = store.failed_callbacks().await.unwrap();
    let first = listed
        .iter()
        .find(|r| r.job_id == ids[0])
        .expect("job kept");
    assert_eq!(first.attempts, 2);
    assert_eq!(first.courselab, "lab");
    assert!(first.url.ends_with(&format!("job={}", ids[0])));
    assert!(!first.last_error.is_empty());
    let text = metrics_of(&app_a).await;
    assert_eq!(metric(&text, "tango_failed_callbacks "), 100.0, "{text}");

    // The server comes back. Two new jobs, likely one on each manager, get through and
    // set both managers replaying the same host at once.
    up.store(true, Ordering::Release);
    let trigger_a = rig.submit_to("trigger_a", &receiver.url).await;
    let trigger_b = rig.submit_to("trigger_b", &receiver.url).await;
    eventually("every kept callback delivered", || async {
        rig.failed_count().await == 0
    })
    .await;
    // Let anything sent twice arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for &id in ids.iter().chain([&trigger_a, &trigger_b]) {
        assert_eq!(
            accepted(&receiver, id),
            1,
            "job {id}: delivered exactly once"
        );
    }
    let output = std::fs::read(rig.dir.join("output").join("job7.txt")).expect("output");
    let request = receiver
        .requests()
        .into_iter()
        .find(|r| r.answered == Some(204) && r.target.ends_with(&format!("job={}", ids[7])))
        .expect("job7's delivery");
    assert_eq!(
        request.multipart()[0].1,
        output,
        "a replay carries the output file, as the first attempt did"
    );
    assert_eq!(request.header("filename"), Some("job7.txt"));
    let dead = store.dead_job(ids[7]).await.unwrap().expect("dead job");
    assert!(
        dead.callback.is_some_and(|c| c.delivered),
        "the dead job says it was delivered"
    );
    let (text_a, text_b) = (metrics_of(&app_a).await, metrics_of(&app_b).await);
    let replayed = |t: &str| {
        metric(
            t,
            "tango_failed_callback_replays_total{outcome=\"delivered\"}",
        )
    };
    assert_eq!(replayed(&text_a) + replayed(&text_b), 100.0);
    assert_eq!(metric(&text_a, "tango_failed_callbacks "), 0.0);
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
}

/// A host still down costs one attempt per pass, not one per kept callback; the timed
/// retry then brings them back once the host answers, with no new job to trigger it.
async fn the_timed_retry_brings_them_back_without_a_new_job(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    let up = Arc::new(AtomicBool::new(false));
    let receiver = flaky_receiver(up.clone()).await;
    let mut c = config();
    c.callback.retry_failed_secs = 1;
    let (_app, manager) = rig.start(c).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(rig.submit_to(&format!("job{i}"), &receiver.url).await);
    }
    eventually("every callback kept", || async {
        rig.failed_count().await == ids.len()
    })
    .await;
    let before = receiver.requests().len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let tries = receiver.requests().len() - before;
    assert!(
        (1..=3).contains(&tries),
        "a pass stops at the first failure: {tries} tries in 2.5 s of 1 s passes"
    );
    let kept = store.failed_callbacks().await.unwrap();
    assert!(kept.iter().any(|r| r.attempts > 2), "a retry is counted");
    up.store(true, Ordering::Release);
    eventually("every kept callback delivered", || async {
        rig.failed_count().await == 0
    })
    .await;
    for &id in &ids {
        assert_eq!(
            accepted(&receiver, id),
            1,
            "job {id}: delivered exactly once"
        );
    }
    manager.shutdown(Duration::from_secs(5)).await;
}

/// Beyond `callback.max_failed_kept` the oldest are dropped, and counted.
async fn the_oldest_are_dropped_beyond_the_cap(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    let receiver = Receiver::start(|_| Reply::Status(503)).await;
    let mut c = config();
    c.callback.max_failed_kept = 3;
    c.vmms.pool_size = 1;
    let (app, manager) = rig.start(c).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = rig.submit_to(&format!("job{i}"), &receiver.url).await;
        ids.push(id);
        // One at a time, so "oldest" is well defined.
        eventually("callback kept", || async {
            store
                .failed_callbacks()
                .await
                .unwrap()
                .iter()
                .any(|r| r.job_id == id)
        })
        .await;
    }
    let kept: Vec<JobId> = store
        .failed_callbacks()
        .await
        .unwrap()
        .iter()
        .map(|r| r.job_id)
        .collect();
    assert_eq!(kept, ids[2..]);
    let text = metrics_of(&app).await;
    assert_eq!(
        metric(&text, "tango_failed_callbacks_dropped_total "),
        2.0,
        "{text}"
    );
    manager.shutdown(Duration::from_secs(5)).await;
}

/// A manager that gave up on a callback and died before recording that on the job left it
/// kept *and* pending; the next manager resends it, and once that gets through the kept
/// copy is forgotten, not replayed: one delivery.
async fn a_kept_callback_delivered_another_way_is_not_sent_again(store: Arc<dyn JobStore>) {
    let rig = Rig::new(store.clone());
    let receiver = Receiver::start(|_| Reply::Status(204)).await;
    let id = rig.submit_to("resent", &receiver.url).await;
    let url = format!("{}&job={id}", receiver.url);
    let output = rig.dir.join("output").join("resent.txt");
    let kept = tango::model::FailedCallback {
        job_id: id,
        job_name: "resent".into(),
        courselab: "lab".into(),
        url,
        output_file: output.to_string_lossy().into_owned(),
        attempts: 2,
        last_error: "HTTP 503 from a gateway".into(),
        ..Default::default()
    };
    store.keep_failed_callback(&kept, 0).await.unwrap();
    let (_app, manager) = rig.start(config()).await;
    eventually("the callback delivered", || async {
        store
            .dead_job(id)
            .await
            .unwrap()
            .and_then(|j| j.callback)
            .is_some_and(|c| c.delivered)
    })
    .await;
    eventually("the kept copy forgotten", || async {
        rig.failed_count().await == 0
    })
    .await;
    // Let a replay, had one started, arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(accepted(&receiver, id), 1, "delivered exactly once");
    manager.shutdown(Duration::from_secs(5)).await;
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
    no_grade_is_lost_while_the_callback_server_is_down,
    the_timed_retry_brings_them_back_without_a_new_job,
    the_oldest_are_dropped_beyond_the_cap,
    a_kept_callback_delivered_another_way_is_not_sent_again,
);

// ---- the daemon, on Redis ----

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn failed_list(daemon: &Daemon) -> Vec<Value> {
    let v = daemon
        .get_json(&format!("/callbacks/{}/", daemon.key))
        .await;
    assert_eq!(v["statusId"], 0, "{v}");
    v["callbacks"].as_array().cloned().unwrap_or_default()
}

/// `tango serve` on Redis (its own namespace) with `courselabs`, callbacks given up after
/// two quick attempts and no timed retries.
fn daemon_options(courselabs: &std::path::Path) -> DaemonOptions {
    let redis = support::redis_server();
    DaemonOptions {
        courselabs: Some(courselabs.to_path_buf()),
        ..DaemonOptions::local()
    }
    .with(&format!(
        "[callback]\ntimeout_secs = 2\nattempts = 2\nbackoff_secs = 0.01\nmax_backoff_secs = 0.02\nretry_failed_secs = 0\n\n\
         [store]\nbackend = \"redis\"\nredis_host = \"{}\"\nredis_port = {}\nnamespace = \"fcb-{}\"\n",
        redis.host,
        redis.port,
        support::unique()
    ))
}

/// Runs three jobs on `daemon` whose callbacks `receiver` refuses; returns their ids once
/// their callbacks are kept. Job `i`'s callback URL carries `job=TAG{i}`.
async fn three_kept(daemon: &Daemon, receiver: &Receiver) -> Vec<u64> {
    let job = support::jobs::job("hello");
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut o = JobOptions {
            output_file: format!("user{i}@x.edu_1_lab_autograde.txt"),
            job_name: format!("course_lab_1_user{i}@x.edu"),
            ..JobOptions::default()
        };
        o.callback_url = format!("{}&job=TAG{i}", receiver.url);
        ids.push(daemon.submit_job("course-lab", &job, &o).await);
    }
    let deadline = Instant::now() + HANG;
    while failed_list(daemon).await.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "callbacks not kept; log:\n{}",
            support::daemon::tail(&daemon.log_text(), 60)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ids
}

/// The extension routes check the key as Tango's do, and answer status bodies.
async fn routes_refuse_a_wrong_key_and_an_unknown_job(daemon: &Daemon) {
    let wrong = daemon.get_json("/callbacks/nope/").await;
    assert_eq!(wrong["statusId"], -1);
    assert_eq!(wrong["statusMsg"], "Key not recognized");
    let wrong = daemon
        .post_json("/callbacks/nope/replay/", &[], Vec::new())
        .await;
    assert_eq!(wrong["statusMsg"], "Key not recognized");
    let wrong = daemon
        .post_json("/callbacks/nope/replay/1/", &[], Vec::new())
        .await;
    assert_eq!(wrong["statusMsg"], "Key not recognized");
    let unknown = daemon
        .post_json(
            &format!("/callbacks/{}/replay/999999/", daemon.key),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(unknown["statusId"], -1);
    assert_eq!(
        unknown["statusMsg"],
        "No failed callback kept for job 999999"
    );
    let response = reqwest::Client::new()
        .post(daemon.url(&format!("/callbacks/{}/replay/abc/", daemon.key)))
        .send()
        .await
        .expect("replay/abc/");
    assert_eq!(
        response.status(),
        404,
        "a job id that is not digits: Tango's 404 page"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_callbacks_survive_a_restart_and_are_replayed_by_the_cli() {
    let courselabs = tempfile::tempdir().expect("courselabs");
    std::fs::set_permissions(
        courselabs.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod courselabs");
    let options = daemon_options(courselabs.path());
    let up = Arc::new(AtomicBool::new(false));
    let receiver = flaky_receiver(up.clone()).await;
    let daemon = Daemon::start(options.clone()).await;
    let ids = three_kept(&daemon, &receiver).await;

    // A restart of the daemon loses none of them.
    drop(daemon);
    let daemon = Daemon::start(options).await;
    let listed = failed_list(&daemon).await;
    let mut listed_ids: Vec<u64> = listed.iter().filter_map(|r| r["jobId"].as_u64()).collect();
    listed_ids.sort_unstable();
    assert_eq!(listed_ids, ids, "{listed:?}");
    let first = &listed[0];
    assert_eq!(first["courselab"], "course-lab");
    assert!(
        first["outputFile"]
            .as_str()
            .is_some_and(|f| f.ends_with("_autograde.txt") && !f.contains('/'))
    );
    assert_eq!(first["attempts"], 2);
    assert!(first["replaying"].is_null());

    routes_refuse_a_wrong_key_and_an_unknown_job(&daemon).await;

    // The CLI lists them; a replay while the server still refuses fails and keeps it.
    let out = tango(&daemon, &["callbacks"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    for id in &ids {
        assert!(listing.contains(&id.to_string()), "{listing}");
    }
    let first_id = ids[0].to_string();
    let out = tango(&daemon, &["callbacks", "--replay", &first_id]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("failed again"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(failed_list(&daemon).await.len(), 3);
    let out = tango(&daemon, &["callbacks", "--replay", "999999"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("No failed callback kept for job 999999"));

    // The server is back: one by id, then the rest.
    up.store(true, Ordering::Release);
    let out = tango(&daemon, &["callbacks", "--replay", &first_id]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("delivered"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(failed_list(&daemon).await.len(), 2);
    let out = tango(&daemon, &["callbacks", "--replay", "--all", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).expect("--json answer");
    assert_eq!(answer["delivered"], 2, "{answer}");
    assert!(failed_list(&daemon).await.is_empty());
    let out = tango(&daemon, &["callbacks"]).await;
    assert!(text(&out.stdout).contains("no failed callbacks"));
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            count_tag(&receiver, &format!("TAG{i}")),
            1,
            "job {id}: delivered exactly once"
        );
    }
    let dead = daemon.wait_dead(ids[1], HANG).await;
    assert_eq!(dead["callback"]["delivered"], true, "{dead}");
}

/// Accepted callbacks whose URL carries `job=TAG`.
fn count_tag(receiver: &Receiver, tag: &str) -> usize {
    let tag = format!("job={tag}");
    receiver
        .requests()
        .iter()
        .filter(|r| r.answered.is_some_and(|s| (200..300).contains(&s)))
        .filter(|r| r.target.split(['?', '&']).any(|p| p == tag))
        .count()
}
