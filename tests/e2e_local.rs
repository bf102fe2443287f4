//! The whole daemon, as a separate process, on the embedded default (memory store) with the
//! `local` backend: jobs go in over REST as Autolab sends them and come out as output files.

mod support;

use std::time::Duration;

use support::daemon::{Daemon, DaemonOptions, JobOptions};
use support::jobs;

const WAIT: Duration = Duration::from_secs(120);

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
