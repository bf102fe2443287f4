//! One run of a job: hand the directory to the grading user, start make, watch it against
//! its limits, then kill whatever is left of it, remove its files and say how it ended.
//!
//! make's stdout and stderr go into a pipe that the autodriver reads (into [`Capture`]),
//! so the job never holds a file the autodriver later reads, and output costs neither disk
//! nor memory beyond the output limit. The autodriver is a child subreaper: orphans of the
//! job are re-parented to it, which keeps them findable and lets it account for their CPU.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, lchown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cli::Options;
use super::identity::{self, Identity, Mode, Request};
use super::inputs;
use super::output::{self, Capture};
use super::passwd;
use super::report::{Limit, Report};
use super::{AutodriverError, CallerFs, EXIT_TIMEOUT, os_error};
use crate::host::files::{self, FileId};
use crate::host::procs::{self, Scope};

/// How long killing the job's processes may take before the autodriver gives up (exit 3).
const KILL_PATIENCE: Duration = Duration::from_secs(10);
/// How long to wait for the output pipe to close once every process of the job is dead (a
/// process outside the job could hold it, if the job passed it on).
const DRAIN_PATIENCE: Duration = Duration::from_secs(2);
/// How often CPU time and memory are sampled when `-c` or `-a` is given.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// A process this close to the address-space limit counts as having hit it.
const MEMORY_EVIDENCE: f64 = 0.9;

/// A finished run, ready to print.
pub struct Finished {
    /// `Autodriver: Job exited with status N` or `... timed out after N seconds`.
    pub first_line: String,
    pub capture: Capture,
    pub report: Report,
}

/// Why make stopped before it ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Timeout,
    Cpu,
    /// The autodriver itself was told to stop.
    Signal(i32),
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

/// CPU seconds and the largest resident set of every reaped descendant.
fn children_usage() -> (f64, u64) {
    // SAFETY: getrusage fills the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return (0.0, 0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        secs(usage.ru_utime) + secs(usage.ru_stime),
        (usage.ru_maxrss.max(0) as u64) * 1024,
    )
}

/// What watching make found.
#[derive(Default)]
struct Watched {
    /// make's raw wait status.
    make_status: Option<i32>,
    /// Raw wait statuses of other processes the autodriver reaped (orphans of the job).
    deaths: Vec<i32>,
    stop: Option<Stop>,
    wall: Duration,
    max_vm_peak: u64,
    killed: u64,
}

/// Starts make, feeds its output to `capture` until it ends or a limit fires, then kills
/// every process of the job and drains the pipe.
fn watch(
    opts: &Options,
    identity: &Identity,
    dir: &Path,
    mut capture: Capture,
    own_session: bool,
) -> Result<(Watched, Capture), AutodriverError> {
    let signals = StopSignals::block().map_err(os_error("Error setting up signals"))?;
    let mut make = Make::start(opts, identity, dir)?;
    let scope = Scope {
        ancestor: std::process::id() as i32,
        uid: identity.owns_uid.then_some(identity.uid),
    };
    let mut watched = Watched::default();
    let ended = follow(
        opts,
        &mut make,
        Watcher {
            scope,
            own_session,
            signals: &signals,
        },
        &mut capture,
        &mut watched,
    );
    watched.wall = match &ended {
        Ok(Some(at)) => *at,
        _ => Instant::now(),
    } - make.started;
    // Whatever ended the watch, the job is killed before anything is reported.
    watched.killed = kill_job(make.pid, identity, scope, &mut watched)?;
    ended?;
    if let Some(pipe) = &make.pipe {
        drain_rest(pipe, &mut capture)?;
    }
    Ok((watched, capture))
}

/// make, running: what the watch loop follows.
struct Make {
    pid: i32,
    /// Pins make's pid, and is readable once make ends (Linux 5.3 and later).
    pidfd: Option<OwnedFd>,
    /// The read end of make's stdout and stderr, until end of file.
    pipe: Option<OwnedFd>,
    started: Instant,
}

