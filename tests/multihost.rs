//! Several hosts, for real: every process of a deployment on a "host" of its own (a network
//! namespace on a bridge, `tests/support/netns.rs`): Redis (append-only file on), the API
//! (`tango serve --no-manager`), two worker hosts each running `tango manager`, and a second
//! Docker engine that the test starts (`tests/support/dockerd.rs`), reached over TLS through
//! `[[docker.engines]]`. Worker `w1` drives the machine's own engine, worker `w2` the remote
//! one. Each test breaks something (a worker's link cut mid-burst, the remote engine cut
//! off, Redis restarted, managers replaced one at a time) and checks that every job ended
//! exactly once, with its callback once. docs/resilience.md, "Several hosts", says what
//! each proves.
//!
//! The jobs are sleepers that also say which engine ran them (`engine remote` when the
//! container's root is under the second engine's data root, else `engine local`), so a
//! job's output tells which worker host ran it.
//!
//! The tests run one at a time (a nextest test group, `.config/nextest.toml`): they share
//! the namespace names and the second engine's directory.

// A test is a scenario read from top to bottom: its length is its story, not several things.
#![allow(clippy::too_many_lines)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use support::daemon::{Daemon, DaemonOptions, JobOptions, Mode, tail};
use support::dockerd::RemoteEngine;
use support::netns::{GATEWAY, Topology};
use support::pipeline::{Receiver, Reply};
use support::private_redis::PrivateRedis;

