//! The whole daemon, as a separate process, with the Docker backend on the real engine: jobs
//! go in over REST as Autolab sends them and come out as output files.
//!
//! Every example job in `tests/jobs/` runs here and is checked against its `expect` file,
//! plus what the Docker backend promises on top: a job that really eats memory is killed by
//! the memory limit, a fork bomb is stopped by the pids limit alone, `disable_network` leaves
//! only `lo`, partial output is readable while a job runs, `/build` makes an image a
//! following job runs in, and a restarted daemon removes its predecessor's containers and
//! nobody else's.
//!
//! Needs a Docker engine and the test images (`scripts/build-test-image.sh`, run when they
//! are missing; `autograding_image` is the job image, an alias of `tango-test`), and root.
//! Each test has its own machine-name prefix; [`Cleanup`] removes every container with it
//! (and the images a test made) when the test ends, passing or not. The daemon is declared
//! after the cleanup, so it is killed first and makes nothing more.

// A test is a scenario read from top to bottom: its length is its story, not several things.
#![allow(clippy::too_many_lines)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use support::daemon::{Daemon, DaemonOptions};
use support::docker::{
    Cleanup, autodriver, docker, docker_ok, plant_foreign_containers, test_image, unique_prefix,
};
use support::e2e::{
    OSIZE, WAIT, all_passed, assert_answers, clip, finish, made_job, options_for, run,
    watch_partial,
};
use support::jobs;

/// The memory limit these tests give each container, MiB.
const MEMORY_MB: u64 = 256;

/// Every shared job, and where it is tested here: a new job must be added to a test.
const COVERED: &[&str] = &[
    "bigfile", "binary", "files", "flood", "forever", "forkbomb", "hello", "memhog", "network",
    "nonzero", "partial", "score",
];

/// A daemon on the Docker backend, and the cleanup of its prefix. When dropped (the test
/// passed or not) it stops the daemon with SIGTERM, so that it removes its containers
/// itself, then gives the engine a moment to finish a creation that was under way before
/// the cleanup removes whatever is left with the prefix.
struct Docker {
    daemon: Daemon,
    _cleanup: Cleanup,
}

