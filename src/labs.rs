//! Courselab directories on disk: where a client's files go, under which names, and how they
//! get there.
//!
//! A courselab is the directory `COURSELABS/<tenant>-<courselab>/`, where `tenant` is the
//! first 16 hex digits of the SHA-256 of the API key (Python Tango put the key itself there,
//! and `/jobs` printed it; see `docs/architecture.md`). Inside it: the uploaded input files,
//! flat, and the `output/` directory the jobs write to.
//!
//! Every name a client gives (courselab, `Filename`, `localFile`, `destFile`, `output_file`,
//! image) passes [`check_name`] once, here, and comes out as a [`SafeName`]; every path we
//! build is a courselab directory plus one `SafeName`, so nothing a client sends can reach
//! outside its courselab.
//!
//! Uploads are streamed: the body goes to a temporary file in `COURSELABS/tmp/` (the same
//! filesystem, so the final rename is atomic) while it is hashed, in constant memory
//! whatever its size, then renamed into place. An identical file already in place is left
//! alone, as Tango did ("File exists").
//!
//! Output files are written here too ([`write_output_file`]): through a temporary file in
//! the output directory and a rename, so a poll never sees half a file; what a backend
//! copies out goes first to a temporary file there ([`output_temp`]), read back within the
//! job's output cap ([`read_capped`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use sha2::Sha256;
use tempfile::TempPath;

use crate::config::ServerConfig;

/// The longest file name most filesystems take (`NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// Hex digits of the key's SHA-256 that name its tenant.
const TENANT_LEN: usize = 16;

/// The longest courselab name: its directory is `<tenant>-<courselab>`, one file name.
pub const MAX_COURSELAB_LEN: usize = MAX_NAME_LEN - TENANT_LEN - 1;

/// Where temporary uploads go, under `COURSELABS`. No courselab directory can have this
/// name: theirs all start with a tenant and a dash.
const TMP_DIR: &str = "tmp";

/// How much of an upload is gathered before it goes to the disk (as one blocking task).
const WRITE_BUFFER: usize = 256 * 1024;

/// Chunks of an upload gathered to be written together.
#[derive(Default)]
struct Batch {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Batch {
    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push(chunk);
    }
}

/// An upload's file and hash, written a batch at a time on the blocking pool, one batch in
/// flight at most.
struct BatchWriter {
    /// Here when no batch is being written.
    idle: Option<(std::fs::File, Md5)>,
    /// The batch being written; gives the file and hash back.
    writing: Option<tokio::task::JoinHandle<io::Result<(std::fs::File, Md5)>>>,
}

impl BatchWriter {
    fn new(file: std::fs::File) -> BatchWriter {
        BatchWriter {
            idle: Some((file, Md5::new())),
            writing: None,
        }
    }

    /// The file and hash, once the batch in flight (if any) is written.
    async fn settle(&mut self) -> Result<(std::fs::File, Md5), LabsError> {
        if let Some(writing) = self.writing.take() {
            return match writing.await {
                Ok(Ok(done)) => Ok(done),
                Ok(Err(e)) => Err(LabsError::io("Cannot write the upload to disk")(e)),
                Err(e) => Err(LabsError::Body(format!("the disk writer failed: {e}"))),
            };
        }
        self.idle
            .take()
            .ok_or_else(|| LabsError::Body("the disk writer failed earlier".into()))
    }

    /// Starts writing `batch` once the previous one is written.
    async fn write(&mut self, batch: Batch) -> Result<(), LabsError> {
        if batch.chunks.is_empty() {
            return Ok(());
        }
        let (mut file, mut hasher) = self.settle().await?;
        self.writing = Some(tokio::task::spawn_blocking(move || {
            for chunk in &batch.chunks {
                hasher.update(chunk);
                file.write_all(chunk)?;
            }
            Ok((file, hasher))
        }));
        Ok(())
    }

    /// Waits for the last batch; the upload's MD5.
    async fn finish(mut self) -> Result<String, LabsError> {
        let (_, hasher) = self.settle().await?;
        Ok(hex::encode(hasher.finalize()))
    }
}

/// Output files up to this size are read into memory whole for `poll` (jobs' outputs are
/// capped near `limits.max_output_file_size`, 1 MB by default); larger ones are streamed.
const READ_WHOLE_MAX: u64 = 4 * 1024 * 1024;

/// Output files up to this size are read on the async thread (see `open_output`).
const READ_HERE_MAX: u64 = 64 * 1024;

/// Entries the MD5 cache keeps before it starts over.
const DIGEST_CACHE_ENTRIES: usize = 100_000;

