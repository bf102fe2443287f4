//! The run contract: what every backend does the same way when it runs a job, stated once.
//!
//! - A job's limits reach the autodriver as Tango's four options, built by
//!   [`RunSpec::autodriver_limits`]: `-u` (processes), `-f` (file size), `-t` (seconds) and
//!   `-o` (bytes of output kept).
//! - The output kept is the job's `max_output` (its `max_kb`, at most
//!   `limits.max_output_file_size`) plus [`OUTPUT_SLACK`] for the autodriver's own lines:
//!   a backend copies out at most [`RunSpec::output_cap`] bytes, and the worker reads no more.
//! - A run the autodriver has not ended is killed from the host [`RunSpec::kill_after`] its
//!   start: the job's timeout plus `timeouts.kill_margin_secs`. The worker stops waiting
//!   [`RUN_GRACE`] after that, in case a backend's own kill failed.
//! - Every step is bounded with [`within`].

use std::future::Future;
use std::time::Duration;

use super::VmmsError;
use crate::config::Config;
use crate::model::Job;

/// Bytes allowed past a job's `max_output`: the autodriver's status line and its elision
/// marker come on top of the job's own output.
pub const OUTPUT_SLACK: u64 = 4096;

/// Time past [`RunSpec::kill_after`] before the worker stops waiting for `run_job`: the
/// backend's own kill should have ended it long before.
pub const RUN_GRACE: Duration = Duration::from_secs(5);

/// How to run a job: what `runJob` got in Tango, plus the limits from config.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    /// The job's id and name, for names and logs.
    pub job_id: u64,
    pub job_name: String,
    /// Seconds `make` may run (the autodriver's `-t`).
    pub timeout: u64,
    /// Bytes of output kept (the autodriver's `-o`): the job's `max_kb` in bytes, at most
    /// `limits.max_output_file_size`.
    pub max_output: u64,
    /// RLIMIT_NPROC (`-u`) and RLIMIT_FSIZE (`-f`).
    pub ulimit_user_proc: u64,
    pub ulimit_file_size: u64,
    /// Run with no network but loopback.
    pub disable_network: bool,
    /// When the host kills a run that has not ended, counted from its start: the timeout
    /// plus `timeouts.kill_margin_secs`.
    pub kill_after: Duration,
}

impl RunSpec {
    /// The run of `job` under `config`'s limits.
    pub fn for_job(job: &Job, config: &Config) -> RunSpec {
        RunSpec {
            job_id: job.id,
            job_name: job.name.clone(),
            timeout: job.timeout,
            max_output: job.max_output,
            ulimit_user_proc: config.limits.ulimit_user_proc,
            ulimit_file_size: config.limits.ulimit_file_size,
            disable_network: job.disable_network,
            kill_after: kill_after(job.timeout, config.timeouts.kill_margin_secs),
        }
    }

    /// The autodriver's limit options, Tango's four: `-u N -f N -t N -o N`.
    pub fn autodriver_limits(&self) -> Vec<String> {
        vec![
            "-u".into(),
            self.ulimit_user_proc.to_string(),
            "-f".into(),
            self.ulimit_file_size.to_string(),
            "-t".into(),
            self.timeout.to_string(),
            "-o".into(),
            self.max_output.to_string(),
        ]
    }

    /// Most bytes of output a backend copies out for this run.
    pub fn output_cap(&self) -> u64 {
        output_cap(self.max_output)
    }
}

/// Most bytes of output kept for a job whose `max_output` is this.
pub fn output_cap(max_output: u64) -> u64 {
    max_output.saturating_add(OUTPUT_SLACK)
}

/// The host-side guard's rule: `timeout` seconds plus the margin.
pub fn kill_after(timeout: u64, margin_secs: u64) -> Duration {
    Duration::from_secs(timeout.saturating_add(margin_secs))
}

/// Runs `step` within `limit`, turning an overrun into [`VmmsError::Timeout`].
pub async fn within<T>(
    limit: Duration,
    step: &'static str,
    future: impl Future<Output = Result<T, VmmsError>>,
) -> Result<T, VmmsError> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result,
        Err(_) => Err(VmmsError::Timeout {
            step,
            secs: limit.as_secs(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_run_takes_its_limits_from_the_job_and_the_configuration() {
        let mut config = Config::default();
        config.timeouts.kill_margin_secs = 7;
        let job = Job {
            id: 3,
            name: "j".into(),
            timeout: 20,
            max_output: 1000,
            disable_network: true,
            ..Job::default()
        };
        let spec = RunSpec::for_job(&job, &config);
        assert_eq!(spec.kill_after, Duration::from_secs(27));
        assert_eq!(spec.output_cap(), 1000 + OUTPUT_SLACK);
        assert_eq!(
            spec.autodriver_limits().join(" "),
            format!(
                "-u {} -f {} -t 20 -o 1000",
                config.limits.ulimit_user_proc, config.limits.ulimit_file_size
            )
        );
        assert!(spec.disable_network);
    }
}
