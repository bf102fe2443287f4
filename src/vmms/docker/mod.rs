//! The Docker backend: Tango's `localDocker` and `distDocker` in one, through the Docker
//! Engine API (bollard), on one or more engines.
//!
//! A machine is a container, made ready before any job needs it: created from the job's image
//! with our limits and started with an idle main process, nothing more. A job's run is then
//! one exec with its standard streams attached: a short shell script writes our static
//! autodriver (the first bytes on the exec's standard input) to `/tango/bin/autodriver` (a
//! small tmpfs) and execs it with `--stdin-inputs`, which unpacks the job's files (a tar
//! archive, the rest of standard input) into `/tango/job`; the autodriver's standard output
//! is the job's output.
//! `copy_in` only checks the input files on this host and `copy_out` writes what the run
//! printed: no archive API call is on a job's path, because on some engines each costs tens
//! of milliseconds (a helper process, and a mount of a stopped container's file system). The
//! container is used once and removed. See `docs/backends.md` for the layout inside a
//! container, the limits, and why each choice was made.
//!
//! Every container we make is named `<prefix>-<id>-<image>` and labelled with our prefix and
//! the manager that owns it; [`DockerVmms::get_vms`] lists only containers with both, so a
//! container of anyone else is never listed, let alone removed.

pub mod archive;
pub mod engine;
pub mod image;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, NetworkDisconnectRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, DownloadFromContainerOptions, ImportImageOptions, KillContainerOptions,
    ListContainersOptions, ListImagesOptions, RemoveContainerOptions, RemoveImageOptions,
    TagImageOptions,
};
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use self::archive::ArchiveError;
use self::engine::{CONTROL_TIMEOUT, Engine, Engines};
use super::{RunOutcome, RunSpec, Vmms, VmmsError};
use crate::config::{Config, DockerConfig, LimitsConfig};
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

/// What the run's exec does before the autodriver: the autodriver's bytes from standard input
/// into [`AUTODRIVER`], then [`READY_MARK`] on standard error. The inputs archive is sent only
/// once the mark is seen: `head -c` of GNU coreutils reads exactly its
/// count from a pipe, but busybox's reads through stdio and may take bytes past it, which
/// would eat the start of the archive; with nothing more in the pipe, any `head` stops at the
/// count. `$1` is the autodriver's size and `$2` its path; the autodriver's arguments follow.
/// A failure here
/// exits 126, as the engine does for a command it cannot start, so it is never taken for the
/// autodriver's own status. Needs `sh`, `head` and `chmod` in the image (`/tango` and the
/// tmpfs at `/tango/bin` are made by the engine, root's).
const RUN_SCRIPT: &str = "head -c \"$1\" > \"$2\" \
&& chmod 0755 /tango \"$2\" && echo tango-autodriver-in >&2 || exit 126
shift
exec \"$@\"";

/// What [`RUN_SCRIPT`] prints on standard error once the autodriver is in place.
const READY_MARK: &[u8] = b"tango-autodriver-in\n";

/// Labels on every container we make.
pub const LABEL_PREFIX: &str = "tango.prefix";
pub const LABEL_OWNER: &str = "tango.owner";
pub const LABEL_VM_ID: &str = "tango.vm_id";
pub const LABEL_IMAGE: &str = "tango.image";
pub const LABEL_NAME: &str = "tango.name";
pub const LABEL_UID: &str = "tango.uid";

/// Bytes allowed past the output cap: the autodriver's status line and its elision marker.
pub const OUTPUT_SLACK: u64 = 4096;

/// The container's main process: it only keeps the container alive for the execs that do
/// the work. It needs `/bin/sh` and `sleep` in the image (any image that can run `make`
/// has them). Docker's init runs as PID 1 above it and reaps orphans.
const IDLE_COMMAND: &str = "while :; do sleep 86400; done";

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

/// The network containers are created on; `disable_network` jobs are disconnected from it
/// before they run, which leaves them only `lo`.
const NETWORK: &str = "bridge";

/// A failure talking to an engine.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The configuration of an engine cannot work.
    #[error("Docker engine {engine}: {message}")]
    Config { engine: String, message: String },
    /// The engine did not answer (connection refused, timeout, broken stream).
    #[error("Docker engine {engine} is not answering: {message}")]
    Unreachable { engine: String, message: String },
    /// The engine answered with an error.
    #[error("Docker engine {engine}: {message}")]
    Refused {
        engine: String,
        status: u16,
        message: String,
    },
}

