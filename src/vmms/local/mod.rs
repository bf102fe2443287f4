//! The `local` backend: jobs as processes on this host, so the whole pipeline runs on any
//! Linux box without Docker. **For development and tests only: it is not a security
//! boundary.** A job sees the host's file system (with the rights of an unprivileged uid),
//! its processes, and, unless the job asks for `disable_network`, its network.
//!
//! A machine is a directory `<work_dir>/<instance name>/` (mode 0711, root's) holding
//! `machine.json` (the [`Machine`] and its uid, so leftovers of a dead manager are
//! recognised), `job/` (the grading directory), and the autodriver's `output`,
//! `output.log` and `report.json`. `run_job` runs our `autodriver` on `job/`; copying in and
//! out are file copies that never follow a link.
//!
//! When tango runs as root, each machine gets its own uid from `local.uid_base ..
//! uid_base + uid_count` (gid the same number): RLIMIT_NPROC counts a uid's processes
//! host-wide, and the autodriver kills every process of the job's uid, so machines that
//! shared a uid would limit and kill each other's jobs. Without root, jobs run as tango's
//! own user and `disable_network` is refused.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

pub mod settings;

use super::{RunOutcome, RunSpec, Vmms, VmmsError, run::output_cap};
use crate::config::Config;
use crate::host::{files, procs, truncation};
use crate::model::{InputFile, Machine};

/// How long killing a machine's processes may take.
const SWEEP_PATIENCE: Duration = Duration::from_secs(10);
/// The record of a machine in its directory.
const RECORD: &str = "machine.json";

/// What `machine.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MachineRecord {
    machine: Machine,
    /// The uid (and gid) its jobs run as; none when tango is not root.
    uid: Option<u32>,
}

/// The backend's settings, shared with blocking tasks.
#[derive(Debug)]
struct Settings {
    prefix: String,
    images: Vec<String>,
    work_dir: PathBuf,
    autodriver: PathBuf,
    uid_base: u32,
    uid_count: u32,
    /// RLIMIT_AS per process of a job, MiB (`limits.memory_mb`); 0 for none.
    memory_mb: u64,
    /// Tango runs as root: per-machine uids, network namespaces, sweeps.
    privileged: bool,
    /// Which uid each machine holds, host-wide (when privileged).
    claims: Option<UidClaims>,
}

pub struct LocalVmms {
    settings: Arc<Settings>,
}

/// Opens the local backend ([`super::BACKENDS`]).
pub async fn open(config: &Config) -> Result<Arc<dyn Vmms>, VmmsError> {
    Ok(Arc::new(LocalVmms::new(config)?))
}

impl LocalVmms {
    pub fn new(config: &Config) -> Result<Self, VmmsError> {
        let local = &config.local;
        let work_dir = if local.work_dir.as_os_str().is_empty() {
            std::env::temp_dir().join("tango-local")
        } else {
            local.work_dir.clone()
        };
        prepare_work_dir(&work_dir)?;
        let autodriver = if local.autodriver.as_os_str().is_empty() {
            default_autodriver()?
        } else {
            local.autodriver.clone()
        };
        if !autodriver.is_file() {
            return Err(VmmsError::Backend(format!(
                "the local backend needs the autodriver, and {} is not a file: build it \
                 (cargo build --bin autodriver) or set local.autodriver",
                autodriver.display()
            )));
        }
        // SAFETY: geteuid cannot fail.
        let privileged = unsafe { libc::geteuid() } == 0;
        if !privileged && !local.allow_unisolated {
            return Err(VmmsError::Backend(
                "the local backend is not running as root, so jobs would run as tango's own \
                 user and could read its configuration (the API keys) and every courselab; run \
                 tango as root, or accept that with local.allow_unisolated = true (trying \
                 things out on your own machine)"
                    .into(),
            ));
        }
        let claims = if privileged {
            Some(UidClaims::open()?)
        } else {
            None
        };
        Ok(LocalVmms {
            settings: Arc::new(Settings {
                prefix: config.vmms.prefix.clone(),
                images: local.images.clone(),
                work_dir,
                autodriver,
                uid_base: local.uid_base,
                uid_count: local.uid_count,
                memory_mb: config.limits.memory_mb,
                privileged,
                claims,
            }),
        })
    }

