//! Operating the daemon as a process: systemd notification, graceful shutdown on SIGTERM,
//! Prometheus metrics, and job-tagged logs. Real `tango serve` processes, `local` backend.

// A test is a scenario read from top to bottom: its length is its story, not several things.
#![allow(clippy::too_many_lines)]

mod support;

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::daemon::{Daemon, DaemonOptions, JobOptions};
use support::pipeline::{Receiver, Reply};

const WAIT: Duration = Duration::from_secs(180);

/// The options for a local daemon with `server_extra` in `[server]` and more TOML after.
fn local(server_extra: &str, more: &str) -> DaemonOptions {
    let mut options = DaemonOptions::local().with(more);
    options.server_extra = server_extra.into();
    options
}

/// A job directory holding a Makefile whose `autograde` target runs `recipe` lines.
fn job_dir(parent: &Path, name: &str, recipe: &[&str]) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).expect("job dir");
    let mut makefile = String::from("autograde:\n");
    for line in recipe {
        makefile.push_str(&format!("\t@{line}\n"));
    }
    std::fs::write(dir.join("Makefile"), makefile).expect("Makefile");
    dir
}

/// Opens `lab`, uploads the Makefile of `dir`, adds the job; returns its id.
async fn submit(daemon: &Daemon, lab: &str, dir: &Path, options: &JobOptions) -> u64 {
    daemon.open(lab).await;
    let bytes = std::fs::read(dir.join("Makefile")).expect("read Makefile");
    daemon.upload(lab, "Makefile", bytes).await;
    daemon
        .add_job(
            lab,
            vec![json!({"localFile": "Makefile", "destFile": "Makefile"})],
            options,
        )
        .await
}

fn job_options(output_file: &str, timeout: u64) -> JobOptions {
    JobOptions {
        output_file: output_file.into(),
        timeout,
        ..JobOptions::default()
    }
}

/// Processes whose working directory or command line is under `dir`: a job's autodriver,
/// make and whatever the job started.
fn processes_under(dir: &Path) -> Vec<(u32, String)> {
    let dir = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cwd = std::fs::read_link(entry.path().join("cwd"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if cwd.starts_with(&dir) || cmdline.contains(&dir) {
            found.push((pid, format!("cwd={cwd} cmd={cmdline}")));
        }
    }
    found
}

/// Waits until job `id` is live, dispatched, and has processes running under `machines`.
async fn wait_running(daemon: &Daemon, id: u64, machines: &Path) {
    let deadline = Instant::now() + WAIT;
    loop {
        let live = daemon.jobs(false).await;
        let running = live.iter().any(|j| {
            j["id"] == id
                && j["assigned"] == true
                && j["trace"].as_array().is_some_and(|t| {
                    t.iter()
                        .any(|l| l.as_str().is_some_and(|l| l.contains("Input copied")))
                })
        });
        if running && !processes_under(machines).is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never ran: {live:?}\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The machine directories left under `machines`.
fn machine_dirs(machines: &Path) -> Vec<String> {
    std::fs::read_dir(machines)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The output file `name` somewhere under `courselabs`.
fn find_output(courselabs: &Path, name: &str) -> Option<String> {
    let mut stack = vec![courselabs.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if entry.file_name().to_string_lossy() == name {
                return std::fs::read_to_string(path).ok();
            }
        }
    }
    None
}

// ---- systemd ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_then_stopping() {
    let sockets = tempfile::tempdir().expect("temp dir");
    let path = sockets.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut options = DaemonOptions::local();
    options
        .env
        .push(("NOTIFY_SOCKET".into(), path.display().to_string()));
    let daemon = Daemon::start(options).await;

    let mut buffer = [0u8; 4096];
    let n = socket.recv(&mut buffer).expect("READY=1 within 60 s");
    let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
    assert!(
        message.lines().any(|l| l == "READY=1"),
        "first notification: {message:?}"
    );
    // Ready means serving: the API answers now.
    let hello = reqwest::get(daemon.url("/")).await.expect("GET /");
    assert!(hello.status().is_success());

    let status = daemon
        .terminate(Duration::from_secs(60))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status}\n{}", daemon.log_text());
    let n = socket.recv(&mut buffer).expect("STOPPING=1 at shutdown");
    let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
    assert!(
        message.lines().any(|l| l == "STOPPING=1"),
        "notification at shutdown: {message:?}"
    );
}

#[test]
fn systemd_hears_no_ready_when_the_store_does_not_answer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    // A Redis port nothing listens on.
    let config = dir.path().join("tango.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nbind = \"127.0.0.1\"\nport = {}\ncourselabs = \"{}\"\n\
             [store]\nbackend = \"redis\"\nredis_host = \"127.0.0.1\"\nredis_port = {}\n\
             [vmms]\nname = \"local\"\n[local]\nwork_dir = \"{}\"\n",
            support::free_port(),
            dir.path().join("courselabs").display(),
            support::free_port(),
            dir.path().join("machines").display(),
        ),
    )
    .expect("config");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tango"));
    for (name, _) in std::env::vars() {
        if name.starts_with("TANGO_") {
            command.env_remove(&name);
        }
    }
    let out = command
        .args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &path)
        .output()
        .expect("run tango serve");
    assert_eq!(
        out.status.code(),
        Some(75),
        "EX_TEMPFAIL: a store that is not there yet may come"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("store"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    socket.set_nonblocking(true).expect("nonblocking");
    let mut buffer = [0u8; 4096];
    match socket.recv(&mut buffer) {
        Ok(n) => panic!(
            "notified without a store: {:?}",
            String::from_utf8_lossy(&buffer[..n])
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
    }
}

#[test]
fn an_unknown_backend_is_refused_at_start_with_the_known_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tango"))
        .args(["serve", "--vmms", "qemu", "--port", "0", "--courselabs"])
        .arg(dir.path().join("courselabs"))
        .env_remove("TANGO_CONFIG")
        .output()
        .expect("run tango serve");
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "tango: config: vmms.name: unknown backend \"qemu\"; expected one of localDocker, \
         distDocker, ec2SSH, tashiSSH, local"
    );
}