impl DockerError {
    /// Sorts a bollard error into "the engine answered no" and "the engine did not answer".
    pub fn from_engine(engine: &str, e: BollardError) -> DockerError {
        let engine = engine.to_string();
        match e {
            BollardError::DockerResponseServerError {
                status_code,
                message,
            } => DockerError::Refused {
                engine,
                status: status_code,
                message: message.trim().to_string(),
            },
            BollardError::DockerStreamError { error } => DockerError::Refused {
                engine,
                status: 500,
                message: error,
            },
            e @ (BollardError::JsonDataError { .. } | BollardError::JsonSerdeError { .. }) => {
                DockerError::Refused {
                    engine,
                    status: 500,
                    message: format!("unexpected answer: {e}"),
                }
            }
            other => DockerError::Unreachable {
                engine,
                message: other.to_string(),
            },
        }
    }

    pub fn is_unreachable(&self) -> bool {
        matches!(self, DockerError::Unreachable { .. })
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            DockerError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Adds what we were doing to the message.
    fn doing(self, what: &str) -> DockerError {
        match self {
            DockerError::Config { engine, message } => DockerError::Config {
                engine,
                message: format!("{what}: {message}"),
            },
            DockerError::Unreachable { engine, message } => DockerError::Unreachable {
                engine,
                message: format!("{what}: {message}"),
            },
            DockerError::Refused {
                engine,
                status,
                message,
            } => DockerError::Refused {
                engine,
                status,
                message: format!("{what}: {message}"),
            },
        }
    }
}

impl From<DockerError> for VmmsError {
    fn from(e: DockerError) -> Self {
        VmmsError::Backend(e.to_string())
    }
}

fn archive_error(e: ArchiveError) -> VmmsError {
    match e {
        ArchiveError::Input { .. } | ArchiveError::BadName(_) => VmmsError::Io(e.to_string()),
        _ => VmmsError::Backend(e.to_string()),
    }
}

/// Whom the job runs as inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobUser {
    /// A numeric uid and gid of the machine's own (the default), so no two machines share a
    /// process budget (RLIMIT_NPROC counts per uid across the whole host).
    Id { uid: u32, gid: u32 },
    /// A user named in the image's `/etc/passwd` (Tango's way: one user for every job).
    Named(String),
}

/// The Docker backend.
pub struct DockerVmms {
    /// `localDocker` or `distDocker`, as configured.
    vmms_name: String,
    prefix: String,
    engines: Engines,
    /// Our static autodriver, read once: the first bytes every run sends to its exec.
    autodriver: Bytes,
    /// What a job's steps hand to the next, by container id: the inputs `copy_in` checked,
    /// for `run_job` to send, and the output `run_job` read, for `copy_out` to write. The run
    /// takes the inputs; a container's entry goes when it is destroyed.
    staged: Mutex<HashMap<String, Staged>>,
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

/// What one run's exec is given.
struct RunPlan {
    /// The exec's command ([`DockerVmms::run_command`]).
    cmd: Vec<String>,
    /// Sent first on its standard input.
    autodriver: Bytes,
    /// Sent once the autodriver is in place.
    inputs: archive::ArchiveStream,
    /// Most bytes of standard output kept.
    output_cap: u64,
    /// How long after the inputs are sent the run may take before its container is killed.
    guard: Duration,
    /// How long sending the autodriver and the inputs may take.
    send_limit: Duration,
}

/// How the run's exec ended.
enum ExecEnd {
    /// The exec exited with this code; what it printed on standard output (cut to the cap)
    /// and the tail of its standard error.
    Exited {
        code: i64,
        stdout: Vec<u8>,
        stdout_size: u64,
        said: String,
    },
    /// The host-side guard ran out before it ended.
    GuardFired,
}

/// Why the run's exec failed.
enum ExecFailure {
    Engine(DockerError),
    /// An input file on this host could not be read while it was being sent.
    Input(std::io::Error),
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

