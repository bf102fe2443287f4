//! One run of a job: hand the directory to the grading user, start make, watch it against
//! its limits, then kill whatever is left of it, remove its files and say how it ended.
//!
//! The autodriver is a child subreaper: orphans of the job are re-parented to it, which
//! keeps them findable and lets it account for their CPU. `watch` follows make (started by
//! `make`) to its end and kills the job; this module prepares the run before it and cleans
//! up and reports after.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, lchown};
use std::path::{Path, PathBuf};

use super::cli::Options;
use super::identity::{self, Identity, Mode, Request};
use super::inputs;
use super::output::{self, Capture};
use super::passwd;
use super::report::{Limit, Report};
use super::watch::{KILL_PATIENCE, Stop, Watched, children_usage, take_own_session, watch};
use super::{AutodriverError, CallerFs, EXIT_TIMEOUT, os_error};
use crate::host::files::{self, FileId};
use crate::host::procs;

/// A process this close to the address-space limit counts as having hit it.
const MEMORY_EVIDENCE: f64 = 0.9;

/// A finished run, ready to print.
pub struct Finished {
    /// `Autodriver: Job exited with status N` or `... timed out after N seconds`.
    pub first_line: String,
    pub capture: Capture,
    pub report: Report,
}

/// Runs the job. `own_files` are the autodriver's files (output, report), left alone by
/// the directory walks.
pub fn run(
    opts: &Options,
    mode: Mode,
    caller_fs: &CallerFs,
    mut own_files: Vec<FileId>,
) -> Result<Finished, AutodriverError> {
    let identity = resolve_identity(opts, mode)?;
    if opts.stdin_inputs {
        unpack_inputs(opts, caller_fs)?;
    }
    let (dir, dir_meta) = grading_dir(opts, mode, caller_fs)?;
    let log = open_log(opts, caller_fs, &mut own_files)?;
    become_subreaper()?;
    if identity.owns_uid {
        // Leftovers of an earlier job on this uid would count against RLIMIT_NPROC and
        // could meddle with this one.
        procs::sweep_uid(identity.uid, identity.gid, KILL_PATIENCE)
            .map_err(os_error("Error killing user processes"))?;
    }
    if identity.switch {
        hand_over(mode, &identity, &dir, &own_files)?;
    }

    let own_session = take_own_session();
    let capture = Capture::new(log, opts.max_output);
    // The files are cleaned whether or not watching went well.
    let watched = watch(opts, &identity, &dir, capture, own_session);
    let cleanup = clean_up(opts, &identity, &dir, &dir_meta, &own_files);
    let ((watched, capture), removal) = match (watched, cleanup) {
        (Ok(w), Ok(r)) => (w, r),
        (Err(e), _) | (Ok(_), Err(e)) => return Err(e),
    };
    if let Some(Stop::Signal(sig)) = watched.stop {
        return Err(AutodriverError::OsMsg(format!(
            "Interrupted by signal {sig}"
        )));
    }
    Ok(finish(opts, &identity, &watched, capture, removal))
}

/// Who the job runs as: the mode, the command line, and the passwd and group files decide.
fn resolve_identity(opts: &Options, mode: Mode) -> Result<Identity, AutodriverError> {
    let passwd_text = passwd::read_file(Path::new(passwd::PASSWD_FILE))
        .map_err(os_error("Unable to read /etc/passwd"))?;
    let group_text = passwd::read_file(Path::new(passwd::GROUP_FILE))
        .map_err(os_error("Unable to read /etc/group"))?;
    let request = Request {
        user: opts.user.clone(),
        uid: opts.uid,
        gid: opts.gid,
    };
    identity::resolve(mode, &request, &passwd_text, &group_text).map_err(|e| match e {
        identity::IdentityError::Usage(m) => AutodriverError::Usage(m),
        identity::IdentityError::Os(m) => AutodriverError::OsMsg(m),
    })
}

/// Unpacks the job's files from standard input into the grading directory
/// (`--stdin-inputs`).
fn unpack_inputs(opts: &Options, caller_fs: &CallerFs) -> Result<(), AutodriverError> {
    // With the caller's rights when set-user-ID: the caller names the directory.
    let stdin = io::stdin();
    caller_fs
        .with(|| inputs::unpack(stdin.lock(), &opts.directory))
        .map(|_| ())
        .map_err(|e| AutodriverError::OsMsg(format!("Error unpacking the inputs: {e}")))
}

/// The grading directory, resolved, and what it was before the job touched it. Set-user-ID,
/// it must be the caller's.
fn grading_dir(
    opts: &Options,
    mode: Mode,
    caller_fs: &CallerFs,
) -> Result<(PathBuf, fs::Metadata), AutodriverError> {
    let dir = caller_fs
        .with(|| fs::canonicalize(&opts.directory))
        .map_err(os_error("Error changing directory"))?;
    let dir_meta = fs::symlink_metadata(&dir).map_err(os_error("Error changing directory"))?;
    if !dir_meta.is_dir() {
        return Err(AutodriverError::OsMsg(format!(
            "Error changing directory: {} is not a directory",
            dir.display()
        )));
    }
    if let Mode::Setuid { caller_uid, .. } = mode
        && dir_meta.uid() != caller_uid
    {
        return Err(AutodriverError::Usage(format!(
            "{} must belong to the user running the autodriver",
            dir.display()
        )));
    }
    Ok((dir, dir_meta))
}

