//! The job's processes: finding them in `/proc`, measuring them, and killing every one.
//!
//! A job's processes are those of its uid (when it has one to itself) and every descendant
//! of the autodriver. The autodriver is a child subreaper, so a daemonised child (double
//! fork, `setsid`) stays its descendant and cannot slip away by leaving the process group or
//! session. To kill a job, [`kill_uid`] sends SIGKILL to every process of the uid at once
//! with `kill(-1)` from a helper thread running as that uid: the kernel does this under the
//! task list lock, so a fork bomb cannot outrun it the way it outruns a scan-and-kill loop.
//!
//! The autodriver finds and kills its job's processes with these; the `local` backend uses
//! [`sweep_uid`] to clear a machine's uid from the host.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

/// What `/proc/PID/status` says about one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStatus {
    pub pid: i32,
    pub ppid: i32,
    /// `R`, `S`, `Z`, ...
    pub state: char,
    /// Real, effective, saved and filesystem uids.
    pub uids: [u32; 4],
    /// Peak virtual memory size, bytes (0 for kernel threads and zombies).
    pub vm_peak: u64,
}

impl ProcStatus {
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }

    /// Whether a process running as `uid` may signal it: its real or saved uid is `uid`
    /// (the kernel's rule, so set-user-ID programs the job started count as the job's).
    pub fn belongs_to(&self, uid: u32) -> bool {
        self.uids[0] == uid || self.uids[2] == uid
    }
}

/// Parses the text of `/proc/PID/status`.
pub fn parse_status(pid: i32, text: &str) -> Option<ProcStatus> {
    let mut ppid = None;
    let mut state = None;
    let mut uids = None;
    let mut vm_peak = 0;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "State" => state = value.chars().next(),
            "PPid" => ppid = value.parse().ok(),
            "Uid" => {
                let v: Vec<u32> = value
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                if v.len() == 4 {
                    uids = Some([v[0], v[1], v[2], v[3]]);
                }
            }
            "VmPeak" => {
                vm_peak = value
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0)
                    * 1024;
            }
            _ => {}
        }
    }
    Some(ProcStatus {
        pid,
        ppid: ppid?,
        state: state?,
        uids: uids?,
        vm_peak,
    })
}

/// The ids of every process now (a process may be gone by the time it is read).
pub fn list_pids() -> io::Result<Vec<i32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        if let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

pub fn read_status(pid: i32) -> Option<ProcStatus> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status(pid, &text)
}

/// Every process now, by pid.
pub fn snapshot() -> io::Result<HashMap<i32, ProcStatus>> {
    Ok(list_pids()?
        .into_iter()
        .filter_map(|pid| read_status(pid).map(|s| (pid, s)))
        .collect())
}

/// Which processes are a job's.
#[derive(Debug, Clone, Copy)]
pub struct Scope {
    /// Descendants of this process (the autodriver) are the job's.
    pub ancestor: i32,
    /// So is every process of this uid, when the job has it to itself.
    pub uid: Option<u32>,
}

/// The job's processes in a snapshot, zombies included.
pub fn job_processes(all: &HashMap<i32, ProcStatus>, scope: Scope) -> Vec<ProcStatus> {
    let mut is_descendant: HashMap<i32, bool> = HashMap::new();
    let mut found = Vec::new();
    for (&pid, status) in all {
        if pid == scope.ancestor {
            continue;
        }
        let by_uid = scope.uid.is_some_and(|uid| status.belongs_to(uid));
        if by_uid || descends_from(all, pid, scope.ancestor, &mut is_descendant) {
            found.push(status.clone());
        }
    }
    found
}

fn descends_from(
    all: &HashMap<i32, ProcStatus>,
    pid: i32,
    ancestor: i32,
    memo: &mut HashMap<i32, bool>,
) -> bool {
    // Walk up the parent chain, then record the answer for every process on it.
    let mut chain = Vec::new();
    let mut at = pid;
    let answer = loop {
        if let Some(&known) = memo.get(&at) {
            break known;
        }
        let Some(status) = all.get(&at) else {
            break false;
        };
        chain.push(at);
        if status.ppid == ancestor {
            break true;
        }
        if status.ppid <= 1 || chain.len() > all.len() {
            break false;
        }
        at = status.ppid;
    };
    for p in chain {
        memo.insert(p, answer);
    }
    answer
}

/// Clock ticks per second, for `/proc/PID/stat` times.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// CPU ticks a process and its reaped children used: utime + stime + cutime + cstime.
pub fn cpu_ticks(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&text)
}

/// The CPU fields of a `/proc/PID/stat` line. The command name may hold spaces and
/// parentheses, so fields are counted from its last `)`.
pub fn parse_stat_cpu(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
    // cmajflt utime stime cutime cstime ...
    let mut sum = 0u64;
    for i in 11..=14 {
        sum += fields.get(i)?.parse::<i64>().ok()?.max(0) as u64;
    }
    Some(sum)
}