    /// Whom a machine's job runs as.
    pub fn job_user(&self, vm: &Machine) -> JobUser {
        if self.docker.job_uid_count == 0 {
            return JobUser::Named(self.docker.user.clone());
        }
        let id = vm.id.unwrap_or(0);
        let offset = (id % u64::from(self.docker.job_uid_count)) as u32;
        let uid = self.docker.job_uid_base.saturating_add(offset);
        JobUser::Id { uid, gid: uid }
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

    fn labels(&self, vm: &Machine) -> HashMap<String, String> {
        let mut labels = HashMap::new();
        labels.insert(LABEL_PREFIX.to_string(), self.prefix.clone());
        labels.insert(
            LABEL_OWNER.to_string(),
            vm.owner.clone().unwrap_or_default(),
        );
        labels.insert(
            LABEL_VM_ID.to_string(),
            vm.id.map(|i| i.to_string()).unwrap_or_default(),
        );
        labels.insert(LABEL_IMAGE.to_string(), vm.image.clone());
        labels.insert(LABEL_NAME.to_string(), vm.name.clone());
        if let JobUser::Id { uid, .. } = self.job_user(vm) {
            labels.insert(LABEL_UID.to_string(), uid.to_string());
        }
        labels
    }

    /// The limits of a machine: its own cores and memory when it names them, else config's.
    fn host_config(&self, vm: &Machine) -> HostConfig {
        let memory_mb = vm.memory.unwrap_or(self.limits.memory_mb);
        let memory = (memory_mb > 0).then(|| (memory_mb as i64).saturating_mul(1024 * 1024));
        let cores = vm.cores.or(self.limits.cores).filter(|c| *c > 0.0);
        HostConfig {
            memory,
            // Equal to the memory limit: no swap on top, so a memory hog is stopped, not
            // slowed to a crawl.
            memory_swap: memory,
            nano_cpus: cores.map(|c| (c * 1e9) as i64),
            pids_limit: (self.limits.pids > 0).then_some(self.limits.pids as i64),
            cap_drop: Some(vec!["ALL".to_string()]),
            cap_add: Some(CAPABILITIES.iter().map(|c| c.to_string()).collect()),
            security_opt: Some(vec!["no-new-privileges".to_string()]),
            init: Some(true),
            network_mode: Some(NETWORK.to_string()),
            // Root's, executable, just big enough for the autodriver (its pages count against
            // the container's memory limit, as any tmpfs's do).
            tmpfs: Some(HashMap::from([(
                BIN_DIR.to_string(),
                format!(
                    "rw,exec,nosuid,nodev,mode=0755,uid=0,gid=0,size={}",
                    self.bin_dir_size()
                ),
            )])),
            // The idle process prints nothing and exec output is not logged: no log driver.
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".to_string()),
                config: None,
            }),
            ..Default::default()
        }
    }

    fn create_body(&self, vm: &Machine, image: &str) -> ContainerCreateBody {
        ContainerCreateBody {
            image: Some(image.to_string()),
            // Our own entrypoint, whatever the image's: the image's CMD is not run.
            entrypoint: Some(vec![
                "/bin/sh".to_string(),
                "-c".to_string(),
                IDLE_COMMAND.to_string(),
            ]),
            cmd: Some(Vec::new()),
            user: Some("0".to_string()),
            working_dir: Some("/".to_string()),
            labels: Some(self.labels(vm)),
            host_config: Some(self.host_config(vm)),
            ..Default::default()
        }
    }

    /// Creates, fills and starts a machine's container on one engine; returns its id.
    async fn create_on(&self, engine: &Engine, vm: &Machine) -> Result<String, DockerError> {
        let name = self.instance_name(vm);
        let id = match self.create_container(engine, vm, &name, &vm.image).await {
            Err(e) if e.is_not_found() => {
                // Jobs name images the way Tango listed them (`gcc` for `course/gcc:12`):
                // find the tag the name stands for on this engine.
                match self.resolve_image(engine, &vm.image).await? {
                    Some(reference) if reference != vm.image => {
                        self.create_container(engine, vm, &name, &reference).await?
                    }
                    _ => return Err(e),
                }
            }
            other => other?,
        };
        // Until the container is ready and handed over, it is removed if this call fails or
        // is abandoned (the worker's step timeout drops the future): no orphan is left for a
        // live manager, which would not clean it until it restarts.
        let mut orphan = OrphanGuard {
            client: engine.client.clone(),
            id: Some(id.clone()),
        };
        if let Err(e) = self.start(engine, &id).await {
            orphan.id = None;
            let _ = self.remove(engine, &id).await;
            return Err(e);
        }
        orphan.id = None;
        Ok(id)
    }

    /// Creates the container; when a container of ours with that name is left from an
    /// earlier attempt by the same manager, removes it and tries once more.
    async fn create_container(
        &self,
        engine: &Engine,
        vm: &Machine,
        name: &str,
        image: &str,
    ) -> Result<String, DockerError> {
        let create = || {
            call(
                engine,
                "create container",
                Some(CONTROL_TIMEOUT),
                engine.client.create_container(
                    Some(CreateContainerOptions {
                        name: Some(name.to_string()),
                        ..Default::default()
                    }),
                    self.create_body(vm, image),
                ),
            )
        };
        match create().await {
            Ok(created) => Ok(created.id),
            Err(e) if e.status() == Some(409) => {
                let existing = call(
                    engine,
                    "inspect container",
                    Some(CONTROL_TIMEOUT),
                    engine.client.inspect_container(name, None),
                )
                .await?;
                let labels = existing.config.and_then(|c| c.labels).unwrap_or_default();
                let ours = labels.get(LABEL_PREFIX) == Some(&self.prefix)
                    && vm.owner.is_some()
                    && labels.get(LABEL_OWNER) == vm.owner.as_ref();
                if !ours {
                    return Err(e.doing(&format!(
                        "the name {name} is taken by a container this manager did not make"
                    )));
                }
                tracing::info!(
                    container = name,
                    "removing our leftover container of the same name"
                );
                if let Some(old) = existing.id {
                    self.remove(engine, &old).await?;
                }
                Ok(create().await?.id)
            }
            Err(e) => Err(e),
        }
    }