/// What is wrong with a name from a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameProblem {
    #[error("it is empty")]
    Empty,
    #[error("it is {len} bytes long, more than the {max} allowed")]
    TooLong { len: usize, max: usize },
    #[error("'.' and '..' are not file names")]
    Dots,
    #[error("it contains '/'")]
    Slash,
    #[error("it contains '\\'")]
    Backslash,
    #[error("it contains a NUL byte")]
    Nul,
    #[error("it contains a control character")]
    Control,
}

/// Checks that `name` is one plain file name: not empty, at most `max_len` bytes, not `.` or
/// `..`, and free of `/`, `\`, NUL and other control characters (which have no business in
/// a file name and would garble logs and trace lines).
pub fn check_name(name: &str, max_len: usize) -> Result<(), NameProblem> {
    if name.is_empty() {
        return Err(NameProblem::Empty);
    }
    if name.len() > max_len {
        return Err(NameProblem::TooLong {
            len: name.len(),
            max: max_len,
        });
    }
    if name == "." || name == ".." {
        return Err(NameProblem::Dots);
    }
    for c in name.chars() {
        match c {
            '/' => return Err(NameProblem::Slash),
            '\\' => return Err(NameProblem::Backslash),
            '\0' => return Err(NameProblem::Nul),
            c if c.is_control() => return Err(NameProblem::Control),
            _ => {}
        }
    }
    Ok(())
}

/// A name that passed [`check_name`]: joined to a directory, it names a file directly in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SafeName(String);

impl SafeName {
    /// Checks `name`, a client's `what` (`Filename`, `localFile`, ...).
    pub fn new(what: &'static str, name: &str) -> Result<SafeName, LabsError> {
        Self::with_max(what, name, MAX_NAME_LEN)
    }

    fn with_max(what: &'static str, name: &str, max_len: usize) -> Result<SafeName, LabsError> {
        match check_name(name, max_len) {
            Ok(()) => Ok(SafeName(name.to_string())),
            Err(problem) => Err(LabsError::BadName {
                what,
                name: shown(name),
                problem,
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SafeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A name as an error message shows it: quoted, escaped, and cut short if long.
fn shown(name: &str) -> String {
    const MAX_SHOWN: usize = 80;
    let mut cut: String = name.chars().take(MAX_SHOWN).collect();
    if cut.len() < name.len() {
        cut.push_str("...");
    }
    format!("{cut:?}")
}

/// Why a courselab operation failed. The `Display` text is what the client reads.
#[derive(Debug, thiserror::Error)]
pub enum LabsError {
    #[error("Invalid {what} {name}: {problem}")]
    BadName {
        what: &'static str,
        /// Already quoted and shortened for display.
        name: String,
        problem: NameProblem,
    },
    /// The courselab directory does not exist (`open` was not called). Tango's text.
    #[error("Courselab not found")]
    CourselabNotFound,
    #[error(
        "File too large: the limit is {limit} bytes (server.max_input_file_size); nothing was stored"
    )]
    TooLarge { limit: u64 },
    /// The name is taken by a directory (the output directory, say).
    #[error("Cannot store {name}: a directory of that name exists")]
    IsADirectory { name: String },
    #[error("Upload interrupted: {0}")]
    Body(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl LabsError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> LabsError {
        let context = context.into();
        move |source| LabsError::Io { context, source }
    }
}

/// Checks that the paths a job brought back from the store are ones addJob could have made:
/// its inputs directly in one courselab directory under `courselabs`, its output file in that
/// courselab's output folder, every name a safe one. Whoever can write to the store (Redis has
/// no password by default) could otherwise make the daemon read or write any host file.
/// The error says which path is wrong and why, for the job's trace.
pub fn check_stored_paths(server: &ServerConfig, job: &crate::model::Job) -> Result<(), String> {
    let root =
        std::path::absolute(&server.courselabs).unwrap_or_else(|_| server.courselabs.clone());
    let (lab, rest) = split_under(&root, &job.output_file)
        .ok_or_else(|| outside("output file", &job.output_file, &root))?;
    if rest.len() != 2 || rest[0] != server.output_folder {
        return Err(format!(
            "the output file {} is not in its courselab's {} folder",
            job.output_file, server.output_folder
        ));
    }
    for input in &job.input {
        let (input_lab, rest) = split_under(&root, &input.local_file)
            .ok_or_else(|| outside("input file", &input.local_file, &root))?;
        if input_lab != lab || rest.len() != 1 {
            return Err(format!(
                "the input file {} is not in the job's courselab {lab}",
                input.local_file
            ));
        }
    }
    Ok(())
}

/// `path`'s courselab and the names below it, when `path` is absolute, plain (no `.`, `..`
/// or empty part) and under `root`, and every part is a safe name.
fn split_under<'a>(root: &Path, path: &'a str) -> Option<(&'a str, Vec<&'a str>)> {
    let below = Path::new(path).strip_prefix(root).ok()?;
    let mut parts = Vec::new();
    for component in below.components() {
        let std::path::Component::Normal(part) = component else {
            return None;
        };
        let part = part.to_str()?;
        check_name(part, MAX_NAME_LEN).ok()?;
        parts.push(part);
    }
    // `Path::components` hides `.` parts and doubled slashes: compare with the text itself.
    if parts.is_empty()
        || !Path::new(path).is_absolute()
        || path.contains("/./")
        || path.contains("//")
    {
        return None;
    }
    let lab = parts.remove(0);
    Some((lab, parts))
}

fn outside(what: &str, path: &str, root: &Path) -> String {
    format!(
        "the {what} {path} is not a plain path under the courselabs directory {}",
        root.display()
    )
}

/// An output file as `poll` sends it.
pub enum OutputFile {
    /// Its whole content.
    Whole(Vec<u8>),
    /// Open, to be streamed.
    Stream(tokio::fs::File),
}

/// One client's courselab: its checked name and its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Courselab {
    pub name: SafeName,
    pub dir: PathBuf,
}

impl Courselab {
    /// An input file of this courselab.
    pub fn file(&self, name: &SafeName) -> PathBuf {
        self.dir.join(name.as_str())
    }
}

/// What `open` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// True when the directory was made now.
    pub created: bool,
    /// Every input file already there: name → lowercase hex MD5.
    pub files: BTreeMap<String, String>,
}

/// An upload received into a temporary file, not yet in place.
#[derive(Debug)]
pub struct Received {
    /// The temporary file; deleted when dropped unless moved into place.
    pub path: TempPath,
    pub size: u64,
    /// Lowercase hex MD5 of the content.
    pub md5: String,
}

/// How an upload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Written (replacing any different file of that name).
    Uploaded,
    /// An identical file was there already; nothing changed.
    Exists,
}

