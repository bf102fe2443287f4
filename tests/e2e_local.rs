//! The whole daemon, as a separate process, on the embedded default (memory store) with the
//! `local` backend: jobs go in over REST as Autolab sends them and come out as output files.
//!
//! Every example job in `tests/jobs/` (the shared jobs) runs here and is checked against its
//! `expect` file, through `tango serve` and nothing else: the final trace line the daemon
//! reports stands for the autodriver's exit code, `/jobs` shows whether it was retried, and
//! `/poll` returns the output. Most jobs run at once on one daemon (a pool big enough for
//! all of them), which is quick and shows that jobs do not disturb each other; the jobs that
//! must leave nothing behind (`forever`, `forkbomb`) each get a daemon of their own, so the
//! check that no process of theirs is left cannot be confused by a neighbour.
//!
//! Needs root (the local backend gives each machine its own uid, and `disable_network` a
//! network namespace).

// A test is a scenario read from top to bottom: its length is its story, not several things.
#![allow(clippy::too_many_lines)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::daemon::{Daemon, DaemonOptions, JobOptions};
use support::e2e::{
    OSIZE, Ran, WAIT, all_passed, assert_answers, clip, options_for, run, watch_partial,
};
use support::jobs;
use tango::host::procs;

/// Every shared job, and where it is tested here: a new job must be added to a test.
const COVERED: &[&str] = &[
    "bigfile", "binary", "files", "flood", "forever", "forkbomb", "hello", "memhog", "network",
    "nonzero", "partial", "score",
];

fn require_root() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests need root: the local backend gives each machine its own uid"
    );
}

/// A daemon on the local backend with its own machine directory, so a test can look at its
/// machines (`machine.json` names each one's uid) and at the processes in them.
struct Local {
    daemon: Daemon,
    /// Parent of the work directory; mode 0711 so the jobs' uids can reach their machines.
    _root: tempfile::TempDir,
    work_dir: PathBuf,
}