    /// Starts the idle main process. Nothing is copied in: the run brings the autodriver
    /// and the inputs itself, on the exec's standard input.
    async fn start(&self, engine: &Engine, id: &str) -> Result<(), DockerError> {
        call(
            engine,
            "start container",
            Some(CONTROL_TIMEOUT),
            engine.client.start_container(id, None),
        )
        .await
    }

    /// The tag a job's image name stands for on an engine, if any.
    async fn resolve_image(
        &self,
        engine: &Engine,
        wanted: &str,
    ) -> Result<Option<String>, DockerError> {
        let images = call(
            engine,
            "list images",
            Some(CONTROL_TIMEOUT),
            engine
                .client
                .list_images(Some(ListImagesOptions::default())),
        )
        .await?;
        let tags = images
            .iter()
            .flat_map(|i| i.repo_tags.iter().map(String::as_str));
        Ok(image::resolve(wanted, tags))
    }

    /// Removes a container (killing it first), bounded by `docker.rm_timeout`. A container
    /// that is already gone is not an error.
    async fn remove(&self, engine: &Engine, id: &str) -> Result<(), DockerError> {
        let timeout = Duration::from_secs(self.docker.rm_timeout.max(1));
        let result = call(
            engine,
            "remove container",
            Some(timeout),
            engine.client.remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            ),
        )
        .await;
        match result {
            Ok(()) => {
                engine.remove_container(id);
                Ok(())
            }
            Err(e) if e.is_not_found() => {
                engine.remove_container(id);
                Ok(())
            }
            // Docker answers 409 while a removal of the same container is under way.
            Err(e) if e.status() == Some(409) && e.to_string().contains("already in progress") => {
                Ok(())
            }
            Err(e) => Err(e),
        }
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

    /// The autodriver's command line for a job.
    pub fn autodriver_command(&self, vm: &Machine, spec: &RunSpec) -> Vec<String> {
        let mut cmd: Vec<String> = vec![
            AUTODRIVER.into(),
            "-u".into(),
            spec.ulimit_user_proc.to_string(),
            "-f".into(),
            spec.ulimit_file_size.to_string(),
            "-t".into(),
            spec.timeout.to_string(),
            "-o".into(),
            spec.max_output.to_string(),
        ];
        match self.job_user(vm) {
            JobUser::Id { uid, gid } => {
                cmd.extend([
                    "--uid".into(),
                    uid.to_string(),
                    "--gid".into(),
                    gid.to_string(),
                ]);
            }
            JobUser::Named(name) => cmd.extend(["--user".into(), name]),
        }
        // No --output: the output is the autodriver's standard output, which the run reads.
        cmd.extend([
            "--stdin-inputs".into(),
            "--output-log".into(),
            OUTPUT_LOG.into(),
            JOB_DIR.into(),
        ]);
        cmd
    }

    /// The run's exec: [`RUN_SCRIPT`], given the autodriver's size and then its command line
    /// (whose first word, the autodriver's path, is where the script puts it).
    pub fn run_command(&self, vm: &Machine, spec: &RunSpec) -> Vec<String> {
        let mut cmd: Vec<String> = vec![
            "/bin/sh".into(),
            "-c".into(),
            RUN_SCRIPT.into(),
            // `$0` of the script, for its error messages.
            "tango-run".into(),
            self.autodriver.len().to_string(),
        ];
        cmd.extend(self.autodriver_command(vm, spec));
        cmd
    }

