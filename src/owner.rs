//! Who owns a machine: the identity of the manager process that made it, and whether that
//! process still runs.
//!
//! An owner id is `<hostname>-<pid>.<start>-<4 hex digits>`, where `<start>` is the process's
//! start time (clock ticks since boot, `/proc/<pid>/stat`), so a pid reused by another process
//! is not taken for the owner. Backends label each machine with it. The start-up sweep may
//! destroy another owner's machine only when that owner is known to be gone: on this host,
//! its process is not running; elsewhere, only a shared store can say (its lease ran out).
//! A live owner's machines are never touched, whatever store each daemon uses.

/// What can be known of an owner from this host alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Its process runs on this host.
    Running,
    /// It was on this host and its process is gone (or the pid now names another process).
    Gone,
    /// Another host's, or an id this build cannot read: only a shared store can tell.
    Unknown,
}

/// This process's owner id.
pub fn owner_id() -> String {
    let pid = std::process::id();
    format!(
        "{}-{pid}.{}-{:04x}",
        hostname(),
        start_time(pid).unwrap_or(0),
        rand::random::<u16>()
    )
}

/// Whether `owner`'s process still runs, as far as this host can tell.
pub fn liveness(owner: &str) -> Liveness {
    let Some((host, pid, start)) = parse(owner) else {
        return Liveness::Unknown;
    };
    if host != hostname() {
        return Liveness::Unknown;
    }
    match start_time(pid) {
        Some(now) if now == start => Liveness::Running,
        // Unreadable start time when the id was made: the pid alone says it may run.
        Some(_) if start == 0 => Liveness::Running,
        _ => Liveness::Gone,
    }
}

/// `(host, pid, start)` of an owner id.
fn parse(owner: &str) -> Option<(&str, u32, u64)> {
    let (head, tail) = owner.rsplit_once('-')?;
    if tail.len() != 4 || !tail.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let (host, process) = head.rsplit_once('-')?;
    let (pid, start) = process.split_once('.')?;
    Some((host, pid.parse().ok()?, start.parse().ok()?))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The start time of process `pid` (field 22 of `/proc/<pid>/stat`), if it runs.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces and ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_ids_name_the_process_and_read_back() {
        let id = owner_id();
        let (host, pid, start) = parse(&id).expect("parses");
        assert_eq!(host, hostname());
        assert_eq!(pid, std::process::id());
        assert!(start > 0, "{id}");
        assert_eq!(liveness(&id), Liveness::Running);
    }

    #[test]
    fn a_gone_or_reused_pid_is_gone_and_other_hosts_are_unknown() {
        let host = hostname();
        let pid = std::process::id();
        let start = start_time(pid).expect("our start time");
        // Our pid with another start time: a reused pid.
        assert_eq!(
            liveness(&format!("{host}-{pid}.{}-abcd", start + 1)),
            Liveness::Gone
        );
        // A pid beyond any pid_max.
        assert_eq!(
            liveness(&format!("{host}-99999999.{start}-abcd")),
            Liveness::Gone
        );
        assert_eq!(
            liveness(&format!("elsewhere-{pid}.{start}-abcd")),
            Liveness::Unknown
        );
        // The old form, without a start time.
        assert_eq!(liveness(&format!("{host}-{pid}-abcd")), Liveness::Unknown);
    }
}
