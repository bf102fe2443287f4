//! The job's input files, read as a tar archive from standard input (`--stdin-inputs`) and
//! written into the grading directory.
//!
//! This is how the Docker backend hands a job its files: the autodriver and the inputs travel
//! on the one exec's standard input, which costs nothing like the engine's archive API (see
//! docs/backends.md). The archive comes from the daemon, but it is still checked as if it
//! could come from anyone: only regular files and directories, only relative paths that stay
//! inside the directory, nothing written through a link. Reading stops at the archive's
//! end-of-archive marker, so whoever sends it need not close the stream.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Why the inputs could not be unpacked. Each says which entry and why, for the
/// `Autodriver: ...` line.
#[derive(Debug, thiserror::Error)]
pub enum InputsError {
    #[error("the input archive is damaged: {0}")]
    Damaged(io::Error),
    #[error("the input archive ended before its end-of-archive marker")]
    Truncated,
    #[error("input {path:?} refused: {why}")]
    Refused { path: String, why: &'static str },
    #[error("input {path}: {source}")]
    Write { path: String, source: io::Error },
}

/// What was unpacked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    pub files: u64,
    pub bytes: u64,
}

/// A reader that remembers whether it reached end of file: the tar reader treats end of file
/// at an entry boundary as a clean end, and a sender that died half way must not look like
/// one that sent fewer files.
struct EofAware<R> {
    inner: R,
    hit_eof: bool,
}

impl<R: Read> Read for EofAware<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.hit_eof = true;
        }
        Ok(n)
    }
}

