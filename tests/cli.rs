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
use support::daemon::{Daemon, DaemonOptions, tango_cli as tango};
use support::jobs;

const WAIT: Duration = Duration::from_secs(180);

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

// ---- for the people who run it: pipes, secrets, error causes ----

/// Runs `tango ARGS` (server and key from the environment, as [`tango`]) with standard
/// output a pipe whose reader is already gone, as `tango jobs | head -1` leaves it once
/// `head` has its line.
fn tango_into_closed_pipe(daemon: &Daemon, args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tango"));
    for (name, _) in std::env::vars() {
        if name.starts_with("TANGO_") {
            command.env_remove(&name);
        }
    }
    command
        .args(args)
        .env("TANGO_URL", daemon.url(""))
        .env("TANGO_KEY", &daemon.key)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("run tango {args:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_every_subcommand_quietly() {
    let daemon = Daemon::start(DaemonOptions::local()).await;
    let hello = jobs::job("hello");
    let dir = hello.dir.display().to_string();
    // A finished job first, so that `jobs --dead`, `poll` and `open` have something to say.
    let out = tango(&daemon, &["run", &dir, "--timeout", "20"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lab = "hello";
    let listed = run_json(&daemon, &["jobs", "--dead"]).await;
    let job = &listed["jobs"][0];
    let output_file = job["outputFile"]
        .as_str()
        .and_then(|p| p.rsplit('/').next())
        .unwrap_or("")
        .to_string();
    assert!(!output_file.is_empty(), "{listed}");
    let id = job["id"].to_string();
    let makefile = hello.dir.join("Makefile").display().to_string();
    let image = daemon.dir.path().join("image.tar");
    std::fs::write(&image, b"not a tarball").expect("image file");
    let image = image.display().to_string();

    let commands: Vec<Vec<&str>> = vec![
        vec!["--help"],
        vec!["--version"],
        vec!["jobs", "--help"],
        vec!["open", lab],
        vec!["upload", lab, &makefile],
        vec!["add-job", lab, "Makefile", "--output-file", "piped.txt"],
        vec!["poll", lab, &output_file],
        vec!["info"],
        vec!["jobs"],
        vec!["jobs", "--dead"],
        vec!["jobs", "--dead", "--json"],
        vec!["pool"],
        vec!["prealloc", "autograding_image", "0"],
        // A finished job has no partial output: the refusal goes to stdout under --json.
        vec!["partial-output", &id, "--json"],
        vec!["run", &dir, "--timeout", "20"],
        vec!["run", &dir, "--timeout", "20", "--jobs", "2"],
        vec!["build", "piped", &image],
    ];
    for args in &commands {
        let out = tango_into_closed_pipe(&daemon, args);
        let stderr = text(&out.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "tango {args:?}: {stderr}"
        );
        // A closed pipe is not a failure: status 0, unless the server refused the request
        // (a bad tarball, a finished job's partial output), which the status still says.
        let expected = i32::from(args[0] == "build" || args[0] == "partial-output");
        assert_eq!(
            out.status.code(),
            Some(expected),
            "tango {args:?}: {}\n{stderr}",
            out.status
        );
    }
}

#[test]
fn the_key_never_appears_in_help_or_errors() {
    let key = "the-real-key-4242";
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tango"))
            .args(args)
            .env("TANGO_KEY", key)
            .env("TANGO_ACCESS_KEY", key)
            .env_remove("TANGO_URL")
            .output()
            .expect("run tango");
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    for args in [
        &["jobs", "--help"][..],
        &["run", "--help"],
        &["add-job", "--help"],
    ] {
        let (code, stdout, stderr) = run(args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(stdout.contains("[env: TANGO_KEY]"), "{args:?}: {stdout}");
        if args[0] != "jobs" {
            assert!(
                stdout.contains("[env: TANGO_ACCESS_KEY]"),
                "{args:?}: {stdout}"
            );
        }
        assert!(!stdout.contains(key) && !stderr.contains(key), "{stdout}");
    }
    // Nothing listens on this port: the error names the server and the cause, not the key.
    let url = format!("http://127.0.0.1:{}", support::free_port());
    for args in [
        &["info", "--url", url.as_str()][..],
        &["jobs", "--dead", "--url", url.as_str()],
        &["info", "--url", url.as_str(), "--key", key],
    ] {
        let (code, stdout, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(!stdout.contains(key) && !stderr.contains(key), "{stderr}");
        assert_eq!(
            stderr.trim(),
            format!("tango: cannot connect to {url}: Connection refused (os error 111)"),
        );
    }
}

#[test]
fn a_url_without_a_scheme_gets_a_hint() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tango"))
        .args(["info", "--url", "127.0.0.1:3000"])
        .env_remove("TANGO_URL")
        .env_remove("TANGO_KEY")
        .output()
        .expect("run tango");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr).trim(),
        "tango: --url \"127.0.0.1:3000\": not a URL; did you mean http://127.0.0.1:3000 ?"
    );
}

// ---- tango-cli.py parity, CI use, configuration check ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_fails_on_a_make_error_only_when_asked_and_max_kb_caps_the_output() {
    let daemon = Daemon::start(DaemonOptions::local()).await;
    let nonzero = jobs::job("nonzero").dir.display().to_string();
    // Tango counts a failing make a success (the autodriver returned normally)...
    let out = tango(&daemon, &["run", &nonzero, "--timeout", "20"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("Job exited with status 2"),
        "{}",
        text(&out.stdout)
    );
    // ... which a CI pipeline checking a reference solution asks to see as a failure.
    let out = tango(
        &daemon,
        &["run", &nonzero, "--timeout", "20", "--fail-on-make-error"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr).trim(),
        "tango: make failed in 1 of 1 jobs (status 2)"
    );
    let hello = jobs::job("hello").dir.display().to_string();
    let out = tango(
        &daemon,
        &["run", &hello, "--timeout", "20", "--fail-on-make-error"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    // --max-kb (tango-cli's --maxsize) reaches the server: a flood is cut to about 1 KiB.
    let flood = jobs::job("flood").dir.display().to_string();
    let out = tango(
        &daemon,
        &["run", &flood, "--timeout", "60", "--max-kb", "1"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = out.stdout.len();
    assert!(
        printed < 4096,
        "{printed} bytes printed with --max-kb 1:\n{}",
        text(&out.stdout)
    );
}

#[test]
fn add_job_says_in_its_usage_that_output_file_is_required() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tango"))
        .args(["add-job", "--help"])
        .output()
        .expect("run tango");
    assert!(
        text(&out.stdout).contains("Usage: tango add-job [OPTIONS] --output-file <OUTPUT_FILE>"),
        "{}",
        text(&out.stdout)
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tango"))
        .args(["add-job", "lab", "Makefile"])
        .output()
        .expect("run tango");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--output-file"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn port_flags_mean_the_same_on_server_and_client_and_manager_has_none() {
    let help = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tango"))
            .args(args)
            .output()
            .expect("run tango");
        text(&out.stdout)
    };
    let h = help(&["serve", "--help"]);
    assert!(h.contains("-p, --port") && h.contains("[alias: -P]"), "{h}");
    // The client takes -p and -P alike: both reach the port given.
    let port = support::free_port().to_string();
    for flag in ["-p", "-P", "--port"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tango"))
            .args(["info", "--url", "http://127.0.0.1:1", flag, &port])
            .env_remove("TANGO_URL")
            .output()
            .expect("run tango");
        assert_eq!(out.status.code(), Some(2));
        assert!(
            text(&out.stderr).contains(&format!("http://127.0.0.1:{port}:")),
            "{flag}: {}",
            text(&out.stderr)
        );
    }
    let h = help(&["manager", "--help"]);
    assert!(!h.contains("--port") && !h.contains("--bind"), "{h}");
}

#[test]
fn completions_and_version() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tango"))
            .args(args)
            .output()
            .expect("run tango");
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completions", shell]);
        for word in ["add-job", "partial-output", "output-file", "completions"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
    }
    // bash reads the script without complaint.
    let script = run(&["completions", "bash"]);
    let status = std::process::Command::new("bash")
        .args(["-n", "-c", &script])
        .status()
        .expect("bash");
    assert!(status.success());
    let version = run(&["--version"]);
    let commit = version
        .trim()
        .strip_prefix(&format!("tango {} (commit ", env!("CARGO_PKG_VERSION")))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{version}"));
    assert!(
        commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{version}"
    );
}

#[test]
fn config_check_shows_each_value_and_its_source_and_refuses_what_serve_refuses() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("tango.toml");
    std::fs::write(
        &file,
        "[server]\nport = 3005\nkeys = [\"file-secret-key\"]\n[store]\nredis_password = \"redis-pw\"\n",
    )
    .expect("config");
    let file = file.display().to_string();
    let check = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tango"));
        for (name, _) in std::env::vars() {
            if name.starts_with("TANGO_") {
                command.env_remove(&name);
            }
        }
        let out = command
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("run tango");
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, stdout, stderr) = check(
        &["config", "check", "--config", &file, "--vmms", "local"],
        &[("TANGO_LOG_LEVEL", "info")],
    );
    assert_eq!(code, Some(0), "{stderr}");
    for line in [
        format!("server.port = 3005  # file {file}"),
        "server.bind = \"0.0.0.0\"  # default".into(),
        "log.level = \"info\"  # environment TANGO_LOG_LEVEL".into(),
        "vmms.name = \"local\"  # flag --vmms".into(),
        "server.keys = \"********\"".into(),
        "store.redis_password = \"********\"".into(),
    ] {
        assert!(stdout.contains(&line), "{line:?} not in:\n{stdout}");
    }
    assert!(
        !stdout.contains("file-secret-key") && !stdout.contains("redis-pw"),
        "{stdout}"
    );
    assert!(stdout.ends_with("# configuration OK\n"), "{stdout}");

    // What serve refuses, config check refuses, with the same line and status.
    for args in [
        &["--config", file.as_str(), "--vmms", "qemu"][..],
        &["--config", "/nonexistent/tango.toml"],
    ] {
        let (code, stdout, stderr) = check(&[&["config", "check"][..], args].concat(), &[]);
        assert_eq!(code, Some(78), "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        let (serve_code, _, serve_stderr) = check(&[&["serve"][..], args].concat(), &[]);
        assert_eq!(serve_code, Some(78));
        assert_eq!(stderr, serve_stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}
