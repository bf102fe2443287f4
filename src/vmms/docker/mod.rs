//! The Docker backend: Tango's `localDocker` and `distDocker` in one, through the Docker
//! Engine API (bollard), on one or more engines.
//!
//! A machine is a container made before any job needs it: created from the job's image with
//! our limits and labels, and not started. Its main process is the run (`run.rs`): when a job
//! comes, the backend attaches to the container, starts it, and writes our static autodriver
//! and the job's inputs (a tar archive) on its standard input; the autodriver's standard
//! output is the job's output. `copy_in` only checks the input files on this host and
//! `copy_out` writes what the run printed: no archive API call is on a job's path, because on
//! some engines each costs tens of milliseconds (a helper process, and a mount of the
//! container's file system). A container runs one job: once its main process has ended it
//! cannot run another, and it is removed. Its network namespace is a holder's, kept from job
//! to job and never shared by two jobs at once (`netns.rs`), unless `docker.reuse_network` is
//! off. See `docs/backends.md` for the layout inside a container, the limits, and why each
//! choice was made.
//!
//! Every container we make is named `<prefix>-<id>-<image>` (holders `<prefix>-netns-<hex>`)
//! and labelled with our prefix and the manager that owns it; [`DockerVmms::get_vms`] lists
//! only containers with both, so a container of anyone else is never listed, let alone
//! removed.
//!
//! Files: `engine.rs` (engines, capacity, placement), `error.rs` (engine errors, the bounded
//! call), `container.rs` (what is created and removed), `netns.rs` (network holders),
//! `run.rs` (a job's run), `archive.rs` (the inputs as a tar stream, partial output read
//! back), `image.rs` (image names, `/build` tarballs), `build.rs` (`/build`).

pub mod archive;
mod build;
mod container;
pub mod engine;
mod error;
pub mod image;
pub mod netns;
mod run;
pub mod settings;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::query_parameters::{DownloadFromContainerOptions, ListContainersOptions};
use bytes::Bytes;
use futures::StreamExt;

use self::archive::ArchiveError;
pub use self::container::JobUser;
use self::engine::{CONTROL_TIMEOUT, Engine, Engines};
pub use self::error::DockerError;
use self::error::{archive_error, call};
pub use self::run::RUN_SCRIPT;
use self::run::{RunEnd, RunFailure, RunPlan, limits_line};
use self::settings::DockerConfig;
use super::{Pacing, RunOutcome, RunSpec, Vmms, VmmsError, run::output_cap};
use crate::config::{Config, LimitsConfig};
use crate::model::{InputFile, Machine};

/// Our directory in every container: root's, not writable by the job, so the job cannot
/// replace what root reads or runs there.
pub const TANGO_DIR: &str = "/tango";
/// A small tmpfs of root's in every container, for our autodriver: written there by each
/// run, since a file written into the container's own file system and then executed costs
/// tens of milliseconds more on fuse-overlayfs (its pages go through the FUSE daemon), and a
/// tmpfs mount costs nothing at start.
pub const BIN_DIR: &str = "/tango/bin";
/// Our static autodriver, put in every container by the run (the image's own is never used).
pub const AUTODRIVER: &str = "/tango/bin/autodriver";
/// The grading directory: the job's inputs; `make` runs here as the job's user.
pub const JOB_DIR: &str = "/tango/job";
/// Make's output as it is written, for `getPartialOutput`.
pub const OUTPUT_LOG: &str = "/tango/output.log";

/// Labels on every container we make.
pub const LABEL_PREFIX: &str = "tango.prefix";
pub const LABEL_OWNER: &str = "tango.owner";
pub const LABEL_VM_ID: &str = "tango.vm_id";
pub const LABEL_IMAGE: &str = "tango.image";
pub const LABEL_NAME: &str = "tango.name";
pub const LABEL_UID: &str = "tango.uid";
/// On network holders only, with the value [`ROLE_NETNS`].
pub const LABEL_ROLE: &str = "tango.role";
pub const ROLE_NETNS: &str = "netns";