#[test]
fn configuration_errors_exit_78() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nport = \"three thousand\"\n").expect("config");
    let missing = dir.path().join("missing.toml");
    let courselabs = dir.path().join("courselabs").display().to_string();
    let bad_args = ["serve", "--config", bad.to_str().expect("path")];
    let missing_args = ["serve", "--config", missing.to_str().expect("path")];
    let memory_manager = ["manager", "--store", "memory", "--courselabs", &courselabs];
    for args in [&bad_args[..], &missing_args, &memory_manager] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tango"))
            .args(args)
            .env_remove("TANGO_CONFIG")
            .output()
            .expect("run tango");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

// ---- health ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_routes_say_whether_the_daemon_lives_and_can_work() {
    let mut redis = support::private_redis::PrivateRedis::start();
    let daemon = Daemon::start(local(
        "",
        &format!(
            "[store]\nbackend = \"redis\"\nredis_host = \"127.0.0.1\"\nredis_port = {}\n\
             namespace = \"health-{}\"\n",
            redis.port,
            support::unique()
        ),
    ))
    .await;
    let get = |path: &str| {
        let url = daemon.url(path);
        async move {
            let response = reqwest::get(url).await.expect("GET");
            let status = response.status().as_u16();
            let text = response.text().await.expect("body");
            let body: Value = serde_json::from_str(&text).expect("JSON body");
            (status, body)
        }
    };
    // No key needed.
    let (status, body) = get("/healthz").await;
    assert_eq!((status, &body["status"]), (200, &json!("ok")), "{body}");
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"status": "ready", "store": "ok", "vmms": "ok"}),
        "{body}"
    );

    // The store goes away: alive, but not ready, and the answer says why.
    redis.kill();
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not ready", "{body}");
    assert_ne!(body["store"], "ok", "{body}");
    assert_eq!(body["vmms"], "ok", "{body}");
    let (status, _) = get("/healthz").await;
    assert_eq!(status, 200);

    // It comes back: ready again once the store's client has reconnected.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get("/readyz").await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "not ready again: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---- graceful shutdown ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_running_job_finish_within_the_grace_period() {
    // One job at a time, so a second one waits in the queue.
    let mut options = local("shutdown_grace_secs = 120", "");
    options
        .env
        .push(("TANGO_VMMS_MAX_CONCURRENT_JOBS".into(), "1".into()));
    let daemon = Daemon::start(options).await;
    let machines = daemon.dir.path().join("machines");
    // The job runs until the test has sent the signal (a fixed sleep could end first on
    // loaded cores): it waits for a file the test makes then. Reachable by the job's uid.
    let signalled = tempfile::tempdir().expect("marker dir");
    std::fs::set_permissions(
        signalled.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod marker dir");
    let marker = signalled.path().join("signalled");
    let wait = format!("while [ ! -e {} ]; do sleep 0.1; done", marker.display());
    let dir = job_dir(
        daemon.dir.path(),
        "slow",
        &["echo started", &wait, "echo finished after the signal"],
    );
    let options = job_options("slow.txt", 60);
    let id = submit(&daemon, "ops-slow", &dir, &options).await;
    wait_running(&daemon, id, &machines).await;
    let queued_options = job_options("queued.txt", 60);
    let queued = submit(&daemon, "ops-slow", &dir, &queued_options).await;

    daemon.signal(libc::SIGTERM);
    // No new requests once the signal is in: the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(daemon.url("/")).await.is_ok() {
        assert!(Instant::now() < deadline, "still serving after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&marker, b"").expect("marker");
    let status = daemon
        .terminate(Duration::from_secs(120))
        .expect("exits after the job");
    assert!(status.success(), "{status}\n{}", daemon.log_text());

    let output = find_output(&daemon.courselabs, &options.output_file)
        .unwrap_or_else(|| panic!("no output file\n{}", daemon.log_text()));
    assert!(
        output.contains("Success: Autodriver returned normally")
            && output.contains("finished after the signal"),
        "{output}"
    );
    assert_eq!(processes_under(&machines), vec![], "left running");
    assert_eq!(
        machine_dirs(&machines),
        Vec::<String>::new(),
        "machines left"
    );
    // The queued job was not started after the signal; the memory store reports it lost,
    // and only it.
    assert!(find_output(&daemon.courselabs, &queued_options.output_file).is_none());
    let log = daemon.log_text();
    let lost: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("job lost at exit"))
        .collect();
    assert_eq!(lost.len(), 1, "{log}");
    assert!(lost[0].contains(&format!("job={queued}")), "{}", lost[0]);
    assert!(
        !log.contains(&format!("Assigned job course_lab_1_user@x.edu:{queued} ")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_memory_store_reports_an_unfinished_job_as_lost() {
    let daemon = Daemon::start(local("shutdown_grace_secs = 1", "")).await;
    let machines = daemon.dir.path().join("machines");
    let dir = job_dir(
        daemon.dir.path(),
        "endless",
        &["while true; do sleep 1; done"],
    );
    let id = submit(
        &daemon,
        "ops-endless",
        &dir,
        &job_options("endless.txt", 120),
    )
    .await;
    wait_running(&daemon, id, &machines).await;

    let status = daemon
        .terminate(Duration::from_secs(60))
        .expect("exits after the grace period");
    assert!(status.success(), "{status}\n{}", daemon.log_text());
    let log = daemon.log_text();
    let lost = log
        .lines()
        .find(|l| l.contains("job lost at exit"))
        .unwrap_or_else(|| panic!("no lost job reported\n{log}"));
    assert!(lost.contains(&format!("job={id}")), "{lost}");
    assert_eq!(processes_under(&machines), vec![], "left running");
    assert_eq!(
        machine_dirs(&machines),
        Vec::<String>::new(),
        "machines left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_redis_hands_the_job_back_and_it_resumes_after_a_restart() {
    let redis = support::redis_server();
    let store = format!(
        "[store]\nbackend = \"redis\"\nredis_host = \"{}\"\nredis_port = {}\nnamespace = \"ops-{}\"\n",
        redis.host,
        redis.port,
        support::unique()
    );
    let first = Daemon::start(local("shutdown_grace_secs = 1", &store)).await;
    let machines = first.dir.path().join("machines");
    let dir = job_dir(
        first.dir.path(),
        "resumable",
        &["echo run on $$(hostname)", "sleep 6", "echo done"],
    );
    let options = job_options("resumable.txt", 60);
    let id = submit(&first, "ops-resume", &dir, &options).await;
    wait_running(&first, id, &machines).await;

    let status = first
        .terminate(Duration::from_secs(60))
        .expect("exits after the grace period");
    assert!(status.success(), "{status}\n{}", first.log_text());
    assert!(
        first.log_text().contains("handed back"),
        "{}",
        first.log_text()
    );
    assert_eq!(processes_under(&machines), vec![], "left running");
    assert_eq!(
        machine_dirs(&machines),
        Vec::<String>::new(),
        "machines left"
    );
    assert!(find_output(&first.courselabs, &options.output_file).is_none());

    // A new process on the same store and courselabs runs it to the end, under its id.
    let mut again = local("", &store);
    again.courselabs = Some(first.courselabs.clone());
    let second = Daemon::start(again).await;
    let output = second
        .wait_output("ops-resume", &options.output_file, WAIT)
        .await;
    let output = String::from_utf8_lossy(&output);
    assert!(
        output.contains(&format!(":{id}\n")) && output.contains("done"),
        "{output}"
    );
    let dead = second.wait_dead(id, WAIT).await;
    assert_eq!(dead["retries"], 0, "handing back is not a retry: {dead}");
    let status = second.terminate(Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()));
}

// ---- metrics ----

/// `name{labels}` → value, from an OpenMetrics text body.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn sample(all: &BTreeMap<String, f64>, key: &str) -> f64 {
    *all.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {all:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let daemon = Daemon::start(local("", "[callback]\nattempts = 1\nbackoff_secs = 0.1\n")).await;
    let hello = support::jobs::job("hello");
    let timing_out = job_dir(daemon.dir.path(), "timeout", &["sleep 30"]);
    // First callback answered 200 (delivered), every later one 503 (failed).
    let receiver = Receiver::start(|n| {
        if n == 1 {
            Reply::Status(200)
        } else {
            Reply::Status(503)
        }
    })
    .await;

    let mut ids = Vec::new();
    for (i, callback) in [true, true, false].into_iter().enumerate() {
        let options = JobOptions {
            output_file: format!("m{i}.txt"),
            callback_url: if callback {
                receiver.url.clone()
            } else {
                String::new()
            },
            ..JobOptions::default()
        };
        let id = daemon.submit_job("ops-metrics", &hello, &options).await;
        // One at a time, so the receiver's first request is the first job's.
        let deadline = Instant::now() + WAIT;
        loop {
            let dead = daemon.wait_dead(id, WAIT).await;
            if !callback || dead["callback"]["attempts"].as_u64().is_some_and(|a| a > 0) {
                break;
            }
            assert!(Instant::now() < deadline, "no callback: {dead}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ids.push(id);
    }
    let id = submit(
        &daemon,
        "ops-metrics-2",
        &timing_out,
        &job_options("t.txt", 2),
    )
    .await;
    daemon.wait_dead(id, WAIT).await;

    // As Prometheus asks.
    let response = reqwest::Client::new()
        .get(daemon.url("/metrics"))
        .header("accept", OPENMETRICS_ACCEPT)
        .send()
        .await
        .expect("scrape");
    assert!(response.status().is_success());
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    assert!(text.ends_with("# EOF\n"), "{text}");
    let m = samples(&text);

    // The /info counters, equal to /info's.
    let info = daemon.get_json(&format!("/info/{}/", daemon.key)).await;
    for name in [
        "job_requests",
        "job_retries",
        "waitvm_timeouts",
        "runjob_timeouts",
        "copyin_errors",
        "runjob_errors",
        "copyout_errors",
    ] {
        let value = info["info"][name].as_f64().expect("counter");
        assert_eq!(sample(&m, &format!("tango_{name}_total")), value, "{name}");
    }
    assert_eq!(sample(&m, "tango_job_requests_total"), 4.0);
    assert_eq!(
        sample(&m, "tango_runjob_errors_total"),
        1.0,
        "the timed-out job"
    );
    assert!(sample(&m, "tango_elapsed_seconds") > 0.0);
    // Queue and job lists.
    assert_eq!(sample(&m, "tango_queue_depth"), 0.0);
    assert_eq!(sample(&m, "tango_live_jobs"), 0.0);
    assert_eq!(sample(&m, "tango_running_jobs"), 0.0);
    assert_eq!(sample(&m, "tango_dead_jobs"), 4.0);
    // Pools, as /pool reports them: free and busy, which add up to the total.
    let pools = daemon.get_json(&format!("/pool/{}/", daemon.key)).await;
    let pools = pools["pools"].as_object().expect("pools").clone();
    assert!(pools.contains_key("autograding_image"), "{pools:?}");
    for (name, pool) in pools {
        let count = |state: &str| pool[state].as_array().map_or(0, Vec::len) as f64;
        let key = |state: &str| format!("tango_pool_machines{{pool=\"{name}\",state=\"{state}\"}}");
        assert_eq!(sample(&m, &key("free")), count("free"), "{name}");
        assert_eq!(
            sample(&m, &key("free")) + sample(&m, &key("busy")),
            count("total"),
            "{name}"
        );
    }
    // Jobs by final status.
    assert_eq!(
        sample(&m, "tango_jobs_finished_total{status=\"success\"}"),
        3.0
    );
    assert_eq!(
        sample(&m, "tango_jobs_finished_total{status=\"timeout\"}"),
        1.0
    );
    assert_eq!(
        sample(&m, "tango_jobs_finished_total{status=\"error\"}"),
        0.0
    );
    assert_eq!(
        sample(&m, "tango_jobs_finished_total{status=\"internal_error\"}"),
        0.0
    );
    // Callbacks.
    assert_eq!(
        sample(&m, "tango_callbacks_total{outcome=\"delivered\"}"),
        1.0
    );
    assert_eq!(sample(&m, "tango_callbacks_total{outcome=\"failed\"}"), 1.0);
    assert_eq!(receiver.requests().len(), 2);
    // Phase histograms: every job went through each phase; the callbacks of two.
    for phase in ["queued", "machine_acquired", "copy_in", "run", "copy_out"] {
        assert_eq!(
            sample(
                &m,
                &format!("tango_job_phase_seconds_count{{phase=\"{phase}\"}}")
            ),
            4.0,
            "{phase}"
        );
        assert_eq!(
            sample(
                &m,
                &format!("tango_job_phase_seconds_bucket{{le=\"+Inf\",phase=\"{phase}\"}}")
            ),
            4.0,
            "{phase}"
        );
    }
    assert_eq!(
        sample(&m, "tango_job_phase_seconds_count{phase=\"callback\"}"),
        2.0
    );
    // The timed-out job ran for its 2 seconds at least.
    assert!(sample(&m, "tango_job_phase_seconds_sum{phase=\"run\"}") >= 2.0);
    // The /jobs timings are what the histograms were fed from.
    let dead = daemon.jobs(true).await;
    let run_total: f64 = dead
        .iter()
        .map(|j| {
            j["timings"]["ran"].as_f64().unwrap_or(0.0)
                - j["timings"]["copied_in"].as_f64().unwrap_or(0.0)
        })
        .sum();
    let run_sum = sample(&m, "tango_job_phase_seconds_sum{phase=\"run\"}");
    assert!(
        (run_total - run_sum).abs() < 1e-3,
        "{run_total} vs {run_sum}"
    );
}

/// What Prometheus sends in `Accept` when it scrapes.
const OPENMETRICS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Runs `promtool ARGS` with `stdin`; its status, stdout and stderr. promtool is Debian's
/// `prometheus` package (scripts/test.sh installs it).
fn promtool(args: &[&str], stdin: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/test.sh installs it)");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.as_bytes())
        .expect("write to promtool");
    drop(input);
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

async fn scrape(daemon: &Daemon, accept: Option<&str>) -> (String, String) {
    let mut request = reqwest::Client::new().get(daemon.url("/metrics"));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.expect("scrape");
    assert!(response.status().is_success(), "{}", response.status());
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (content_type, response.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_in_both_formats() {
    let daemon = Daemon::start(local("", "")).await;
    // A finished job, so that every family has samples, histograms included.
    let dir = job_dir(daemon.dir.path(), "promtool", &["echo checked"]);
    let id = submit(&daemon, "ops-promtool", &dir, &job_options("p.txt", 20)).await;
    daemon.wait_dead(id, WAIT).await;

    // No Accept (curl), or Prometheus text asked for: Prometheus text 0.0.4, which
    // `promtool check metrics` lints, with no finding.
    for accept in [None, Some("text/plain;version=0.0.4")] {
        let (content_type, text) = scrape(&daemon, accept).await;
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(!text.contains("# EOF"), "{text}");
        let (ok, said) = promtool(&["check", "metrics"], &text);
        assert!(ok && said.trim().is_empty(), "promtool: {said}\n{text}");
    }

    // Prometheus's Accept: OpenMetrics. promtool's linter reads only Prometheus text, but
    // its backfill parses OpenMetrics strictly (it wants a timestamp on each sample, which
    // the test adds).
    let (content_type, text) = scrape(&daemon, Some(OPENMETRICS_ACCEPT)).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let stamped: String = text
        .lines()
        .map(|l| {
            if l.starts_with('#') {
                format!("{l}\n")
            } else {
                format!("{l} {now}\n")
            }
        })
        .collect();
    let input = daemon.dir.path().join("metrics.om");
    std::fs::write(&input, &stamped).expect("write");
    let blocks = daemon.dir.path().join("blocks");
    let out = std::process::Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(&blocks)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The build and the process.
    let m = samples(&text);
    let version = std::process::Command::new(env!("CARGO_BIN_EXE_tango"))
        .arg("--version")
        .output()
        .expect("tango --version");
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let commit = version
        .trim()
        .strip_suffix(')')
        .and_then(|v| v.rsplit_once("(commit "))
        .map(|(_, c)| c.to_string())
        .unwrap_or_else(|| panic!("no commit in --version: {version}"));
    assert!(!commit.is_empty() && commit != "unknown", "{version}");
    let info = format!(
        "tango_build_info{{version=\"{}\",commit=\"{commit}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&m, &info), 1.0, "{text}");
    assert!(sample(&m, "process_resident_memory_bytes") > 1e6);
    assert!(sample(&m, "process_open_fds") >= 3.0);
    assert!(sample(&m, "process_cpu_seconds_total") > 0.0);
    let started = sample(&m, "process_start_time_seconds");
    assert!(
        started <= now as f64 + 1.0 && started > now as f64 - 3600.0,
        "{started} vs now {now}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_their_configuration() {
    let moved = Daemon::start(local("", "[metrics]\npath = \"/prometheus\"\n")).await;
    let response = reqwest::get(moved.url("/prometheus"))
        .await
        .expect("scrape");
    assert!(response.status().is_success());
    assert!(
        response
            .text()
            .await
            .expect("body")
            .contains("tango_queue_depth")
    );
    let response = reqwest::get(moved.url("/metrics")).await.expect("GET");
    assert_eq!(response.status(), 404);

    let off = Daemon::start(local("", "[metrics]\nenabled = false\n")).await;
    let response = reqwest::get(off.url("/metrics")).await.expect("GET");
    assert_eq!(response.status(), 404);
}

// ---- logs ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_line_names_version_backend_store_and_address() {
    let daemon = Daemon::start(local("", "")).await;
    let log = daemon.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("RESTful Tango listening"))
        .unwrap_or_else(|| panic!("no start line in {log}"));
    for field in [
        format!("version={}", env!("CARGO_PKG_VERSION")),
        "commit=".into(),
        format!("listen=127.0.0.1:{}", daemon.port),
        "backend=local".into(),
        "store=memory".into(),
        "manager=true".into(),
    ] {
        assert!(line.contains(&field), "{field} not in {line}");
    }
    assert!(!line.contains("Some("), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_never_reaches_the_log_even_at_trace() {
    let key = "k3y-that-must-not-be-logged";
    let mut options = local("", "");
    options.key = key.into();
    options.env = vec![("RUST_LOG".into(), "trace".into())];
    let daemon = Daemon::start(options).await;
    // A job through every step, and requests refused for a wrong key or a bad name.
    let dir = job_dir(daemon.dir.path(), "keyless", &["echo keyless"]);
    let id = submit(&daemon, "ops-keyless", &dir, &job_options("k.txt", 20)).await;
    daemon.wait_dead(id, WAIT).await;
    let wrong = format!("{key}-wrong");
    for path in [
        format!("/info/{wrong}/"),
        format!("/open/{wrong}/lab/"),
        format!("/open/{key}/bad..name/"),
        format!("/poll/{key}/ops-keyless/missing.txt/"),
    ] {
        let _ = reqwest::get(daemon.url(&path)).await.expect("GET");
    }
    let log = daemon.log_text();
    assert!(log.contains("request"), "trace lines expected: {log}");
    assert!(!log.contains(key), "the key in the log:\n{log}");
}

/// What `tango serve` writes to a terminal in its first two seconds (util-linux `script`
/// gives it a pseudo-terminal), with `NO_COLOR` set to `no_color` or unset.
fn serve_at_a_terminal(no_color: Option<&str>) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let serve = format!(
        "timeout -s INT 2 {} serve --vmms local --port 0 --courselabs {}",
        env!("CARGO_BIN_EXE_tango"),
        dir.path().join("courselabs").display()
    );
    let mut command = std::process::Command::new("script");
    command
        .args(["-qec", &serve, "/dev/null"])
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .env_remove("TANGO_CONFIG");
    if let Some(value) = no_color {
        command.env("NO_COLOR", value);
    }
    let out = command.output().expect("script (util-linux)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn no_color_turns_colours_off_at_a_terminal() {
    let coloured = serve_at_a_terminal(None);
    assert!(coloured.contains("RESTful Tango listening"), "{coloured}");
    assert!(
        coloured.contains("\x1b["),
        "no colours at a terminal: {coloured}"
    );
    let plain = serve_at_a_terminal(Some("1"));
    assert!(plain.contains("RESTful Tango listening"), "{plain}");
    assert!(
        !plain.contains("\x1b["),
        "colours despite NO_COLOR: {plain:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reopens_the_log_file_for_logrotate() {
    let daemon = Daemon::start(local("", "[log]\nfile = \"{DAEMON_DIR}/file.log\"\n")).await;
    let file = daemon.dir.path().join("file.log");
    let rotated = daemon.dir.path().join("file.log.1");
    let wait_for = |path: PathBuf, text: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let content = std::fs::read_to_string(&path).unwrap_or_default();
            if content.contains(text) {
                return content;
            }
            assert!(
                Instant::now() < deadline,
                "{text:?} not in {path:?}: {content}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait_for(file.clone(), "RESTful Tango listening").await;

    // What logrotate does: move the file away, then SIGHUP.
    std::fs::rename(&file, &rotated).expect("rotate");
    daemon.signal(libc::SIGHUP);
    wait_for(file.clone(), "SIGHUP").await;
    assert!(daemon.exited().is_none(), "SIGHUP killed the daemon");

    // Later lines (a job's) go to the new file only.
    let dir = job_dir(daemon.dir.path(), "rotated", &["echo rotated"]);
    let id = submit(&daemon, "ops-rotate", &dir, &job_options("r.txt", 20)).await;
    daemon.wait_dead(id, WAIT).await;
    let new = wait_for(file, "job_id=").await;
    assert!(new.contains(&format!("job_id={id}")), "{new}");
    let old = std::fs::read_to_string(&rotated).expect("rotated file");
    assert!(old.contains("RESTful Tango listening"), "{old}");
    assert!(
        !old.contains("job_id="),
        "a job's line in the rotated file: {old}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_about_a_job_carries_its_id_and_name() {
    // JSON lines into log.file (LOGFILE); standard error stays empty.
    let daemon = Daemon::start(local(
        "",
        &format!(
            "[log]\njson = true\nfile = \"{}/tango.jsonl\"\n",
            support::daemon::DAEMON_DIR
        ),
    ))
    .await;
    let hello = support::jobs::job("hello");
    let options = JobOptions {
        job_name: "logged_job".into(),
        ..JobOptions::default()
    };
    let id = daemon.submit_job("ops-logs", &hello, &options).await;
    daemon.wait_dead(id, WAIT).await;
    let status = daemon.terminate(Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()));

    assert_eq!(daemon.log_text(), "", "nothing on standard error");
    let log = std::fs::read_to_string(daemon.dir.path().join("tango.jsonl")).expect("log file");
    let mut about_job = 0;
    let mut in_span = 0;
    for line in log.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        let span = &v["span"];
        let fields = &v["fields"];
        let mentions = fields["job"] == id
            || span["job_id"] == id
            || fields["message"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("logged_job:{id}")));
        if !mentions {
            continue;
        }
        about_job += 1;
        let by_span =
            span["name"] == "job" && span["job_id"] == id && span["job_name"] == "logged_job";
        let by_fields = fields["job"] == id && fields["name"] == "logged_job";
        assert!(
            by_span || by_fields,
            "line about job {id} without its id and name: {line}"
        );
        if by_span {
            in_span += 1;
        }
    }
    // Added, dispatched, the worker's steps, the end.
    assert!(about_job >= 6, "{about_job} lines about the job:\n{log}");
    assert!(in_span >= 5, "{in_span} lines in the job's span:\n{log}");
}