impl Make {
    /// Starts make in `dir` as the job's user, under the limits, its stdout and stderr into
    /// a non-blocking pipe.
    fn start(opts: &Options, identity: &Identity, dir: &Path) -> Result<Make, AutodriverError> {
        let (pipe_read, pipe_write) = pipe().map_err(os_error("Error creating a pipe"))?;
        set_nonblocking(pipe_read.as_raw_fd()).map_err(os_error("Error creating a pipe"))?;

        let setup = ChildSetup::new(opts, identity);
        let mut command = Command::new(find_make());
        let user_name = identity
            .name
            .clone()
            .unwrap_or_else(|| identity.uid.to_string());
        command
            .current_dir(dir)
            .env("HOME", dir)
            .env("PWD", dir)
            .env("USER", &user_name)
            .env("LOGNAME", &user_name)
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                pipe_write
                    .try_clone()
                    .map_err(os_error("Error redirecting standard output"))?,
            ))
            .stderr(Stdio::from(pipe_write));
        // SAFETY: the hook makes only async-signal-safe system calls on data prepared here.
        unsafe {
            command.pre_exec(move || setup.apply());
        }
        let started = Instant::now();
        let spawned = command.spawn();
        // The Command holds our copies of the pipe's write end: the pipe reaches end of file
        // only once they are closed.
        drop(command);
        let child = spawned.map_err(os_error("Error executing make"))?;
        let pid = child.id() as i32;
        // We reap with waitpid(-1); `child` is only its pid.
        drop(child);
        Ok(Make {
            pid,
            pidfd: pidfd_open(pid),
            pipe: Some(pipe_read),
            started,
        })
    }

    /// Sleeps until make writes or ends, a stop signal comes, or `wait` passes.
    fn wait_for_news(&self, signals: &StopSignals, wait: Duration) {
        let mut fds = Vec::with_capacity(3);
        if let Some(p) = &self.pipe {
            fds.push(pollfd(p.as_raw_fd()));
        }
        if let Some(p) = &self.pidfd {
            fds.push(pollfd(p.as_raw_fd()));
        }
        fds.push(pollfd(signals.fd.as_raw_fd()));
        poll(&mut fds, wait);
    }
}

/// What the watch loop acts on besides make: whose processes to sample and demote, and
/// where stop signals arrive.
struct Watcher<'a> {
    scope: Scope,
    /// This autodriver leads a session of its own ([`take_own_session`]).
    own_session: bool,
    signals: &'a StopSignals,
}

/// When each timed thing of the watch loop is next due.
struct Schedule {
    /// The wall-clock limit (`-t`).
    deadline: Option<Instant>,
    /// When the job is demoted (`--demote-after`), until it is.
    demote_at: Option<Instant>,
    /// The next sample of CPU time and memory, when `-c` or `-a` asks for them.
    next_sample: Option<Instant>,
}

impl Schedule {
    fn new(opts: &Options, started: Instant) -> Schedule {
        let sampling = opts.cpu > 0 || opts.address_space > 0;
        Schedule {
            deadline: (opts.timeout > 0).then(|| started + Duration::from_secs(opts.timeout)),
            demote_at: (opts.demote_after > 0)
                .then(|| started + Duration::from_millis(opts.demote_after)),
            next_sample: sampling.then(|| started + SAMPLE_EVERY),
        }
    }

    /// How long the loop may sleep from `now`: until the next thing due, at most `longest`.
    fn wait(&self, now: Instant, longest: Duration) -> Duration {
        [self.deadline, self.demote_at, self.next_sample]
            .into_iter()
            .flatten()
            .fold(longest, |wait, due| {
                wait.min(due.saturating_duration_since(now))
            })
    }
}

