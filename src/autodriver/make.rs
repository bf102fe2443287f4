//! make, the job's first process: started as the job's user, in a session of its own, under
//! the limits, its stdout and stderr into a pipe.
//!
//! The autodriver reads that pipe (into [`Capture`]), so the job never holds a file the
//! autodriver later reads, and output costs neither disk nor memory beyond the output limit.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cli::Options;
use super::identity::Identity;
use super::output::Capture;
use super::{AutodriverError, os_error};

/// make, running: what the watch loop follows.
pub(super) struct Make {
    pub(super) pid: i32,
    /// Pins make's pid, and is readable once make ends (Linux 5.3 and later).
    pub(super) pidfd: Option<OwnedFd>,
    /// The read end of make's stdout and stderr, until end of file.
    pub(super) pipe: Option<OwnedFd>,
    pub(super) started: Instant,
}

impl Make {
    /// Starts make in `dir` as the job's user, under the limits, its stdout and stderr into
    /// a non-blocking pipe.
    pub(super) fn start(
        opts: &Options,
        identity: &Identity,
        dir: &Path,
    ) -> Result<Make, AutodriverError> {
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
pub(super) fn drain(fd: RawFd, capture: &mut Capture) -> io::Result<bool> {
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

pub(super) fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

pub(super) fn poll(fds: &mut [libc::pollfd], wait: Duration) {
    let ms = wait.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: poll on a valid array of pollfds. EINTR and errors just end the wait.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}

/// A descriptor that pins process `pid` (Linux 5.3 and later).
pub(super) fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a non-negative result is a descriptor we now own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