/// Capabilities left to root in the container: what the autodriver needs to give the grading
/// directory to the job (CHOWN), remove what the job left (DAC_OVERRIDE for mode-000 files,
/// FOWNER for sticky directories), become the job's uid (SETUID, SETGID) and kill the job's
/// processes (KILL, for its root-side kills). Each was found needed by removing it (see
/// docs/backends.md). The job itself runs without any, and `no-new-privileges` stops it
/// gaining them.
pub const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "SETUID",
    "SETGID",
    "KILL",
];

/// The network machines (or their holders) are on; a `disable_network` job's is disconnected
/// from it before the job starts, which leaves it only `lo`.
const NETWORK: &str = "bridge";

/// The Docker backend.
pub struct DockerVmms {
    /// `localDocker` or `distDocker`, as configured.
    vmms_name: String,
    prefix: String,
    engines: Engines,
    /// Our static autodriver, read once: the first bytes every run sends.
    autodriver: Bytes,
    /// What a job's steps hand to the next, by container: the inputs `copy_in` checked, for
    /// `run_job` to send, and the output `run_job` read, for `copy_out` to write. The run
    /// takes the inputs; a container's entry goes when it is destroyed.
    staged: Mutex<HashMap<String, Staged>>,
    /// Network namespaces kept between jobs.
    holders: netns::Holders,
    limits: LimitsConfig,
    docker: DockerConfig,
    destroy_secs: f64,
    /// How long sending a run's autodriver and inputs may take (`timeouts.copy_in`: it is
    /// the copy-in of Tango's steps).
    send_limit: Duration,
}

/// One container's part of [`DockerVmms::staged`].
#[derive(Default)]
struct Staged {
    /// The job's input files on this host, checked by `copy_in`; read only when sent.
    inputs: Option<Vec<InputFile>>,
    /// What the autodriver printed (the output), already cut to the cap.
    output: Option<Vec<u8>>,
}

/// Opens the Docker backend ([`super::BACKENDS`]).
pub async fn open(config: &Config) -> Result<Arc<dyn Vmms>, VmmsError> {
    Ok(Arc::new(DockerVmms::new(config).await?))
}

impl DockerVmms {
    /// Reads the autodriver to inject and connects to the engines. Fails on a configuration
    /// that cannot work (no autodriver, a bad engine URL, missing TLS files, no local
    /// socket); an engine that does not answer is only logged and tried again later.
    pub async fn new(config: &Config) -> Result<DockerVmms, VmmsError> {
        let autodriver_path = autodriver_path(&config.docker);
        let autodriver = tokio::fs::read(&autodriver_path).await.map_err(|e| {
            VmmsError::Io(format!(
                "docker.autodriver: cannot read {} ({e}); build the static autodriver with \
                 scripts/build-autodriver.sh and point docker.autodriver at it",
                autodriver_path.display()
            ))
        })?;
        if is_dynamically_linked(&autodriver) {
            tracing::warn!(
                path = %autodriver_path.display(),
                "the autodriver is dynamically linked; images without a matching C library \
                 cannot run it (scripts/build-autodriver.sh builds a static one)"
            );
        }
        let engines = Engines::connect(&config.docker)
            .await
            .map_err(|e| VmmsError::Backend(e.to_string()))?;
        Ok(DockerVmms {
            vmms_name: config.vmms.name.clone(),
            prefix: config.vmms.prefix.clone(),
            engines,
            autodriver: Bytes::from(autodriver),
            staged: Mutex::new(HashMap::new()),
            holders: netns::Holders::default(),
            limits: config.limits.clone(),
            docker: config.docker.clone(),
            destroy_secs: config.vmms.destroy_secs,
            send_limit: Duration::from_secs(config.timeouts.copy_in.max(1)),
        })
    }