/// Reads an archive from `reader` and writes its files under `dir`, which is created (with
/// its parents) when missing and must not be a symbolic link. Files get the archive's
/// permission bits (without set-id bits); ownership is left to the caller (the autodriver
/// gives the directory to the job's user afterwards).
pub fn unpack(reader: impl Read, dir: &Path) -> Result<Unpacked, InputsError> {
    let write_error = |path: &Path| {
        let path = path.display().to_string();
        move |source| InputsError::Write { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(write_error(dir))?;
    let meta = fs::symlink_metadata(dir).map_err(write_error(dir))?;
    if !meta.is_dir() {
        return Err(InputsError::Refused {
            path: dir.display().to_string(),
            why: "the grading directory is not a directory",
        });
    }

    let mut source = EofAware {
        inner: reader,
        hit_eof: false,
    };
    let mut unpacked = Unpacked::default();
    {
        let mut archive = tar::Archive::new(&mut source);
        let entries = archive.entries().map_err(InputsError::Damaged)?;
        for entry in entries {
            let mut entry = entry.map_err(InputsError::Damaged)?;
            let raw = entry.path().map_err(InputsError::Damaged)?.into_owned();
            let shown = raw.display().to_string();
            let kind = entry.header().entry_type();
            if kind == tar::EntryType::XGlobalHeader {
                continue;
            }
            let relative = inside(&raw).ok_or_else(|| InputsError::Refused {
                path: shown.clone(),
                why: "not a relative path inside the grading directory",
            })?;
            let target = dir.join(&relative);
            if kind.is_dir() {
                if relative.as_os_str().is_empty() {
                    continue;
                }
                make_dirs(dir, &relative).map_err(write_error(&target))?;
            } else if kind.is_file() {
                let Some(name) = relative.file_name().map(PathBuf::from) else {
                    return Err(InputsError::Refused {
                        path: shown,
                        why: "a file needs a name",
                    });
                };
                let parent = relative.parent().unwrap_or(Path::new(""));
                make_dirs(dir, parent).map_err(write_error(&target))?;
                let mode = entry.header().mode().map_err(InputsError::Damaged)? & 0o777;
                let written = write_file(&dir.join(parent).join(name), mode, &mut entry)
                    .map_err(write_error(&target))?;
                unpacked.files += 1;
                unpacked.bytes += written;
            } else {
                return Err(InputsError::Refused {
                    path: shown,
                    why: "only regular files and directories are accepted (no links or devices)",
                });
            }
        }
    }
    if source.hit_eof {
        return Err(InputsError::Truncated);
    }
    Ok(unpacked)
}

/// `path` as a path below the grading directory: only plain names (and `.`), never absolute,
/// never `..`. `None` when it would leave the directory.
fn inside(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Makes `relative`'s directories under `dir`, one component at a time, refusing any that
/// exists as something else than a real directory (a link would lead outside).
fn make_dirs(dir: &Path, relative: &Path) -> io::Result<()> {
    let mut at = dir.to_path_buf();
    for part in relative.components() {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a directory", at.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new().mode(0o755).create(&at)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes one file, never through a link: a symbolic link at `path` makes the open fail, and
/// a file with other hard links is refused (writing it would change another file too).
fn write_file(path: &Path, mode: u32, data: &mut impl Read) -> io::Result<u64> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "exists and is not a plain file of its own",
        ));
    }
    file.set_len(0)?;
    let written = io::copy(data, &mut file)?;
    // The umask may have taken bits away at creation; an existing file kept its old mode.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(build: impl FnOnce(&mut tar::Builder<&mut Vec<u8>>)) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut b = tar::Builder::new(&mut out);
            build(&mut b);
            b.finish().unwrap();
        }
        out
    }

    fn file(b: &mut tar::Builder<&mut Vec<u8>>, path: &str, data: &[u8], mode: u32) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        b.append_data(&mut h, path, data).unwrap();
    }

    #[test]
    fn files_land_with_content_and_mode_and_the_rest_of_the_stream_is_left() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("job");
        let mut bytes = archive(|b| {
            file(b, "Makefile", b"all:\n", 0o644);
            file(b, "sub/run.sh", b"#!/bin/sh\n", 0o4755);
        });
        bytes.extend_from_slice(b"after the archive");
        let mut reader = &bytes[..];
        let got = unpack(&mut reader, &dir).unwrap();
        assert_eq!(got.files, 2);
        assert_eq!(fs::read(dir.join("Makefile")).unwrap(), b"all:\n");
        let mode = fs::metadata(dir.join("sub/run.sh")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o755, "no set-id bits");
        // Nothing past the end-of-archive marker's first block was read.
        assert!(reader.ends_with(b"after the archive"));
    }

    #[test]
    fn an_archive_cut_short_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = archive(|b| file(b, "a", b"1", 0o644));
        // The header and data of `a`, without the end marker.
        let err = unpack(&bytes[..1024], &tmp.path().join("job")).unwrap_err();
        assert!(matches!(err, InputsError::Truncated), "{err}");
    }

    #[test]
    fn paths_out_of_the_directory_and_links_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("job");
        // The tar crate refuses to write `..` and absolute names, so build headers by hand.
        let raw = |name: &str, kind: tar::EntryType| {
            let mut h = tar::Header::new_old();
            h.set_entry_type(kind);
            h.set_size(0);
            h.set_mode(0o644);
            let bytes = h.as_old_mut();
            bytes.name[..name.len()].copy_from_slice(name.as_bytes());
            if kind == tar::EntryType::Symlink {
                bytes.linkname[..4].copy_from_slice(b"/etc");
            }
            h.set_cksum();
            let mut out = h.as_bytes().to_vec();
            out.extend_from_slice(&[0u8; 1024]);
            out
        };
        for (name, kind) in [
            ("../escape", tar::EntryType::Regular),
            ("/abs", tar::EntryType::Regular),
            ("a/../../b", tar::EntryType::Regular),
            ("link", tar::EntryType::Symlink),
            ("hard", tar::EntryType::Link),
            ("fifo", tar::EntryType::Fifo),
        ] {
            let err = unpack(&raw(name, kind)[..], &dir).unwrap_err();
            assert!(matches!(err, InputsError::Refused { .. }), "{name}: {err}");
        }
        assert!(!tmp.path().join("escape").exists());
        assert!(!Path::new("/abs").exists());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn an_existing_link_in_the_directory_is_not_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("job");
        fs::create_dir(&dir).unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("Makefile")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), dir.join("sub")).unwrap();
        let bytes = archive(|b| file(b, "Makefile", b"evil", 0o644));
        assert!(unpack(&bytes[..], &dir).is_err());
        let bytes = archive(|b| file(b, "sub/victim", b"evil", 0o644));
        assert!(unpack(&bytes[..], &dir).is_err());
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
    }
}
