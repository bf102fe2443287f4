//! The Docker backend: Tango's `localDocker` and `distDocker` in one, through the Docker
//! Engine API (bollard), on one or more engines.
//!
//! A machine is a container, made ready before any job needs it: created from the job's image
//! with our limits, given the `/tango` skeleton (our static autodriver and an empty grading
//! directory) through the archive API, and started with an idle main process. A job then only
//! copies its inputs in, runs the autodriver as an exec, and copies its output out; the
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, NetworkDisconnectRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, DownloadFromContainerOptions, ImportImageOptions, KillContainerOptions,
    ListContainersOptions, ListImagesOptions, RemoveContainerOptions, RemoveImageOptions,
    TagImageOptions, UploadToContainerOptions,
};
use bytes::Bytes;
use futures::StreamExt;

use self::archive::ArchiveError;
use self::engine::{CONTROL_TIMEOUT, Engine, Engines};
use super::{RunOutcome, RunSpec, Vmms, VmmsError};
use crate::config::{Config, DockerConfig, LimitsConfig};
use crate::model::{InputFile, Machine};

/// Our directory in every container: root's, not writable by the job, so the job cannot
/// replace what root reads or runs there.
pub const TANGO_DIR: &str = "/tango";
/// Our static autodriver, put in every container (the image's own is never used).
pub const AUTODRIVER: &str = "/tango/autodriver";
/// The grading directory: the job's inputs; `make` runs here as the job's user.
pub const JOB_DIR: &str = "/tango/job";
/// The autodriver's final output (status line and make's output, cut to the limit).
pub const FEEDBACK: &str = "/tango/feedback";
/// Make's output as it is written, for `getPartialOutput`.
pub const OUTPUT_LOG: &str = "/tango/output.log";
/// The autodriver's JSON report.
pub const REPORT: &str = "/tango/report.json";

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
    /// The part of every container's skeleton archive that holds the autodriver, built once.
    skeleton_prefix: Bytes,
    limits: LimitsConfig,
    docker: DockerConfig,
    destroy_secs: f64,
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
        let skeleton_prefix = archive::skeleton_prefix(&autodriver)?;
        let engines = Engines::connect(&config.docker)
            .await
            .map_err(|e| VmmsError::Backend(e.to_string()))?;
        Ok(DockerVmms {
            vmms_name: config.vmms.name.clone(),
            prefix: config.vmms.prefix.clone(),
            engines,
            skeleton_prefix,
            limits: config.limits.clone(),
            docker: config.docker.clone(),
            destroy_secs: config.vmms.destroy_secs,
        })
    }

    /// The engines, for status and tests.
    pub fn engines(&self) -> &[Arc<Engine>] {
        self.engines.all()
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
        if let Err(e) = self.prepare(engine, &id, vm).await {
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

    /// Puts the skeleton in and starts the idle main process.
    async fn prepare(&self, engine: &Engine, id: &str, vm: &Machine) -> Result<(), DockerError> {
        let (uid, gid) = match self.job_user(vm) {
            JobUser::Id { uid, gid } => (uid, gid),
            // The named user's ids are only known inside the image; the autodriver gives
            // it the grading directory when it starts.
            JobUser::Named(_) => (0, 0),
        };
        let skeleton = archive::skeleton(&self.skeleton_prefix, uid, gid).map_err(|e| {
            DockerError::Config {
                engine: engine.url.clone(),
                message: format!("cannot build the container skeleton: {e}"),
            }
        })?;
        call(
            engine,
            "copy the autodriver in",
            Some(CONTROL_TIMEOUT),
            engine.client.upload_to_container(
                id,
                Some(UploadToContainerOptions {
                    path: "/".to_string(),
                    ..Default::default()
                }),
                bollard::body_try_stream(skeleton),
            ),
        )
        .await?;
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
        cmd.extend([
            "--output".into(),
            FEEDBACK.into(),
            "--output-log".into(),
            OUTPUT_LOG.into(),
            "--report".into(),
            REPORT.into(),
            JOB_DIR.into(),
        ]);
        cmd
    }

    /// Runs the autodriver as an exec and waits for it; returns its exit code and the tail
    /// of what it printed (its own diagnostics; the job's output goes to files).
    async fn exec_autodriver(
        &self,
        engine: &Engine,
        id: &str,
        cmd: Vec<String>,
    ) -> Result<(i64, String), DockerError> {
        let exec = call(
            engine,
            "create exec",
            Some(CONTROL_TIMEOUT),
            engine.client.create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(cmd),
                    user: Some("0".to_string()),
                    working_dir: Some(JOB_DIR.to_string()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            ),
        )
        .await?;
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
        .await?;
        let mut said = TailBuffer::new(8 * 1024);
        if let StartExecResults::Attached { mut output, .. } = started {
            // The stream ends when the autodriver exits: no polling.
            while let Some(item) = output.next().await {
                match item {
                    Ok(chunk) => said.push(&chunk.into_bytes()),
                    Err(e) => {
                        let e = DockerError::from_engine(&engine.url, e);
                        return Err(e.doing("follow the autodriver"));
                    }
                }
            }
        }
        // The exit code is recorded as the process is reaped, a moment after its output
        // closes; look until it is there.
        let mut pause = Duration::from_millis(5);
        loop {
            let inspect = call(
                engine,
                "inspect exec",
                Some(CONTROL_TIMEOUT),
                engine.client.inspect_exec(&exec.id),
            )
            .await?;
            if inspect.running != Some(true)
                && let Some(code) = inspect.exit_code
            {
                return Ok((code, said.text()));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
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
        let engine = self.engine_of(vm)?;
        let id = self.container_ref(vm);
        let (uid, gid) = match self.job_user(vm) {
            JobUser::Id { uid, gid } => (uid, gid),
            JobUser::Named(_) => (0, 0),
        };
        let tar = archive::inputs(inputs, uid, gid)
            .await
            .map_err(archive_error)?;
        call(
            engine,
            "copy the inputs in",
            None,
            engine.client.upload_to_container(
                &id,
                Some(UploadToContainerOptions {
                    path: TANGO_DIR.to_string(),
                    ..Default::default()
                }),
                bollard::body_try_stream(tar),
            ),
        )
        .await
        .map_err(|e| {
            if e.is_not_found() {
                VmmsError::NotFound(self.instance_name(vm))
            } else {
                e.into()
            }
        })
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
        let cmd = self.autodriver_command(vm, spec);
        let guard = Duration::from_secs(spec.timeout.saturating_add(self.docker.kill_margin_secs));
        match tokio::time::timeout(guard, self.exec_autodriver(engine, &id, cmd)).await {
            Ok(Ok((code, said))) => {
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
                Ok(RunOutcome::Exited(code))
            }
            Ok(Err(e)) => Err(if e.is_not_found() {
                VmmsError::NotFound(self.instance_name(vm))
            } else {
                e.into()
            }),
            Err(_) => {
                tracing::warn!(
                    container = %self.instance_name(vm),
                    timeout = spec.timeout,
                    margin = self.docker.kill_margin_secs,
                    "job outlived its timeout by the margin; killing its container"
                );
                self.kill(engine, &id).await;
                Ok(RunOutcome::Killed)
            }
        }
    }

    async fn copy_out(&self, vm: &Machine, dest: &Path, max_bytes: u64) -> Result<(), VmmsError> {
        let engine = self.engine_of(vm)?;
        let id = self.container_ref(vm);
        let cap = max_bytes.saturating_add(OUTPUT_SLACK);
        let head = match self.read_file(engine, &id, FEEDBACK, cap).await {
            Ok(head) => head,
            Err(ReadFailure::Missing(_)) => {
                return Err(VmmsError::Backend(format!(
                    "{} has no output file ({FEEDBACK}): the autodriver did not finish",
                    self.instance_name(vm)
                )));
            }
            Err(other) => return Err(other.into()),
        };
        if head.size > cap {
            tracing::warn!(
                container = %self.instance_name(vm),
                size = head.size,
                cap,
                "output larger than the cap; keeping its first {cap} bytes"
            );
        }
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || write_output(&dest, &head.data))
            .await
            .map_err(|e| VmmsError::Io(format!("writing the output failed: {e}")))?
            .map_err(|e| VmmsError::Io(format!("cannot write the output file: {e}")))
    }

    async fn destroy_vm(&self, vm: &Machine) -> Result<(), VmmsError> {
        let engine = self.engine_of(vm)?;
        let id = self.container_ref(vm);
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