    /// Where machine directories are.
    pub fn work_dir(&self) -> &Path {
        &self.settings.work_dir
    }

    /// The directory of `vm`.
    pub fn machine_dir(&self, vm: &Machine) -> Result<PathBuf, VmmsError> {
        let name = self.instance_name(vm);
        check_component(&name)
            .map_err(|why| VmmsError::Backend(format!("bad machine name {name:?}: {why}")))?;
        Ok(self.settings.work_dir.join(name))
    }

    /// The uid `vm`'s jobs run as, if it has one.
    pub fn machine_uid(&self, vm: &Machine) -> Result<Option<u32>, VmmsError> {
        Ok(read_record(&self.machine_dir(vm)?)?.uid)
    }
}

/// The autodriver beside the running executable (or one directory up, where cargo puts
/// binaries when the executable is a test in `target/*/deps`).
fn default_autodriver() -> Result<PathBuf, VmmsError> {
    let exe = std::env::current_exe()
        .map_err(|e| VmmsError::Backend(format!("cannot find the tango executable: {e}")))?;
    let beside = exe.with_file_name("autodriver");
    if beside.is_file() {
        return Ok(beside);
    }
    if let Some(up) = exe.parent().and_then(Path::parent) {
        let up = up.join("autodriver");
        if up.is_file() {
            return Ok(up);
        }
    }
    Ok(beside)
}

/// Makes the work directory, or checks that the one there is ours alone: a directory
/// another user could write to would let them plant links where we copy files.
fn prepare_work_dir(dir: &Path) -> Result<(), VmmsError> {
    let bad = |why: String| {
        VmmsError::Backend(format!(
            "the local backend's work directory {}: {why}",
            dir.display()
        ))
    };
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o711))
                .map_err(|e| bad(e.to_string()))?;
        }
        Err(e) => return Err(bad(e.to_string())),
        Ok(meta) => {
            // SAFETY: geteuid cannot fail.
            let me = unsafe { libc::geteuid() };
            if !meta.is_dir() {
                return Err(bad("not a directory".into()));
            }
            if meta.uid() != me || meta.mode() & 0o022 != 0 {
                return Err(bad(format!(
                    "must belong to uid {me} and be writable by it alone (it has uid {} and \
                     mode {:o})",
                    meta.uid(),
                    meta.mode() & 0o7777
                )));
            }
        }
    }
    Ok(())
}

/// A single path component we may create: no separators, not `.` or `..`, no NUL.
fn check_component(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name == "." || name == ".." {
        return Err("`.` and `..` are not file names");
    }
    if name.contains('/') || name.contains('\0') {
        return Err("a file name cannot contain `/` or NUL");
    }
    if name.len() > 255 {
        return Err("longer than 255 bytes");
    }
    Ok(())
}

fn read_record(dir: &Path) -> Result<MachineRecord, VmmsError> {
    let path = dir.join(RECORD);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(VmmsError::NotFound(dir.display().to_string()));
        }
        Err(e) => return Err(e.into()),
    };
    serde_json::from_slice(&text)
        .map_err(|e| VmmsError::Backend(format!("{}: {e}", path.display())))
}

fn write_record(dir: &Path, record: &MachineRecord) -> Result<(), VmmsError> {
    let text = serde_json::to_vec_pretty(record)
        .map_err(|e| VmmsError::Backend(format!("machine record: {e}")))?;
    let tmp = dir.join(".machine.json.tmp");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, dir.join(RECORD))?;
    Ok(())
}

/// Holds an exclusive `flock` on a file while alive.
struct Flock(File);

impl Flock {
    fn take(path: &Path) -> io::Result<Flock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Flock(file));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        // SAFETY: unlocking our own descriptor (closing it would too).
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Which uid each machine holds, for the whole host: one file per claimed uid, named by the
/// uid and holding the machine directory's path, in a root-only directory (`/run` when
/// there is one). Backends with different work directories (two managers, or tests) thus
/// never hand out the same uid, which matters because a uid's processes are limited and
/// killed together. A claim whose machine record is gone (its manager died and the
/// directory was removed) is stale and reused.
#[derive(Debug)]
struct UidClaims {
    dir: PathBuf,
}

