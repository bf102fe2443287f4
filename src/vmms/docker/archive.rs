//! Tar archives for containers: the job's inputs as a stream, and one file read back from the
//! engine's archive API with a byte cap.
//!
//! In: a job's input files, written as a stream so a large handin is never held in memory.
//! The stream goes to the exec that runs the autodriver (its `--stdin-inputs` unpacks it into
//! the grading directory), not through the archive API, which costs a helper process per call
//! on the engine (see docs/backends.md).
//! Out (partial output): one regular file, read from the engine's archive with a byte cap;
//! anything else (a symbolic link, a hard link, a device, a directory) is refused, so a job
//! cannot make us read anything but the file we asked for.

use std::io::{self, Read};
use std::path::Path;
use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use crate::model::InputFile;

/// Room for the headers before a file's data in an archive the engine sends (a PAX record
/// and the header itself take a few blocks; this leaves plenty).
const HEADER_ALLOWANCE: u64 = 64 * 1024;

/// A stream of archive bytes, for the request body of an upload.
pub type ArchiveStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Why an archive could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("input file {path}: {source}")]
    Input { path: String, source: io::Error },
    #[error("input name {0:?} is not a plain file name")]
    BadName(String),
    #[error("{path} in the machine is a {kind}, not a regular file; refused")]
    NotRegular { path: String, kind: String },
    #[error("the machine's archive of {path} holds {found:?}, not that file; refused")]
    WrongEntry { path: String, found: String },
    #[error("the machine's archive of {0} is empty")]
    Empty(String),
    #[error("the machine's archive of {path} is damaged: {message}")]
    Damaged { path: String, message: String },
}

/// Ownership of the entries we write.
struct Owner {
    uid: u64,
    gid: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The header block(s) of one entry: a GNU long-name entry first when the path needs it.
fn header_bytes(
    path: &str,
    kind: tar::EntryType,
    size: u64,
    mode: u32,
    owner: &Owner,
) -> io::Result<Vec<u8>> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(owner.uid);
    header.set_gid(owner.gid);
    header.set_mtime(now_secs());
    let mut out = Vec::with_capacity(1024);
    let written = {
        let mut builder = tar::Builder::new(&mut out);
        // An empty reader: only the header (and any long-name entry) is written here; the
        // data follows as a stream. The builder's end-of-archive blocks, written when it
        // drops, are cut off below.
        builder.append_data(&mut header, path, io::empty())?;
        builder.get_ref().len()
    };
    out.truncate(written);
    Ok(out)
}

/// Zeros that round `size` up to a whole block.
fn padding(size: u64) -> Bytes {
    let rest = (512 - size % 512) % 512;
    Bytes::from(vec![0u8; rest as usize])
}

/// The two zero blocks that end an archive.
fn end_of_archive() -> Bytes {
    Bytes::from(vec![0u8; 1024])
}

/// Checks that a name from a job is one plain file name (the grading directory is flat).
pub fn check_input_name(name: &str) -> Result<(), ArchiveError> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0')
        && name.len() <= 255;
    if plain {
        Ok(())
    } else {
        Err(ArchiveError::BadName(name.to_string()))
    }
}

/// Checks a job's inputs without reading them: every name is a plain file name and every
/// local file can be opened and is a regular file. What [`inputs`] will send, checked early so
/// a missing input is found when the job's files are copied in.
pub async fn check_inputs(inputs: &[InputFile]) -> Result<(), ArchiveError> {
    for input in inputs {
        check_input_name(&input.dest_file)?;
        open_input(&input.local_file).await?;
    }
    Ok(())
}

