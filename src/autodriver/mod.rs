//! The autodriver: what runs inside every machine. It runs `make` in the grading directory
//! as the unprivileged grading user, under limits, and prints the output Autolab grades.
//!
//! It keeps the interface of Tango's C autodriver (`autodriver [-u nproc] [-f fsize]
//! [-t timeout] [-o osize] DIRECTORY`, exit 0 finished / 1 usage / 2 timed out / 3 OS error,
//! the first output line `Autodriver: Job exited with status N` or `Autodriver: Job timed
//! out after N seconds`, the output cut to `osize` keeping both ends) and adds a CPU-time
//! and an address-space limit, numeric ids, and a JSON report. `docs/autodriver.md` is the
//! user's guide; the modules are:
//!
//! - [`cli`]: the command line;
//! - [`identity`]: who the job runs as, in each privilege mode;
//! - [`passwd`]: `/etc/passwd` and `/etc/group`, read directly (the binary is static);
//! - [`job`]: one run, start to finish; `make` starts make, and `watch` follows it against
//!   its limits and kills the job;
//! - [`output`]: the status line and Tango's truncation;
//! - [`inputs`]: the job's files, unpacked from a tar archive on standard input;
//! - [`report`]: the JSON report.
//!
//! Finding and killing the job's processes and the directory walks are in
//! [`crate::host`], which the `local` backend shares.
//!
//! This module builds without the `daemon` feature: it may use only std, libc, clap,
//! serde, serde_json, thiserror and tar (without default features: it brings only
//! filetime, and libc again), so a static autodriver stays small.

pub mod cli;
pub mod identity;
pub mod inputs;
pub mod job;
mod make;
pub mod output;
pub mod passwd;
pub mod report;
mod watch;

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use clap::Parser;

use crate::host::files::{self, FileId};
use cli::Options;
use identity::Mode;
use report::Report;

/// The job finished (whatever make returned).
pub const EXIT_FINISHED: i32 = 0;
/// Bad command line, or asked to run as the grading user or as root.
pub const EXIT_USAGE: i32 = 1;
/// The job was killed at its time limit (wall clock, or CPU with `-c`).
pub const EXIT_TIMEOUT: i32 = 2;
/// Something failed on the machine: the job's result is unknown.
pub const EXIT_OS_ERROR: i32 = 3;

/// Why the autodriver could not run the job. Printed as `Autodriver: <message>`, Tango's way.
#[derive(Debug, thiserror::Error)]
pub enum AutodriverError {
    #[error("{0}")]
    Usage(String),
    #[error("{context}: {source}")]
    Os {
        context: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    OsMsg(String),
}

impl AutodriverError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AutodriverError::Usage(_) => EXIT_USAGE,
            AutodriverError::Os { .. } | AutodriverError::OsMsg(_) => EXIT_OS_ERROR,
        }
    }
}

/// Wraps an I/O error with what we were doing (Tango's messages where it had one).
pub fn os_error(context: &'static str) -> impl FnOnce(io::Error) -> AutodriverError {
    move |source| AutodriverError::Os { context, source }
}

/// Opens paths the caller named with the caller's own file-system rights when the
/// autodriver runs set-user-ID root, so it cannot be made to write where the caller could
/// not (Linux `setfsuid`). Otherwise a no-op.
#[derive(Debug, Clone, Copy)]
pub struct CallerFs {
    ids: Option<(u32, u32)>,
}

impl CallerFs {
    pub fn for_mode(mode: Mode) -> CallerFs {
        CallerFs {
            ids: match mode {
                Mode::Setuid {
                    caller_uid,
                    caller_gid,
                } => Some((caller_uid, caller_gid)),
                _ => None,
            },
        }
    }

