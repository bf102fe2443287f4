//! Who the job runs as, and what the autodriver may do to get there.
//!
//! Three ways to start the autodriver:
//! - **as root** (a backend's `docker exec`, or the `local` backend): it drops to the grading
//!   user itself. `--uid/--gid` name a numeric id (which need not exist anywhere: backends
//!   give each concurrent machine its own); otherwise `--user` (default `autograde`) is
//!   looked up in `/etc/passwd`; if it is not there, the job runs as 65534:65534 (`nobody`
//!   in most images), so a stock image works.
//! - **set-user-ID root, by another user** (how Tango installs it): only the built-in
//!   `autograde` user is allowed, it must exist, and paths the caller names are opened with
//!   the caller's file-system rights. The caller cannot pick another uid to run as or to
//!   kill, nor make root write a file of its choosing.
//! - **unprivileged**: it cannot switch users, so make runs as the caller (for trying a job
//!   by hand). Killing and cleaning then stay within the job's own process tree and
//!   directory.
//!
//! In every mode it refuses to run as the grading user itself (Tango's rule), and it never
//! runs a job as root.

use super::passwd::{self, User};

/// The grading user Tango's autodriver hard-coded.
pub const DEFAULT_USER: &str = "autograde";
/// The id a job runs as, as root, when the grading user does not exist.
pub const FALLBACK_ID: u32 = 65534;

/// The autodriver's privileges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Root,
    /// Set-user-ID root: real ids are the caller's.
    Setuid {
        caller_uid: u32,
        caller_gid: u32,
    },
    Unprivileged {
        uid: u32,
        gid: u32,
    },
}

impl Mode {
    pub fn current() -> Mode {
        // SAFETY: these calls cannot fail.
        let (ruid, euid, rgid) = unsafe { (libc::getuid(), libc::geteuid(), libc::getgid()) };
        match (ruid, euid) {
            (0, 0) => Mode::Root,
            (_, 0) => Mode::Setuid {
                caller_uid: ruid,
                caller_gid: rgid,
            },
            _ => Mode::Unprivileged {
                uid: ruid,
                gid: rgid,
            },
        }
    }
}

/// Who the job runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the primary group first).
    pub groups: Vec<u32>,
    /// The user's name, when it has one (for `USER` and `LOGNAME`).
    pub name: Option<String>,
    /// The child switches to `uid:gid` before running make.
    pub switch: bool,
    /// The uid is the job's alone: every process of it is killed and every file of it
    /// removed after the job.
    pub owns_uid: bool,
}

/// What the user asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub user: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// Why the job cannot run as asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// Exit 1, as Tango.
    #[error("{0}")]
    Usage(String),
    /// Exit 3, as Tango.
    #[error("{0}")]
    Os(String),
}