    fn staged(&self) -> MutexGuard<'_, HashMap<String, Staged>> {
        // Entries are whole values put in and taken out; a panic elsewhere cannot leave one
        // half made.
        self.staged.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The engines, for status and tests.
    pub fn engines(&self) -> &[Arc<Engine>] {
        self.engines.all()
    }

    /// Bytes of the tmpfs at [`BIN_DIR`]: the autodriver, rounded up to whole MiB, plus one.
    fn bin_dir_size(&self) -> u64 {
        const MIB: u64 = 1024 * 1024;
        (self.autodriver.len() as u64)
            .div_ceil(MIB)
            .saturating_add(1)
            * MIB
    }

    /// The engine a machine lives on.
    fn engine_of(&self, vm: &Machine) -> Result<&Arc<Engine>, VmmsError> {
        self.engines.by_url(vm.host.as_deref()).ok_or_else(|| {
            VmmsError::NotFound(format!(
                "{} (on Docker engine {}, which is not configured)",
                self.instance_name(vm),
                vm.host.as_deref().unwrap_or("(none recorded)")
            ))
        })
    }

    /// How calls name the container: its id when we have it, else its name.
    fn container_ref(&self, vm: &Machine) -> String {
        vm.instance
            .clone()
            .unwrap_or_else(|| self.instance_name(vm))
    }

    /// Most jobs (and containers being made) at once on all engines: the sum of their
    /// capacities.
    fn capacity(&self) -> u32 {
        self.engines
            .all()
            .iter()
            .map(|e| e.capacity())
            .sum::<u32>()
            .max(1)
    }

    /// Reads the first `max_bytes` of one regular file in a container.
    async fn read_file(
        &self,
        engine: &Engine,
        id: &str,
        path: &str,
        max_bytes: u64,
    ) -> Result<archive::FileHead, ReadFailure> {
        let stream = engine.client.download_from_container(
            id,
            Some(DownloadFromContainerOptions {
                path: path.to_string(),
            }),
        );
        match archive::read_file(Box::pin(stream), path, max_bytes).await {
            Ok(head) => {
                engine.mark_up();
                Ok(head)
            }
            Err(archive::ReadError::Transfer(e)) => {
                let e = DockerError::from_engine(&engine.url, e);
                if e.is_unreachable() {
                    engine.mark_down(&e.to_string());
                }
                if e.is_not_found() {
                    Err(ReadFailure::Missing(e))
                } else {
                    Err(ReadFailure::Docker(e.doing(&format!("read {path}"))))
                }
            }
            Err(archive::ReadError::Archive(e)) => Err(ReadFailure::Refused(e)),
        }
    }
}

/// Why a file could not be read from a container.
enum ReadFailure {
    /// It does not exist.
    Missing(DockerError),
    /// The engine failed.
    Docker(DockerError),
    /// It is not a regular file, or the archive is not what we accept.
    Refused(ArchiveError),
}

impl From<ReadFailure> for VmmsError {
    fn from(f: ReadFailure) -> Self {
        match f {
            ReadFailure::Missing(e) | ReadFailure::Docker(e) => e.into(),
            ReadFailure::Refused(e) => archive_error(e),
        }
    }
}

/// Where the autodriver to inject is: `docker.autodriver`, else beside the running binary.
fn autodriver_path(config: &DockerConfig) -> PathBuf {
    if !config.autodriver.as_os_str().is_empty() {
        return config.autodriver.clone();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("autodriver")))
        .unwrap_or_else(|| PathBuf::from("autodriver"))
}

/// Whether an ELF executable asks for a dynamic loader (has a PT_INTERP program header).
fn is_dynamically_linked(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        // Not a little-endian 64-bit ELF: nothing to say.
        return false;
    }
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap_or([0; 8])) as usize;
    let phentsize = u16_at(0x36);
    let phnum = u16_at(0x38);
    (0..phnum).any(|i| {
        let at = phoff.saturating_add(i.saturating_mul(phentsize));
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == PT_INTERP)
            .unwrap_or(false)
    })
}

