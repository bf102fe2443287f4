//! The machine backends ("VMMS" in Tango): what makes, feeds, runs and destroys the
//! containers or VMs that jobs run in.
//!
//! [`Vmms`] keeps Tango's verbs (initializeVM, waitVM, copyIn, runJob, copyOut, destroyVM,
//! safeDestroyVM, getVMs, existsVM, getImages, instanceName, getPartialOutput) so a reader
//! of Tango's VMMS docs finds them, as async methods with typed results. The worker bounds
//! each call by its configured timeout; a backend adds its own guards where it can do
//! better (killing a container from the host, say). What every backend does the same way
//! when it runs a job (the autodriver's limits, the output cap, the host-side guard) is
//! stated once, in [`run`].
//!
//! Inside every machine our `autodriver` runs `make` in the grading directory under limits
//! and writes the output file; `run_job` returns its exit status. Tango's statuses: 0 the job
//! finished (whatever make returned), 1 usage error, 2 timed out, 3 OS error.
//!
//! Each backend is a module of its own with its settings beside it (`<backend>/settings.rs`,
//! composed by `config.rs`), and is registered once, in [`BACKENDS`]: the names `vmms.name`
//! takes and how to open it.

pub mod docker;
pub mod ec2;
pub mod local;
pub mod run;
pub mod ssh;
pub mod tashi;

pub use run::{OUTPUT_SLACK, RUN_GRACE, RunSpec, within};

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::config::Config;
use crate::model::{InputFile, Machine};

/// Why a backend call failed. Each is a machine-level failure: the worker retries the job on
/// a fresh machine (up to `jobs.retries`), except where noted.
#[derive(Debug, thiserror::Error)]
pub enum VmmsError {
    /// The backend's service (Docker engine, EC2 API, Tashi, SSH) refused or failed.
    #[error("{0}")]
    Backend(String),
    /// A step did not finish in time.
    #[error("{step} timed out after {secs} seconds")]
    Timeout { step: &'static str, secs: u64 },
    /// The machine does not exist (any more).
    #[error("machine {0} not found")]
    NotFound(String),
    /// `initialize_vm` found its instance name held by a machine this manager did not make
    /// (another daemon on the same engine numbering alike). Nothing was made or touched: the
    /// caller takes a fresh machine id and tries again.
    #[error("the name {0} is taken by a machine another manager made")]
    NameTaken(String),
    /// An input or output file could not be read or written on this host.
    #[error("{0}")]
    Io(String),
    /// The backend cannot do this (e.g. `/build` on a non-Docker backend). Not retried.
    #[error("{0}")]
    Unsupported(String),
}

impl From<std::io::Error> for VmmsError {
    fn from(e: std::io::Error) -> Self {
        VmmsError::Io(e.to_string())
    }
}

/// How `run_job` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The autodriver exited with this status (0 finished, 1 usage, 2 timeout, 3 OS error).
    Exited(i32),
    /// The host-side guard killed the machine: the autodriver did not finish within the
    /// job's timeout plus a margin (Tango's `-1`).
    Killed,
}

impl RunOutcome {
    /// The number Tango's trace prints as `[status=N]`.
    pub fn status(&self) -> i32 {
        match self {
            RunOutcome::Exited(code) => *code,
            RunOutcome::Killed => -1,
        }
    }
}

/// How fast a backend's machines may be made: the pause between two creations for one pool
/// (between batches, when several are made at once) and how many are made at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    pub pause: Duration,
    pub parallel: u32,
}

impl Pacing {
    /// Tango's pacing, from `vmms.createvm_secs` and `vmms.create_parallel`: what a cloud
    /// API's rate limits ask for.
    pub fn configured(config: &Config) -> Pacing {
        Pacing {
            pause: Duration::from_secs_f64(config.vmms.createvm_secs.max(0.0)),
            parallel: config.vmms.create_parallel.max(1),
        }
    }
}