impl std::ops::Deref for Docker {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        // Unless a test already killed it (and reaped it: then its pid is gone).
        if Path::new(&format!("/proc/{}", self.daemon.pid())).exists() {
            self.daemon.terminate(Duration::from_secs(30));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A daemon on the Docker backend with machine-name prefix `prefix` (which `cleanup`
/// covers); `extra_limits` is more TOML for the `[limits]` table (the other tables are
/// written here: a table may appear once).
async fn start(prefix: &str, cleanup: Cleanup, pool_size: u32, extra_limits: &str) -> Docker {
    test_image();
    let mut options = DaemonOptions::local();
    options.config = format!(
        "[vmms]\nname = \"localDocker\"\nprefix = \"{prefix}\"\npool_size = {pool_size}\n\
         createvm_secs = 0\n\n[docker]\nautodriver = \"{}\"\n\n\
         [limits]\nmemory_mb = {MEMORY_MB}\n{extra_limits}\n",
        autodriver().display()
    );
    // A test that fails mid-job should not wait long for it at the end.
    options.server_extra = "shutdown_grace_secs = 3\n".into();
    Docker {
        daemon: Daemon::start(options).await,
        _cleanup: cleanup,
    }
}

/// Names of the containers labelled with `prefix`.
fn containers_of(prefix: &str) -> BTreeSet<String> {
    names(&docker_ok(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=tango.prefix={prefix}"),
        "--format",
        "{{.Names}}",
    ]))
}

fn names(listing: &str) -> BTreeSet<String> {
    listing.split_whitespace().map(str::to_string).collect()
}

fn exists(container: &str) -> bool {
    docker(&["container", "inspect", container])
        .status
        .success()
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
async fn the_shared_jobs_run_through_the_daemon_on_docker() {
    let prefix = unique_prefix("e2eall");
    let daemon = &start(&prefix, Cleanup::new(&prefix), 4, "").await;

    // (job, timeout, disable_network); forkbomb has a test of its own (other limits).
    let plain = [
        ("hello", 60, false),
        ("score", 60, false),
        ("nonzero", 60, false),
        ("forever", 3, false),
        ("flood", 60, false),
        ("bigfile", 60, false),
        ("binary", 60, false),
        ("files", 60, false),
        ("memhog", 60, false),
        ("network", 60, true),
    ];
    let runs = plain.iter().map(|&(name, timeout, off)| async move {
        let ran = run(daemon, jobs::job(name), options_for(name, timeout, off)).await;
        ran.check().map(|()| ran)
    });
    let network_on = async {
        let mut job = jobs::job("network");
        job.name = "network-on".into();
        let ran = run(daemon, job, options_for("network-on", 60, false)).await;
        ran.check().map(|()| ran)
    };
    let partial = async {
        let job = jobs::job("partial");
        let options = options_for("partial", 90, false);
        let courselab = "e2e-partial";
        let id = daemon.submit_job(courselab, &job, &options).await;
        let reads = watch_partial(daemon, courselab, id, &options.output_file).await;
        let ran = finish(daemon, courselab, job, id, options).await;
        ran.check()?;
        for want in &ran.job.expect.partial_output_contains_while_running {
            if !reads.iter().any(|r| r.contains(want.as_str())) {
                return Err(format!(
                    "partial: no read while running contained {want:?}: {reads:?}"
                ));
            }
        }
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
    // As memhog (whose `tail -n 1` buffers a stream without a newline), but requires the
    // container's memory limit to kill it (137: SIGKILL, what the cgroup's OOM killer sends).
    let hog_dir = tempfile::tempdir().expect("temp dir");
    let realhog = async {
        let job = made_job(
            "realhog",
            hog_dir.path(),
            "autograde:\n\t@echo \"eating memory\"\n\t@head -c 2000000000 /dev/zero | tail -n 1 > /dev/null; echo \"tail exit $$?\"\n",
            "status: success\noutput_contains: eating memory\noutput_contains: tail exit 137\n",
        );
        let ran = run(daemon, job, options_for("realhog", 120, false)).await;
        ran.check().map(|()| ran)
    };

    let (runs, network_on, partial, realhog) = tokio::join!(
        futures::future::join_all(runs),
        network_on,
        partial,
        realhog
    );
    let ran = all_passed(runs.into_iter().chain([network_on, partial, realhog]));

    let by_name = |n: &str| ran.iter().find(|r| r.job.name == n).expect("ran");
    assert!(
        by_name("nonzero")
            .text()
            .contains("Autodriver: Job exited with status 2\n")
    );
    let forever = by_name("forever");
    assert_eq!(forever.reported_exit(), Ok(2));
    assert!(
        forever
            .text()
            .contains("Autodriver: Job timed out after 3 seconds\n"),
        "{}",
        forever.text()
    );
    let flood = by_name("flood");
    assert!(
        (flood.output.len() as u64) < OSIZE + 4096,
        "flood output {} bytes",
        flood.output.len()
    );
    assert!(jobs::contains(&by_name("binary").output, b"\xff\xfe"));
    let on = by_name("network-on").text();
    assert!(
        on.lines()
            .any(|l| l.starts_with("interfaces: ") && l.contains("eth0")),
        "with the network on the job sees eth0: {on}"
    );
    // Each job's container was used once and removed: none of the jobs' machines is left
    // (the pool's fresh members are, waiting for work). A machine is destroyed after its
    // job's output is written and the job has ended, so the last ones may still be going:
    // wait for them, within a bound.
    let used: Vec<(String, String)> = ran
        .iter()
        .map(|r| {
            let vm_id = r.dead["vm"]["id"].as_u64().expect("a machine id");
            (r.job.name.clone(), format!("{prefix}-{vm_id}-"))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = containers_of(&prefix);
        let still: Vec<&String> = used
            .iter()
            .filter(|(_, start)| left.iter().any(|c| c.starts_with(start.as_str())))
            .map(|(name, _)| name)
            .collect();
        if still.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the containers of {still:?} are still there a minute after their jobs ended: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_answers(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forkbomb_is_contained_by_the_pids_limit_and_the_daemon_answers() {
    let prefix = unique_prefix("e2ebomb");
    // RLIMIT_NPROC far above the pids limit, so only the container's pids limit can stop it
    // (but below the hard limit the container inherits: the autodriver cannot raise it).
    let daemon = &start(
        &prefix,
        Cleanup::new(&prefix),
        2,
        "pids = 64\nulimit_user_proc = 10000",
    )
    .await;
    let bomb = async {
        let ran = run(
            daemon,
            jobs::job("forkbomb"),
            options_for("forkbomb", 10, false),
        )
        .await;
        ran.check().map(|()| ran)
    };
    let meanwhile = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let hello = run(daemon, jobs::job("hello"), options_for("hello", 60, false)).await;
        hello.check()?;
        let deadline = Instant::now() + WAIT;
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
    // Forks failed: the pids limit was reached (RLIMIT_NPROC, 10000, could not be with 64
    // processes), and the job still ended with its output.
    assert!(
        bomb.text().contains("Cannot fork"),
        "{}",
        clip(&bomb.text())
    );
    assert_answers(daemon).await;
    docker_ok(&["info", "--format", "{{.ServerVersion}}"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_makes_an_image_that_a_following_job_runs_in() {
    let prefix = unique_prefix("e2ebuild");
    let mut cleanup = Cleanup::new(&prefix);
    let base = test_image();
    // An image the engine does not have yet, with a mark of its own: the test image plus
    // a file, committed, saved with `docker save`, then removed from the engine.
    let source = format!("{prefix}-source");
    cleanup.container(&source);
    docker_ok(&["create", "--name", &source, base, "true"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let mark = format!("built for {prefix}");
    std::fs::write(dir.path().join("mark"), format!("{mark}\n")).expect("write mark");
    docker_ok(&[
        "cp",
        dir.path().join("mark").to_str().expect("utf-8 path"),
        &format!("{source}:/mark"),
    ]);
    let carried = format!("e2esaved{}:v1", prefix.to_lowercase());
    cleanup.image(&carried);
    docker_ok(&["commit", &source, &carried]);
    let tarball = dir.path().join("image.tar");
    docker_ok(&[
        "save",
        "-o",
        tarball.to_str().expect("utf-8 path"),
        &carried,
    ]);
    docker_ok(&["rmi", &carried]);
    let name = format!("built_{}", prefix.to_lowercase());
    cleanup.image(&format!("{name}:latest"));
    assert!(!docker(&["image", "inspect", &name]).status.success());

    let daemon = start(&prefix, cleanup, 1, "").await;
    // Not there yet: addJob refuses the image.
    daemon.open("e2e-built").await;
    let refused = daemon
        .add_job_raw(
            "e2e-built",
            &json!({"image": name, "files": [{"localFile": "Makefile", "destFile": "Makefile"}],
                    "output_file": "never.txt", "timeout": 10, "callback_url": "",
                    "jobName": "never", "disable_network": false}),
        )
        .await;
    assert_eq!(refused["statusId"], -1, "{refused}");

    // Autolab's upload: the tarball as the body, the name in the imageName header.
    let bytes = std::fs::read(&tarball).expect("read the tarball");
    let built = daemon
        .post_json(
            &format!("/build/{}/", daemon.key),
            &[("imageName", name.as_str())],
            bytes,
        )
        .await;
    assert_eq!(built["statusId"], 0, "{built}\n{}", daemon.log_text());
    assert_eq!(built["statusMsg"], "Docker image built");
    docker_ok(&["image", "inspect", &format!("{name}:latest")]);

    let job_dir = tempfile::tempdir().expect("temp dir");
    let job = made_job(
        "built",
        job_dir.path(),
        "autograde:\n\t@echo \"the image says: $$(cat /mark)\"\n",
        &format!("status: success\noutput_contains: the image says: {mark}\n"),
    );
    let mut options = options_for("built", 60, false);
    options.image = name.clone();
    let ran = run(&daemon, job, options).await;
    ran.check().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ran.dead["vm"]["image"], name.as_str(), "{}", ran.dead);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_removes_its_leftovers_and_nothing_else() {
    let prefix = unique_prefix("e2erestart");
    let mut cleanup = Cleanup::new(&prefix);
    let image = test_image();

    // Containers that are not ours: no label but our name's shape; our label but a name
    // outside our prefix; another prefix's label and name.
    let [no_label, wrong_name, other_prefix] =
        plant_foreign_containers(&prefix, image, &mut cleanup);

    // A first daemon runs a job and fills its pool; then it dies without cleaning up.
    let first = start(&prefix, Cleanup::new(&prefix), 2, "").await;
    let ran = run(&first, jobs::job("hello"), options_for("hello", 60, false)).await;
    ran.check().unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + WAIT;
    let ours = |all: &BTreeSet<String>| -> BTreeSet<String> {
        all.iter()
            .filter(|c| c.starts_with(&format!("{prefix}-")) && **c != no_label)
            .cloned()
            .collect()
    };
    let used = format!(
        "{prefix}-{}-",
        ran.dead["vm"]["id"].as_u64().expect("the job's machine id")
    );
    let leftovers = loop {
        // The pool of two: the job's machine is removed after the job, and replaced.
        let found = ours(&containers_of(&prefix));
        if found.len() >= 2 && !found.iter().any(|c| c.starts_with(&used)) {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "the pool was not refilled: {found:?}\n{}",
            first.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    first.kill9();
    for c in &leftovers {
        assert!(exists(c), "{c} outlived the kill");
    }

    // The next daemon with the same prefix removes them at start, and nothing else.
    let second = start(&prefix, cleanup, 2, "").await;
    for c in &leftovers {
        assert!(
            !exists(c),
            "leftover {c} was not removed at start:\n{}",
            second.log_text()
        );
    }
    for c in [&no_label, &wrong_name, &other_prefix] {
        assert!(exists(c), "{c} is not ours and must be left alone");
    }
    // And it works: a job runs.
    let ran = run(&second, jobs::job("score"), options_for("score", 60, false)).await;
    ran.check().unwrap_or_else(|e| panic!("{e}"));
}