/// Feeds make's output to `capture` until make ends (`Ok(Some(when))`), a limit or a stop
/// signal ends the watch (`Ok(None)`, the reason in `watched.stop`), or reading the output
/// fails. The job is still running unless make ended.
fn follow(
    opts: &Options,
    make: &mut Make,
    watcher: Watcher,
    capture: &mut Capture,
    watched: &mut Watched,
) -> Result<Option<Instant>, AutodriverError> {
    let mut schedule = Schedule::new(opts, make.started);
    let ticks = procs::clock_ticks() as f64;
    loop {
        let now = Instant::now();
        if schedule.deadline.is_some_and(|d| now >= d) {
            watched.stop = Some(Stop::Timeout);
            return Ok(None);
        }
        if schedule.demote_at.is_some_and(|d| now >= d) {
            schedule.demote_at = None;
            demote(make.pid, watcher.scope.uid, watcher.own_session);
        }
        if schedule.next_sample.is_some_and(|s| now >= s) {
            schedule.next_sample = Some(now + SAMPLE_EVERY);
            let used = sample(watcher.scope, ticks, watched);
            if used.is_some_and(|used| opts.cpu > 0 && used >= opts.cpu as f64) {
                watched.stop = Some(Stop::Cpu);
                return Ok(None);
            }
        }
        let longest = if make.pidfd.is_some() {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(20)
        };
        make.wait_for_news(watcher.signals, schedule.wait(now, longest));

        if let Some(p) = &make.pipe
            && drain(p.as_raw_fd(), capture).map_err(os_error("Error reading output"))?
        {
            make.pipe = None;
        }
        if let Some(sig) = watcher.signals.take() {
            watched.stop = Some(Stop::Signal(sig));
            return Ok(None);
        }
        reap(make.pid, &mut watched.make_status, &mut watched.deaths);
        if watched.make_status.is_some() {
            return Ok(Some(Instant::now()));
        }
    }
}

/// Samples the job's processes: keeps the largest peak of virtual memory in `watched`, and
/// returns the CPU seconds the job has used, reaped processes and live ones (none when
/// `/proc` cannot be read).
fn sample(scope: Scope, ticks: f64, watched: &mut Watched) -> Option<f64> {
    let all = procs::snapshot().ok()?;
    let mut live_ticks = 0u64;
    for p in procs::job_processes(&all, scope) {
        watched.max_vm_peak = watched.max_vm_peak.max(p.vm_peak);
        live_ticks += procs::cpu_ticks(p.pid).unwrap_or(0);
    }
    Some(children_usage().0 + live_ticks as f64 / ticks)
}