/// Decides who runs the job, from the mode, the request and the passwd and group files.
pub fn resolve(
    mode: Mode,
    request: &Request,
    passwd_text: &str,
    group_text: &str,
) -> Result<Identity, IdentityError> {
    if request.uid.is_some() != request.gid.is_some() {
        return Err(IdentityError::Usage("--uid and --gid go together".into()));
    }
    let named = |name: &str, user: User| Identity {
        groups: passwd::groups_of(group_text, name, user.gid),
        uid: user.uid,
        gid: user.gid,
        name: Some(user.name),
        switch: true,
        owns_uid: true,
    };
    let identity = match mode {
        Mode::Root => {
            if let (Some(uid), Some(gid)) = (request.uid, request.gid) {
                Identity {
                    uid,
                    gid,
                    groups: vec![gid],
                    name: passwd::find_uid(passwd_text, uid).map(|u| u.name),
                    switch: true,
                    owns_uid: true,
                }
            } else {
                let name = request.user.as_deref().unwrap_or(DEFAULT_USER);
                match passwd::find_user(passwd_text, name) {
                    Some(user) => named(name, user),
                    None => Identity {
                        uid: FALLBACK_ID,
                        gid: FALLBACK_ID,
                        groups: vec![FALLBACK_ID],
                        name: passwd::find_uid(passwd_text, FALLBACK_ID).map(|u| u.name),
                        switch: true,
                        owns_uid: true,
                    },
                }
            }
        }
        Mode::Setuid { caller_uid, .. } => {
            if request.user.is_some() || request.uid.is_some() {
                return Err(IdentityError::Usage(
                    "--user, --uid and --gid need the autodriver to be started by root \
                     (set-user-ID, it runs jobs only as autograde)"
                        .into(),
                ));
            }
            let user = passwd::find_user(passwd_text, DEFAULT_USER)
                .ok_or_else(|| IdentityError::Os("Invalid grading user".into()))?;
            if user.uid == caller_uid {
                return Err(IdentityError::Usage(format!(
                    "This should not be run as the grading user {DEFAULT_USER}"
                )));
            }
            named(DEFAULT_USER, user)
        }
        Mode::Unprivileged { uid, gid } => {
            if let (Some(want_uid), Some(want_gid)) = (request.uid, request.gid)
                && (want_uid, want_gid) != (uid, gid)
            {
                return Err(IdentityError::Os(format!(
                    "cannot run the job as {want_uid}:{want_gid}: the autodriver is not \
                     running as root"
                )));
            }
            let name = request.user.as_deref().unwrap_or(DEFAULT_USER);
            if passwd::find_user(passwd_text, name).is_some_and(|u| u.uid == uid) {
                return Err(IdentityError::Usage(format!(
                    "This should not be run as the grading user {name}"
                )));
            }
            Identity {
                uid,
                gid,
                groups: Vec::new(),
                name: passwd::find_uid(passwd_text, uid).map(|u| u.name),
                switch: false,
                owns_uid: false,
            }
        }
    };
    // Unprivileged with a real uid of 0 (effective uid dropped) would run make as root too.
    if identity.uid == 0 {
        return Err(IdentityError::Usage("refusing to run a job as root".into()));
    }
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
        autograde:x:1001:1001::/home/autograde:/bin/sh\n\
        alice:x:1000:1000::/home/alice:/bin/sh\n";
    const GROUP: &str = "autograde:x:1001:\ngraders:x:3000:autograde\n";

    fn req(user: Option<&str>, ids: Option<(u32, u32)>) -> Request {
        Request {
            user: user.map(String::from),
            uid: ids.map(|i| i.0),
            gid: ids.map(|i| i.1),
        }
    }

    #[test]
    fn root_uses_autograde_with_its_groups() {
        let id = resolve(Mode::Root, &req(None, None), PASSWD, GROUP).unwrap();
        assert_eq!((id.uid, id.gid), (1001, 1001));
        assert_eq!(id.groups, vec![1001, 3000]);
        assert_eq!(id.name.as_deref(), Some("autograde"));
        assert!(id.switch && id.owns_uid);
    }

    #[test]
    fn root_without_the_user_falls_back_to_nobody() {
        let id = resolve(
            Mode::Root,
            &req(None, None),
            "root:x:0:0::/root:/bin/sh\n",
            "",
        )
        .unwrap();
        assert_eq!((id.uid, id.gid), (FALLBACK_ID, FALLBACK_ID));
        assert_eq!(id.name, None);
    }

    #[test]
    fn numeric_ids_need_not_exist() {
        let id = resolve(
            Mode::Root,
            &req(None, Some((2_000_000_005, 2_000_000_005))),
            PASSWD,
            GROUP,
        )
        .unwrap();
        assert_eq!((id.uid, id.gid), (2_000_000_005, 2_000_000_005));
        assert_eq!(id.groups, vec![2_000_000_005]);
        assert_eq!(id.name, None);
    }

    #[test]
    fn never_root() {
        let e = resolve(Mode::Root, &req(None, Some((0, 0))), PASSWD, GROUP).unwrap_err();
        assert!(matches!(e, IdentityError::Usage(_)));
        let e = resolve(Mode::Root, &req(Some("root"), None), PASSWD, GROUP).unwrap_err();
        assert!(matches!(e, IdentityError::Usage(_)));
    }

    #[test]
    fn never_root_even_without_privileges() {
        let half_root = Mode::Unprivileged { uid: 0, gid: 0 };
        assert!(matches!(
            resolve(half_root, &req(None, None), PASSWD, GROUP),
            Err(IdentityError::Usage(_))
        ));
    }

    #[test]
    fn uid_without_gid_is_a_usage_error() {
        let r = Request {
            uid: Some(5),
            ..Request::default()
        };
        assert!(matches!(
            resolve(Mode::Root, &r, PASSWD, GROUP),
            Err(IdentityError::Usage(_))
        ));
    }

    #[test]
    fn setuid_allows_only_autograde() {
        let mode = Mode::Setuid {
            caller_uid: 1000,
            caller_gid: 1000,
        };
        let id = resolve(mode, &req(None, None), PASSWD, GROUP).unwrap();
        assert_eq!(id.uid, 1001);
        for bad in [req(Some("alice"), None), req(None, Some((1000, 1000)))] {
            assert!(matches!(
                resolve(mode, &bad, PASSWD, GROUP),
                Err(IdentityError::Usage(_))
            ));
        }
        assert_eq!(
            resolve(mode, &req(None, None), "root:x:0:0::/:/bin/sh\n", ""),
            Err(IdentityError::Os("Invalid grading user".into()))
        );
        let as_grader = Mode::Setuid {
            caller_uid: 1001,
            caller_gid: 1001,
        };
        assert!(matches!(
            resolve(as_grader, &req(None, None), PASSWD, GROUP),
            Err(IdentityError::Usage(_))
        ));
    }

    #[test]
    fn unprivileged_runs_as_self_but_not_as_the_grader() {
        let me = Mode::Unprivileged {
            uid: 1000,
            gid: 1000,
        };
        let id = resolve(me, &req(None, None), PASSWD, GROUP).unwrap();
        assert_eq!(
            (id.uid, id.gid, id.switch, id.owns_uid),
            (1000, 1000, false, false)
        );
        assert!(resolve(me, &req(None, Some((1000, 1000))), PASSWD, GROUP).is_ok());
        assert!(matches!(
            resolve(me, &req(None, Some((5, 5))), PASSWD, GROUP),
            Err(IdentityError::Os(_))
        ));
        let grader = Mode::Unprivileged {
            uid: 1001,
            gid: 1001,
        };
        assert!(matches!(
            resolve(grader, &req(None, None), PASSWD, GROUP),
            Err(IdentityError::Usage(_))
        ));
    }
}