    pub fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        let Some((uid, gid)) = self.ids else {
            return f();
        };
        // SAFETY: setfsuid/setfsgid only change this (single-threaded) process's file-system
        // ids; each returns the previous one, which we restore.
        unsafe {
            let old_gid = libc::setfsgid(gid);
            let old_uid = libc::setfsuid(uid);
            let result = f();
            libc::setfsuid(old_uid as libc::uid_t);
            libc::setfsgid(old_gid as libc::gid_t);
            result
        }
    }
}

/// The `autodriver` binary: parses the command line, runs the job, prints, and returns the
/// exit status.
pub fn main() -> i32 {
    let opts = match Options::try_parse() {
        Ok(opts) => opts,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                EXIT_USAGE
            } else {
                EXIT_FINISHED
            };
        }
    };
    run_and_print(&opts)
}

/// Where the output goes: standard output, or the `--output` file.
enum Sink {
    Stdout,
    File(File),
}

impl Sink {
    fn writer(&mut self) -> Box<dyn Write + '_> {
        match self {
            Sink::Stdout => Box::new(io::BufWriter::new(io::stdout().lock())),
            Sink::File(f) => Box::new(io::BufWriter::new(f)),
        }
    }

    /// Tells of a failure where the output would have gone, and on stderr when that is a
    /// file (stderr may be the same stream as stdout, as in Tango's `2>&1`).
    fn fail(&mut self, message: &str) {
        let line = format!("Autodriver: {message}\n");
        if let Sink::File(_) = self {
            let _ = io::stderr().write_all(line.as_bytes());
        }
        let mut w = self.writer();
        let _ = w.write_all(line.as_bytes());
        let _ = w.flush();
    }
}

/// Runs the job described by `opts` and writes its output and report; returns the exit
/// status.
pub fn run_and_print(opts: &Options) -> i32 {
    let mode = Mode::current();
    let caller_fs = CallerFs::for_mode(mode);
    let mut own_files = Vec::new();
    let mut open_own = |path: &Path| -> Result<File, AutodriverError> {
        let file = caller_fs
            .with(|| files::create_private(path))
            .map_err(os_error("Error opening output file"))?;
        let meta = file
            .metadata()
            .map_err(os_error("Error opening output file"))?;
        own_files.push(FileId::of(&meta));
        Ok(file)
    };

    let mut sink = Sink::Stdout;
    if let Some(path) = &opts.output {
        match open_own(path) {
            Ok(f) => sink = Sink::File(f),
            Err(e) => {
                sink.fail(&e.to_string());
                return e.exit_code();
            }
        }
    }
    let mut report_file = None;
    if let Some(path) = &opts.report {
        match open_own(path) {
            Ok(f) => report_file = Some(f),
            Err(e) => {
                sink.fail(&e.to_string());
                return e.exit_code();
            }
        }
    }

    let (exit, report) = match job::run(opts, mode, &caller_fs, own_files) {
        Ok(mut finished) => {
            let written = (|| -> io::Result<()> {
                let mut w = sink.writer();
                w.write_all(finished.first_line.as_bytes())?;
                finished.capture.write_kept(&mut w)?;
                w.flush()
            })();
            match written {
                Ok(()) => (finished.report.autodriver_exit, finished.report),
                Err(e) => {
                    let message = format!("Error writing output: {e}");
                    sink.fail(&message);
                    let mut report = finished.report;
                    report.autodriver_exit = EXIT_OS_ERROR;
                    report.error = Some(message);
                    (EXIT_OS_ERROR, report)
                }
            }
        }
        Err(e) => {
            sink.fail(&e.to_string());
            (e.exit_code(), Report::failed(e.exit_code(), e.to_string()))
        }
    };
    if let Some(mut f) = report_file {
        let written = serde_json::to_vec_pretty(&report)
            .map_err(io::Error::other)
            .and_then(|mut bytes| {
                bytes.push(b'\n');
                f.write_all(&bytes)
            });
        if let Err(e) = written {
            let _ = writeln!(io::stderr(), "Autodriver: Error writing report: {e}");
            return EXIT_OS_ERROR;
        }
    }
    exit
}
