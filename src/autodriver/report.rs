//! The machine-readable report (`--report FILE`): how the job ended and what it used.
//!
//! It goes to its own file, never into the output, because Autolab reads the output's last
//! line as the score. Backends may read it back with [`Report`]; every field is always
//! written (absent values as `null`).

use serde::{Deserialize, Serialize};

/// The limit that ended or cut the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    None,
    /// Wall-clock time (`-t`): the job was killed.
    Timeout,
    /// CPU time of the whole job (`-c`): the job was killed.
    Cpu,
    /// File size (`-f`): a process died of SIGXFSZ, or a file of the job reached the limit.
    Fsize,
    /// Address space (`-a`): a process of the job came within 10% of the limit (an
    /// allocation past it fails, which the job sees as an out-of-memory error).
    Memory,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// What the autodriver exits with: 0 finished, 1 usage, 2 timed out (or CPU limit),
    /// 3 OS error.
    pub autodriver_exit: i32,
    /// make's exit status, when it exited by itself.
    pub exit_status: Option<i32>,
    /// The signal that ended make (including our SIGKILL at a limit).
    pub signal: Option<i32>,
    /// The limit that ended or cut the job. When several fired, the first of timeout, cpu,
    /// memory, fsize.
    pub limit: Limit,
    /// Seconds from starting make to its end.
    pub wall_secs: f64,
    /// User plus system CPU seconds of every process of the job.
    pub cpu_secs: f64,
    /// The largest resident set of any one process of the job, in bytes.
    pub peak_rss_bytes: u64,
    /// Bytes make and its children wrote to stdout and stderr, before truncation.
    pub output_bytes: u64,
    /// Whether the output was cut to the output limit.
    pub truncated: bool,
    /// Processes of the job still alive when make ended (or at the limit), which we killed.
    pub killed_processes: u64,
    /// Who the job ran as.
    pub uid: u32,
    pub gid: u32,
    /// Why the autodriver failed (exit 1 or 3), if it did.
    pub error: Option<String>,
}

impl Report {
    /// A report for a run that failed before or while starting the job.
    pub fn failed(autodriver_exit: i32, error: String) -> Report {
        Report {
            autodriver_exit,
            exit_status: None,
            signal: None,
            limit: Limit::None,
            wall_secs: 0.0,
            cpu_secs: 0.0,
            peak_rss_bytes: 0,
            output_bytes: 0,
            truncated: false,
            killed_processes: 0,
            uid: 0,
            gid: 0,
            error: Some(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_snake_case_limits() {
        let mut r = Report::failed(3, "boom".into());
        r.limit = Limit::Fsize;
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"limit\":\"fsize\""), "{text}");
        assert!(text.contains("\"exit_status\":null"), "{text}");
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }
}