/// A machine backend.
#[async_trait]
pub trait Vmms: Send + Sync + 'static {
    /// The name jobs and pools use for it (`localDocker`, `ec2SSH`, ...).
    fn name(&self) -> &str;

    /// `instanceName(id, name)`: `<prefix>-<id>-<name>`.
    fn instance_name(&self, vm: &Machine) -> String;

    /// Whether a machine may run another job after one finished. A backend whose machines
    /// are single-use (Docker: a container is destroyed after its job and a fresh one takes
    /// its place in the pool) answers false.
    fn reusable(&self) -> bool {
        true
    }

    /// How fast machines may be made, when the backend knows better than Tango's
    /// configured pacing (`None`: `vmms.createvm_secs` and `vmms.create_parallel` apply).
    fn pacing(&self) -> Option<Pacing> {
        None
    }

    /// Most jobs one manager should run at once on this backend, when it knows (Docker: its
    /// engines' capacity). `None`: only `vmms.max_concurrent_jobs` and the pools bound them.
    fn job_capacity(&self) -> Option<u32> {
        None
    }

    /// Whether `run_job` sends the inputs that `copy_in` only checked (Docker: they travel on
    /// the run's standard input, bounded by `timeouts.copy_in`), so that the worker's bound
    /// on the run allows for that copy too.
    fn run_sends_inputs(&self) -> bool {
        false
    }

    /// Creates the machine (`vm.id`, `vm.image`, `vm.owner` are set); records the backend's
    /// handle in `vm.instance` / `vm.host`. A name already held by a machine another
    /// manager made is [`VmmsError::NameTaken`], and that machine is left as it is.
    async fn initialize_vm(&self, vm: &mut Machine) -> Result<(), VmmsError>;

    /// Waits until the machine can take a job, at most `max`.
    async fn wait_vm(&self, vm: &Machine, max: Duration) -> Result<(), VmmsError>;

    /// Copies the job's input files into the machine's grading directory (fresh each job).
    async fn copy_in(&self, vm: &Machine, inputs: &[InputFile]) -> Result<(), VmmsError>;

    /// Runs the autodriver on the grading directory; its output stays in the machine.
    async fn run_job(&self, vm: &Machine, spec: &RunSpec) -> Result<RunOutcome, VmmsError>;

    /// Copies the autodriver's output to `dest` on this host: at most
    /// [`run::output_cap`]`(max_output)` bytes, never following a link, never writing
    /// anywhere but `dest`.
    async fn copy_out(&self, vm: &Machine, dest: &Path, max_output: u64) -> Result<(), VmmsError>;

    /// Destroys the machine. One found under its name that records another owner than
    /// `vm.owner` is not this machine (its create met [`VmmsError::NameTaken`]) and is left.
    async fn destroy_vm(&self, vm: &Machine) -> Result<(), VmmsError>;

    /// Destroys the machine and checks it is gone, trying again within `vmms.destroy_secs`.
    async fn safe_destroy_vm(&self, vm: &Machine) -> Result<(), VmmsError> {
        self.destroy_vm(vm).await
    }

    /// Our machines that exist now (those named with our prefix), with `owner` filled in
    /// where the backend records it.
    async fn get_vms(&self) -> Result<Vec<Machine>, VmmsError>;

    async fn exists_vm(&self, vm: &Machine) -> Result<bool, VmmsError>;

    /// Images jobs may name. Tango matches a job's `image` against these exactly.
    async fn get_images(&self) -> Result<Vec<String>, VmmsError>;

    /// What the running job has written so far, at most `max_bytes`.
    async fn get_partial_output(&self, vm: &Machine, max_bytes: u64) -> Result<Vec<u8>, VmmsError>;

    /// A backend acting with a job's own cloud credentials (Tango's `accessKeyId` and
    /// `accessKey`): the worker runs such a job on a one-off machine made through it, and
    /// destroys that machine through it too. Backends without accounts refuse.
    fn with_credentials(
        &self,
        access_key_id: &str,
        access_key: &str,
    ) -> Result<Arc<dyn Vmms>, VmmsError> {
        let _ = (access_key_id, access_key);
        Err(VmmsError::Unsupported(format!(
            "the {} backend does not take per-job credentials",
            self.name()
        )))
    }

    /// At shutdown, after the manager destroyed its machines: removes what the backend keeps
    /// for itself beside them (Docker's network holders).
    async fn shutdown(&self) {}

    /// `/build`: loads an image tarball (`docker save` format) and tags it `<name>:latest`.
    async fn build_image(&self, name: &str, tarball: &Path) -> Result<(), VmmsError> {
        let _ = (name, tarball);
        Err(VmmsError::Unsupported(format!(
            "the {} backend cannot build images",
            self.name()
        )))
    }
}

/// How a backend is opened from the configuration.
pub type Opener = for<'a> fn(&'a Config) -> BoxFuture<'a, Result<Arc<dyn Vmms>, VmmsError>>;

/// One backend: the names `vmms.name` takes for it (Tango's spellings), and its opener.
pub struct Backend {
    pub names: &'static [&'static str],
    pub open: Opener,
}

/// Every backend: the one list. Adding a backend is a module of its own (with its
/// `settings.rs`), a line here, and its section in `config.rs`.
pub const BACKENDS: &[Backend] = &[
    Backend {
        names: &["localDocker", "distDocker"],
        open: |config| Box::pin(docker::open(config)),
    },
    Backend {
        names: &["ec2SSH"],
        open: |config| Box::pin(ec2::open(config)),
    },
    Backend {
        names: &["tashiSSH"],
        open: |config| Box::pin(tashi::open(config)),
    },
    Backend {
        names: &["local"],
        open: |config| Box::pin(local::open(config)),
    },
];

/// Every name `vmms.name` takes, in [`BACKENDS`]' order.
pub fn names() -> impl Iterator<Item = &'static str> {
    BACKENDS.iter().flat_map(|b| b.names.iter().copied())
}

/// Whether `name` names a backend; the error is the one line an admin reads.
pub fn check_name(name: &str) -> Result<(), String> {
    if names().any(|n| n == name) {
        return Ok(());
    }
    Err(format!(
        "unknown backend {name:?}; expected one of {}",
        names().collect::<Vec<_>>().join(", ")
    ))
}

/// Makes the backend the configuration names.
pub async fn open(config: &Config) -> Result<Arc<dyn Vmms>, VmmsError> {
    let name = config.vmms.name.as_str();
    match BACKENDS.iter().find(|b| b.names.contains(&name)) {
        Some(backend) => (backend.open)(config).await,
        None => Err(VmmsError::Unsupported(
            check_name(name).err().unwrap_or_default(),
        )),
    }
}

/// `<prefix>-<id>-<name>`, Tango's instance name.
pub fn instance_name(prefix: &str, vm: &Machine) -> String {
    format!("{}-{}-{}", prefix, vm.id.unwrap_or(0), vm.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backend_name_is_known_once_and_others_are_refused_with_the_list() {
        let names: Vec<&str> = names().collect();
        assert_eq!(
            names,
            ["localDocker", "distDocker", "ec2SSH", "tashiSSH", "local"]
        );
        for name in &names {
            assert!(check_name(name).is_ok(), "{name}");
        }
        assert_eq!(
            check_name("qemu").unwrap_err(),
            "unknown backend \"qemu\"; expected one of localDocker, distDocker, ec2SSH, \
             tashiSSH, local"
        );
    }
}
