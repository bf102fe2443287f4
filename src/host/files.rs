//! The job's files: handing the grading directory to the job's user, creating the
//! autodriver's own files where the job cannot touch them, and removing what the job left.
//!
//! Every walk here uses `lstat` and never follows a symbolic link or crosses into another
//! file system: a job that plants `link -> /etc` gets its link removed, not `/etc`.
//!
//! The autodriver does all three around each job; the `local` backend empties a machine's
//! grading directory with [`clear_dir`] and sweeps a destroyed machine's uid with [`sweep_uid`].

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, lchown};
use std::path::Path;

/// Where a job may leave files outside its directory, for [`sweep_uid`] (Tango: `~autograde`,
/// `/tmp`, `/var/tmp`; the job's home here is its directory, which is emptied anyway).
const SWEPT_DIRS: &[&str] = &["/tmp", "/var/tmp", "/dev/shm"];

/// A file's identity, to leave the autodriver's own files alone in walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// How deep walks go; a job that nests deeper leaves its deepest files behind, and the
/// walk stays bounded.
const MAX_DEPTH: usize = 64;

/// Creates `path` afresh for the autodriver (mode 0600, read and write): whatever was there
/// (a file or a link a job left) is unlinked first, and the new file is created with
/// `O_EXCL | O_NOFOLLOW`, so we never write through a link.
pub fn create_private(path: &Path) -> io::Result<File> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} is a directory", path.display()),
            ));
        }
        Ok(_) => fs::remove_file(path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Gives `dir` and everything in it to `uid:gid` (`chown -R`, without following links or
/// leaving `dir`'s file system). Entries in `skip` keep their owner. With `only_owned_by`,
/// only entries owned by that uid change hands (a set-user-ID autodriver touches only what
/// its caller owns).
pub fn chown_tree(
    dir: &Path,
    uid: u32,
    gid: u32,
    only_owned_by: Option<u32>,
    skip: &[FileId],
) -> io::Result<()> {
    let top = fs::symlink_metadata(dir)?;
    chown_walk(dir, &top, top.dev(), uid, gid, only_owned_by, skip, 0)
}

#[allow(clippy::too_many_arguments)]
fn chown_walk(
    path: &Path,
    meta: &fs::Metadata,
    dev: u64,
    uid: u32,
    gid: u32,
    only_owned_by: Option<u32>,
    skip: &[FileId],
    depth: usize,
) -> io::Result<()> {
    if skip.contains(&FileId::of(meta)) || meta.dev() != dev {
        return Ok(());
    }
    if only_owned_by.is_none_or(|owner| meta.uid() == owner) {
        lchown(path, Some(uid), Some(gid))?;
    }
    if meta.is_dir() && depth < MAX_DEPTH {
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let child = entry.path();
            let child_meta = fs::symlink_metadata(&child)?;
            chown_walk(
                &child,
                &child_meta,
                dev,
                uid,
                gid,
                only_owned_by,
                skip,
                depth + 1,
            )?;
        }
    }
    Ok(())
}

/// What [`clear_dir`] and [`remove_files_of_uid`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removal {
    /// Entries removed (a directory counts once, with all it held).
    pub removed: u64,
    /// A regular file at least `capped_at` bytes long was among them: the file-size limit
    /// stopped a write.
    pub saw_capped_file: bool,
}

/// Removes everything in `dir` but `dir` itself and the entries in `skip`.
pub fn clear_dir(dir: &Path, skip: &[FileId], capped_at: Option<u64>) -> io::Result<Removal> {
    let mut removal = Removal::default();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if skip.contains(&FileId::of(&meta)) {
            continue;
        }
        if meta.is_dir() {
            removal.saw_capped_file |= has_capped_file(&path, capped_at, 0);
            // remove_dir_all opens each level with O_NOFOLLOW: links inside are unlinked,
            // never followed.
            fs::remove_dir_all(&path)?;
        } else {
            removal.saw_capped_file |= is_capped(&meta, capped_at);
            fs::remove_file(&path)?;
        }
        removal.removed += 1;
    }
    Ok(removal)
}

fn is_capped(meta: &fs::Metadata, capped_at: Option<u64>) -> bool {
    capped_at.is_some_and(|cap| cap > 0 && meta.is_file() && meta.len() >= cap)
}

fn has_capped_file(dir: &Path, capped_at: Option<u64>, depth: usize) -> bool {
    if capped_at.is_none() || depth >= MAX_DEPTH {
        return false;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let Ok(meta) = fs::symlink_metadata(entry.path()) else {
            return false;
        };
        if meta.is_dir() {
            has_capped_file(&entry.path(), capped_at, depth + 1)
        } else {
            is_capped(&meta, capped_at)
        }
    })
}

/// Removes what `uid` owns under each of `roots` (e.g. `/tmp`, `/var/tmp`, `/dev/shm`): an
/// entry owned by `uid` goes with all it holds; other directories are searched. Stays on
/// each root's file system; missing roots are skipped. Errors on single entries are
/// ignored (the walk goes on), as `find -delete` would.
pub fn remove_files_of_uid(uid: u32, roots: &[&Path], capped_at: Option<u64>) -> Removal {
    let mut removal = Removal::default();
    for root in roots {
        let Ok(meta) = fs::symlink_metadata(root) else {
            continue;
        };
        if meta.is_dir() {
            remove_owned_in(root, meta.dev(), uid, capped_at, 0, &mut removal);
        }
    }
    removal
}

/// Removes what `uid` owns in the places a job leaves files outside its directory
/// ([`remove_files_of_uid`] on `/tmp`, `/var/tmp` and `/dev/shm`).
pub fn sweep_uid(uid: u32, capped_at: Option<u64>) -> Removal {
    let roots: Vec<&Path> = SWEPT_DIRS.iter().map(Path::new).collect();
    remove_files_of_uid(uid, &roots, capped_at)
}

fn remove_owned_in(
    dir: &Path,
    dev: u64,
    uid: u32,
    capped_at: Option<u64>,
    depth: usize,
    removal: &mut Removal,
) {
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.uid() == uid {
            let gone = if meta.is_dir() {
                removal.saw_capped_file |= has_capped_file(&path, capped_at, 0);
                fs::remove_dir_all(&path)
            } else {
                removal.saw_capped_file |= is_capped(&meta, capped_at);
                fs::remove_file(&path)
            };
            if gone.is_ok() {
                removal.removed += 1;
            }
        } else if meta.is_dir() {
            remove_owned_in(&path, dev, uid, capped_at, depth + 1, removal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn create_private_replaces_a_planted_link_without_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let log = dir.path().join("output.log");
        symlink(&victim, &log).unwrap();
        let mut f = create_private(&log).unwrap();
        io::Write::write_all(&mut f, b"new").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert!(!fs::symlink_metadata(&log).unwrap().file_type().is_symlink());
        assert_eq!(fs::metadata(&log).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn clear_dir_unlinks_links_and_keeps_skipped_files() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("keep"), b"x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("a/b")).unwrap();
        fs::write(d.join("a/b/big"), vec![0u8; 100]).unwrap();
        symlink(outside.path(), d.join("link")).unwrap();
        symlink(outside.path(), d.join("a/link")).unwrap();
        fs::write(d.join("mine"), b"ours").unwrap();
        let mine = FileId::of(&fs::metadata(d.join("mine")).unwrap());
        let removal = clear_dir(d, &[mine], Some(100)).unwrap();
        assert_eq!(removal.removed, 2);
        assert!(removal.saw_capped_file);
        let left: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("mine")]);
        assert!(outside.path().join("keep").exists());
    }
}