/// The courselabs directory and what is needed to work in it.
pub struct Labs {
    /// `server.courselabs`, made absolute so that paths recorded in jobs mean the same thing
    /// to a manager running elsewhere on this host.
    root: PathBuf,
    output_folder: String,
    max_input_file_size: u64,
    digests: Arc<DigestCache>,
}

impl Labs {
    pub fn new(server: &ServerConfig) -> Labs {
        let root =
            std::path::absolute(&server.courselabs).unwrap_or_else(|_| server.courselabs.clone());
        Labs {
            root,
            output_folder: server.output_folder.clone(),
            max_input_file_size: server.max_input_file_size,
            digests: Arc::new(DigestCache::default()),
        }
    }

    /// The tenant a key stands for: the first 16 hex digits of its SHA-256.
    pub fn tenant(key: &str) -> String {
        Self::tenant_of(&Sha256::digest(key.as_bytes()).into())
    }

    /// The tenant of the key whose SHA-256 is `digest` (as the API's key check gives it).
    pub fn tenant_of(digest: &[u8; 32]) -> String {
        // Only the bytes shown are spelled out.
        hex::encode(&digest[..TENANT_LEN / 2])
    }

    /// The largest upload accepted.
    pub fn max_input_file_size(&self) -> u64 {
        self.max_input_file_size
    }

    /// The courselab `name` of the client holding `key` (which the caller has checked).
    pub fn courselab(&self, key: &str, name: &str) -> Result<Courselab, LabsError> {
        self.courselab_of(&Sha256::digest(key.as_bytes()).into(), name)
    }

    /// The courselab `name` of the client whose key has the SHA-256 `digest`: the handlers
    /// have it from checking the key, and hashing the key once more cost a request as much
    /// as reading its path.
    pub fn courselab_of(&self, digest: &[u8; 32], name: &str) -> Result<Courselab, LabsError> {
        let name = SafeName::with_max("courselab", name, MAX_COURSELAB_LEN)?;
        let dir = self
            .root
            .join(format!("{}-{}", Self::tenant_of(digest), name.as_str()));
        Ok(Courselab { name, dir })
    }

    /// Where the jobs of `lab` write their output.
    pub fn output_dir(&self, lab: &Courselab) -> PathBuf {
        lab.dir.join(&self.output_folder)
    }

    /// The output file `name` of `lab`.
    pub fn output_path(&self, lab: &Courselab, name: &SafeName) -> PathBuf {
        self.output_dir(lab).join(name.as_str())
    }

    /// True when `lab`'s directory exists (`open` was called).
    pub async fn exists(&self, lab: &Courselab) -> bool {
        tokio::fs::metadata(&lab.dir)
            .await
            .map(|m| m.is_dir())
            .unwrap_or(false)
    }