/// Writes `data` to `dest`, which must be a regular file or not exist. Never follows a
/// symbolic link at `dest`, and refuses a file with other hard links (truncating that would
/// change another file too).
fn write_output(dest: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dest)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} is not a plain file of its own; refusing to write the output there",
                dest.display()
            ),
        ));
    }
    file.set_len(0)?;
    file.write_all(data)?;
    file.flush()
}

#[async_trait]
impl Vmms for DockerVmms {
    fn name(&self) -> &str {
        &self.vmms_name
    }

    fn instance_name(&self, vm: &Machine) -> String {
        image::container_name(&format!(
            "{}-{}-{}",
            self.prefix,
            vm.id.unwrap_or(0),
            vm.image
        ))
    }

    fn run_sends_inputs(&self) -> bool {
        true
    }

    fn reusable(&self) -> bool {
        // A container is used for one job, then destroyed and replaced: no job ever sees
        // what an earlier one left behind.
        false
    }

    /// Containers are made as fast as the engines take them: no pause, and as many at once
    /// as the engines' capacity. Tango's pause between creations is for cloud APIs.
    fn pacing(&self) -> Option<Pacing> {
        Some(Pacing {
            pause: Duration::ZERO,
            parallel: self.capacity(),
        })
    }

    fn job_capacity(&self) -> Option<u32> {
        Some(self.capacity())
    }

    async fn initialize_vm(&self, vm: &mut Machine) -> Result<(), VmmsError> {
        let mut failures: Vec<String> = Vec::new();
        for engine in self.engines.placement_order() {
            let _place = engine.reserve();
            match self.create_machine(&engine, vm).await {
                Ok(id) => {
                    engine.add_container(&id);
                    tracing::debug!(
                        container = %self.instance_name(vm),
                        id = %id,
                        engine = %engine.url,
                        "container made"
                    );
                    vm.instance = Some(id);
                    vm.host = Some(engine.url.clone());
                    if vm.vmms.is_empty() {
                        vm.vmms = self.vmms_name.clone();
                    }
                    return Ok(());
                }
                // Another engine may answer, or have the image.
                Err(e) if e.is_unreachable() || e.is_not_found() => {
                    tracing::warn!(engine = %engine.url, "cannot make {} here: {e}", self.instance_name(vm));
                    failures.push(e.to_string());
                }
                Err(e) => return Err(e.into()),
            }
        }
        if failures.is_empty() {
            failures.push("no Docker engine is configured".to_string());
        }
        Err(VmmsError::Backend(failures.join("; ")))
    }

    /// A machine is ready once its container exists and has not been started: its main
    /// process is the run, so a container that started already ran (or is running) a job.
    async fn wait_vm(&self, vm: &Machine, _max: Duration) -> Result<(), VmmsError> {
        let engine = self.engine_of(vm)?;
        self.engines.ready(engine).await;
        let id = self.container_ref(vm);
        let state = match container::inspect(engine, &id).await {
            Ok(info) => info.state.unwrap_or_default(),
            Err(e) if e.is_not_found() => return Err(VmmsError::NotFound(self.instance_name(vm))),
            Err(e) => return Err(e.into()),
        };
        use bollard::models::ContainerStateStatusEnum as Status;
        match state.status {
            Some(Status::CREATED) => Ok(()),
            other => Err(VmmsError::Backend(format!(
                "container {id} is {} (exit code {}{}): it can take no job",
                other.map_or_else(|| "in no known state".to_string(), |s| s.to_string()),
                state.exit_code.unwrap_or(-1),
                state
                    .error
                    .filter(|e| !e.is_empty())
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ))),
        }
    }