/// Proof of holding the claims lock.
struct ClaimsLock(#[allow(dead_code)] Flock);

impl UidClaims {
    fn open() -> Result<UidClaims, VmmsError> {
        let base = if Path::new("/run").is_dir() {
            PathBuf::from("/run")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join("tango-local-uids");
        prepare_work_dir(&dir)?;
        Ok(UidClaims { dir })
    }

    fn lock(&self) -> Result<ClaimsLock, VmmsError> {
        Ok(ClaimsLock(Flock::take(&self.dir.join(".lock"))?))
    }

    /// Claims the lowest uid of `range` that no live machine holds and no process uses.
    fn claim(
        &self,
        _lock: &ClaimsLock,
        range: std::ops::Range<u32>,
        machine_dir: &Path,
    ) -> Result<u32, VmmsError> {
        let mut taken = std::collections::HashSet::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(uid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let holder = PathBuf::from(fs::read_to_string(entry.path()).unwrap_or_default());
            let live = read_record(&holder).is_ok_and(|r| r.uid == Some(uid));
            if live {
                taken.insert(uid);
            } else {
                let _ = fs::remove_file(entry.path());
            }
        }
        // A uid with processes (a leftover of a machine destroyed while its job ran, or
        // someone else's) is not free either.
        for p in procs::snapshot()?.values() {
            taken.insert(p.uids[0]);
            taken.insert(p.uids[2]);
        }
        let count = range.len();
        let start = range.start;
        let uid = range
            .into_iter()
            .find(|uid| !taken.contains(uid))
            .ok_or_else(|| {
                VmmsError::Backend(format!(
                    "all {count} local uids from {start} are in use: raise local.uid_count"
                ))
            })?;
        fs::write(
            self.dir.join(uid.to_string()),
            machine_dir.as_os_str().as_encoded_bytes(),
        )?;
        Ok(uid)
    }

    /// Gives `uid` back if `machine_dir` holds it. Call with the lock held.
    fn release(&self, uid: u32, machine_dir: &Path) {
        let claim = self.dir.join(uid.to_string());
        if fs::read(&claim).is_ok_and(|held| held == machine_dir.as_os_str().as_encoded_bytes()) {
            let _ = fs::remove_file(claim);
        }
    }
}

impl Settings {
    /// Creates the machine directory and its record, with a uid of its own when tango runs
    /// as root.
    fn create_machine(&self, dir: &Path, vm: &Machine) -> Result<MachineRecord, VmmsError> {
        // The uid is claimed and recorded under one host-wide lock, so that a claim is never
        // seen without its machine's record.
        let lock = match &self.claims {
            Some(claims) => Some(claims.lock()?),
            None => None,
        };
        let uid = match (&self.claims, &lock) {
            (Some(claims), Some(lock)) => Some(claims.claim(
                lock,
                self.uid_base..self.uid_base.saturating_add(self.uid_count),
                dir,
            )?),
            _ => None,
        };
        let made = (|| -> Result<MachineRecord, VmmsError> {
            match fs::create_dir(dir) {
                Ok(()) => {}
                // Another daemon on this work directory numbers machines alike: its machine
                // is left alone, and the caller picks another id.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let name = dir.file_name().unwrap_or_default().to_string_lossy();
                    return Err(VmmsError::NameTaken(name.into_owned()));
                }
                Err(e) => return Err(e.into()),
            }
            fs::set_permissions(dir, fs::Permissions::from_mode(0o711))?;
            fs::create_dir(dir.join("job"))?;
            let record = MachineRecord {
                machine: vm.clone(),
                uid,
            };
            write_record(dir, &record)?;
            Ok(record)
        })();
        if made.is_err() {
            if let (Some(claims), Some(uid)) = (&self.claims, uid) {
                claims.release(uid, dir);
            }
            if !matches!(&made, Err(VmmsError::NameTaken(_))) {
                let _ = fs::remove_dir_all(dir);
            }
        }
        made
    }

    /// Replaces the grading directory's contents with `inputs`.
    fn copy_in(&self, dir: &Path, inputs: &[InputFile]) -> Result<(), VmmsError> {
        read_record(dir)?;
        for input in inputs {
            check_component(&input.dest_file).map_err(|why| {
                VmmsError::Io(format!("refusing input name {:?}: {why}", input.dest_file))
            })?;
        }
        let job = dir.join("job");
        files::clear_dir(&job, &[], None)?;
        for input in inputs {
            let mut src = File::open(&input.local_file)
                .map_err(|e| VmmsError::Io(format!("{}: {e}", input.local_file)))?;
            let meta = src.metadata()?;
            if !meta.is_file() {
                return Err(VmmsError::Io(format!(
                    "{} is not a regular file",
                    input.local_file
                )));
            }
            // Keep the execute bits (a test script), drop set-id bits, let the job read it.
            let mode = (meta.mode() & 0o755) | 0o644;
            let mut dst = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW)
                .open(job.join(&input.dest_file))
                .map_err(|e| VmmsError::Io(format!("{}: {e}", input.dest_file)))?;
            io::copy(&mut src, &mut dst)?;
        }
        Ok(())
    }

    /// Copies the machine's output to `dest`: a fresh file (a link or file already there is
    /// replaced, never written through), cut to `cap` bytes keeping head and tail.
    fn copy_out(&self, dir: &Path, dest: &Path, cap: u64) -> Result<(), VmmsError> {
        read_record(dir)?;
        let mut src = open_no_follow(&dir.join("output"))
            .map_err(|e| VmmsError::Io(format!("the job's output: {e}")))?;
        let len = src.metadata()?.len();
        match fs::symlink_metadata(dest) {
            Ok(meta) if meta.is_dir() => {
                return Err(VmmsError::Io(format!("{} is a directory", dest.display())));
            }
            Ok(_) => fs::remove_file(dest)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let mut dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dest)
            .map_err(|e| VmmsError::Io(format!("{}: {e}", dest.display())))?;
        truncation::copy_head_tail(&mut src, len, cap, &mut dst)?;
        Ok(())
    }

    fn partial_output(&self, dir: &Path, max_bytes: u64) -> Result<Vec<u8>, VmmsError> {
        read_record(dir)?;
        let file = match open_no_follow(&dir.join("output.log")) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut head = Vec::new();
        file.take(max_bytes).read_to_end(&mut head)?;
        Ok(head)
    }

    /// Kills what runs as the machine's uid, removes its files and the directory, unless
    /// its record names another owner than `owner`: then the directory is another
    /// manager's machine of the same name, and is left.
    fn destroy(&self, dir: &Path, owner: Option<&str>) -> Result<(), VmmsError> {
        let record = match read_record(dir) {
            Ok(r)
                if owner.is_some()
                    && r.machine.owner.is_some()
                    && r.machine.owner.as_deref() != owner =>
            {
                return Ok(());
            }
            Ok(r) => Some(r),
            Err(VmmsError::NotFound(_)) if !dir.exists() => return Ok(()),
            // A half-made machine: remove what there is.
            Err(VmmsError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        if let Some(uid) = record.and_then(|r| r.uid)
            && self.privileged
        {
            procs::sweep_uid(uid, uid, SWEEP_PATIENCE)
                .map_err(|e| VmmsError::Backend(format!("killing uid {uid}: {e}")))?;
            files::sweep_uid(uid, None);
            fs::remove_dir_all(dir)?;
            if let Some(claims) = &self.claims {
                let _lock = claims.lock()?;
                claims.release(uid, dir);
            }
            return Ok(());
        }
        fs::remove_dir_all(dir)?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<Machine>, VmmsError> {
        let ours = format!("{}-", self.prefix);
        let mut machines = Vec::new();
        for entry in fs::read_dir(&self.work_dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&ours) {
                continue;
            }
            if let Ok(record) = read_record(&entry.path()) {
                machines.push(record.machine);
            }
        }
        machines.sort_by_key(|m| m.id);
        Ok(machines)
    }

    /// The autodriver's command for a run in machine directory `dir`: the job's limits, its
    /// uid, the machine's files, and an environment with nothing of tango's.
    fn autodriver_command(
        &self,
        dir: &Path,
        uid: Option<u32>,
        memory_mb: u64,
        spec: &RunSpec,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.autodriver);
        cmd.args(spec.autodriver_limits());
        if memory_mb > 0 {
            cmd.args(["-a", &(memory_mb.saturating_mul(1024 * 1024)).to_string()]);
        }
        if let Some(uid) = uid {
            cmd.args(["--uid", &uid.to_string(), "--gid", &uid.to_string()]);
        }
        cmd.arg("--output")
            .arg(dir.join("output"))
            .arg("--output-log")
            .arg(dir.join("output.log"))
            .arg("--report")
            .arg(dir.join("report.json"))
            .arg(dir.join("job"))
            .current_dir(dir)
            // The job must not see tango's environment (keys, credentials).
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for var in ["LANG", "LC_ALL", "TZ"] {
            if let Some(value) = std::env::var_os(var) {
                cmd.env(var, value);
            }
        }
        if spec.disable_network {
            // SAFETY: isolate_network makes only system calls, no allocation.
            unsafe {
                cmd.pre_exec(isolate_network);
            }
        }
        cmd
    }
}

fn open_no_follow(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(file)
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VmmsError> + Send + 'static,
) -> Result<T, VmmsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| VmmsError::Backend(format!("a local backend task failed: {e}")))?
}