    /// Runs the autodriver as an exec and waits for it. Its standard input gets the
    /// autodriver, then, once the exec says it has it, the inputs archive, while its
    /// standard output (the job's output,
    /// kept up to `output_cap` bytes) and standard error (the tail of its diagnostics) are
    /// read at the same time, so neither side can block the other. The guard starts once the
    /// inputs are sent: sending a large handin is not the job's time.
    async fn exec_autodriver(
        &self,
        engine: &Engine,
        id: &str,
        run: RunPlan,
    ) -> Result<ExecEnd, ExecFailure> {
        let RunPlan {
            cmd,
            autodriver: first,
            inputs: rest,
            output_cap,
            guard,
            send_limit,
        } = run;
        let exec = call(
            engine,
            "create exec",
            Some(CONTROL_TIMEOUT),
            engine.client.create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(cmd),
                    user: Some("0".to_string()),
                    // The grading directory is made by the run itself.
                    working_dir: Some("/".to_string()),
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            ),
        )
        .await
        .map_err(ExecFailure::Engine)?;
        let started = call(
            engine,
            "start exec",
            Some(CONTROL_TIMEOUT),
            engine.client.start_exec(
                &exec.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: None,
                }),
            ),
        )
        .await
        .map_err(ExecFailure::Engine)?;
        let StartExecResults::Attached { mut output, input } = started else {
            return Err(ExecFailure::Engine(DockerError::Refused {
                engine: engine.url.clone(),
                status: 500,
                message: "the engine started the run detached".to_string(),
            }));
        };

        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        // Standard error until the ready mark is seen (it may come in pieces).
        let mut before_ready: Vec<u8> = Vec::new();
        let feed = feed(input, first, ready_rx, rest);
        tokio::pin!(feed);
        let mut feeding = true;
        let mut input_failure = None;
        // First the sending's own bound, then, once everything is sent, the job's.
        let deadline = tokio::time::sleep(send_limit);
        tokio::pin!(deadline);
        let mut stdout = Vec::new();
        let mut stdout_size = 0u64;
        let mut said = TailBuffer::new(8 * 1024);
        loop {
            tokio::select! {
                fed = &mut feed, if feeding => {
                    feeding = false;
                    match fed {
                        Ok(()) => {}
                        Err(FeedError::Input(e)) => input_failure = Some(e),
                        // The exec stopped reading (it failed, or ended early): its exit
                        // code and diagnostics tell why.
                        Err(FeedError::Write(e)) => {
                            tracing::debug!(container = id, "the run stopped reading its input: {e}");
                        }
                    }
                    deadline.as_mut().reset(tokio::time::Instant::now() + guard);
                }
                item = output.next() => match item {
                    Some(Ok(LogOutput::StdOut { message })) => {
                        stdout_size += message.len() as u64;
                        let room = output_cap.saturating_sub(stdout.len() as u64) as usize;
                        stdout.extend_from_slice(&message[..message.len().min(room)]);
                    }
                    Some(Ok(other)) => {
                        let bytes = other.into_bytes();
                        if ready_tx.is_some() {
                            before_ready.extend_from_slice(&bytes);
                            if let Some(at) = find(&before_ready, READY_MARK) {
                                if let Some(tx) = ready_tx.take() {
                                    let _ = tx.send(());
                                }
                                // The mark is ours, not the autodriver's diagnostics.
                                said.push(&before_ready[..at]);
                                said.push(&before_ready[at + READY_MARK.len()..]);
                                before_ready = Vec::new();
                            }
                        } else {
                            said.push(&bytes);
                        }
                    }
                    Some(Err(e)) => {
                        let e = DockerError::from_engine(&engine.url, e);
                        return Err(ExecFailure::Engine(e.doing("follow the autodriver")));
                    }
                    // The stream ends when the exec exits: no polling.
                    None => break,
                },
                () = &mut deadline => {
                    if feeding {
                        // Nothing of the job ran yet: a stalled copy, which a fresh machine
                        // may not have.
                        return Err(ExecFailure::Engine(DockerError::Unreachable {
                            engine: engine.url.clone(),
                            message: format!(
                                "sending the inputs took more than {} s",
                                send_limit.as_secs()
                            ),
                        }));
                    }
                    return Ok(ExecEnd::GuardFired);
                }
            }
        }
        said.push(&before_ready);
        if let Some(e) = input_failure {
            return Err(ExecFailure::Input(e));
        }
        // The exit code is recorded as the process is reaped, a moment after its output
        // closes; look until it is there (under the same guard).
        let mut pause = Duration::from_millis(5);
        let code = loop {
            let inspect = call(
                engine,
                "inspect exec",
                Some(CONTROL_TIMEOUT),
                engine.client.inspect_exec(&exec.id),
            );
            let inspect = tokio::select! {
                inspect = inspect => inspect.map_err(ExecFailure::Engine)?,
                () = &mut deadline => return Ok(ExecEnd::GuardFired),
            };
            if inspect.running != Some(true)
                && let Some(code) = inspect.exit_code
            {
                break code;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        };
        Ok(ExecEnd::Exited {
            code,
            stdout,
            stdout_size,
            said: said.text(),
        })
    }

    /// Kills a container from the host (the guard against a job that outlives its timeout).
    async fn kill(&self, engine: &Engine, id: &str) {
        let result = call(
            engine,
            "kill container",
            Some(CONTROL_TIMEOUT),
            engine.client.kill_container(
                id,
                Some(KillContainerOptions {
                    signal: "SIGKILL".to_string(),
                }),
            ),
        )
        .await;
        if let Err(e) = result {
            tracing::warn!(container = id, "could not kill the container: {e}");
        }
    }
}