/// Opens one input file on this host; it must be a regular file.
async fn open_input(local: &str) -> Result<(tokio::fs::File, std::fs::Metadata), ArchiveError> {
    let io_error = |source: io::Error| ArchiveError::Input {
        path: local.to_string(),
        source,
    };
    let file = tokio::fs::File::open(local).await.map_err(io_error)?;
    let meta = file.metadata().await.map_err(io_error)?;
    if !meta.is_file() {
        return Err(io_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    Ok((file, meta))
}

/// The job's inputs as an archive to unpack in the grading directory: one entry per input,
/// named `<dest_file>`, owned by the job user, with the host file's permission bits (as
/// Tango's copy kept them) plus the owner's read and write. Every file is opened before the
/// first byte is sent, so a missing input fails here, with its name, rather than half way
/// through.
pub async fn inputs(
    inputs: &[InputFile],
    uid: u32,
    gid: u32,
) -> Result<ArchiveStream, ArchiveError> {
    let owner = Owner {
        uid: u64::from(uid),
        gid: u64::from(gid),
    };
    let io_error = |path: &str, source: io::Error| ArchiveError::Input {
        path: path.to_string(),
        source,
    };
    let mut parts: Vec<ArchiveStream> = Vec::with_capacity(inputs.len() * 3 + 1);
    for input in inputs {
        check_input_name(&input.dest_file)?;
        let local = &input.local_file;
        let (file, meta) = open_input(local).await?;
        let size = meta.len();
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            (meta.permissions().mode() & 0o777) | 0o600
        };
        let header = header_bytes(
            &input.dest_file,
            tar::EntryType::Regular,
            size,
            mode,
            &owner,
        )
        .map_err(|e| io_error(local, e))?;
        parts.push(Box::pin(stream::once(
            async move { Ok(Bytes::from(header)) },
        )));
        // Exactly `size` bytes, as the header says: a file that shrank meanwhile fails the
        // upload instead of shifting every later entry.
        let path = local.clone();
        let data = ReaderStream::new(file.take(size));
        let counted = CountedStream::new(data, size, path);
        parts.push(Box::pin(counted));
        parts.push(Box::pin(stream::once(async move { Ok(padding(size)) })));
    }
    parts.push(Box::pin(stream::once(async { Ok(end_of_archive()) })));
    Ok(Box::pin(stream::iter(parts).flatten()))
}

/// Passes a file's bytes through and fails at the end if fewer came than the header said.
struct CountedStream<S> {
    inner: S,
    expected: u64,
    seen: u64,
    path: String,
    done: bool,
}

impl<S> CountedStream<S> {
    fn new(inner: S, expected: u64, path: String) -> Self {
        CountedStream {
            inner,
            expected,
            seen: 0,
            path,
            done: false,
        }
    }
}

impl<S> Stream for CountedStream<S>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    type Item = io::Result<Bytes>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                self.seen += bytes.len() as u64;
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.done = true;
                if self.seen < self.expected {
                    Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{} shrank while it was being sent ({} of {} bytes)",
                            self.path, self.seen, self.expected
                        ),
                    ))))
                } else {
                    Poll::Ready(None)
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The start of one regular file read from a machine's archive.
#[derive(Debug)]
pub struct FileHead {
    /// At most the cap's worth of the file's first bytes.
    pub data: Vec<u8>,
    /// The file's whole size, as the archive says.
    pub size: u64,
}

/// Reads the archive the engine sends for `path` (its bytes as they arrive from `stream`) and
/// returns the first `max_bytes` of the one regular file in it. Stops reading once it has
/// enough, so a huge file costs no more than the cap. `path` must name the file (its last
/// component is what the archive's entry must be called).
pub async fn read_file<S, E>(
    mut stream: S,
    path: &str,
    max_bytes: u64,
) -> Result<FileHead, ReadError<E>>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    let limit = max_bytes.saturating_add(HEADER_ALLOWANCE);
    let mut buffer: Vec<u8> = Vec::new();
    while (buffer.len() as u64) < limit {
        match stream.next().await {
            Some(Ok(chunk)) => {
                let room = (limit - buffer.len() as u64) as usize;
                buffer.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Some(Err(e)) => return Err(ReadError::Transfer(e)),
            None => break,
        }
    }
    drop(stream);
    parse_file(&buffer, path, max_bytes).map_err(ReadError::Archive)
}

/// Either the transfer failed or what came is not what we accept.
#[derive(Debug)]
pub enum ReadError<E> {
    Transfer(E),
    Archive(ArchiveError),
}

/// The first entry of a (possibly cut-off) archive, if it is the regular file `path` names.
pub fn parse_file(buffer: &[u8], path: &str, max_bytes: u64) -> Result<FileHead, ArchiveError> {
    let damaged = |message: String| ArchiveError::Damaged {
        path: path.to_string(),
        message,
    };
    let want_name = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut archive = tar::Archive::new(buffer);
    let mut entries = archive.entries().map_err(|e| damaged(e.to_string()))?;
    let entry = match entries.next() {
        Some(Ok(entry)) => entry,
        Some(Err(e)) => return Err(damaged(e.to_string())),
        None => return Err(ArchiveError::Empty(path.to_string())),
    };
    let kind = entry.header().entry_type();
    if !kind.is_file() {
        let what = if kind.is_symlink() {
            let target = entry
                .link_name()
                .ok()
                .flatten()
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            format!("symbolic link (to {target:?})")
        } else if kind.is_hard_link() {
            "hard link".to_string()
        } else if kind.is_dir() {
            "directory".to_string()
        } else {
            format!("special file ({kind:?})")
        };
        return Err(ArchiveError::NotRegular {
            path: path.to_string(),
            kind: what,
        });
    }
    let name = entry
        .path()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.trim_end_matches('/') != want_name {
        return Err(ArchiveError::WrongEntry {
            path: path.to_string(),
            found: name,
        });
    }
    let size = entry.size();
    let want = size.min(max_bytes);
    let mut data = Vec::with_capacity(want as usize);
    let mut entry = entry;
    (&mut entry)
        .take(want)
        .read_to_end(&mut data)
        .map_err(|e| damaged(e.to_string()))?;
    if (data.len() as u64) < want {
        return Err(damaged(format!(
            "it ended after {} of {} bytes",
            data.len(),
            want
        )));
    }
    Ok(FileHead { data, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive_of(build: impl FnOnce(&mut tar::Builder<&mut Vec<u8>>)) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut builder = tar::Builder::new(&mut out);
            build(&mut builder);
            builder.finish().unwrap();
        }
        out
    }

    fn file_header(size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(size);
        h.set_mode(0o644);
        h
    }

    #[test]
    fn a_regular_file_is_read_up_to_the_cap() {
        let data = vec![b'x'; 10_000];
        let ar = archive_of(|b| {
            b.append_data(&mut file_header(10_000), "feedback", &data[..])
                .unwrap()
        });
        let head = parse_file(&ar, "/tango/feedback", 100).unwrap();
        assert_eq!(head.size, 10_000);
        assert_eq!(head.data, vec![b'x'; 100]);
        let head = parse_file(&ar, "/tango/feedback", 1 << 20).unwrap();
        assert_eq!(head.data.len(), 10_000);
    }

    #[test]
    fn links_directories_and_devices_are_refused() {
        let symlink = archive_of(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "feedback", "/etc/shadow").unwrap();
        });
        let err = parse_file(&symlink, "/tango/feedback", 100).unwrap_err();
        assert!(matches!(err, ArchiveError::NotRegular { .. }), "{err}");
        assert!(err.to_string().contains("/etc/shadow"), "{err}");

        let hard = archive_of(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            b.append_link(&mut h, "feedback", "etc/passwd").unwrap();
        });
        let err = parse_file(&hard, "/tango/feedback", 100).unwrap_err();
        assert!(err.to_string().contains("hard link"), "{err}");

        let dir = archive_of(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(0o755);
            b.append_data(&mut h, "feedback/", io::empty()).unwrap();
        });
        let err = parse_file(&dir, "/tango/feedback", 100).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");

        let fifo = archive_of(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Fifo);
            h.set_size(0);
            b.append_data(&mut h, "feedback", io::empty()).unwrap();
        });
        let err = parse_file(&fifo, "/tango/feedback", 100).unwrap_err();
        assert!(err.to_string().contains("special file"), "{err}");
    }

    #[test]
    fn another_name_or_nothing_is_refused() {
        let other = archive_of(|b| {
            b.append_data(&mut file_header(3), "shadow", &b"abc"[..])
                .unwrap()
        });
        assert!(matches!(
            parse_file(&other, "/tango/feedback", 100),
            Err(ArchiveError::WrongEntry { .. })
        ));
        assert!(matches!(
            parse_file(&[0u8; 1024], "/tango/feedback", 100),
            Err(ArchiveError::Empty(_))
        ));
    }

    #[test]
    fn a_cut_off_archive_is_damaged_not_short() {
        let data = vec![b'y'; 4096];
        let ar = archive_of(|b| {
            b.append_data(&mut file_header(4096), "feedback", &data[..])
                .unwrap()
        });
        let err = parse_file(&ar[..512 + 100], "/tango/feedback", 4096).unwrap_err();
        assert!(matches!(err, ArchiveError::Damaged { .. }), "{err}");
    }

    #[tokio::test]
    async fn read_file_stops_at_the_cap() {
        // A "stream" that would go on for 100 MB: reading must stop near the cap.
        let big = vec![b'z'; 1 << 20];
        let mut header = file_header(100 << 20);
        header.set_path("feedback").unwrap();
        header.set_cksum();
        let first = Bytes::from(header.as_bytes().to_vec());
        let chunks = std::iter::once(first).chain(std::iter::repeat_n(Bytes::from(big), 100));
        let pulled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = pulled.clone();
        let s = stream::iter(chunks).map(move |c| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, io::Error>(c)
        });
        let head = read_file(Box::pin(s), "/x/feedback", 1000).await.unwrap();
        assert_eq!(head.data.len(), 1000);
        assert_eq!(head.size, 100 << 20);
        assert!(pulled.load(std::sync::atomic::Ordering::Relaxed) <= 2);
    }

    #[tokio::test]
    async fn inputs_make_a_valid_archive_with_long_names() {
        let dir = tempfile::tempdir().unwrap();
        let long = "n".repeat(200);
        let a = dir.path().join("a");
        std::fs::write(&a, b"first file").unwrap();
        let b = dir.path().join("b");
        std::fs::write(&b, vec![7u8; 1000]).unwrap();
        let list = vec![
            InputFile {
                local_file: a.display().to_string(),
                dest_file: "Makefile".into(),
            },
            InputFile {
                local_file: b.display().to_string(),
                dest_file: long.clone(),
            },
        ];
        let s = inputs(&list, 4242, 4243).await.unwrap();
        let bytes: Vec<u8> = s.map(|c| c.unwrap()).collect::<Vec<_>>().await.concat();
        let mut ar = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for entry in ar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            assert_eq!(entry.header().uid().unwrap(), 4242);
            assert_eq!(entry.header().gid().unwrap(), 4243);
            seen.push((entry.path().unwrap().display().to_string(), data.len()));
        }
        assert_eq!(
            seen,
            vec![("Makefile".to_string(), 10), (long.clone(), 1000)]
        );
    }

    #[tokio::test]
    async fn bad_names_and_missing_files_are_refused() {
        for bad in ["", ".", "..", "a/b", "../x", "a\\b"] {
            let list = vec![InputFile {
                local_file: "/etc/hostname".into(),
                dest_file: bad.into(),
            }];
            assert!(
                matches!(inputs(&list, 1, 1).await, Err(ArchiveError::BadName(_))),
                "{bad:?}"
            );
        }
        let list = vec![InputFile {
            local_file: "/nonexistent/file".into(),
            dest_file: "x".into(),
        }];
        let err = inputs(&list, 1, 1).await.err().unwrap();
        assert!(err.to_string().contains("/nonexistent/file"), "{err}");
    }
}