/// In the child before exec: a new network namespace with only `lo` (up), and a mount
/// namespace with a fresh `/sys`, which shows the network devices of the namespace that
/// mounted it. Only the `unshare` must succeed: the rest is for the job's view.
fn isolate_network() -> io::Result<()> {
    const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
    // SAFETY: system calls on constant arguments and a local, zeroed ifreq.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) != 0 {
            return Err(io::Error::last_os_error());
        }
        // Our mounts must not propagate back to the host.
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) == 0
        {
            libc::mount(
                c"sysfs".as_ptr(),
                c"/sys".as_ptr(),
                c"sysfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            );
        }
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd >= 0 {
            let mut req: libc::ifreq = std::mem::zeroed();
            req.ifr_name[0] = b'l' as libc::c_char;
            req.ifr_name[1] = b'o' as libc::c_char;
            if libc::ioctl(fd, SIOCGIFFLAGS, &mut req) == 0 {
                req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
                libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
            }
            libc::close(fd);
        }
    }
    Ok(())
}

/// Reads the first 16 KiB of the autodriver's standard error while it runs: what it says
/// when it fails, for the log.
fn read_diagnostics(
    mut stderr: Option<tokio::process::ChildStderr>,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut text = Vec::new();
        if let Some(err) = stderr.as_mut() {
            let _ = err.take(16 * 1024).read_to_end(&mut text).await;
        }
        String::from_utf8_lossy(&text).into_owned()
    })
}