    async fn copy_in(&self, vm: &Machine, inputs: &[InputFile]) -> Result<(), VmmsError> {
        // No engine call: the files travel with the run, on its standard input. They
        // are checked here so a missing or unreadable input is still a copy-in failure.
        archive::check_inputs(inputs).await.map_err(archive_error)?;
        self.staged()
            .entry(self.container_ref(vm))
            .or_default()
            .inputs = Some(inputs.to_vec());
        Ok(())
    }

    async fn run_job(&self, vm: &Machine, spec: &RunSpec) -> Result<RunOutcome, VmmsError> {
        let engine = self.engine_of(vm)?;
        let id = self.container_ref(vm);
        let name = self.instance_name(vm);
        // Never run a job that asked for no network with one: a failure here fails the run.
        self.set_network(engine, &name, &id, !spec.disable_network)
            .await?;
        let inputs = self
            .staged()
            .get_mut(&id)
            .and_then(|staged| staged.inputs.take())
            .unwrap_or_default();
        let (uid, gid) = match self.job_user(vm) {
            JobUser::Id { uid, gid } => (uid, gid),
            // The named user's ids are only known inside the image; the autodriver gives
            // the files to it before the job starts.
            JobUser::Named(_) => (0, 0),
        };
        let archive = archive::inputs(&inputs, uid, gid)
            .await
            .map_err(archive_error)?;
        let line = limits_line(spec);
        let inputs = Box::pin(futures::stream::once(async move { Ok(line) }).chain(archive));
        let guard = spec.kill_after;
        let output_cap = spec.output_cap();
        let ended = self
            .run_attached(
                engine,
                &id,
                RunPlan {
                    autodriver: self.autodriver.clone(),
                    inputs,
                    output_cap,
                    guard,
                    send_limit: self.send_limit,
                },
            )
            .await;
        match ended {
            Ok(RunEnd::Exited {
                code,
                stdout,
                stdout_size,
                said,
            }) => {
                let code = i32::try_from(code).unwrap_or(-1);
                if code == 126 || code == 127 {
                    return Err(VmmsError::Backend(format!(
                        "the autodriver could not be started in {name} (exit {code}): {said}"
                    )));
                }
                if !said.is_empty() {
                    tracing::debug!(container = %id, status = code, "autodriver said: {said}");
                }
                if stdout_size > output_cap {
                    tracing::warn!(
                        container = %name,
                        size = stdout_size,
                        cap = output_cap,
                        "output larger than the cap; keeping its first {output_cap} bytes"
                    );
                }
                self.staged().entry(id).or_default().output = Some(stdout);
                Ok(RunOutcome::Exited(code))
            }
            Ok(RunEnd::GuardFired) => {
                tracing::warn!(
                    container = %name,
                    timeout = spec.timeout,
                    kill_after_secs = spec.kill_after.as_secs(),
                    "job outlived its timeout by the margin; killing its container"
                );
                match self.kill(engine, &id).await {
                    // The engine stopped answering, which is why the run never ended: the
                    // machine failed, not the job (it is retried on another machine).
                    Err(e) if e.is_unreachable() => Err(e.into()),
                    _ => Ok(RunOutcome::Killed),
                }
            }
            Err(RunFailure::Input(e)) => Err(VmmsError::Io(format!(
                "an input file could not be read while it was sent: {e}"
            ))),
            Err(RunFailure::Engine(e)) => {
                // A holder that cannot lend its network (it stopped, or was removed) is not
                // handed to another machine.
                if let Some(holder) = self.holders.of(&name)
                    && e.to_string().contains(&holder.id)
                {
                    self.holders.discard(Some(&name), None);
                    self.drop_holder(engine, &holder).await;
                }
                Err(if e.is_not_found() {
                    VmmsError::NotFound(name)
                } else {
                    e.into()
                })
            }
        }
    }

