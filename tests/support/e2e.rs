//! What the end-to-end tests share: a job run through the real daemon (`Daemon`), what it
//! came to (`Ran`), and the checks every shared job's run must pass on any backend (its
//! `expect` file, the worker's header, one dispatch, no retry).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::daemon::{Daemon, JobOptions};
use super::jobs::{Expect, Job, Limits};

/// How long a job may take before a test gives up on it (generous: the machine is shared).
pub const WAIT: Duration = Duration::from_secs(240);
/// The daemon's output and file-size defaults, which these tests do not change.
pub const OSIZE: u64 = 1_024_000;
pub const FSIZE: u64 = 104_857_600;

/// What one job came to, as the daemon reports it.
pub struct Ran {
    pub job: Job,
    pub id: u64,
    pub options: JobOptions,
    pub output: Vec<u8>,
    /// Its entry in `/jobs/KEY/1/`.
    pub dead: Value,
}

impl Ran {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }

    pub fn trace(&self) -> Vec<String> {
        self.dead["trace"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|l| l.as_str())
                    .map(|l| l.split_once('|').map_or(l, |(_, m)| m).to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The autodriver's exit code as the daemon reported it in the job's final trace line
    /// (Tango's mapping: 0 returned normally, 2 timed out, 3 OS error).
    pub fn reported_exit(&self) -> Result<i32, String> {
        let trace = self.trace();
        let last = trace.last().map(String::as_str).unwrap_or("");
        if last == "Success: Autodriver returned normally" {
            Ok(0)
        } else if last
            == format!(
                "Error: Job timed out after {} seconds",
                self.options.timeout
            )
        {
            Ok(2)
        } else if last == "Error: OS error while running job on VM" {
            Ok(3)
        } else {
            Err(format!(
                "{}: unexpected final trace line {last:?}: {trace:?}",
                self.job.name
            ))
        }
    }

    /// Everything the job's `expect` file asks, plus what holds for every job: the worker's
    /// header, one dispatch, no retry.
    pub fn check(&self) -> Result<(), String> {
        let name = &self.job.name;
        let text = self.text();
        let exit = self.reported_exit()?;
        if !self.job.expect.allows_autodriver_exit(exit) {
            return Err(format!(
                "{name}: the daemon reported autodriver exit {exit}, not what expect says \
                 ({:?}, {:?}); output:\n{}",
                self.job.expect.status,
                self.job.expect.autodriver_exit,
                clip(&text)
            ));
        }
        self.job
            .expect
            .check_output(
                &self.output,
                &Limits {
                    osize: OSIZE,
                    fsize: FSIZE,
                    network_disabled: self.options.disable_network,
                },
            )
            .map_err(|e| format!("{name}: {e}"))?;
        let header = format!("]: Received job {}:{}\n", self.options.job_name, self.id);
        if !text.starts_with("Autograder [") || !text.contains(&header) {
            return Err(format!(
                "{name}: no worker header {header:?}:\n{}",
                clip(&text)
            ));
        }
        if self.dead["retries"] != 0 || self.dead["assigned"] != false {
            return Err(format!("{name}: retried or still assigned: {}", self.dead));
        }
        let trace = self.trace();
        let dispatched = trace
            .iter()
            .filter(|l| l.starts_with("Dispatched job "))
            .count();
        if dispatched != 1 || trace.iter().any(|l| l.contains(" failed: ")) {
            return Err(format!("{name}: not run exactly once: {trace:?}"));
        }
        Ok(())
    }
}

/// The head and tail of a long output, for messages.
pub fn clip(text: &str) -> String {
    if text.len() <= 3000 {
        return text.to_string();
    }
    let head: String = text.chars().take(1500).collect();
    let tail: String = text
        .chars()
        .rev()
        .take(1500)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{head}\n[... {} bytes ...]\n{tail}", text.len())
}

/// Job options for `name`: its own output file and job name; `timeout` seconds.
pub fn options_for(name: &str, timeout: u64, disable_network: bool) -> JobOptions {
    JobOptions {
        output_file: format!("user@x.edu_1_{name}_autograde.txt"),
        job_name: format!("course_{name}_1_user@x.edu"),
        timeout,
        disable_network,
        ..JobOptions::default()
    }
}

/// Submits `job` in a courselab of its own (every job has a `Makefile`) and waits for its
/// output and its dead entry.
pub async fn run(daemon: &Daemon, job: Job, options: JobOptions) -> Ran {
    let courselab = format!("e2e-{}", job.name);
    let id = daemon.submit_job(&courselab, &job, &options).await;
    finish(daemon, &courselab, job, id, options).await
}

/// Asserts that `GET /` answers, within a generous bound.
pub async fn assert_answers(daemon: &Daemon) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let body = client
        .get(daemon.url("/"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /: {e}"))
        .text()
        .await
        .expect("GET / body");
    assert_eq!(body, "Hello, world! RESTful Tango here!\n");
}

/// Reads `getPartialOutput` while job `id` runs; returns what was read while the job was
/// still live before and after the read (so it is truly partial output of a running job).
pub async fn watch_partial(
    daemon: &Daemon,
    courselab: &str,
    id: u64,
    output_file: &str,
) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    let mut reads = Vec::new();
    loop {
        let live = daemon.jobs(false).await;
        let Some(job) = live.iter().find(|j| j["id"] == id) else {
            return reads; // finished
        };
        if job["assigned"] == true {
            let v = daemon
                .get_json(&format!("/getPartialOutput/{}/{id}/", daemon.key))
                .await;
            let still_running = daemon.poll(courselab, output_file).await.is_none()
                && daemon.jobs(false).await.iter().any(|j| j["id"] == id);
            if v["statusId"] == 0 && still_running {
                assert_eq!(v["statusMsg"], "Partial output obtained", "{v}");
                reads.push(v["output"].as_str().unwrap_or_default().to_string());
            }
        }
        assert!(Instant::now() < deadline, "partial did not end");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn finish(
    daemon: &Daemon,
    courselab: &str,
    job: Job,
    id: u64,
    options: JobOptions,
) -> Ran {
    let output = daemon
        .wait_output(courselab, &options.output_file, WAIT)
        .await;
    let dead = daemon.wait_dead(id, WAIT).await;
    Ran {
        job,
        id,
        options,
        output,
        dead,
    }
}

/// A job folder made by the test: `Makefile` holds `makefile`.
pub fn made_job(name: &str, dir: &Path, makefile: &str, expect: &str) -> Job {
    std::fs::write(dir.join("Makefile"), makefile).expect("write Makefile");
    Job {
        name: name.into(),
        dir: dir.to_path_buf(),
        expect: Expect::parse(expect),
    }
}

/// The runs of jobs checked at once: all of them, or a failure naming every check that
/// failed (not only the first).
pub fn all_passed(results: impl IntoIterator<Item = Result<Ran, String>>) -> Vec<Ran> {
    let (passed, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    let failures: Vec<String> = failed.into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    passed.into_iter().filter_map(Result::ok).collect()
}