    /// Makes `lab`'s directory and its output directory if missing, and lists the MD5 of
    /// every input file already there (so a client can skip uploading those).
    pub async fn open(&self, lab: &Courselab) -> Result<Opened, LabsError> {
        // The usual case (Autolab opens the courselab before each submission): it exists with
        // its output directory, and every MD5 is in the cache. That takes a metadata call for
        // the directory and one per file, which cost less here than a trip to the blocking
        // pool (a thread wake-up and two context switches); any file to read, or a directory
        // to make, goes there.
        if let Some(files) = self.digests.known_listing(&lab.dir, &self.output_folder) {
            return Ok(Opened {
                created: false,
                files,
            });
        }
        let dir = lab.dir.clone();
        let output = self.output_dir(lab);
        let output_folder = self.output_folder.clone();
        let digests = self.digests.clone();
        run_blocking(move || {
            let created = !dir.is_dir();
            std::fs::create_dir_all(&output)
                .map_err(LabsError::io(format!("Cannot create {}", output.display())))?;
            let files = if created {
                BTreeMap::new()
            } else {
                list_digests(&dir, &output_folder, &digests, false)?
                    .map(|listing| listing.files)
                    .unwrap_or_default()
            };
            Ok(Opened { created, files })
        })
        .await
    }

    /// Streams `body` into a temporary file, hashing it as it goes. Refused with
    /// [`LabsError::TooLarge`] (and nothing left on disk) beyond `server.max_input_file_size`.
    pub async fn receive<S, E>(&self, body: S) -> Result<Received, LabsError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: fmt::Display,
    {
        let limit = self.max_input_file_size;
        let tmp = self.tmp_dir().await?;
        let (file, path) = tempfile::Builder::new()
            .prefix("upload")
            .tempfile_in(&tmp)
            .map_err(LabsError::io(format!(
                "Cannot make a temporary file in {}",
                tmp.display()
            )))?
            .into_parts();

        // The disk and the hash are on a blocking thread, so a large upload never stalls the
        // runtime; but only once a batch is ready, so a slow upload holds no thread while it
        // waits for the network (512 slow uploads would otherwise take the whole blocking
        // pool, and every file operation with it). One batch is written while the next
        // arrives; the memory held is two batches.
        let mut writer = BatchWriter::new(file);
        let mut batch = Batch::default();
        let mut size: u64 = 0;
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| LabsError::Body(e.to_string()))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(LabsError::TooLarge { limit });
            }
            batch.push(chunk);
            if batch.len >= WRITE_BUFFER {
                writer.write(std::mem::take(&mut batch)).await?;
            }
        }
        writer.write(batch).await?;
        let md5 = writer.finish().await?;
        Ok(Received { path, size, md5 })
    }

    /// Moves a received upload into `lab` as `name`, unless an identical file is there.
    pub async fn store(
        &self,
        lab: &Courselab,
        name: &SafeName,
        received: Received,
    ) -> Result<Stored, LabsError> {
        let dest = lab.file(name);
        let dir = lab.dir.clone();
        let shown_name = name.to_string();
        let digests = self.digests.clone();
        run_blocking(move || {
            if !dir.is_dir() {
                return Err(LabsError::CourselabNotFound);
            }
            match std::fs::symlink_metadata(&dest) {
                Ok(meta)
                    if meta.is_file()
                        && meta.len() == received.size
                        && digests.md5(&dest, &meta).ok().as_deref() == Some(&received.md5) =>
                {
                    return Ok(Stored::Exists);
                }
                // A symlink is replaced by the rename, never followed; a directory is not.
                Ok(meta) if meta.is_dir() => {
                    return Err(LabsError::IsADirectory { name: shown_name });
                }
                _ => {}
            }
            let Received { path, md5, .. } = received;
            path.persist(&dest).map_err(|e| LabsError::Io {
                context: format!("Cannot store {shown_name}"),
                source: e.error,
            })?;
            if let Ok(meta) = std::fs::symlink_metadata(&dest) {
                digests.remember(&dest, &meta, md5);
            }
            Ok(Stored::Uploaded)
        })
        .await
    }

    /// The output file `name` of `lab`, if it is there (a regular file; a link is not
    /// followed): read whole when it is small (with an answer that states its length),
    /// otherwise opened to be streamed. Either way the content is that of one version of the
    /// file: jobs rename a complete new file into place, and we read through one handle.
    pub async fn open_output(
        &self,
        lab: &Courselab,
        name: &SafeName,
    ) -> Result<Option<OutputFile>, LabsError> {
        let path = self.output_path(lab, name);
        let context = format!("Cannot read output file {name}");
        // Opened here, on the async thread: open and fstat of a local file take microseconds,
        // less than a trip to the blocking pool (a thread wake-up and two context switches).
        // Autolab polls every few seconds per job; most answers are "not there yet".
        let Some((mut file, len)) = open_regular(&path).map_err(LabsError::io(&context))? else {
            return Ok(None);
        };
        // Most outputs are a few KiB, in the page cache: read here too.
        if len <= READ_HERE_MAX {
            let data = read_len(&mut file, len).map_err(LabsError::io(context))?;
            return Ok(Some(OutputFile::Whole(data)));
        }
        run_blocking(move || {
            if len <= READ_WHOLE_MAX {
                let data = read_len(&mut file, len).map_err(LabsError::io(context))?;
                return Ok(Some(OutputFile::Whole(data)));
            }
            Ok(Some(OutputFile::Stream(tokio::fs::File::from_std(file))))
        })
        .await
    }

    /// `COURSELABS/tmp`, made (private) if missing.
    async fn tmp_dir(&self) -> Result<PathBuf, LabsError> {
        let tmp = self.root.join(TMP_DIR);
        let made = tmp.clone();
        run_blocking(move || {
            match std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&made)
            {
                Ok(()) => Ok(()),
                Err(e) => Err(LabsError::io(format!("Cannot create {}", made.display()))(
                    e,
                )),
            }
        })
        .await?;
        Ok(tmp)
    }
}