/// Why feeding an exec's standard input stopped.
enum FeedError {
    /// Reading what was to be sent failed (an input file on this host).
    Input(std::io::Error),
    /// Writing to the exec failed.
    Write(std::io::Error),
}

/// Writes `first` to an exec's standard input, waits for `ready`, writes `stream`, then
/// closes the input, so the exec sees end of file after the last byte. When reading the
/// stream fails, the input is closed all the same: the autodriver then finds its archive cut
/// short and says so, instead of waiting for ever.
async fn feed(
    mut input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    first: Bytes,
    ready: tokio::sync::oneshot::Receiver<()>,
    mut stream: archive::ArchiveStream,
) -> Result<(), FeedError> {
    input.write_all(&first).await.map_err(FeedError::Write)?;
    input.flush().await.map_err(FeedError::Write)?;
    if ready.await.is_err() {
        // The exec ended (or failed) before it took the autodriver: nothing more to send.
        let _ = input.shutdown().await;
        return Ok(());
    }
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => input.write_all(&bytes).await.map_err(FeedError::Write)?,
            Err(e) => {
                let _ = input.shutdown().await;
                return Err(FeedError::Input(e));
            }
        }
    }
    input.shutdown().await.map_err(FeedError::Write)
}

/// Removes a container whose creation was abandoned half way, in the background.
struct OrphanGuard {
    client: bollard::Docker,
    /// Set while the container is not yet handed over.
    id: Option<String>,
}

impl Drop for OrphanGuard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let client = self.client.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let options = RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                };
                let removal = client.remove_container(&id, Some(options));
                if let Ok(Err(e)) = tokio::time::timeout(CONTROL_TIMEOUT, removal).await {
                    tracing::warn!(container = %id, "could not remove an abandoned container: {e}");
                }
            });
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

/// Runs one call to an engine with a bound, sorts its error, and keeps the engine's standing
/// up to date: a call that gets no answer takes the engine out of placement.
async fn call<T>(
    engine: &Engine,
    what: &str,
    bound: Option<Duration>,
    fut: impl Future<Output = Result<T, BollardError>>,
) -> Result<T, DockerError> {
    let result = match bound {
        Some(bound) => match tokio::time::timeout(bound, fut).await {
            Ok(result) => result,
            Err(_) => {
                let e = DockerError::Unreachable {
                    engine: engine.url.clone(),
                    message: format!("{what}: no answer within {} s", bound.as_secs()),
                };
                engine.mark_down(&e.to_string());
                return Err(e);
            }
        },
        None => fut.await,
    };
    match result {
        Ok(value) => {
            engine.mark_up();
            Ok(value)
        }
        Err(e) => {
            let e = DockerError::from_engine(&engine.url, e).doing(what);
            if e.is_unreachable() {
                engine.mark_down(&e.to_string());
            } else {
                engine.mark_up();
            }
            Err(e)
        }
    }
}

/// Where `needle` first starts in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Keeps the last bytes of a stream.
struct TailBuffer {
    bytes: Vec<u8>,
    max: usize,
}

