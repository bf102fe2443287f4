//! The shared example jobs (`shared/jobs/*/`) and their `expect` files, for any test that
//! runs them: through the autodriver, a backend, or the whole daemon.
//!
//! Each job is a folder of input files plus `expect`, one `key: value` a line (`#` starts a
//! comment). [`Expect::check_output`] checks an autodriver output against it; a key this
//! parser does not know fails loudly, so a new expectation is not silently ignored.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Where the jobs are: `TANGO_TEST_JOBS`, else the project's shared `shared/jobs` beside or
/// above the crate (`/work/shared/jobs` for a checkout in `/work/main`), else the copy kept in
/// `tests/jobs/` so that a clone anywhere still has them.
pub fn jobs_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TANGO_TEST_JOBS") {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for candidate in [
        manifest.join("../shared/jobs"),
        manifest.join("../../shared/jobs"),
        PathBuf::from("/work/shared/jobs"),
        manifest.join("tests/jobs"),
    ] {
        if candidate.join("hello/expect").is_file() {
            return candidate;
        }
    }
    panic!(
        "the example jobs were not found: set TANGO_TEST_JOBS to the shared/jobs directory \
         (each job a folder with an `expect` file)"
    );
}

/// The autodriver binary the tests run: `TANGO_TEST_AUTODRIVER` (to test another build, such
/// as the static one from `scripts/build-autodriver.sh`), else the one cargo built for this
/// test binary.
pub fn autodriver_binary() -> PathBuf {
    std::env::var_os("TANGO_TEST_AUTODRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_autodriver")))
}

/// What a job's run must end as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Success,
    Timeout,
    SuccessOrTimeout,
    SuccessOrError,
}

impl Status {
    fn parse(s: &str) -> Status {
        match s {
            "success" => Status::Success,
            "timeout" => Status::Timeout,
            "success_or_timeout" => Status::SuccessOrTimeout,
            "success_or_error" => Status::SuccessOrError,
            other => panic!("unknown status {other:?} in an expect file"),
        }
    }

    /// Whether the autodriver may exit with `code` (0 finished, 2 timed out, 3 OS error).
    pub fn allows_autodriver_exit(self, code: i32) -> bool {
        match self {
            Status::Success => code == 0,
            Status::Timeout => code == 2,
            Status::SuccessOrTimeout => code == 0 || code == 2,
            Status::SuccessOrError => code == 0 || code == 3,
        }
    }
}

/// One output check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Contains(String),
    LastLine(String),
    /// The output is at most the output limit plus this many bytes.
    MaxBytesOverLimit(u64),
    /// No `ls -l` line in the output shows a file larger than the file-size limit, and
    /// there is at least one.
    FileSizeCapped,
}

/// A job's `expect` file.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    pub status: Option<Status>,
    pub autodriver_exit: Option<i32>,
    /// Checks that hold whatever the run's options.
    pub checks: Vec<Check>,
    /// Checks that hold when the job runs with `disable_network`.
    pub with_disable_network: Vec<Check>,
    /// Text `getPartialOutput` must return while the job still runs.
    pub partial_output_contains_while_running: Vec<String>,
    /// The daemon must still answer while and after the job runs.
    pub daemon_survives: bool,
}

impl Expect {
    pub fn parse(text: &str) -> Expect {
        let mut e = Expect::default();
        for line in text.lines() {
            let line = line.trim_end();
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once(": ")
                .or_else(|| line.split_once(':'))
                .unwrap_or_else(|| panic!("bad expect line {line:?}"));
            let value = value.trim_start();
            match key.trim() {
                "status" => e.status = Some(Status::parse(value)),
                "autodriver_exit" => {
                    e.autodriver_exit = Some(value.parse().expect("autodriver_exit: a number"))
                }
                "with_disable_network" => {
                    let (k, v) = value
                        .split_once(": ")
                        .unwrap_or_else(|| panic!("bad with_disable_network line {line:?}"));
                    e.with_disable_network
                        .push(parse_check(k, v).unwrap_or_else(|| panic!("bad check {line:?}")));
                }
                "partial_output_contains_while_running" => e
                    .partial_output_contains_while_running
                    .push(value.to_string()),
                "daemon_survives" => e.daemon_survives = yes(value),
                k => e
                    .checks
                    .push(parse_check(k, value).unwrap_or_else(|| panic!("unknown key {line:?}"))),
            }
        }
        e
    }

    pub fn status(&self) -> Status {
        self.status.expect("every expect file has a status")
    }