/// Reads what is left in the pipe once the job is dead, until end of file or for at most
/// [`DRAIN_PATIENCE`].
fn drain_rest(pipe: &OwnedFd, capture: &mut Capture) -> Result<(), AutodriverError> {
    let until = Instant::now() + DRAIN_PATIENCE;
    loop {
        if drain(pipe.as_raw_fd(), capture).map_err(os_error("Error reading output"))? {
            return Ok(());
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        poll(
            &mut [pollfd(pipe.as_raw_fd())],
            left.min(Duration::from_millis(100)),
        );
    }
}

/// The nice value of a job that has run past `--demote-after`.
const DEMOTED_NICE: i32 = 10;

/// Makes this autodriver the leader of a new session when it has no terminal; true when it
/// now leads its own session.
///
/// The kernel shares the CPU between sessions first (autogroups). Left in the session of
/// whatever started it (on the `local` backend, tango's), the autodriver's work for its job
/// (reading a flood of output, say) would count as that session's: the daemon's share, at
/// the daemon's priority, whatever [`demote`] does to the job. In a session of its own, that
/// work is weighed on its own and demoted with the job. With a terminal it stays where it
/// is, so that Ctrl-C still reaches it when someone runs it by hand.
fn take_own_session() -> bool {
    // SAFETY: plain system calls; the path is a valid C string.
    unsafe {
        let tty = libc::open(c"/dev/tty".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if tty >= 0 {
            libc::close(tty);
            return false;
        }
        // Fails (EPERM) for a process group leader, started by a shell or `setsid` say:
        // then it leads a session only if it already did.
        libc::setsid();
        libc::getsid(0) == libc::getpid()
    }
}

/// Lowers the priority of a job that has run a while, so that younger (usually short) jobs
/// on the same machine are not slowed by it. Best effort: where a step is not allowed, the
/// job runs on as it was.
fn demote(make_pid: i32, uid: Option<u32>, own_session: bool) {
    // The scheduler first shares the CPU between sessions (autogroups, when on), each job
    // being one: renicing the session's group is what counts against other jobs. A process
    // that makes a new session leaves it, but gains only a share of its own.
    let nice = DEMOTED_NICE.to_string();
    let _ = std::fs::write(format!("/proc/{make_pid}/autogroup"), &nice);
    // So is this autodriver's session when it leads one ([`take_own_session`]); else that
    // session is its starter's, and is left alone.
    if own_session {
        let _ = std::fs::write("/proc/self/autogroup", &nice);
    }
    // Within the group, and where autogroups are off: the job's processes, whose children
    // inherit the value. All of its uid's when the uid is the job's own, else make's group.
    // SAFETY: plain system calls on integers.
    unsafe {
        match uid {
            Some(uid) => libc::setpriority(libc::PRIO_USER, uid, DEMOTED_NICE),
            None => libc::setpriority(libc::PRIO_PGRP, make_pid as libc::id_t, DEMOTED_NICE),
        };
        // And this process: it works for the job (reading a flood of output, say), within
        // its session's group (its own, or its starter's when it kept a terminal), and where
        // autogroups are off.
        libc::setpriority(libc::PRIO_PROCESS, 0, DEMOTED_NICE);
    }
}

/// Kills every process of the job: its process group while make lives, every process of
/// its uid when it has one to itself, and every descendant of the autodriver; again until
/// none is left. Returns how many were alive.
fn kill_job(
    make_pid: i32,
    identity: &Identity,
    scope: Scope,
    watched: &mut Watched,
) -> Result<u64, AutodriverError> {
    let deadline = Instant::now() + KILL_PATIENCE;
    let mut seen = HashSet::new();
    loop {
        reap(make_pid, &mut watched.make_status, &mut watched.deaths);
        let all = procs::snapshot().map_err(os_error("Error listing processes"))?;
        let left = procs::job_processes(&all, scope);
        let live: Vec<_> = left.iter().filter(|p| !p.is_zombie()).collect();
        seen.extend(live.iter().map(|p| p.pid));
        // Zombies that are our children are reaped on the next turn; other zombies of the
        // uid wait for a parent outside the job and are harmless.
        let our_zombies = left
            .iter()
            .any(|p| p.is_zombie() && p.ppid == scope.ancestor);
        if live.is_empty() && !our_zombies && watched.make_status.is_some() {
            return Ok(seen.len() as u64);
        }
        if Instant::now() >= deadline {
            return Err(AutodriverError::OsMsg(format!(
                "Gave up killing user processes ({} left)",
                live.len()
            )));
        }
        if watched.make_status.is_none() {
            // make is not reaped, so its process group id cannot have been reused.
            // SAFETY: plain kill(2).
            unsafe { libc::kill(-make_pid, libc::SIGKILL) };
        }
        if identity.owns_uid {
            procs::kill_uid_in_round(identity.uid, identity.gid)
                .map_err(os_error("Error killing user processes"))?;
        }
        for p in &live {
            kill_exactly(p.pid, scope);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILLs `pid` only if it is still the job's process: the pid is pinned with a pidfd and
/// checked again, so a pid reused by an unrelated process in between is left alone.
fn kill_exactly(pid: i32, scope: Scope) {
    let Some(fd) = pidfd_open(pid) else {
        // Without pidfds (Linux < 5.3), our direct children are safe to signal by pid:
        // their pids are not reused before we reap them.
        if procs::read_status(pid).is_some_and(|s| s.ppid == scope.ancestor) {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        return;
    };
    let Ok(all) = procs::snapshot() else { return };
    if procs::job_processes(&all, scope)
        .iter()
        .any(|p| p.pid == pid)
    {
        // SAFETY: pidfd_send_signal on a pidfd we own.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
    }
}

/// Reaps every child that has ended; make's status goes to `make_status`, others' to
/// `deaths`.
fn reap(make_pid: i32, make_status: &mut Option<i32>, deaths: &mut Vec<i32>) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            if pid == make_pid {
                *make_status = Some(status);
            } else {
                deaths.push(status);
            }
            continue;
        }
        if pid < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return;
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

/// What the child does between fork and exec, prepared beforehand (no allocation there).
struct ChildSetup {
    limits: Vec<(libc::__rlimit_resource_t, libc::rlim_t, libc::rlim_t)>,
    switch_to: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
}

impl ChildSetup {
    fn new(opts: &Options, identity: &Identity) -> ChildSetup {
        let mut limits = vec![(libc::RLIMIT_CORE, 0, 0)];
        if opts.nproc > 0 {
            limits.push((libc::RLIMIT_NPROC, opts.nproc, opts.nproc));
        }
        if opts.fsize > 0 {
            limits.push((libc::RLIMIT_FSIZE, opts.fsize, opts.fsize));
        }
        if opts.address_space > 0 {
            limits.push((libc::RLIMIT_AS, opts.address_space, opts.address_space));
        }
        if opts.cpu > 0 {
            // A backstop per process; the whole job's CPU time is watched by the
            // autodriver, which normally stops it first.
            limits.push((libc::RLIMIT_CPU, opts.cpu + 1, opts.cpu + 2));
        }
        ChildSetup {
            limits,
            switch_to: identity
                .switch
                .then(|| (identity.uid, identity.gid, identity.groups.clone())),
        }
    }

    /// Runs in the child after fork: new session, limits, the grading user's ids, and death
    /// with the autodriver.
    fn apply(&self) -> io::Result<()> {
        let check = |r: libc::c_int| {
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: async-signal-safe system calls on memory owned by `self`.
        unsafe {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            check(libc::sigprocmask(
                libc::SIG_SETMASK,
                &none,
                std::ptr::null_mut(),
            ))?;
            check(libc::setsid())?;
            for &(resource, soft, hard) in &self.limits {
                let mut limit = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(resource, &limit) < 0 {
                    // Raising a hard limit needs privilege (a container without
                    // CAP_SYS_RESOURCE). A limit means "at most N", and the one in force is
                    // already lower, so keep it rather than fail every job.
                    let err = io::Error::last_os_error();
                    if err.raw_os_error() != Some(libc::EPERM) {
                        return Err(err);
                    }
                    let mut current: libc::rlimit = std::mem::zeroed();
                    check(libc::getrlimit(resource, &mut current))?;
                    limit.rlim_max = hard.min(current.rlim_max);
                    limit.rlim_cur = soft.min(limit.rlim_max);
                    check(libc::setrlimit(resource, &limit))?;
                }
            }
            if let Some((uid, gid, groups)) = &self.switch_to {
                check(libc::setgroups(groups.len(), groups.as_ptr()))?;
                check(libc::setresgid(*gid, *gid, *gid))?;
                check(libc::setresuid(*uid, *uid, *uid))?;
            }
            // After the uid change, which would clear it.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        }
        Ok(())
    }
}

/// `make` from PATH, else `/usr/bin/make` (Tango's path).
fn find_make() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|d| d.join("make"))
        .find(|p| is_executable(p))
        .unwrap_or_else(|| PathBuf::from("/usr/bin/make"))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Reads what the pipe holds now into `capture`; `true` at end of file.
fn drain(fd: RawFd, capture: &mut Capture) -> io::Result<bool> {
    let mut buf = [0u8; 64 * 1024];
    // SAFETY: the descriptor stays open for the File's life; ManuallyDrop keeps it open after.
    let mut file = std::mem::ManuallyDrop::new(unsafe { fs::File::from_raw_fd(fd) });
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => capture.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn poll(fds: &mut [libc::pollfd], wait: Duration) {
    let ms = wait.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: poll on a valid array of pollfds. EINTR and errors just end the wait.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}

/// A descriptor that pins process `pid` (Linux 5.3 and later).
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a non-negative result is a descriptor we now own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// SIGINT, SIGTERM and SIGHUP, blocked and read from a signalfd, so that a stopped
/// autodriver still kills the job and cleans up.
struct StopSignals {
    fd: OwnedFd,
}

impl StopSignals {
    fn block() -> io::Result<StopSignals> {
        // SAFETY: sigset manipulation and signalfd on a set we own.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, sig);
            }
            if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(StopSignals {
                fd: OwnedFd::from_raw_fd(fd),
            })
        }
    }

    /// A pending stop signal, if any.
    fn take(&self) -> Option<i32> {
        // SAFETY: reading one siginfo into a buffer of its size.
        unsafe {
            let mut info: libc::signalfd_siginfo = std::mem::zeroed();
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            let n = libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            );
            (n == size as isize).then_some(info.ssi_signo as i32)
        }
    }
}