impl TailBuffer {
    fn new(max: usize) -> Self {
        TailBuffer {
            bytes: Vec::new(),
            max,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > self.max {
            let cut = self.bytes.len() - self.max;
            self.bytes.drain(..cut);
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).trim().to_string()
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

    async fn initialize_vm(&self, vm: &mut Machine) -> Result<(), VmmsError> {
        let mut failures: Vec<String> = Vec::new();
        for engine in self.engines.placement_order() {
            let _place = engine.reserve();
            match self.create_on(&engine, vm).await {
                Ok(id) => {
                    engine.add_container(&id);
                    tracing::debug!(
                        container = %self.instance_name(vm),
                        id = %id,
                        engine = %engine.url,
                        "container ready"
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

    async fn wait_vm(&self, vm: &Machine, max: Duration) -> Result<(), VmmsError> {
        let engine = self.engine_of(vm)?;
        self.engines.ready(engine).await;
        let id = self.container_ref(vm);
        let deadline = Instant::now() + max;
        let mut pause = Duration::from_millis(20);
        loop {
            let inspect = call(
                engine,
                "inspect container",
                Some(CONTROL_TIMEOUT),
                engine.client.inspect_container(&id, None),
            )
            .await;
            match inspect {
                Ok(info) => {
                    let state = info.state.unwrap_or_default();
                    if state.running == Some(true) {
                        return Ok(());
                    }
                    use bollard::models::ContainerStateStatusEnum as Status;
                    if matches!(
                        state.status,
                        Some(Status::EXITED | Status::DEAD | Status::REMOVING)
                    ) {
                        return Err(VmmsError::Backend(format!(
                            "container {id} stopped before any job ran (exit code {}{})",
                            state.exit_code.unwrap_or(-1),
                            state
                                .error
                                .filter(|e| !e.is_empty())
                                .map(|e| format!(": {e}"))
                                .unwrap_or_default()
                        )));
                    }
                }
                Err(e) if e.is_not_found() => {
                    return Err(VmmsError::NotFound(self.instance_name(vm)));
                }
                Err(e) => return Err(e.into()),
            }
            if Instant::now() + pause > deadline {
                return Err(VmmsError::Timeout {
                    step: "waitVM",
                    secs: max.as_secs(),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    async fn copy_in(&self, vm: &Machine, inputs: &[InputFile]) -> Result<(), VmmsError> {
        // No engine call: the files travel with the run, on its exec's standard input. They
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
        if spec.disable_network {
            let result = call(
                engine,
                "disconnect the network",
                Some(CONTROL_TIMEOUT),
                engine.client.disconnect_network(
                    NETWORK,
                    NetworkDisconnectRequest {
                        container: id.clone(),
                        force: Some(true),
                    },
                ),
            )
            .await;
            match result {
                Ok(()) => {}
                Err(e) if e.to_string().contains("is not connected") => {}
                // Never run a job that asked for no network with one.
                Err(e) => return Err(e.into()),
            }
        }
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
        let cmd = self.run_command(vm, spec);
        let guard = Duration::from_secs(spec.timeout.saturating_add(self.docker.kill_margin_secs));
        let output_cap = spec.max_output.saturating_add(OUTPUT_SLACK);
        let ended = self
            .exec_autodriver(
                engine,
                &id,
                RunPlan {
                    cmd,
                    autodriver: self.autodriver.clone(),
                    inputs: archive,
                    output_cap,
                    guard,
                    send_limit: self.send_limit,
                },
            )
            .await;
        match ended {
            Ok(ExecEnd::Exited {
                code,
                stdout,
                stdout_size,
                said,
            }) => {
                let code = i32::try_from(code).unwrap_or(-1);
                if code == 126 || code == 127 {
                    return Err(VmmsError::Backend(format!(
                        "the autodriver could not be started in {} (exit {code}): {said}",
                        self.instance_name(vm)
                    )));
                }
                if !said.is_empty() {
                    tracing::debug!(container = %id, status = code, "autodriver said: {said}");
                }
                if stdout_size > output_cap {
                    tracing::warn!(
                        container = %self.instance_name(vm),
                        size = stdout_size,
                        cap = output_cap,
                        "output larger than the cap; keeping its first {output_cap} bytes"
                    );
                }
                self.staged().entry(id).or_default().output = Some(stdout);
                Ok(RunOutcome::Exited(code))
            }
            Ok(ExecEnd::GuardFired) => {
                tracing::warn!(
                    container = %self.instance_name(vm),
                    timeout = spec.timeout,
                    margin = self.docker.kill_margin_secs,
                    "job outlived its timeout by the margin; killing its container"
                );
                self.kill(engine, &id).await;
                Ok(RunOutcome::Killed)
            }
            Err(ExecFailure::Input(e)) => Err(VmmsError::Io(format!(
                "an input file could not be read while it was sent: {e}"
            ))),
            Err(ExecFailure::Engine(e)) => Err(if e.is_not_found() {
                VmmsError::NotFound(self.instance_name(vm))
            } else {
                e.into()
            }),
        }
    }

    async fn copy_out(&self, vm: &Machine, dest: &Path, max_bytes: u64) -> Result<(), VmmsError> {
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
        let cap = max_bytes.saturating_add(OUTPUT_SLACK);
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
        self.remove(engine, &id).await.map_err(Into::into)
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
        match call(
            engine,
            "inspect container",
            Some(CONTROL_TIMEOUT),
            engine.client.inspect_container(&id, None),
        )
        .await
        {
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
            match call(
                engine,
                "list images",
                Some(CONTROL_TIMEOUT),
                engine
                    .client
                    .list_images(Some(ListImagesOptions::default())),
            )
            .await
            {
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
        check_image_name(name)?;
        let path = tarball.to_path_buf();
        let saved = tokio::task::spawn_blocking(move || image::read_saved_image(&path))
            .await
            .map_err(|e| VmmsError::Io(e.to_string()))?
            .map_err(|e| VmmsError::Backend(format!("image build failed: {e}")))?;
        let bound = Duration::from_secs(self.docker.image_build_timeout.max(1));
        let mut loaded = 0;
        let mut errors = Vec::new();
        for engine in self.engines.all() {
            let load = self.load_image(engine, name, tarball, &saved);
            match tokio::time::timeout(bound, load).await {
                Ok(Ok(())) => loaded += 1,
                Ok(Err(e)) => errors.push(e.to_string()),
                Err(_) => errors.push(format!(
                    "Docker engine {}: loading the image took more than {} s",
                    engine.url,
                    bound.as_secs()
                )),
            }
        }
        if !errors.is_empty() {
            return Err(VmmsError::Backend(format!(
                "image build failed on {} of {} engines: {}",
                errors.len(),
                loaded + errors.len(),
                errors.join("; ")
            )));
        }
        tracing::info!(image = %format!("{name}:latest"), id = %saved.id, "image loaded");
        Ok(())
    }
}

impl DockerVmms {
    /// `docker load` of one tarball on one engine, then the tag `<name>:latest`. The tags the
    /// tarball carries are undone: a tag that did not exist before is removed, and one that
    /// named another image names that image again, so loading never changes what any other
    /// name means.
    async fn load_image(
        &self,
        engine: &Engine,
        name: &str,
        tarball: &Path,
        saved: &image::SavedImage,
    ) -> Result<(), DockerError> {
        let target = format!("{name}:latest");
        let mut before: Vec<(String, Option<String>)> = Vec::new();
        for tag in saved.repo_tags.iter().filter(|t| **t != target) {
            let previous = match call(
                engine,
                "inspect image",
                Some(CONTROL_TIMEOUT),
                engine.client.inspect_image(tag),
            )
            .await
            {
                Ok(info) => info.id,
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e),
            };
            before.push((tag.clone(), previous));
        }

        let file = tokio::fs::File::open(tarball)
            .await
            .map_err(|e| DockerError::Config {
                engine: engine.url.clone(),
                message: format!("cannot open the image tarball: {e}"),
            })?;
        let body = bollard::body_try_stream(tokio_util::io::ReaderStream::new(file));
        let mut progress = Box::pin(engine.client.import_image(
            ImportImageOptions {
                quiet: true,
                ..Default::default()
            },
            body,
            None,
        ));
        while let Some(item) = progress.next().await {
            if let Err(e) = item {
                let e = DockerError::from_engine(&engine.url, e).doing("load the image");
                if e.is_unreachable() {
                    engine.mark_down(&e.to_string());
                }
                return Err(e);
            }
        }
        call(
            engine,
            "inspect the loaded image",
            Some(CONTROL_TIMEOUT),
            engine.client.inspect_image(&saved.id),
        )
        .await?;
        call(
            engine,
            "tag the image",
            Some(CONTROL_TIMEOUT),
            engine.client.tag_image(
                &saved.id,
                Some(TagImageOptions {
                    repo: Some(name.to_string()),
                    tag: Some("latest".to_string()),
                }),
            ),
        )
        .await?;
        for (tag, previous) in before {
            let undo = match previous {
                Some(old) if old == saved.id => continue,
                Some(old) => {
                    let (repo, version) = image::split_reference(&tag);
                    call(
                        engine,
                        "restore a tag",
                        Some(CONTROL_TIMEOUT),
                        engine.client.tag_image(
                            &old,
                            Some(TagImageOptions {
                                repo: Some(repo.to_string()),
                                tag: Some(version.unwrap_or("latest").to_string()),
                            }),
                        ),
                    )
                    .await
                }
                None => call(
                    engine,
                    "remove a tag the tarball added",
                    Some(CONTROL_TIMEOUT),
                    engine.client.remove_image(
                        &tag,
                        Some(RemoveImageOptions {
                            noprune: true,
                            ..Default::default()
                        }),
                        None,
                    ),
                )
                .await
                .map(|_| ()),
            };
            if let Err(e) = undo {
                tracing::warn!(engine = %engine.url, tag = %tag, "could not undo the tarball's tag: {e}");
            }
        }
        Ok(())
    }
}

/// A Docker repository name, as Autolab checks it: lowercase letters and digits, with
/// `_`, `.`, `-` and `/` between them.
fn check_image_name(name: &str) -> Result<(), VmmsError> {
    let separator = |c: char| matches!(c, '_' | '.' | '-' | '/');
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || separator(c))
        && !name.starts_with(separator)
        && !name.ends_with(separator)
        && !name.contains("//");
    if ok {
        Ok(())
    } else {
        Err(VmmsError::Backend(format!(
            "image build failed: {name:?} is not a valid image name (lowercase letters, \
             digits, and _ . - / between them)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_checked_like_autolab_does() {
        for good in ["gcc", "course/gcc", "my_image.v2", "a-b"] {
            assert!(check_image_name(good).is_ok(), "{good}");
        }
        for bad in ["", "GCC", "gcc:12", "../x", "/x", "x/", "a//b", "a b"] {
            assert!(check_image_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_tail_buffer_keeps_the_end() {
        let mut t = TailBuffer::new(5);
        t.push(b"hello ");
        t.push(b"world");
        assert_eq!(t.text(), "world");
    }

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