/// `path` opened for reading with its length, when it is a regular file. `None` when it is
/// missing or anything else: a link (not followed), a directory, a FIFO (opened without
/// waiting for a writer), a socket.
fn open_regular(path: &Path) -> io::Result<Option<(std::fs::File, u64)>> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        // ELOOP: a link; ENXIO: a socket.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENXIO)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    Ok(meta.is_file().then_some((file, meta.len())))
}

/// The first `len` bytes of `file` (its length when it was opened): no read past them to
/// look for the end, which costs a system call on every poll. A file that shrank since is
/// read to its end.
fn read_len(file: &mut std::fs::File, len: u64) -> io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(len as usize);
    file.take(len).read_to_end(&mut data)?;
    Ok(data)
}

/// Runs filesystem work on the blocking pool.
async fn run_blocking<T, F>(work: F) -> Result<T, LabsError>
where
    F: FnOnce() -> Result<T, LabsError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) => Err(LabsError::Io {
            context: "Filesystem task failed".into(),
            source: io::Error::other(e.to_string()),
        }),
    }
}

/// Name → MD5 of the regular files directly in `dir` (not the output directory, not links).
/// With `cached_only`, no file is read: `None` as soon as one MD5 is not in the cache.
fn list_digests(
    dir: &Path,
    output_folder: &str,
    digests: &DigestCache,
    cached_only: bool,
) -> Result<Option<Listing>, LabsError> {
    let mut listing = Listing {
        files: BTreeMap::new(),
        output_dir: false,
    };
    let entries =
        std::fs::read_dir(dir).map_err(LabsError::io(format!("Cannot list {}", dir.display())))?;
    for entry in entries.flatten() {
        // The entry's type comes with the listing (no system call on the usual file
        // systems), and its metadata is read relative to the open directory: no path walk.
        let Ok(kind) = entry.file_type() else {
            continue; // removed meanwhile
        };
        let Ok(name) = entry.file_name().into_string() else {
            continue; // not UTF-8: no client could name it in JSON anyway
        };
        if name == output_folder {
            listing.output_dir = kind.is_dir();
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let Ok(meta) = entry.metadata() else {
            continue; // removed meanwhile
        };
        if !meta.is_file() {
            continue;
        }
        let path = entry.path();
        if cached_only {
            match digests.cached(&path, &meta) {
                Some(md5) => {
                    listing.files.insert(name, md5);
                }
                None => return Ok(None),
            }
            continue;
        }
        match digests.md5(&path, &meta) {
            Ok(md5) => {
                listing.files.insert(name, md5);
            }
            // Leaving a file out only makes the client upload it again.
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot hash input file"),
        }
    }
    Ok(Some(listing))
}

/// A courselab directory's listing.
#[derive(Debug, PartialEq, Eq)]
struct Listing {
    /// Input file name → lowercase hex MD5.
    files: BTreeMap<String, String>,
    /// Whether the output directory is there.
    output_dir: bool,
}

/// The MD5 of files we have hashed, so `open` does not re-read every input file of a
/// courselab each time (Autolab calls it for every submission). An entry is valid while the
/// file's identity, size, mtime and ctime are unchanged; ctime cannot be set by anyone, so
/// any write to the file invalidates its entry.
///
/// Beside them, the names each courselab directory held when it was last listed, valid while
/// the directory's own stamp is unchanged: a name added, removed or renamed changes the
/// directory's mtime and ctime. Every listed file is still checked against its own stamp on
/// each `open`, so an MD5 is never served for content it was not computed from; the listing
/// only saves reading the directory (on this machine, four system calls of the nine an
/// `open` made). At worst a name added within the same clock tick as the listing is missed
/// until the next change, and the client uploads that file again.
///
/// Read-mostly, from every runtime thread at once: read-write locks, so readers never wait
/// for each other.
#[derive(Default)]
struct DigestCache {
    entries: RwLock<HashMap<PathBuf, (Stamp, String)>>,
    listings: RwLock<HashMap<PathBuf, DirListing>>,
}

/// The names of the regular files in a courselab directory when it had `stamp`.
struct DirListing {
    stamp: Stamp,
    names: Arc<[String]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

// A cache: after a panic elsewhere its worst content is a stale entry, which the stamp
// checks reject; so a poisoned lock is used as it is.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl DigestCache {
    /// `open`'s answer for `dir` from what is known, without reading any file: `None` when
    /// the directory or its output directory is missing, or an MD5 is not known for a
    /// file's current content.
    fn known_listing(&self, dir: &Path, output_folder: &str) -> Option<BTreeMap<String, String>> {
        let dir_meta = std::fs::symlink_metadata(dir).ok()?;
        if !dir_meta.is_dir() {
            return None;
        }
        let stamp = Stamp::of(&dir_meta);
        let known = read(&self.listings)
            .get(dir)
            .filter(|listing| listing.stamp == stamp)
            .map(|listing| listing.names.clone());
        let names = match known {
            Some(names) => names,
            None => {
                // Listed after the stamp was taken: a change meanwhile leaves the stored
                // stamp stale, so the next call lists again.
                let listing = list_digests(dir, output_folder, self, true).ok()??;
                if !listing.output_dir {
                    return None;
                }
                let names: Arc<[String]> = listing.files.keys().cloned().collect();
                let mut listings = write(&self.listings);
                if listings.len() >= DIGEST_CACHE_ENTRIES {
                    listings.clear();
                }
                listings.insert(dir.to_path_buf(), DirListing { stamp, names });
                return Some(listing.files);
            }
        };
        let mut files = BTreeMap::new();
        for name in names.iter() {
            let path = dir.join(name);
            let meta = std::fs::symlink_metadata(&path).ok()?;
            if !meta.is_file() {
                return None;
            }
            files.insert(name.clone(), self.cached(&path, &meta)?);
        }
        Some(files)
    }

    /// The MD5 of `path` (whose metadata is `meta`) if the cache knows it.
    fn cached(&self, path: &Path, meta: &std::fs::Metadata) -> Option<String> {
        let stamp = Stamp::of(meta);
        match read(&self.entries).get(path) {
            Some((known, md5)) if *known == stamp => Some(md5.clone()),
            _ => None,
        }
    }

    /// The MD5 of `path` (whose metadata is `meta`), from the cache or by reading it.
    fn md5(&self, path: &Path, meta: &std::fs::Metadata) -> io::Result<String> {
        if let Some(md5) = self.cached(path, meta) {
            return Ok(md5);
        }
        let stamp = Stamp::of(meta);
        let md5 = md5_of_file(path)?;
        // Store it only if the file did not change while we read it.
        if let Ok(after) = std::fs::symlink_metadata(path)
            && Stamp::of(&after) == stamp
        {
            self.remember(path, &after, md5.clone());
        }
        Ok(md5)
    }

    fn remember(&self, path: &Path, meta: &std::fs::Metadata, md5: String) {
        let mut entries = write(&self.entries);
        if entries.len() >= DIGEST_CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(path.to_path_buf(), (Stamp::of(meta), md5));
    }
}

/// Lowercase hex MD5 of a file, read in pieces.
fn md5_of_file(path: &Path) -> io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Md5::new();
    let mut buffer = vec![0u8; WRITE_BUFFER];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The directory an output file goes in.
fn output_file_dir(output_file: &str) -> PathBuf {
    Path::new(output_file)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// A temporary file beside the output file `output_file`, for what a backend copies out (the
/// same filesystem as the output file, so nothing is copied twice). Gone when dropped.
pub fn output_temp(output_file: &str) -> io::Result<TempPath> {
    let dir = output_file_dir(output_file);
    std::fs::create_dir_all(&dir)?;
    Ok(tempfile::Builder::new()
        .prefix(".tango-output-")
        .tempfile_in(&dir)?
        .into_temp_path())
}

/// At most `cap` bytes of a file: a backend that ignores its cap cannot make us read more.
pub async fn read_capped(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path).await?;
    let mut bytes = Vec::new();
    file.take(cap).read_to_end(&mut bytes).await?;
    Ok(bytes)
}

/// Writes a job's output file: `content` to `path` through a temporary file in the same
/// directory and a rename, so a reader sees either the old file or the whole new one.
pub async fn write_output_file(path: &str, content: &[u8]) -> io::Result<()> {
    let path = PathBuf::from(path);
    let content = content.to_vec();
    tokio::task::spawn_blocking(move || {
        let dir = output_file_dir(&path.to_string_lossy());
        std::fs::create_dir_all(&dir)?;
        let mut temp = tempfile::Builder::new()
            .prefix(".tango-write-")
            .tempfile_in(&dir)?;
        temp.write_all(&content)?;
        temp.as_file().sync_data()?;
        temp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    })
    .await
    .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_directory_of_a_bare_name_is_here() {
        assert_eq!(output_file_dir("x.txt"), PathBuf::from("."));
        assert_eq!(output_file_dir("/a/b/x.txt"), PathBuf::from("/a/b"));
    }

    #[test]
    fn a_cached_only_listing_never_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.c"), b"hello").unwrap();
        std::fs::create_dir(dir.path().join("output")).unwrap();
        let digests = DigestCache::default();
        // Not hashed yet: the cached-only listing gives up instead of reading.
        assert_eq!(
            list_digests(dir.path(), "output", &digests, true).unwrap(),
            None
        );
        let full = list_digests(dir.path(), "output", &digests, false)
            .unwrap()
            .unwrap();
        assert!(full.output_dir);
        let full = full.files;
        assert_eq!(full.len(), 1);
        assert_eq!(full["a.c"], "5d41402abc4b2a76b9719d911017c592");
        assert_eq!(
            list_digests(dir.path(), "output", &digests, true)
                .unwrap()
                .map(|listing| listing.files),
            Some(full)
        );
        // A changed file is a cache miss again.
        std::fs::write(dir.path().join("a.c"), b"hello, world").unwrap();
        assert_eq!(
            list_digests(dir.path(), "output", &digests, true).unwrap(),
            None
        );
    }

    #[test]
    fn a_known_listing_follows_every_change_to_the_directory_and_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.c"), b"hello").unwrap();
        let digests = DigestCache::default();
        // No output directory yet: `open` must make it.
        assert_eq!(digests.known_listing(d, "output"), None);
        std::fs::create_dir(d.join("output")).unwrap();
        // Not hashed yet.
        assert_eq!(digests.known_listing(d, "output"), None);
        list_digests(d, "output", &digests, false).unwrap();
        let first = digests.known_listing(d, "output").expect("listed");
        assert_eq!(first.len(), 1);
        // Served again from the stored names.
        assert_eq!(digests.known_listing(d, "output"), Some(first));
        // Content changed in place (the directory's stamp does not change): never the old
        // MD5.
        std::fs::write(d.join("a.c"), b"hello, world").unwrap();
        assert_eq!(digests.known_listing(d, "output"), None);
        list_digests(d, "output", &digests, false).unwrap();
        assert_eq!(
            digests.known_listing(d, "output").expect("listed")["a.c"],
            "e4d7f1b4ed2e42d15898f4b27b019da4"
        );
        // A file added: in the answer once hashed. (Each change to the directory's names
        // waits out the clock tick first: on kernels with coarse timestamps a change within
        // the tick of the listing may go unseen, which only costs a client an upload.)
        let tick = || std::thread::sleep(std::time::Duration::from_millis(20));
        tick();
        std::fs::write(d.join("b.c"), b"hello").unwrap();
        list_digests(d, "output", &digests, false).unwrap();
        let both = digests.known_listing(d, "output").expect("listed");
        assert_eq!(both.keys().collect::<Vec<_>>(), ["a.c", "b.c"]);
        // A file removed: gone from the answer.
        tick();
        std::fs::remove_file(d.join("a.c")).unwrap();
        let left = digests.known_listing(d, "output").expect("listed");
        assert_eq!(left.keys().collect::<Vec<_>>(), ["b.c"]);
        // A file replaced by another of the same name (as an upload does): its own MD5.
        std::fs::write(d.join("tmp"), b"other").unwrap();
        std::fs::rename(d.join("tmp"), d.join("b.c")).unwrap();
        assert_eq!(digests.known_listing(d, "output"), None);
        // The output directory removed: `open` must make it again.
        list_digests(d, "output", &digests, false).unwrap();
        assert!(digests.known_listing(d, "output").is_some());
        std::fs::remove_dir(d.join("output")).unwrap();
        assert_eq!(digests.known_listing(d, "output"), None);
    }

    #[test]
    fn stored_paths_must_be_plain_and_in_one_courselab() {
        let server = ServerConfig {
            courselabs: PathBuf::from("/srv/cl"),
            ..ServerConfig::default()
        };
        let job = |inputs: &[&str], output: &str| crate::model::Job {
            input: inputs
                .iter()
                .map(|p| crate::model::InputFile {
                    local_file: p.to_string(),
                    dest_file: "f".into(),
                })
                .collect(),
            output_file: output.into(),
            ..crate::model::Job::default()
        };
        let ok = job(
            &["/srv/cl/t-lab/a.c", "/srv/cl/t-lab/Makefile"],
            "/srv/cl/t-lab/output/o.txt",
        );
        assert_eq!(check_stored_paths(&server, &ok), Ok(()));
        for bad in [
            job(&["/etc/passwd"], "/srv/cl/t-lab/output/o.txt"),
            job(
                &["/srv/cl/t-lab/../../etc/passwd"],
                "/srv/cl/t-lab/output/o.txt",
            ),
            job(&["/srv/cl/t-lab/./a.c"], "/srv/cl/t-lab/output/o.txt"),
            job(&["/srv/cl//t-lab/a.c"], "/srv/cl/t-lab/output/o.txt"),
            job(&["srv/cl/t-lab/a.c"], "/srv/cl/t-lab/output/o.txt"),
            job(&["/srv/cl/other-lab/a.c"], "/srv/cl/t-lab/output/o.txt"),
            job(&["/srv/cl/t-lab/sub/a.c"], "/srv/cl/t-lab/output/o.txt"),
            job(&["/srv/cl/t-lab/a.c"], "/tmp/o.txt"),
            job(&["/srv/cl/t-lab/a.c"], "/srv/cl/t-lab/o.txt"),
            job(&["/srv/cl/t-lab/a.c"], "/srv/cl/t-lab/elsewhere/o.txt"),
        ] {
            assert!(check_stored_paths(&server, &bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn plain_names_pass() {
        for name in [
            "hello.c",
            "autograde-Makefile",
            "user@x.edu_1_hello.c",
            "a b+c%d",
            ".hidden",
            "...",
            "15213-f24-malloclab",
            "ünïcode",
        ] {
            assert_eq!(check_name(name, MAX_NAME_LEN), Ok(()), "{name}");
        }
    }

    #[test]
    fn bad_names_say_what_is_wrong() {
        let cases: [(&str, NameProblem); 8] = [
            ("", NameProblem::Empty),
            (".", NameProblem::Dots),
            ("..", NameProblem::Dots),
            ("../x", NameProblem::Slash),
            ("a/b", NameProblem::Slash),
            ("a\\b", NameProblem::Backslash),
            ("a\0b", NameProblem::Nul),
            ("a\nb", NameProblem::Control),
        ];
        for (name, problem) in cases {
            assert_eq!(check_name(name, MAX_NAME_LEN), Err(problem), "{name:?}");
        }
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            check_name(&long, MAX_NAME_LEN),
            Err(NameProblem::TooLong {
                len: MAX_NAME_LEN + 1,
                max: MAX_NAME_LEN
            })
        );
    }

    #[test]
    fn error_text_names_the_field_and_the_problem() {
        let err = SafeName::new("Filename", "../etc/passwd").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Invalid Filename \"../etc/passwd\": it contains '/'"
        );
    }

    #[test]
    fn tenant_is_a_short_hash_of_the_key() {
        // SHA-256("test") = 9f86d081884c7d65...
        assert_eq!(Labs::tenant("test"), "9f86d081884c7d65");
    }

    #[test]
    fn courselab_directory_holds_the_tenant_not_the_key() {
        let config = ServerConfig {
            courselabs: PathBuf::from("/srv/courselabs"),
            ..ServerConfig::default()
        };
        let labs = Labs::new(&config);
        let lab = labs.courselab("s3cret", "course1-hello").unwrap();
        assert_eq!(
            lab.dir,
            PathBuf::from(format!(
                "/srv/courselabs/{}-course1-hello",
                Labs::tenant("s3cret")
            ))
        );
        assert!(!lab.dir.to_string_lossy().contains("s3cret"));
        let long = "c".repeat(MAX_COURSELAB_LEN + 1);
        assert!(labs.courselab("k", &long).is_err());
        assert!(labs.courselab("k", &"c".repeat(MAX_COURSELAB_LEN)).is_ok());
    }
}