impl Local {
    /// `pool_size` machines, made without a pause, so that many jobs run at once.
    async fn start(pool_size: u32) -> Local {
        require_root();
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(
            root.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .expect("chmod the temp dir");
        let work_dir = root.path().join("machines");
        let mut options = DaemonOptions::local();
        // Replaces the whole generated backend section (a TOML table may appear once).
        options.config = format!(
            "[vmms]\nname = \"local\"\npool_size = {pool_size}\ncreatevm_secs = 0\n\n\
             [local]\nautodriver = \"{}\"\nwork_dir = \"{}\"\n",
            jobs::autodriver_binary().display(),
            work_dir.display()
        );
        let daemon = Daemon::start(options).await;
        Local {
            daemon,
            _root: root,
            work_dir,
        }
    }

    /// The directory and uid of the machine with id `vm_id`, from its `machine.json`.
    fn machine(&self, vm_id: u64) -> (PathBuf, u32) {
        let entries = std::fs::read_dir(&self.work_dir).expect("the work directory");
        for entry in entries.filter_map(Result::ok) {
            let Ok(text) = std::fs::read_to_string(entry.path().join("machine.json")) else {
                continue;
            };
            let record: Value = serde_json::from_str(&text).expect("machine.json is JSON");
            if record["machine"]["id"] == vm_id {
                let uid = record["uid"]
                    .as_u64()
                    .and_then(|u| u32::try_from(u).ok())
                    .unwrap_or_else(|| panic!("machine {vm_id} has no uid: {record}"));
                return (entry.path(), uid);
            }
        }
        panic!(
            "no machine {vm_id} in {}:\n{}",
            self.work_dir.display(),
            self.daemon.log_text()
        );
    }
}

/// Processes of `uid`, or whose working directory or root is inside `dir`.
fn processes_of(uid: u32, dir: &Path) -> Vec<String> {
    let mut left: Vec<String> = procs::live_processes_of(uid)
        .expect("read /proc")
        .iter()
        .map(|p| format!("{p:?}"))
        .collect();
    for pid in procs::list_pids().expect("list /proc") {
        for link in ["cwd", "root"] {
            if let Ok(target) = std::fs::read_link(format!("/proc/{pid}/{link}"))
                && target.starts_with(dir)
                && procs::read_status(pid).is_some_and(|s| !s.is_zombie())
            {
                left.push(format!("pid {pid} has its {link} in {}", target.display()));
            }
        }
    }
    left
}

#[test]
fn every_shared_job_is_tested() {
    let names: BTreeSet<String> = jobs::all_jobs().into_iter().map(|j| j.name).collect();
    let covered: BTreeSet<String> = COVERED.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        names, covered,
        "a shared job is not run through the daemon here"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_runs_end_to_end() {
    let daemon = Daemon::start(DaemonOptions::local()).await;
    let job = jobs::job("hello");
    let options = JobOptions::default();
    let id = daemon.submit_job("course-hello", &job, &options).await;
    let output = daemon
        .wait_output("course-hello", &options.output_file, WAIT)
        .await;
    let text = String::from_utf8_lossy(&output);
    assert!(text.starts_with("Autograder ["), "{text}");
    assert!(
        text.contains(&format!("]: Received job {}:{id}\n", options.job_name)),
        "{text}"
    );
    assert!(
        text.contains("]: Success: Autodriver returned normally\n"),
        "{text}"
    );
    assert!(
        text.contains("Here is the output from the autograder:\n---\n"),
        "{text}"
    );
    assert!(
        text.contains("Autodriver: Job exited with status 0\n"),
        "{text}"
    );
    job.expect
        .check_output(
            &output,
            &jobs::Limits {
                osize: 1_024_000,
                fsize: 104_857_600,
                network_disabled: false,
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let dead = daemon.wait_dead(id, WAIT).await;
    assert_eq!(dead["assigned"], false);
    let last = dead["trace"]
        .as_array()
        .and_then(|t| t.last())
        .and_then(|l| l.as_str())
        .unwrap_or("");
    assert!(
        last.ends_with("|Success: Autodriver returned normally"),
        "{dead}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_jobs_run_at_once_through_one_daemon() {
    // forever and forkbomb have tests of their own (below).
    let names = [
        "hello", "score", "nonzero", "flood", "bigfile", "binary", "files", "memhog",
    ];
    let local = Local::start(16).await;
    let daemon = &local.daemon;

    let plain = names.iter().map(|name| async move {
        let ran = run(daemon, jobs::job(name), options_for(name, 60, false)).await;
        ran.check().map(|()| ran)
    });
    // network both ways: only `lo` when disabled, the host's interfaces otherwise.
    let network_off = async {
        let ran = run(
            daemon,
            jobs::job("network"),
            options_for("network", 60, true),
        )
        .await;
        ran.check().map(|()| ran)
    };
    let network_on = async {
        let mut options = options_for("network-on", 60, false);
        options.output_file = "user@x.edu_1_network_on.txt".into();
        let mut job = jobs::job("network");
        job.name = "network-on".into();
        let ran = run(daemon, job, options).await;
        ran.check().map(|()| ran)
    };
    // partial: its output is read through getPartialOutput while it runs.
    let partial = async {
        let job = jobs::job("partial");
        let options = options_for("partial", 90, false);
        let courselab = "e2e-partial";
        let id = daemon.submit_job(courselab, &job, &options).await;
        let reads = watch_partial(daemon, courselab, id, &options.output_file).await;
        let output = daemon
            .wait_output(courselab, &options.output_file, WAIT)
            .await;
        let dead = daemon.wait_dead(id, WAIT).await;
        let ran = Ran {
            job,
            id,
            options,
            output,
            dead,
        };
        ran.check()?;
        for want in &ran.job.expect.partial_output_contains_while_running {
            if !reads.iter().any(|r| r.contains(want.as_str())) {
                return Err(format!(
                    "partial: no read while running contained {want:?}: {reads:?}"
                ));
            }
        }
        // Read before the end: some read lacks the last tick.
        if !reads
            .iter()
            .any(|r| !r.is_empty() && !r.contains("tick 20"))
        {
            return Err(format!(
                "partial: nothing read well before the end: {reads:?}"
            ));
        }
        Ok(ran)
    };

    let (plain, network_off, network_on, partial) = tokio::join!(
        futures::future::join_all(plain),
        network_off,
        network_on,
        partial
    );
    let ran = all_passed(plain.into_iter().chain([network_off, network_on, partial]));

    let by_name = |n: &str| ran.iter().find(|r| r.job.name == n).expect("ran");
    // nonzero: make's status 2 is reported in the output, as a normal end.
    assert!(
        by_name("nonzero")
            .text()
            .contains("Autodriver: Job exited with status 2\n")
    );
    // flood: the whole output file (header and all) stays near the limit.
    let flood = by_name("flood");
    assert!(
        (flood.output.len() as u64) < OSIZE + 4096,
        "flood output {} bytes",
        flood.output.len()
    );
    // binary: the bytes come back as the job wrote them.
    assert!(jobs::contains(&by_name("binary").output, b"\xff\xfe"));
    // network with the network on: the host's interfaces (those that come and go with
    // Docker's containers and networks, veth* and br-*, aside).
    let stable = |names: &mut dyn Iterator<Item = String>| -> BTreeSet<String> {
        names
            .filter(|n| !n.starts_with("veth") && !n.starts_with("br-"))
            .collect()
    };
    let host = stable(
        &mut std::fs::read_dir("/sys/class/net")
            .expect("/sys/class/net")
            .filter_map(|e| e.ok()?.file_name().into_string().ok()),
    );
    assert!(
        host.len() > 1,
        "the host has only {host:?}: network on and off would look the same"
    );
    let on = by_name("network-on").text();
    let line = on
        .lines()
        .find(|l| l.starts_with("interfaces: "))
        .unwrap_or_else(|| panic!("no interfaces line: {on}"));
    let seen = stable(
        &mut line["interfaces: ".len()..]
            .split_whitespace()
            .map(str::to_string),
    );
    assert_eq!(
        seen, host,
        "with the network on, the job sees the host's interfaces"
    );
    assert_answers(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forever_is_killed_at_its_timeout_not_retried_and_leaves_nothing() {
    let local = Local::start(1).await;
    let ran = run(
        &local.daemon,
        jobs::job("forever"),
        options_for("forever", 3, false),
    )
    .await;
    ran.check().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ran.reported_exit(), Ok(2));
    assert!(
        ran.text()
            .contains("Autodriver: Job timed out after 3 seconds\n"),
        "{}",
        ran.text()
    );
    let vm_id = ran.dead["vm"]["id"].as_u64().expect("the job's machine id");
    let (dir, uid) = local.machine(vm_id);
    let left = processes_of(uid, &dir);
    assert!(left.is_empty(), "left after the timeout: {left:?}");
    // The daemon gives the machine back for the next job, which runs normally on it.
    let hello = run(
        &local.daemon,
        jobs::job("hello"),
        options_for("hello", 30, false),
    )
    .await;
    hello.check().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(hello.dead["vm"]["id"], vm_id, "the pool of one was reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forkbomb_is_contained_and_the_daemon_answers_throughout() {
    let local = Local::start(2).await;
    let daemon = &local.daemon;
    let bomb = async {
        let ran = run(
            daemon,
            jobs::job("forkbomb"),
            options_for("forkbomb", 10, false),
        )
        .await;
        ran.check().map(|()| ran)
    };
    // While it runs: the daemon answers, and another job on the same daemon finishes.
    let meanwhile = async {
        let deadline = Instant::now() + WAIT;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let hello = run(daemon, jobs::job("hello"), options_for("hello", 30, false)).await;
        hello.check()?;
        loop {
            assert_answers(daemon).await;
            let info = daemon.get_json(&format!("/info/{}/", daemon.key)).await;
            assert_eq!(info["statusId"], 0, "{info}");
            if daemon.jobs(false).await.is_empty() {
                return Ok::<_, String>(hello);
            }
            // The daemon must have answered until every job ended, not merely until then.
            if Instant::now() > deadline {
                return Err(format!("jobs still live after {WAIT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let (bomb, hello) = tokio::join!(bomb, meanwhile);
    let bomb = bomb.unwrap_or_else(|e| panic!("{e}"));
    hello.unwrap_or_else(|e| panic!("{e}"));
    // Forks failed (RLIMIT_NPROC), and the job still ended with its output.
    assert!(
        bomb.text().contains("Cannot fork"),
        "{}",
        clip(&bomb.text())
    );
    let vm_id = bomb.dead["vm"]["id"]
        .as_u64()
        .expect("the job's machine id");
    let (dir, uid) = local.machine(vm_id);
    let left = processes_of(uid, &dir);
    assert!(left.is_empty(), "left after the forkbomb: {left:?}");
    assert_answers(daemon).await;
}
