//! Watching make: its output into the [`Capture`], its time, CPU and memory against the
//! limits, the demotion of a job that runs a while, stop signals sent to the autodriver;
//! then killing every process of the job, however the watch ended.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use super::cli::Options;
use super::identity::Identity;
use super::make::{Make, drain, pidfd_open, poll, pollfd};
use super::output::Capture;
use super::{AutodriverError, os_error};
use crate::host::procs::{self, Scope};

/// How long killing the job's processes may take before the autodriver gives up (exit 3).
pub(super) const KILL_PATIENCE: Duration = Duration::from_secs(10);

/// How long to wait for the output pipe to close once every process of the job is dead (a
/// process outside the job could hold it, if the job passed it on).
const DRAIN_PATIENCE: Duration = Duration::from_secs(2);

/// How often CPU time and memory are sampled when `-c` or `-a` is given.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Why make stopped before it ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    Timeout,
    Cpu,
    /// The autodriver itself was told to stop.
    Signal(i32),
}

/// What watching make found.
#[derive(Default)]
pub(super) struct Watched {
    /// make's raw wait status.
    pub(super) make_status: Option<i32>,
    /// Raw wait statuses of other processes the autodriver reaped (orphans of the job).
    pub(super) deaths: Vec<i32>,
    pub(super) stop: Option<Stop>,
    pub(super) wall: Duration,
    pub(super) max_vm_peak: u64,
    pub(super) killed: u64,
}

/// Starts make, feeds its output to `capture` until it ends or a limit fires, then kills
/// every process of the job and drains the pipe.
pub(super) fn watch(
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
        wait_for_news(make, watcher.signals, schedule.wait(now, longest));

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

/// Sleeps until make writes or ends, a stop signal comes, or `wait` passes.
fn wait_for_news(make: &Make, signals: &StopSignals, wait: Duration) {
    let mut fds = Vec::with_capacity(3);
    if let Some(p) = &make.pipe {
        fds.push(pollfd(p.as_raw_fd()));
    }
    if let Some(p) = &make.pidfd {
        fds.push(pollfd(p.as_raw_fd()));
    }
    fds.push(pollfd(signals.fd.as_raw_fd()));
    poll(&mut fds, wait);
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

/// CPU seconds and the largest resident set of every reaped descendant.
pub(super) fn children_usage() -> (f64, u64) {
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
pub(super) fn take_own_session() -> bool {
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