/// Creates the log make's output goes to while it runs (`--output-log`), and adds it to
/// `own_files`.
fn open_log(
    opts: &Options,
    caller_fs: &CallerFs,
    own_files: &mut Vec<FileId>,
) -> Result<fs::File, AutodriverError> {
    let log_path = opts
        .output_log
        .clone()
        .unwrap_or_else(|| PathBuf::from("output.log"));
    let log = caller_fs
        .with(|| files::create_private(&log_path))
        .map_err(os_error("Error opening output file"))?;
    own_files.push(FileId::of(
        &log.metadata()
            .map_err(os_error("Error opening output file"))?,
    ));
    Ok(log)
}

/// Makes orphans of the job this process's children, so that they stay findable.
fn become_subreaper() -> Result<(), AutodriverError> {
    // SAFETY: prctl with constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(os_error("Unable to become a subreaper")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Gives the grading directory and what it holds to the job's user, but for the
/// autodriver's own files (and, set-user-ID, anything the caller does not own).
fn hand_over(
    mode: Mode,
    identity: &Identity,
    dir: &Path,
    own_files: &[FileId],
) -> Result<(), AutodriverError> {
    let only_owned_by = match mode {
        Mode::Setuid { caller_uid, .. } => Some(caller_uid),
        _ => None,
    };
    files::chown_tree(dir, identity.uid, identity.gid, only_owned_by, own_files)
        .map_err(os_error("Error chowning directory"))
}

/// The run's result from what watching and cleaning found: the first line, the exit status
/// and the report.
fn finish(
    opts: &Options,
    identity: &Identity,
    watched: &Watched,
    capture: Capture,
    removal: files::Removal,
) -> Finished {
    let (first_line, exit) = match watched.stop {
        Some(Stop::Timeout) => (output::timed_out_line(opts.timeout), EXIT_TIMEOUT),
        Some(Stop::Cpu) => (output::timed_out_line(opts.cpu), EXIT_TIMEOUT),
        _ => (output::exited_line(shell_status(watched.make_status)), 0),
    };
    let (cpu_secs, peak_rss_bytes) = children_usage();
    let report = Report {
        autodriver_exit: exit,
        exit_status: watched
            .make_status
            .filter(|&s| libc::WIFEXITED(s))
            .map(|s| libc::WEXITSTATUS(s)),
        signal: watched
            .make_status
            .filter(|&s| libc::WIFSIGNALED(s))
            .map(|s| libc::WTERMSIG(s)),
        limit: limit_reached(opts, watched, removal),
        wall_secs: watched.wall.as_secs_f64(),
        cpu_secs,
        peak_rss_bytes,
        output_bytes: capture.total(),
        truncated: capture.plan().is_truncated(),
        killed_processes: watched.killed,
        uid: identity.uid,
        gid: identity.gid,
        error: None,
    };
    Finished {
        first_line,
        capture,
        report,
    }
}

/// The limit that ended or cut the job: the one that stopped it, else the first of CPU,
/// memory and file size with evidence that it fired.
fn limit_reached(opts: &Options, watched: &Watched, removal: files::Removal) -> Limit {
    let fsize_fired = removal.saw_capped_file
        || watched
            .deaths
            .iter()
            .any(|&s| libc::WIFSIGNALED(s) && libc::WTERMSIG(s) == libc::SIGXFSZ);
    let cpu_fired = watched
        .deaths
        .iter()
        .any(|&s| libc::WIFSIGNALED(s) && libc::WTERMSIG(s) == libc::SIGXCPU);
    let memory_fired = opts.address_space > 0
        && watched.max_vm_peak as f64 >= MEMORY_EVIDENCE * opts.address_space as f64;
    match watched.stop {
        Some(Stop::Timeout) => Limit::Timeout,
        Some(Stop::Cpu) => Limit::Cpu,
        _ if cpu_fired => Limit::Cpu,
        _ if memory_fired => Limit::Memory,
        _ if fsize_fired => Limit::Fsize,
        _ => Limit::None,
    }
}

/// make's status as a shell reports it: the exit status, or 128 + the signal.
fn shell_status(status: Option<i32>) -> i32 {
    match status {
        Some(s) if libc::WIFEXITED(s) => libc::WEXITSTATUS(s),
        Some(s) if libc::WIFSIGNALED(s) => 128 + libc::WTERMSIG(s),
        _ => 128 + libc::SIGKILL,
    }
}

/// Removes the job's files and gives the directory back to its owner.
fn clean_up(
    opts: &Options,
    identity: &Identity,
    dir: &Path,
    dir_meta: &fs::Metadata,
    own_files: &[FileId],
) -> Result<files::Removal, AutodriverError> {
    let capped_at = (opts.fsize > 0).then_some(opts.fsize);
    let mut removal = files::clear_dir(dir, own_files, capped_at)
        .map_err(os_error("Error deleting user's files"))?;
    if identity.switch {
        lchown(dir, Some(dir_meta.uid()), Some(dir_meta.gid()))
            .map_err(os_error("Error chowning directory"))?;
    }
    if identity.owns_uid {
        let swept = files::sweep_uid(identity.uid, capped_at);
        removal.removed += swept.removed;
        removal.saw_capped_file |= swept.saw_capped_file;
    }
    Ok(removal)
}