/// Only catches a hang: every wait here normally ends in seconds.
const HANG: Duration = Duration::from_secs(180);
const LAB: &str = "mh-lab";
/// The lease of every manager here (`jobs.lease_secs`): a lost host is noticed in seconds.
/// `TANGO_MH_LEASE_SECS` changes it, for `scripts/recovery-time.sh`.
fn lease_secs() -> u64 {
    std::env::var("TANGO_MH_LEASE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}
const REDIS_PORT: u16 = 6379;

/// The hosts and their last octet in 10.231.23.0/24.
const HOSTS: &[(&str, u8)] = &[
    ("redis", 10),
    ("api", 11),
    ("w1", 21),
    ("w2", 22),
    ("eng", 30),
];

/// One deployment across the hosts. Fields drop in order: processes first, the network
/// last.
struct World {
    receiver: Receiver,
    managers: BTreeMap<&'static str, Daemon>,
    api: Daemon,
    engine: RemoteEngine,
    redis: PrivateRedis,
    courselabs: tempfile::TempDir,
    prefix: String,
    namespace: String,
    topology: Topology,
    w2_both_engines: bool,
}

impl World {
    /// Starts the hosts, with managers on `w1` and `w2`.
    async fn start() -> World {
        Self::start_with(&["w1", "w2"], false).await
    }

    /// Starts the hosts with managers on `workers`; with `w2_both_engines`, `w2` drives the
    /// machine's engine as well as the remote one.
    async fn start_with(workers: &[&'static str], w2_both_engines: bool) -> World {
        let topology = Topology::new(HOSTS);
        let image = support::docker::test_image();
        let engine = RemoteEngine::start(topology.host("eng"), image);
        let redis_host = topology.host("redis");
        let redis =
            PrivateRedis::start_in(&redis_host.netns, &redis_host.addr, REDIS_PORT, "mh-secret");
        let courselabs = tempfile::tempdir().expect("courselabs");
        let prefix = format!("mh{}", std::process::id());
        let namespace = format!("mh-{}", support::unique());
        let config = config_toml(&prefix, &redis, &namespace, "");
        let api = start_daemon(&topology, &courselabs, config, Mode::ServeNoManager, "api").await;
        let mut world = World {
            receiver: Receiver::start_on(GATEWAY, |_| Reply::Status(200)).await,
            managers: BTreeMap::new(),
            api,
            engine,
            redis,
            courselabs,
            prefix,
            namespace,
            topology,
            w2_both_engines,
        };
        for &host in workers {
            world.start_manager(host).await;
        }
        world
    }

    /// The configuration every process shares, plus `engines` (the worker's own).
    fn config(&self, engines: &str) -> String {
        config_toml(&self.prefix, &self.redis, &self.namespace, engines)
    }

    /// The engines of a worker host: `w1` the machine's own (the default), `w2` the remote
    /// one over TLS.
    fn engines(&self, host: &str) -> String {
        if host == "w2" && self.w2_both_engines {
            format!(
                "{}\n[[docker.engines]]\nurl = \"unix:///var/run/docker.sock\"\ncapacity = 4\n",
                self.engine.engine_toml(4)
            )
        } else if host == "w2" {
            self.engine.engine_toml(4)
        } else {
            String::new()
        }
    }

    async fn daemon(&self, mode: Mode, host: &str, engines: &str) -> Daemon {
        start_daemon(
            &self.topology,
            &self.courselabs,
            self.config(engines),
            mode,
            host,
        )
        .await
    }

    /// Starts (or replaces) the manager of worker host `host`.
    async fn start_manager(&mut self, host: &'static str) {
        let daemon = self.daemon(Mode::Manager, host, &self.engines(host)).await;
        self.managers.insert(host, daemon);
    }
}

/// The configuration of every process: the Docker backend under the test's prefix, small
/// limits, a short lease, the Redis host's store, and a worker's `engines`.
fn config_toml(prefix: &str, redis: &PrivateRedis, namespace: &str, engines: &str) -> String {
    format!(
        "[vmms]\nname = \"localDocker\"\nprefix = \"{prefix}\"\npool_size = 2\n\n\
         [docker]\nautodriver = \"{ad}\"\n{engines}\n\
         [limits]\nmemory_mb = 256\npids = 256\n\n\
         [timeouts]\nkill_margin_secs = 5\n\n\
         [jobs]\nlease_secs = {lease}\n\n\
         [callback]\ntimeout_secs = 2\nattempts = 5\nbackoff_secs = 0.2\nmax_backoff_secs = 1.0\n\n\
         [store]\nbackend = \"redis\"\nredis_host = \"{rh}\"\nredis_port = {rp}\nredis_password = \"{pw}\"\nnamespace = \"{namespace}\"\n",
        ad = support::docker::autodriver().display(),
        rh = redis.host,
        rp = redis.port,
        pw = redis.password.as_deref().unwrap_or_default(),
        lease = lease_secs(),
    )
}

/// Starts `tango` in `mode` on host `host`, sharing the courselabs directory (in a real
/// deployment, a shared file system: the API writes uploads, managers write outputs).
async fn start_daemon(
    topology: &Topology,
    courselabs: &tempfile::TempDir,
    config: String,
    mode: Mode,
    host: &str,
) -> Daemon {
    let host = topology.host(host);
    Daemon::start_in(
        DaemonOptions {
            mode,
            config,
            server_extra: "shutdown_grace_secs = 30\n".into(),
            courselabs: Some(courselabs.path().to_path_buf()),
            ..DaemonOptions::local()
        },
        &host.netns,
        &host.addr,
    )
    .await
}

// ---- the sleepers ----

#[derive(Debug, Clone, Copy)]
struct Sleeper {
    n: usize,
    id: u64,
}

fn output_name(n: usize) -> String {
    format!("out-{n}.txt")
}

/// How long after a cut a write the store confirmed before it may still land (a file
/// write that follows the store's answer). A cut-off manager that wrote without the
/// store's word would write only after a store call timed out (1.5 s), so this is short.
const CUT_SLACK: Duration = Duration::from_millis(500);

/// When the output file `name` was last written, wherever it lies under `courselabs`.
fn output_mtime(courselabs: &std::path::Path, name: &str) -> Option<std::time::SystemTime> {
    let mut dirs = vec![courselabs.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_some_and(|f| f == name) {
                return entry.metadata().ok()?.modified().ok();
            }
        }
    }
    None
}

/// Prints its number, which engine runs it, sleeps, prints its number again.
fn makefile(n: usize) -> String {
    format!(
        "autograde:\n\t@echo \"sleeper {n} starts\"\n\
         \t@if grep -q tmh-dockerd /proc/self/mountinfo; then echo \"engine remote\"; else echo \"engine local\"; fi\n\
         \t@sleep 1\n\t@echo \"sleeper {n} done\"\n"
    )
}

async fn submit(world: &World, numbers: std::ops::Range<usize>) -> Vec<Sleeper> {
    let api = &world.api;
    api.open(LAB).await;
    let mut out = Vec::new();
    for n in numbers {
        let local = format!("mk-{n}");
        api.upload(LAB, &local, makefile(n).into_bytes()).await;
        let options = JobOptions {
            output_file: output_name(n),
            job_name: format!("mh_{n}"),
            timeout: 20,
            callback_url: format!("{}&job={n}", world.receiver.url),
            ..JobOptions::default()
        };
        let id = api
            .add_job(
                LAB,
                vec![json!({"localFile": local, "destFile": "Makefile"})],
                &options,
            )
            .await;
        out.push(Sleeper { n, id });
    }
    out
}

/// The dead entries of `jobs` there are now, by id.
async fn dead_of(api: &Daemon, jobs: &[Sleeper]) -> BTreeMap<u64, Value> {
    let ids: BTreeSet<u64> = jobs.iter().map(|j| j.id).collect();
    api.jobs(true)
        .await
        .into_iter()
        .filter(|j| j["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .map(|j| (j["id"].as_u64().unwrap_or_default(), j))
        .collect()
}

async fn wait_dead(world: &World, jobs: &[Sleeper], at_least: usize) {
    let deadline = Instant::now() + HANG;
    while dead_of(&world.api, jobs).await.len() < at_least {
        if Instant::now() > deadline {
            let logs: Vec<String> = world
                .managers
                .iter()
                .map(|(h, d)| format!("--- {h}:\n{}", tail(&d.log_text(), 40)))
                .collect();
            panic!(
                "fewer than {at_least} jobs dead within {HANG:?}; live: {:?}\n{}",
                world
                    .api
                    .jobs(false)
                    .await
                    .iter()
                    .map(|j| format!("{} assigned={}", j["id"], j["assigned"]))
                    .collect::<Vec<_>>(),
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Which engine ran sleeper `n`, from its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ran {
    Local,
    Remote,
}

/// Every job of `jobs` ended exactly once: dead once, not live, Tango's success as its last
/// trace line, its output complete and from one run, its callback received exactly once
/// with that output, and recorded as delivered. Returns where each ran.
async fn assert_each_ended_once(world: &World, jobs: &[Sleeper]) -> BTreeMap<usize, Ran> {
    wait_dead(world, jobs, jobs.len()).await;
    let api = &world.api;
    let dead = api.jobs(true).await;
    let live = api.jobs(false).await;
    let mut ran = BTreeMap::new();
    let mut outputs = BTreeMap::new();
    for job in jobs {
        let entries: Vec<&Value> = dead.iter().filter(|j| j["id"] == job.id).collect();
        assert_eq!(
            entries.len(),
            1,
            "job {} dead {} times",
            job.id,
            entries.len()
        );
        assert!(
            !live.iter().any(|j| j["id"] == job.id),
            "job {} still live",
            job.id
        );
        let last = entries[0]["trace"]
            .as_array()
            .and_then(|t| t.last())
            .and_then(Value::as_str)
            .unwrap_or_default();
        assert!(
            last.ends_with("|Success: Autodriver returned normally"),
            "job {}: {}",
            job.id,
            entries[0]
        );
        let bytes = api
            .poll(LAB, &output_name(job.n))
            .await
            .unwrap_or_else(|| panic!("job {} has no output", job.id));
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let n = job.n;
        for needle in [
            format!("sleeper {n} starts\n"),
            format!("sleeper {n} done\n"),
            format!("]: Received job mh_{n}:{}\n", job.id),
            "]: Success: Autodriver returned normally\n".to_string(),
        ] {
            assert_eq!(
                text.matches(&needle).count(),
                1,
                "job {} output holds {needle:?} not once:\n{text}",
                job.id
            );
        }
        let remote = text.matches("engine remote\n").count();
        let local = text.matches("engine local\n").count();
        assert_eq!(
            remote + local,
            1,
            "job {}: one run's output:\n{text}",
            job.id
        );
        ran.insert(n, if remote == 1 { Ran::Remote } else { Ran::Local });
        outputs.insert(n, bytes);
    }
    assert_callbacks_once(world, jobs, &outputs).await;
    ran
}

async fn assert_callbacks_once(
    world: &World,
    jobs: &[Sleeper],
    outputs: &BTreeMap<usize, Vec<u8>>,
) {
    let receiver = &world.receiver;
    let copies = |n: usize| {
        let tag = format!("job={n}");
        receiver
            .requests()
            .into_iter()
            .filter(|r| r.target.split(['?', '&']).any(|p| p == tag))
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + HANG;
    loop {
        let missing: Vec<usize> = jobs
            .iter()
            .filter(|j| copies(j.n).is_empty())
            .map(|j| j.n)
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no callback for sleepers {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // No second copy follows: wait past the retry back-off (and a lease) before counting.
    tokio::time::sleep(Duration::from_secs(lease_secs() + 2)).await;
    for job in jobs {
        let got = copies(job.n);
        assert_eq!(
            got.len(),
            1,
            "sleeper {} (job {}) got {} callbacks",
            job.n,
            job.id,
            got.len()
        );
        let parts = got[0].multipart();
        assert_eq!(parts.len(), 1, "callback of job {}", job.id);
        assert_eq!(
            parts[0].1, outputs[&job.n],
            "callback of job {} does not carry its output",
            job.id
        );
    }
    let dead = dead_of(&world.api, jobs).await;
    let undelivered: Vec<u64> = jobs
        .iter()
        .filter(|j| {
            dead.get(&j.id)
                .is_none_or(|d| d["callback"]["delivered"] != true)
        })
        .map(|j| j.id)
        .collect();
    assert!(
        undelivered.is_empty(),
        "jobs {undelivered:?} not recorded as called back"
    );
}

/// Job labels (`mh_N:ID`) that a manager's log says got a machine.
fn dispatched_in(log: &str) -> BTreeSet<String> {
    log.lines()
        .filter_map(|l| l.split(" ready for job ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Waits until `check` holds, at most `limit`; panics naming `what`.
async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Outputs of `jobs`, by number.
async fn outputs_of(api: &Daemon, jobs: &[Sleeper]) -> BTreeMap<usize, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    for job in jobs {
        out.insert(job.n, api.poll(LAB, &output_name(job.n)).await);
    }
    out
}

/// Counts of jobs per engine.
fn tally(ran: &BTreeMap<usize, Ran>) -> (usize, usize) {
    let local = ran.values().filter(|&&r| r == Ran::Local).count();
    (local, ran.len() - local)
}

/// Stops the managers gracefully (so they remove their containers) and checks that no
/// container of ours is left on either engine.
async fn assert_clean_shutdown(world: &mut World) {
    for (host, daemon) in &world.managers {
        let status = daemon.terminate(Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| s.success()),
            "manager {host} did not stop cleanly ({status:?}):\n{}",
            tail(&daemon.log_text(), 40)
        );
    }
    let left = world.engine.containers(&world.prefix);
    assert!(
        left.is_empty(),
        "containers left on the remote engine: {left:?}"
    );
    let out = support::docker::docker_ok(&["ps", "-a", "--format", "{{.Names}}"]);
    let left: Vec<&str> = out
        .lines()
        .filter(|n| n.starts_with(&world.prefix))
        .collect();
    assert!(
        left.is_empty(),
        "containers left on the local engine: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_jobs_run_on_both_worker_hosts() {
    let mut world = World::start().await;
    let jobs = submit(&world, 0..100).await;
    let ran = assert_each_ended_once(&world, &jobs).await;
    let (local, remote) = tally(&ran);
    eprintln!("w1 (local engine) ran {local}, w2 (remote engine over TLS) ran {remote}");
    assert!(local >= 10, "w1 took {local} of 100 jobs");
    assert!(remote >= 10, "w2 took {remote} of 100 jobs");
    assert_clean_shutdown(&mut world).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_host_cut_off_mid_burst_loses_and_repeats_nothing() {
    let mut world = World::start().await;
    let jobs = submit(&world, 0..40).await;
    // Cut w1 while it runs jobs: some are done, others are on its machines.
    wait_dead(&world, &jobs, 6).await;
    let w1 = world.topology.host("w1").clone();
    let cut_at = std::time::SystemTime::now();
    w1.cut();
    let cut = Instant::now();
    // Read after the cut: w1 can end no job in the store from here on, and no other manager
    // takes its jobs before two thirds of a lease, so a job not dead now was w1's to lose.
    // (Read before the cut, a job w1 ended in between was counted as lost and "recovered"
    // at once.)
    let dead_at_cut = dead_of(&world.api, &jobs).await;
    let held: Vec<Sleeper> = {
        let dispatched = dispatched_in(&world.managers["w1"].log_text());
        jobs.iter()
            .filter(|j| !dead_at_cut.contains_key(&j.id))
            .filter(|j| dispatched.contains(&format!("mh_{}:{}", j.n, j.id)))
            .copied()
            .collect()
    };
    assert!(!held.is_empty(), "w1 held no job when it was cut off");

    // Recovery: the first of w1's jobs to finish on w2 after the lease runs out. Meanwhile
    // w1, cut off, must not write their output files: it cannot know they are still its
    // own (its run says `engine local`; w2's rerun, `engine remote`).
    let recovery = loop {
        for job in &held {
            if let Some(bytes) = world.api.poll(LAB, &output_name(job.n)).await {
                // A job whose end the store confirmed just before the cut may have its
                // output written a moment after it; anything later was written cut off.
                let written = output_mtime(world.courselabs.path(), &output_name(job.n));
                assert!(
                    !String::from_utf8_lossy(&bytes).contains("engine local")
                        || written.is_some_and(|at| at <= cut_at + CUT_SLACK),
                    "w1 wrote the output of job {} while cut off",
                    job.id
                );
            }
        }
        let dead = dead_of(&world.api, &held).await;
        if !dead.is_empty() {
            break cut.elapsed();
        }
        assert!(
            cut.elapsed() < HANG,
            "none of w1's jobs {held:?} finished elsewhere"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "recovery: first of w1's {} held jobs finished on w2 {:.1} s after the cut \
         (lease {} s)",
        held.len(),
        recovery.as_secs_f64(),
        lease_secs()
    );
    // w1's lease was renewed at most a third of a lease before the cut (its heartbeat
    // period): no other manager may take its jobs before two thirds of a lease.
    let lease = Duration::from_secs(lease_secs());
    assert!(
        recovery >= lease * 2 / 3,
        "a held job finished {recovery:?} after the cut, before w1's lease ran out"
    );

    let ran = assert_each_ended_once(&world, &jobs).await;
    for job in &held {
        assert_eq!(
            ran[&job.n],
            Ran::Remote,
            "w1's job {} finished on w1",
            job.id
        );
    }
    let outputs = outputs_of(&world.api, &jobs).await;

    // The link comes back: w1's late writes are refused, it rejoins, runs nothing twice.
    w1.restore();
    let w1_log = |world: &World| world.managers["w1"].log_text();
    eventually("w1 is told its lease is lost", HANG, || {
        w1_log(&world).contains("lease lost")
    })
    .await;
    assert!(world.managers["w1"].exited().is_none(), "w1 exited");
    let later = submit(&world, 40..70).await;
    let ran_later = assert_each_ended_once(&world, &later).await;
    let (local, _) = tally(&ran_later);
    assert!(local >= 1, "w1 took none of 30 jobs after it rejoined");
    // The first burst is untouched: one dead entry each, outputs as they were, callbacks once.
    assert_each_ended_once(&world, &jobs).await;
    assert_eq!(
        outputs_of(&world.api, &jobs).await,
        outputs,
        "outputs changed after w1 rejoined"
    );
    assert_clean_shutdown(&mut world).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_remote_engine_that_stops_answering_is_taken_out_and_comes_back() {
    // One manager, w2, with two engines: the remote one (TLS) and the machine's own.
    let mut world = World::start_with(&["w2"], true).await;
    let jobs = submit(&world, 0..20).await;
    wait_dead(&world, &jobs, 3).await;
    let eng = world.topology.host("eng").clone();
    eng.cut();
    let after_cut = submit(&world, 20..40).await;
    let ran = assert_each_ended_once(&world, &jobs).await;
    let ran_after = assert_each_ended_once(&world, &after_cut).await;
    let (_, remote) = tally(&ran_after);
    assert_eq!(
        remote, 0,
        "jobs ran on the remote engine while it was cut off"
    );
    eprintln!("before the cut: (local, remote) = {:?}", tally(&ran));
    assert!(
        world.managers["w2"]
            .log_text()
            .contains("taken out of placement"),
        "the engine was not taken out"
    );

    eng.restore();
    // Back in use once it answers again (after its back-off): jobs run there again.
    let deadline = Instant::now() + HANG;
    let mut next = 40;
    loop {
        let batch = submit(&world, next..next + 8).await;
        next += 8;
        let (_, remote) = tally(&assert_each_ended_once(&world, &batch).await);
        if remote > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the remote engine was never used again"
        );
    }
    assert_clean_shutdown(&mut world).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_host_restart_mid_burst_loses_and_repeats_nothing() {
    let mut world = World::start().await;
    let jobs = submit(&world, 0..40).await;
    wait_dead(&world, &jobs, 6).await;
    // Killed (no shutdown save) and started again from its append-only file.
    world.redis.restart();
    let ran = assert_each_ended_once(&world, &jobs).await;
    eprintln!("(local, remote) = {:?}", tally(&ran));
    let more = submit(&world, 40..50).await;
    assert_each_ended_once(&world, &more).await;
    assert_clean_shutdown(&mut world).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_upgrade_of_the_managers_loses_and_repeats_nothing() {
    let mut world = World::start().await;
    let mut jobs = submit(&world, 0..20).await;
    for (round, host) in ["w1", "w2"].into_iter().enumerate() {
        // Jobs are flowing (some done, more queued) when the manager is stopped.
        wait_dead(&world, &jobs, jobs.len() / 3).await;
        let old = world.managers.remove(host).expect("manager");
        let status = old.terminate(Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| s.success()),
            "{host} did not drain and exit 0 ({status:?}):\n{}",
            tail(&old.log_text(), 40)
        );
        drop(old);
        // While it is down, the other host keeps taking work.
        let base = 20 + round * 20;
        jobs.extend(submit(&world, base..base + 20).await);
        world.start_manager(host).await;
    }
    let ran = assert_each_ended_once(&world, &jobs).await;
    eprintln!("(local, remote) = {:?}", tally(&ran));
    assert_clean_shutdown(&mut world).await;
}