/// Sends SIGKILL to every process of `uid` (real or saved uid), atomically: a helper thread
/// takes `uid:gid` as its own credentials and calls `kill(-1, SIGKILL)`. Needs root.
///
/// Linux credentials belong to each thread; glibc's `setresuid` changes every thread of the
/// process, so the helper uses the raw system calls, which change only itself, and then
/// ends. No process is forked: the job's resource accounting stays the job's, and it is safe
/// in a multi-threaded program.
pub fn kill_uid(uid: u32, gid: u32) -> io::Result<()> {
    if uid == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to kill every process of root",
        ));
    }
    let helper =
        std::thread::Builder::new()
            .name("kill-uid".into())
            .spawn(move || -> io::Result<()> {
                // SAFETY: raw credential system calls that affect only this thread, which ends
                // right after.
                unsafe {
                    let ok = libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>())
                        == 0
                        && libc::syscall(libc::SYS_setresgid, gid, gid, gid) == 0
                        && libc::syscall(libc::SYS_setresuid, uid, uid, uid) == 0;
                    if !ok {
                        return Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            format!(
                                "could not switch to uid {uid} to kill its processes: {}",
                                io::Error::last_os_error()
                            ),
                        ));
                    }
                    // ESRCH (nothing to kill) is the common, happy case.
                    libc::kill(-1, libc::SIGKILL);
                }
                Ok(())
            })?;
    helper
        .join()
        .map_err(|_| io::Error::other("the kill helper thread panicked"))?
}

/// [`kill_uid`] for a loop that kills until nothing is left: when no thread can be made for
/// the helper (EAGAIN: the job has used up the pids limit of its container, which counts
/// threads too), this round is skipped, not failed. The caller's other kills free some, and
/// its next round tries again within its deadline.
pub fn kill_uid_in_round(uid: u32, gid: u32) -> io::Result<()> {
    match kill_uid(uid, gid) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        other => other,
    }
}

/// Live (not zombie) processes of `uid` now.
pub fn live_processes_of(uid: u32) -> io::Result<Vec<ProcStatus>> {
    Ok(snapshot()?
        .into_values()
        .filter(|s| s.belongs_to(uid) && !s.is_zombie())
        .collect())
}

/// Kills every process of `uid` and waits until none is left alive, at most `max`.
/// Needs root.
///
/// Kills first and looks after: a uid with nothing left (the usual case: the last job on
/// it was swept when it ended) costs one scan of `/proc`, which reads every process's
/// status and takes milliseconds beside a fork bomb.
pub fn sweep_uid(uid: u32, gid: u32, max: Duration) -> io::Result<()> {
    let deadline = Instant::now() + max;
    loop {
        kill_uid_in_round(uid, gid)?;
        let left = live_processes_of(uid)?;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} processes of uid {uid} survived SIGKILL (pids {:?})",
                    left.len(),
                    left.iter().map(|s| s.pid).take(10).collect::<Vec<_>>()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\n\
        Ngid:\t0\nPid:\t42\nPPid:\t7\nTracerPid:\t0\nUid:\t1001\t1001\t1001\t1001\n\
        Gid:\t1002\t1002\t1002\t1002\nVmPeak:\t    8192 kB\nVmSize:\t    8000 kB\n";

    #[test]
    fn parses_status() {
        let s = parse_status(42, STATUS).unwrap();
        assert_eq!(s.ppid, 7);
        assert_eq!(s.state, 'S');
        assert_eq!(s.uids, [1001; 4]);
        assert_eq!(s.vm_peak, 8192 * 1024);
        assert!(s.belongs_to(1001));
        assert!(!s.belongs_to(0));
        assert!(!s.is_zombie());
    }

    #[test]
    fn parses_stat_with_awkward_names() {
        let line = "42 (a) b (c)) S 7 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0";
        assert_eq!(parse_stat_cpu(line), Some(250 + 50 + 7 + 3));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    fn status(pid: i32, ppid: i32, uid: u32) -> ProcStatus {
        ProcStatus {
            pid,
            ppid,
            state: 'S',
            uids: [uid; 4],
            vm_peak: 0,
        }
    }

    #[test]
    fn job_is_descendants_and_the_uid() {
        let all: HashMap<i32, ProcStatus> = [
            status(1, 0, 0),
            status(10, 1, 0),     // the autodriver
            status(11, 10, 5),    // make
            status(12, 11, 5),    // its child
            status(13, 10, 0),    // a root descendant (a set-uid program, say)
            status(20, 1, 5),     // same uid, elsewhere
            status(30, 1, 0),     // unrelated
            status(31, 30, 1000), // unrelated
        ]
        .into_iter()
        .map(|s| (s.pid, s))
        .collect();
        let pids = |uid| -> Vec<i32> {
            let mut v: Vec<i32> = job_processes(&all, Scope { ancestor: 10, uid })
                .into_iter()
                .map(|s| s.pid)
                .collect();
            v.sort();
            v
        };
        assert_eq!(pids(Some(5)), vec![11, 12, 13, 20]);
        assert_eq!(pids(None), vec![11, 12, 13]);
    }
}