    async fn copy_out(&self, vm: &Machine, dest: &Path, max_output: u64) -> Result<(), VmmsError> {
        // A copy: the worker may copy out again (a retry of the step), and the entry goes when
        // the machine is destroyed.
        let output = self
            .staged()
            .get(&self.container_ref(vm))
            .and_then(|staged| staged.output.clone());
        // Only a run that ended by itself leaves an output (one killed by the guard, or that
        // never ran, does not).
        let Some(mut output) = output else {
            return Err(VmmsError::Backend(format!(
                "{} has no output: the autodriver did not finish",
                self.instance_name(vm)
            )));
        };
        let cap = output_cap(max_output);
        output.truncate(usize::try_from(cap).unwrap_or(usize::MAX));
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || write_output(&dest, &output))
            .await
            .map_err(|e| VmmsError::Io(format!("writing the output failed: {e}")))?
            .map_err(|e| VmmsError::Io(format!("cannot write the output file: {e}")))
    }

    async fn destroy_vm(&self, vm: &Machine) -> Result<(), VmmsError> {
        let id = self.container_ref(vm);
        self.staged().remove(&id);
        let engine = self.engine_of(vm)?;
        // Without a container id, the name is all we have, and another manager may hold it.
        let theirs = vm.instance.is_none()
            && self
                .held_by_another(engine, &id, vm.owner.as_deref())
                .await?;
        if !theirs {
            self.remove(engine, &id).await?;
        }
        // Every process of the job is gone with its container: its network holder may serve
        // another machine.
        self.release_holder(engine, &self.instance_name(vm)).await;
        Ok(())
    }

    async fn safe_destroy_vm(&self, vm: &Machine) -> Result<(), VmmsError> {
        let deadline = Instant::now() + Duration::from_secs_f64(self.destroy_secs.max(0.1));
        loop {
            let destroyed = self.destroy_vm(vm).await;
            match self.exists_vm(vm).await {
                Ok(false) => return Ok(()),
                Ok(true) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(true) => {
                    return Err(destroyed.err().unwrap_or_else(|| {
                        VmmsError::Backend(format!(
                            "container {} still exists after {} s",
                            self.instance_name(vm),
                            self.destroy_secs
                        ))
                    }));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn get_vms(&self) -> Result<Vec<Machine>, VmmsError> {
        let mut machines = Vec::new();
        let mut reached = 0;
        let mut errors = Vec::new();
        let name_start = format!("/{}-", self.prefix);
        for engine in self.engines.all() {
            let mut filters = HashMap::new();
            filters.insert(
                "label".to_string(),
                vec![format!("{LABEL_PREFIX}={}", self.prefix)],
            );
            let listed = call(
                engine,
                "list containers",
                Some(CONTROL_TIMEOUT),
                engine.client.list_containers(Some(ListContainersOptions {
                    all: true,
                    filters: Some(filters),
                    ..Default::default()
                })),
            )
            .await;
            let containers = match listed {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(engine = %engine.url, "cannot list containers: {e}");
                    errors.push(e.to_string());
                    continue;
                }
            };
            reached += 1;
            for c in containers {
                let labels = c.labels.unwrap_or_default();
                // Both marks: our label (checked by the filter, and again here) and our
                // name prefix.
                if labels.get(LABEL_PREFIX) != Some(&self.prefix) {
                    continue;
                }
                let Some(name) = c
                    .names
                    .unwrap_or_default()
                    .into_iter()
                    .find(|n| n.starts_with(&name_start))
                else {
                    continue;
                };
                let label = |key: &str| labels.get(key).filter(|v| !v.is_empty()).cloned();
                let image = label(LABEL_IMAGE).or(c.image).unwrap_or_default();
                if label(LABEL_ROLE).as_deref() == Some(ROLE_NETNS) {
                    // A network holder: ours are in use and not listed; another manager's
                    // is, so that a sweep removes it once that manager is gone.
                    if c.id.as_deref().is_some_and(|id| self.holders.is_ours(id)) {
                        continue;
                    }
                    machines.push(Machine {
                        name: ROLE_NETNS.to_string(),
                        image,
                        vmms: self.vmms_name.clone(),
                        instance: c.id,
                        host: Some(engine.url.clone()),
                        owner: label(LABEL_OWNER),
                        ..Default::default()
                    });
                    continue;
                }
                machines.push(Machine {
                    name: label(LABEL_NAME).unwrap_or_else(|| Machine::pool_name(&image)),
                    image,
                    vmms: self.vmms_name.clone(),
                    id: label(LABEL_VM_ID).and_then(|v| v.parse().ok()),
                    instance: c
                        .id
                        .or_else(|| Some(name.trim_start_matches('/').to_string())),
                    host: Some(engine.url.clone()),
                    owner: label(LABEL_OWNER),
                    ..Default::default()
                });
            }
        }
        if reached == 0 && !errors.is_empty() {
            return Err(VmmsError::Backend(errors.join("; ")));
        }
        Ok(machines)
    }

    async fn exists_vm(&self, vm: &Machine) -> Result<bool, VmmsError> {
        let engine = self.engine_of(vm)?;
        let id = self.container_ref(vm);
        match container::inspect(engine, &id).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn get_images(&self) -> Result<Vec<String>, VmmsError> {
        let mut names = std::collections::BTreeSet::new();
        let mut reached = 0;
        let mut errors = Vec::new();
        for engine in self.engines.all() {
            match container::list_images(engine).await {
                Ok(images) => {
                    reached += 1;
                    for i in &images {
                        names.extend(image::names_of(i.repo_tags.iter().map(String::as_str)));
                    }
                }
                Err(e) => {
                    tracing::warn!(engine = %engine.url, "cannot list images: {e}");
                    errors.push(e.to_string());
                }
            }
        }
        if reached == 0 && !errors.is_empty() {
            return Err(VmmsError::Backend(errors.join("; ")));
        }
        Ok(names.into_iter().collect())
    }

    async fn get_partial_output(&self, vm: &Machine, max_bytes: u64) -> Result<Vec<u8>, VmmsError> {
        let engine = self.engine_of(vm)?;
        let id = self.container_ref(vm);
        match self.read_file(engine, &id, OUTPUT_LOG, max_bytes).await {
            Ok(head) => Ok(head.data),
            // The job has not started writing yet.
            Err(ReadFailure::Missing(e)) => {
                if self.exists_vm(vm).await? {
                    Ok(Vec::new())
                } else {
                    Err(VmmsError::NotFound(format!(
                        "{}: {e}",
                        self.instance_name(vm)
                    )))
                }
            }
            Err(other) => Err(other.into()),
        }
    }

    async fn build_image(&self, name: &str, tarball: &Path) -> Result<(), VmmsError> {
        self.build(name, tarball).await
    }

    async fn shutdown(&self) {
        let holders = self.holders.drain();
        let removals = holders.iter().filter_map(|holder| {
            let engine = self.engines.by_url(Some(&holder.engine))?;
            Some(async move {
                if let Err(e) = self.remove(engine, &holder.id).await {
                    tracing::warn!(holder = %holder.id, "could not remove a network holder: {e}");
                }
            })
        });
        futures::future::join_all(removals).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_linking_is_seen() {
        // This test binary is dynamically linked (tests are never built static).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(is_dynamically_linked(&me));
        assert!(!is_dynamically_linked(b"#!/bin/sh\necho not elf\n"));
    }

    #[test]
    fn output_is_written_to_a_plain_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        write_output(&dest, b"first").unwrap();
        write_output(&dest, b"2nd").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"2nd");

        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(write_output(&link, b"evil").is_err());
        let hard = dir.path().join("hard");
        std::fs::hard_link(&victim, &hard).unwrap();
        assert!(write_output(&hard, b"evil").is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    }
}
