//! The client subcommands of the `tango` binary, run as processes against a real server
//! (`tango serve` as a process, `local` backend): every subcommand, its `--json` parsed,
//! its human output, its exit codes, and `tango run DIR --jobs 5`.

// A test is a scenario read from top to bottom: its length is its story, not several things.
#![allow(clippy::too_many_lines)]

mod support;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::daemon::{Daemon, DaemonOptions};
use support::jobs;

const WAIT: Duration = Duration::from_secs(180);

/// Runs `tango ARGS` with the server and key from `TANGO_URL` / `TANGO_KEY`.
async fn tango(daemon: &Daemon, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tango"));
    for (name, _) in std::env::vars() {
        if name.starts_with("TANGO_") {
            command.env_remove(&name);
        }
    }
    command
        .args(args)
        .env("TANGO_URL", daemon.url(""))
        .env("TANGO_KEY", &daemon.key)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run tango {args:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `--json` document a successful command printed.
fn json_ok(args: &[&str], out: &Output) -> Value {
    assert!(
        out.status.success(),
        "tango {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("tango {args:?}: not JSON ({e}): {}", text(&out.stdout)))
}

async fn run_json(daemon: &Daemon, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = tango(daemon, &all).await;
    json_ok(&all, &out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_against_a_real_server() {
    let mut options = DaemonOptions::local();
    options.server_extra = "shutdown_grace_secs = 1".into();
    let daemon = Daemon::start(options).await;
    let lab = "cli-lab";
    let hello = jobs::job("hello");

    // open: created, then found; files is an object.
    let v = run_json(&daemon, &["open", lab]).await;
    assert_eq!(v["statusId"], 0, "{v}");
    assert_eq!(v["statusMsg"], "Created directory", "{v}");
    assert!(v["files"].is_object(), "{v}");

    // upload: every file of the job, each answered.
    let files: Vec<String> = hello
        .input_files()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let mut args = vec!["upload", lab];
    args.extend(files.iter().map(String::as_str));
    let v = run_json(&daemon, &args).await;
    let answers = v.as_array().expect("upload answers a list");
    assert_eq!(answers.len(), files.len(), "{v}");
    for a in answers {
        assert_eq!(a["answer"]["statusId"], 0, "{v}");
        assert_eq!(a["answer"]["statusMsg"], "Uploaded file", "{v}");
    }
    // The server says what it holds now (as MD5s, when it lists them).
    let v = run_json(&daemon, &["open", lab]).await;
    assert_eq!(v["statusMsg"], "Found directory", "{v}");

    // add-job, then poll until the output is there.
    let output_file = "cli@x.edu_1_lab_autograde.txt";
    let v = run_json(
        &daemon,
        &[
            "add-job",
            lab,
            "Makefile",
            "greet.sh",
            "--output-file",
            output_file,
            "--timeout",
            "20",
            "--job-name",
            "cli_job",
        ],
    )
    .await;
    assert_eq!(v["statusMsg"], "Job added", "{v}");
    let id: u64 = v["jobId"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("jobId: {v}"));

    let deadline = Instant::now() + WAIT;
    let output = loop {
        let out = tango(&daemon, &["poll", lab, output_file, "--json"]).await;
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("poll: not JSON ({e}): {}", text(&out.stdout)));
        if out.status.success() {
            assert_eq!(v["statusId"], 0, "{v}");
            break v["output"].as_str().unwrap_or_default().to_string();
        }
        // Not there yet: the server's own answer, and exit 1.
        assert_eq!(out.status.code(), Some(1), "{v}");
        assert_eq!(v["statusMsg"], "Output file not found", "{v}");
        assert!(
            text(&out.stderr).contains("Output file not found"),
            "{}",
            text(&out.stderr)
        );
        assert!(
            Instant::now() < deadline,
            "no output\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        output.contains(&format!("Received job cli_job:{id}")),
        "{output}"
    );
    assert!(
        output.contains("Success: Autodriver returned normally"),
        "{output}"
    );
    // Human poll: the output file's bytes as they are.
    let out = tango(&daemon, &["poll", lab, output_file]).await;
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), output);

    // jobs: the finished job in the dead list, with Tango's fields and our timings.
    daemon.wait_dead(id, WAIT).await;
    let v = run_json(&daemon, &["jobs", "--dead"]).await;
    let job = v["jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["id"] == id))
        .unwrap_or_else(|| panic!("job {id} not in {v}"));
    assert_eq!(job["name"], "cli_job");
    assert!(job["timings"]["finished"].as_f64().is_some(), "{job}");
    let v = run_json(&daemon, &["jobs"]).await;
    assert_eq!(v["statusMsg"], "Found list of jobs", "{v}");
    let out = tango(&daemon, &["jobs", "--dead"]).await;
    let human = text(&out.stdout);
    assert!(
        human.contains("cli_job") && human.contains("Success: Autodriver returned normally"),
        "{human}"
    );

    // info: counts our request.
    let v = run_json(&daemon, &["info"]).await;
    assert_eq!(v["statusMsg"], "Found info successfully", "{v}");
    assert_eq!(v["info"]["job_requests"], 1, "{v}");
    let out = tango(&daemon, &["info"]).await;
    assert!(
        text(&out.stdout).contains("job_requests"),
        "{}",
        text(&out.stdout)
    );

    // prealloc, then pool shows the machines.
    let v = run_json(&daemon, &["prealloc", "autograding_image", "2"]).await;
    assert_eq!(v["statusId"], 0, "{v}");
    let deadline = Instant::now() + WAIT;
    loop {
        let v = run_json(&daemon, &["pool", "autograding_image"]).await;
        assert_eq!(v["statusMsg"], "Found pool", "{v}");
        if v["pools"]["autograding_image"]["total"]
            .as_array()
            .is_some_and(|t| t.len() == 2)
        {
            break;
        }
        assert!(Instant::now() < deadline, "pool never reached 2: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let v = run_json(&daemon, &["pool"]).await;
    assert_eq!(v["statusMsg"], "Found all pools", "{v}");
    let out = tango(&daemon, &["pool"]).await;
    assert!(
        text(&out.stdout).contains("autograding_image: 2 machines"),
        "{}",
        text(&out.stdout)
    );

    // partial-output of a running job, then of an unknown one (statusId -1: exit 1).
    let forever = jobs::job("forever");
    let makefile = forever.dir.join("Makefile").display().to_string();
    let out = tango(&daemon, &["upload", "cli-forever", &makefile]).await;
    assert_eq!(out.status.code(), Some(1), "upload before open must fail");
    assert!(
        text(&out.stderr).contains("Courselab not found"),
        "{}",
        text(&out.stderr)
    );
    run_json(&daemon, &["open", "cli-forever"]).await;
    run_json(&daemon, &["upload", "cli-forever", &makefile]).await;
    let v = run_json(
        &daemon,
        &[
            "add-job",
            "cli-forever",
            "Makefile",
            "--output-file",
            "forever.txt",
            "--timeout",
            "10",
        ],
    )
    .await;
    let forever_id = v["jobId"].as_str().unwrap_or_default().to_string();
    let deadline = Instant::now() + WAIT;
    loop {
        let out = tango(&daemon, &["partial-output", &forever_id, "--json"]).await;
        let v: Value = serde_json::from_slice(&out.stdout).expect("partial-output JSON");
        if out.status.success()
            && v["output"]
                .as_str()
                .is_some_and(|o| o.contains("starting an endless loop"))
        {
            assert_eq!(v["statusMsg"], "Partial output obtained", "{v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no partial output: {v}\n{}",
            text(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = tango(&daemon, &["partial-output", "987654", "--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).expect("error JSON");
    assert_eq!(v["statusId"], -1, "{v}");
    assert!(
        text(&out.stderr).contains("Invalid job id"),
        "{}",
        text(&out.stderr)
    );

    // cancel (an extension): the running job is asked to stop; an unknown id exits 1.
    let out = tango(&daemon, &["cancel", &forever_id]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("job {forever_id} (running): cancel requested; a manager ends it")
    );
    let out = tango(&daemon, &["cancel", "987654"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("Job 987654 not found"),
        "{}",
        text(&out.stderr)
    );

    // build: the local backend loads no images, so the server refuses; the client prints
    // its statusMsg and exits 1.
    let tarball = daemon.dir.path().join("image.tar");
    std::fs::write(&tarball, b"not a docker image").expect("write tarball");
    let out = tango(
        &daemon,
        &[
            "build",
            "cli_image",
            &tarball.display().to_string(),
            "--json",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("build JSON");
    assert_eq!(v["statusId"], -1, "{v}");
    let msg = v["statusMsg"].as_str().unwrap_or_default();
    assert!(!msg.is_empty() && text(&out.stderr).contains(msg), "{v}");

    // A wrong key: the server's message, exit 1, from flags overriding the environment.
    let out = tango(&daemon, &["info", "--key", "wrong"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("Key not recognized"),
        "{}",
        text(&out.stderr)
    );
    // --server/--port override TANGO_URL's host and port.
    let port = daemon.port.to_string();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tango"));
    let out = command
        .args(["info", "--json", "-s", "127.0.0.1", "-P", &port, "-k"])
        .arg(&daemon.key)
        .env("TANGO_URL", "http://192.0.2.1:1")
        .output()
        .await
        .expect("tango info");
    json_ok(&["info"], &out);
    // Nothing listening: a connection error, exit 2.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tango"))
        .args([
            "info",
            "--url",
            &format!("http://127.0.0.1:{}", support::free_port()),
        ])
        .output()
        .await
        .expect("tango info");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // Stop the endless job's machine with the daemon, rather than leave it to its timeout.
    daemon.terminate(Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_five_jobs_ends_with_five_outputs() {
    let daemon = Daemon::start(DaemonOptions::local()).await;
    let hello = jobs::job("hello");
    let dir = hello.dir.display().to_string();
    let save = daemon.dir.path().join("outputs");
    let args = [
        "run",
        dir.as_str(),
        "--jobs",
        "5",
        "--timeout",
        "20",
        "--save",
        &save.display().to_string(),
        "--json",
    ];
    let out = tango(&daemon, &args).await;
    let v = json_ok(&args, &out);
    let reported = v["jobs"].as_array().expect("jobs");
    assert_eq!(reported.len(), 5, "{v}");
    let mut ids: Vec<u64> = reported.iter().filter_map(|j| j["id"].as_u64()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "five distinct jobs: {v}");
    for job in reported {
        assert_eq!(job["status"], "success", "{job}");
        let output = job["output"].as_str().unwrap_or_default();
        hello
            .expect
            .check_output(
                output.as_bytes(),
                &jobs::Limits {
                    osize: 1_024_000,
                    fsize: 104_857_600,
                    network_disabled: false,
                },
            )
            .unwrap_or_else(|e| panic!("{e}\n{output}"));
        // Saved as well, byte for byte.
        let file = job["output_file"].as_str().unwrap_or_default();
        let saved = std::fs::read_to_string(save.join(file)).expect("saved output");
        assert_eq!(saved, output);
        assert!(job["seconds"].as_f64().is_some_and(|s| s > 0.0), "{job}");
    }
    assert_eq!(v["summary"]["count"], 5, "{v}");
    assert_eq!(v["summary"]["statuses"]["success"], 5, "{v}");
    // The server saw five jobs finish.
    let dead = daemon.jobs(true).await;
    for id in ids {
        assert!(dead.iter().any(|j| j["id"] == id), "job {id} not dead");
    }

    // Human mode, one job: the output itself on stdout.
    let out = tango(&daemon, &["run", &dir, "--timeout", "20"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(
        printed.contains("Success: Autodriver returned normally") && printed.contains("hello from"),
        "{printed}"
    );

    // Human mode, several: a table and a summary line.
    let out = tango(&daemon, &["run", &dir, "--jobs", "2", "--timeout", "20"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(printed.contains("2 jobs: 2 success"), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reports_jobs_that_do_not_succeed() {
    let daemon = Daemon::start(DaemonOptions::local()).await;
    let forever = jobs::job("forever");
    let dir = forever.dir.display().to_string();
    let args = ["run", dir.as_str(), "--timeout", "2", "--json"];
    let out = tango(&daemon, &args).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("run JSON");
    assert_eq!(v["jobs"][0]["status"], "timeout", "{v}");
    assert!(
        text(&out.stderr).contains("1 of 1 jobs did not succeed"),
        "{}",
        text(&out.stderr)
    );
    // A directory without a Makefile is refused before anything is sent.
    let empty = daemon.dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let out = tango(&daemon, &["run", &empty.display().to_string()]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(Path::new(&empty).exists());
    assert!(daemon.jobs(true).await.len() == 1);
}