/// Kills an autodriver that overran, then everything of the machine's uid.
async fn kill_overrun(
    child: &mut tokio::process::Child,
    uid: Option<u32>,
) -> Result<(), VmmsError> {
    let _ = child.start_kill();
    let _ = child.wait().await;
    if let Some(uid) = uid {
        blocking(move || {
            procs::sweep_uid(uid, uid, SWEEP_PATIENCE)
                .map_err(|e| VmmsError::Backend(format!("killing uid {uid}: {e}")))
        })
        .await?;
    }
    Ok(())
}

/// The run's outcome from the autodriver's exit status; an exit other than finished (0) or
/// timed out (2) is logged with what it said on `diagnostics`.
fn outcome(
    status: std::process::ExitStatus,
    diagnostics: &str,
    machine: &str,
) -> Result<RunOutcome, VmmsError> {
    match status.code() {
        Some(code) => {
            if code != 0 && code != 2 {
                tracing::warn!(
                    machine = %machine,
                    code,
                    stderr = %diagnostics.trim_end(),
                    "autodriver failed"
                );
            }
            Ok(RunOutcome::Exited(code))
        }
        None => {
            use std::os::unix::process::ExitStatusExt;
            Err(VmmsError::Backend(format!(
                "the autodriver was killed by signal {}",
                status.signal().unwrap_or(0)
            )))
        }
    }
}

#[async_trait]
impl Vmms for LocalVmms {
    fn name(&self) -> &str {
        "local"
    }

    fn instance_name(&self, vm: &Machine) -> String {
        super::instance_name(&self.settings.prefix, vm)
    }

    async fn initialize_vm(&self, vm: &mut Machine) -> Result<(), VmmsError> {
        let dir = self.machine_dir(vm)?;
        vm.instance = Some(dir.display().to_string());
        let settings = self.settings.clone();
        let record_vm = vm.clone();
        blocking(move || settings.create_machine(&dir, &record_vm)).await?;
        Ok(())
    }