    /// Whether the autodriver may exit with `code`.
    pub fn allows_autodriver_exit(&self, code: i32) -> bool {
        match self.autodriver_exit {
            Some(want) => code == want,
            None => self.status().allows_autodriver_exit(code),
        }
    }

    /// Checks an autodriver output (status line first) run with `limits`.
    pub fn check_output(&self, output: &[u8], limits: &Limits) -> Result<(), String> {
        let mut checks = self.checks.clone();
        if limits.network_disabled {
            checks.extend(self.with_disable_network.iter().cloned());
        }
        for check in &checks {
            check.verify(output, limits)?;
        }
        Ok(())
    }
}

fn yes(value: &str) -> bool {
    matches!(value, "yes" | "true")
}

fn parse_check(key: &str, value: &str) -> Option<Check> {
    Some(match key {
        "output_contains" => Check::Contains(value.to_string()),
        "last_line" => Check::LastLine(value.to_string()),
        "output_max_bytes" => {
            let slack = value
                .strip_prefix("limit + ")
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("output_max_bytes must read `limit + N`: {value:?}"));
            Check::MaxBytesOverLimit(slack)
        }
        "file_size_capped" if yes(value) => Check::FileSizeCapped,
        _ => return None,
    })
}

/// The limits a job ran with, as far as output checks care.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// The output limit (`-o`), bytes; 0 for none.
    pub osize: u64,
    /// The file-size limit (`-f`), bytes; 0 for none.
    pub fsize: u64,
    pub network_disabled: bool,
}

impl Check {
    pub fn verify(&self, output: &[u8], limits: &Limits) -> Result<(), String> {
        let text = String::from_utf8_lossy(output);
        let shown = || {
            if output.len() > 2000 {
                format!(
                    "{}\n[... {} bytes ...]\n{}",
                    String::from_utf8_lossy(&output[..1000]),
                    output.len(),
                    String::from_utf8_lossy(&output[output.len() - 1000..])
                )
            } else {
                text.to_string()
            }
        };
        match self {
            Check::Contains(want) => {
                if !contains(output, want.as_bytes()) {
                    return Err(format!("output lacks {want:?}:\n{}", shown()));
                }
            }
            Check::LastLine(want) => {
                let body = output.strip_suffix(b"\n").unwrap_or(output);
                let last = body.rsplit(|&b| b == b'\n').next().unwrap_or(body);
                if last != want.as_bytes() {
                    return Err(format!(
                        "last line is {:?}, not {want:?}",
                        String::from_utf8_lossy(last)
                    ));
                }
            }
            Check::MaxBytesOverLimit(slack) => {
                if limits.osize == 0 {
                    return Err("output_max_bytes needs an output limit".into());
                }
                if output.len() as u64 > limits.osize + slack {
                    return Err(format!(
                        "output is {} bytes, over the limit {} + {slack}",
                        output.len(),
                        limits.osize
                    ));
                }
            }
            Check::FileSizeCapped => {
                let sizes = ls_sizes(&text);
                if sizes.is_empty() {
                    return Err(format!("no `ls -l` line in the output:\n{}", shown()));
                }
                if let Some((name, size)) = sizes.iter().find(|(_, s)| *s > limits.fsize) {
                    return Err(format!(
                        "{name} is {size} bytes, over the file-size limit {}",
                        limits.fsize
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `(name, size)` of every `ls -l` line of a regular file in `text`.
pub fn ls_sizes(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 9 {
                return None;
            }
            Some((f[8..].join(" "), f[4].parse().ok()?))
        })
        .collect()
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// One example job.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub dir: PathBuf,
    pub expect: Expect,
}

impl Job {
    /// Its input files (everything but `expect`), by name.
    pub fn input_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .expect("job folder")
            .map(|e| e.expect("job folder entry").path())
            .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "expect"))
            .collect();
        files.sort();
        files
    }

    /// Copies its input files into `dest` (which must exist).
    pub fn copy_inputs_to(&self, dest: &Path) {
        for file in self.input_files() {
            let name = file.file_name().expect("file name");
            std::fs::copy(&file, dest.join(name)).expect("copy a job input");
        }
    }
}

/// The job named `name`.
pub fn job(name: &str) -> Job {
    let dir = jobs_dir().join(name);
    let text = std::fs::read_to_string(dir.join("expect"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join("expect").display()));
    Job {
        name: name.to_string(),
        dir,
        expect: Expect::parse(&text),
    }
}

/// Every job, by name.
pub fn all_jobs() -> Vec<Job> {
    let mut names: Vec<String> = std::fs::read_dir(jobs_dir())
        .expect("jobs directory")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("expect").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names.iter().map(|n| job(n)).collect()
}
