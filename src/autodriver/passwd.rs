//! The grading user from `/etc/passwd` and its groups from `/etc/group`, read as files.
//!
//! The autodriver is linked statically so it can be copied into any image; glibc's
//! `getpwnam` would then need the NSS shared libraries at run time, and a stock image's
//! users are in these files anyway. So we parse them ourselves (no NIS, no LDAP).

use std::io;
use std::path::{Path, PathBuf};

pub const PASSWD_FILE: &str = "/etc/passwd";
pub const GROUP_FILE: &str = "/etc/group";

/// One line of the passwd file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Parses one `name:password:uid:gid:gecos:home:shell` line; comments, blank and malformed
/// lines and NIS `+`/`-` entries give `None`.
pub fn parse_passwd_line(line: &str) -> Option<User> {
    let line = line.trim_end_matches(['\n', '\r']);
    if line.is_empty() || line.starts_with('#') || line.starts_with('+') || line.starts_with('-') {
        return None;
    }
    let fields: Vec<&str> = line.split(':').collect();
    if fields.len() < 7 || fields[0].is_empty() {
        return None;
    }
    Some(User {
        name: fields[0].to_string(),
        uid: fields[2].parse().ok()?,
        gid: fields[3].parse().ok()?,
        home: PathBuf::from(fields[5]),
    })
}

/// The first entry named `name` in passwd-file text, as getpwnam finds it.
pub fn find_user(passwd: &str, name: &str) -> Option<User> {
    passwd
        .lines()
        .filter_map(parse_passwd_line)
        .find(|u| u.name == name)
}

/// The first entry with uid `uid`.
pub fn find_uid(passwd: &str, uid: u32) -> Option<User> {
    passwd
        .lines()
        .filter_map(parse_passwd_line)
        .find(|u| u.uid == uid)
}

/// The groups `initgroups(user, primary)` would give: `primary`, then every group of the
/// group file that lists `user` as a member, without repeats.
pub fn groups_of(group: &str, user: &str, primary: u32) -> Vec<u32> {
    let mut gids = vec![primary];
    for line in group.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') || line.starts_with('+') || line.starts_with('-') {
            continue;
        }
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 {
            continue;
        }
        let Ok(gid) = fields[2].parse::<u32>() else {
            continue;
        };
        if fields[3].split(',').any(|m| m.trim() == user) && !gids.contains(&gid) {
            gids.push(gid);
        }
    }
    gids
}

/// Reads a system file; a missing one reads as empty (a stock image may lack `/etc/group`).
pub fn read_file(path: &Path) -> io::Result<String> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
# a comment

nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
+nisuser::::::
broken:x:notanumber:1:gecos:/home/broken:/bin/sh
short:x:5
autograde:x:1001:1002:Autograder,,,:/home/autograde:/bin/bash
autograde:x:2000:2000:shadowed:/elsewhere:/bin/sh
";

    #[test]
    fn finds_the_first_entry_by_name() {
        let u = find_user(PASSWD, "autograde").unwrap();
        assert_eq!(
            u,
            User {
                name: "autograde".into(),
                uid: 1001,
                gid: 1002,
                home: "/home/autograde".into()
            }
        );
    }

    #[test]
    fn skips_comments_nis_and_malformed_lines() {
        assert!(find_user(PASSWD, "broken").is_none());
        assert!(find_user(PASSWD, "short").is_none());
        assert!(find_user(PASSWD, "+nisuser").is_none());
        assert!(find_user(PASSWD, "# a comment").is_none());
        assert!(find_user(PASSWD, "").is_none());
        assert!(find_user(PASSWD, "missing").is_none());
    }

    #[test]
    fn finds_by_uid() {
        assert_eq!(find_uid(PASSWD, 65534).unwrap().name, "nobody");
        assert!(find_uid(PASSWD, 4242).is_none());
    }

    #[test]
    fn handles_crlf_and_empty_fields() {
        let u = parse_passwd_line("ag:x:7:8:::\r\n").unwrap();
        assert_eq!(u.uid, 7);
        assert_eq!(u.home, PathBuf::new());
    }

    #[test]
    fn groups_include_the_primary_and_memberships() {
        let group = "\
root:x:0:
autograde:x:1002:
docker:x:999:alice,autograde
users:x:100: autograde
other:x:50:autogradex
bad:x:zz:autograde
";
        assert_eq!(groups_of(group, "autograde", 1002), vec![1002, 999, 100]);
        assert_eq!(groups_of("", "autograde", 7), vec![7]);
    }
}