    async fn wait_vm(&self, vm: &Machine, _max: Duration) -> Result<(), VmmsError> {
        // A directory is ready as soon as it exists.
        let dir = self.machine_dir(vm)?;
        blocking(move || read_record(&dir).map(|_| ())).await
    }

    async fn copy_in(&self, vm: &Machine, inputs: &[InputFile]) -> Result<(), VmmsError> {
        let dir = self.machine_dir(vm)?;
        let settings = self.settings.clone();
        let inputs = inputs.to_vec();
        blocking(move || settings.copy_in(&dir, &inputs)).await
    }

    async fn run_job(&self, vm: &Machine, spec: &RunSpec) -> Result<RunOutcome, VmmsError> {
        let settings = &self.settings;
        let dir = self.machine_dir(vm)?;
        let record = {
            let dir = dir.clone();
            blocking(move || read_record(&dir)).await?
        };
        if spec.disable_network && !settings.privileged {
            return Err(VmmsError::Unsupported(
                "the local backend disables the network with a new network namespace, \
                 which needs tango to run as root"
                    .into(),
            ));
        }
        let memory_mb = vm.memory.unwrap_or(settings.memory_mb);
        let mut cmd = settings.autodriver_command(&dir, record.uid, memory_mb, spec);
        let mut child = cmd.spawn().map_err(|e| {
            if spec.disable_network {
                VmmsError::Unsupported(format!(
                    "could not start the autodriver without network (a new network \
                     namespace): {e}"
                ))
            } else {
                VmmsError::Backend(format!(
                    "could not start the autodriver {}: {e}",
                    settings.autodriver.display()
                ))
            }
        })?;
        let diagnostics = read_diagnostics(child.stderr.take());

        let waited = tokio::time::timeout(spec.kill_after, child.wait())
            .await
            .ok();
        let Some(status) = waited else {
            kill_overrun(&mut child, record.uid).await?;
            tracing::warn!(machine = %self.instance_name(vm), "autodriver overran its timeout; killed");
            return Ok(RunOutcome::Killed);
        };
        let status = status?;
        let diagnostics = diagnostics.await.unwrap_or_default();
        outcome(status, &diagnostics, &self.instance_name(vm))
    }

    async fn copy_out(&self, vm: &Machine, dest: &Path, max_output: u64) -> Result<(), VmmsError> {
        let dir = self.machine_dir(vm)?;
        let settings = self.settings.clone();
        let dest = dest.to_path_buf();
        let cap = output_cap(max_output);
        blocking(move || settings.copy_out(&dir, &dest, cap)).await
    }

    async fn destroy_vm(&self, vm: &Machine) -> Result<(), VmmsError> {
        let dir = self.machine_dir(vm)?;
        let settings = self.settings.clone();
        let owner = vm.owner.clone();
        blocking(move || settings.destroy(&dir, owner.as_deref())).await
    }

    async fn get_vms(&self) -> Result<Vec<Machine>, VmmsError> {
        let settings = self.settings.clone();
        blocking(move || settings.list()).await
    }

    async fn exists_vm(&self, vm: &Machine) -> Result<bool, VmmsError> {
        let dir = self.machine_dir(vm)?;
        blocking(move || Ok(dir.join(RECORD).is_file())).await
    }

    async fn get_images(&self) -> Result<Vec<String>, VmmsError> {
        Ok(self.settings.images.clone())
    }

    async fn get_partial_output(&self, vm: &Machine, max_bytes: u64) -> Result<Vec<u8>, VmmsError> {
        let dir = self.machine_dir(vm)?;
        let settings = self.settings.clone();
        blocking(move || settings.partial_output(&dir, max_bytes)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_names() {
        assert!(check_component("Makefile").is_ok());
        assert!(check_component("autograde.tar").is_ok());
        for bad in ["", ".", "..", "a/b", "../x", "/etc/passwd", "a\0b"] {
            assert!(check_component(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_work_dir_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(prepare_work_dir(&open).is_err());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        assert!(prepare_work_dir(&link).is_err());
        let fresh = dir.path().join("fresh/deeper");
        prepare_work_dir(&fresh).unwrap();
        assert_eq!(
            fs::metadata(&fresh).unwrap().mode() & 0o777,
            0o711,
            "a new work directory is traversable, not listable"
        );
        prepare_work_dir(&fresh).unwrap();
    }
}
