//! Containers: how a machine's container and a network holder are described to the engine,
//! made, and removed.
//!
//! A machine's container is created, not started: its main process is the run itself
//! (`run.rs`), started when a job comes, so a container can never run a second job. It is
//! created in a network holder's namespace (`netns.rs`) unless `docker.reuse_network` is off.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HostConfig, HostConfigLogConfig, ImageSummary,
    NetworkConnectRequest, NetworkDisconnectRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, ListImagesOptions, RemoveContainerOptions,
};

use super::engine::{CONTROL_TIMEOUT, Engine};
use super::error::{DockerError, call};
use super::netns::Holder;
use super::{
    BIN_DIR, CAPABILITIES, DockerVmms, LABEL_IMAGE, LABEL_NAME, LABEL_OWNER, LABEL_PREFIX,
    LABEL_ROLE, LABEL_UID, LABEL_VM_ID, NETWORK, ROLE_NETNS, image,
};
use crate::model::Machine;
use crate::vmms::{RUN_GRACE, Vmms};

/// How long the guard's kill may take: under [`RUN_GRACE`], the worker's own bound.
const KILL_TIMEOUT: Duration = RUN_GRACE.saturating_sub(Duration::from_secs(1));

/// A holder's main process: it only keeps its network namespace alive. It needs `/bin/sh`
/// and `sleep` in the image (any image that can run `make` has them); Docker's init above it
/// reaps.
const IDLE_COMMAND: &str = "while :; do sleep 86400; done";

/// Whom the job runs as inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobUser {
    /// A numeric uid and gid of the machine's own (the default), so no two machines share a
    /// process budget (RLIMIT_NPROC counts per uid across the whole host).
    Id { uid: u32, gid: u32 },
    /// A user named in the image's `/etc/passwd` (Tango's way: one user for every job).
    Named(String),
}

impl DockerVmms {
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
    fn host_config(&self, vm: &Machine, network_mode: &str) -> HostConfig {
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
            network_mode: Some(network_mode.to_string()),
            // Root's, executable, just big enough for the autodriver (its pages count against
            // the container's memory limit, as any tmpfs's do).
            tmpfs: Some(HashMap::from([(
                BIN_DIR.to_string(),
                format!(
                    "rw,exec,nosuid,nodev,mode=0755,uid=0,gid=0,size={}",
                    self.bin_dir_size()
                ),
            )])),
            ..confined()
        }
    }

    /// A machine's container: the run is its main process, waiting for the autodriver and the
    /// job on its standard input (kept open for one attach, then closed).
    fn machine_body(&self, vm: &Machine, image: &str, network_mode: &str) -> ContainerCreateBody {
        ContainerCreateBody {
            image: Some(image.to_string()),
            // Our own entrypoint, whatever the image's: the image's CMD is not run.
            entrypoint: Some(self.run_command(vm)),
            cmd: Some(Vec::new()),
            user: Some("0".to_string()),
            working_dir: Some("/".to_string()),
            open_stdin: Some(true),
            stdin_once: Some(true),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            labels: Some(self.labels(vm)),
            host_config: Some(self.host_config(vm, network_mode)),
            ..Default::default()
        }
    }

    /// A network holder: an idle process on the bridge, as confined as a machine, with a small
    /// memory and process budget of its own (nothing of a job ever runs in it).
    fn holder_body(&self, owner: &str, image: &str) -> ContainerCreateBody {
        let memory = Some(64 * 1024 * 1024);
        ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec![
                "/bin/sh".to_string(),
                "-c".to_string(),
                IDLE_COMMAND.to_string(),
            ]),
            cmd: Some(Vec::new()),
            user: Some("0".to_string()),
            working_dir: Some("/".to_string()),
            labels: Some(HashMap::from([
                (LABEL_PREFIX.to_string(), self.prefix.clone()),
                (LABEL_OWNER.to_string(), owner.to_string()),
                (LABEL_ROLE.to_string(), ROLE_NETNS.to_string()),
                (LABEL_IMAGE.to_string(), image.to_string()),
            ])),
            host_config: Some(HostConfig {
                memory,
                memory_swap: memory,
                pids_limit: Some(16),
                readonly_rootfs: Some(true),
                network_mode: Some(NETWORK.to_string()),
                // No job runs here: not even the autodriver's capabilities.
                cap_add: Some(Vec::new()),
                ..confined()
            }),
            ..Default::default()
        }
    }

    /// Creates a machine's container (not started) on one engine; returns its id. With
    /// `docker.reuse_network`, the container joins a free holder's namespace (one is made when
    /// none is free), and the holder is bound to it until it is destroyed.
    pub(super) async fn create_machine(
        &self,
        engine: &Arc<Engine>,
        vm: &Machine,
    ) -> Result<String, DockerError> {
        let name = self.instance_name(vm);
        if !self.docker.reuse_network {
            return self
                .create_named(engine, &name, vm.owner.as_deref(), &vm.image, |image| {
                    self.machine_body(vm, image, NETWORK)
                })
                .await
                .map(|(id, _)| id);
        }
        // A free holder may have been removed behind our back: then one fresh try. The holder
        // is bound before the create, so that a create abandoned half way (a step timeout)
        // leaves it to the machine's destroy to free.
        for attempt in 0..2 {
            let holder = match self.holders.take_free(&engine.url) {
                Some(holder) => holder,
                None => self.make_holder(engine, vm).await?,
            };
            let mode = format!("container:{}", holder.id);
            self.holders.bind(&name, holder.clone());
            let made = self
                .create_named(engine, &name, vm.owner.as_deref(), &vm.image, |image| {
                    self.machine_body(vm, image, &mode)
                })
                .await;
            match made {
                Ok((id, _)) => return Ok(id),
                Err(e) if attempt == 0 && e.to_string().contains(&holder.id) => {
                    tracing::warn!(engine = %engine.url, holder = %holder.id,
                        "network holder unusable, making another: {e}");
                    self.holders.discard(Some(&name), None);
                    self.drop_holder(engine, &holder).await;
                }
                Err(e) => {
                    self.release_holder(engine, &name).await;
                    return Err(e);
                }
            }
        }
        Err(DockerError::Refused {
            engine: engine.url.clone(),
            status: 500,
            message: "no network holder could be made".into(),
        })
    }

    /// Makes and starts a network holder on `engine`, from the machine's image.
    async fn make_holder(&self, engine: &Engine, vm: &Machine) -> Result<Holder, DockerError> {
        let owner = vm.owner.clone().unwrap_or_default();
        let name = format!(
            "{}-netns-{}",
            self.prefix,
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let (id, _) = self
            .create_named(engine, &name, None, &vm.image, |image| {
                self.holder_body(&owner, image)
            })
            .await?;
        let holder = Holder {
            id: id.clone(),
            engine: engine.url.clone(),
            connected: true,
        };
        self.holders.made(&holder);
        let started = call(
            engine,
            "start network holder",
            Some(CONTROL_TIMEOUT),
            engine.client.start_container(&id, None),
        )
        .await;
        if let Err(e) = started {
            self.drop_holder(engine, &holder).await;
            return Err(e);
        }
        tracing::debug!(engine = %engine.url, holder = %id, "network holder made");
        Ok(holder)
    }

    /// Forgets a holder and removes its container.
    pub(super) async fn drop_holder(&self, engine: &Engine, holder: &Holder) {
        self.holders.discard(None, Some(holder));
        if let Err(e) = self.remove(engine, &holder.id).await {
            tracing::warn!(holder = %holder.id, "could not remove a network holder: {e}");
        }
    }

    /// Frees the holder of machine `name` (its container is gone), removing it when the
    /// engine already has enough free ones.
    pub(super) async fn release_holder(&self, engine: &Engine, name: &str) {
        let keep = (engine.capacity() as usize).saturating_mul(2);
        if let Some(extra) = self.holders.release(name, keep)
            && let Err(e) = self.remove(engine, &extra.id).await
        {
            tracing::warn!(holder = %extra.id, "could not remove a network holder: {e}");
        }
    }

    /// Puts machine `name`'s network as its job wants it, before the job starts: its
    /// holder connected to or disconnected from the bridge, or (without holders) the
    /// container itself disconnected. A job that asked for no network never runs with one:
    /// any failure here is an error.
    pub(super) async fn set_network(
        &self,
        engine: &Engine,
        name: &str,
        container: &str,
        wanted: bool,
    ) -> Result<(), DockerError> {
        let (target, holder) = match self.holders.of(name) {
            Some(holder) if holder.connected == wanted => return Ok(()),
            Some(holder) => (holder.id, true),
            // Containers with a network of their own are made on the bridge.
            None if wanted => return Ok(()),
            None => (container.to_string(), false),
        };
        let result = if wanted {
            call(
                engine,
                "connect the network",
                Some(CONTROL_TIMEOUT),
                engine.client.connect_network(
                    NETWORK,
                    NetworkConnectRequest {
                        container: target,
                        ..Default::default()
                    },
                ),
            )
            .await
        } else {
            call(
                engine,
                "disconnect the network",
                Some(CONTROL_TIMEOUT),
                engine.client.disconnect_network(
                    NETWORK,
                    NetworkDisconnectRequest {
                        container: target,
                        force: Some(true),
                    },
                ),
            )
            .await
        };
        match result {
            Ok(()) => {}
            Err(e) if !wanted && e.to_string().contains("is not connected") => {}
            Err(e) if wanted && e.to_string().contains("already exists") => {}
            Err(e) => return Err(e),
        }
        if holder {
            self.holders.set_connected(name, wanted);
        }
        Ok(())
    }

    /// Creates a container named `name` from `wanted` (or, when the engine does not know that
    /// name, the tag it stands for, as Tango listed images: `gcc` for `course/gcc:12`).
    /// A leftover of ours with that name (same prefix and `owner`) is removed and the create
    /// tried once more. Returns the id and the image reference used.
    async fn create_named(
        &self,
        engine: &Engine,
        name: &str,
        owner: Option<&str>,
        wanted: &str,
        body: impl Fn(&str) -> ContainerCreateBody,
    ) -> Result<(String, String), DockerError> {
        match self
            .create_container(engine, name, owner, body(wanted))
            .await
        {
            Err(e) if e.is_not_found() && e.to_string().contains("image") => {
                match self.resolve_image(engine, wanted).await? {
                    Some(reference) if reference != wanted => {
                        let id = self
                            .create_container(engine, name, owner, body(&reference))
                            .await?;
                        Ok((id, reference))
                    }
                    _ => Err(e),
                }
            }
            other => other.map(|id| (id, wanted.to_string())),
        }
    }

    async fn create_container(
        &self,
        engine: &Engine,
        name: &str,
        owner: Option<&str>,
        body: ContainerCreateBody,
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
                    body.clone(),
                ),
            )
        };
        match create().await {
            Ok(created) => Ok(created.id),
            Err(e) if e.status() == Some(409) => {
                let taken = || DockerError::NameTaken {
                    engine: engine.url.clone(),
                    name: name.to_string(),
                };
                let existing = match inspect(engine, name).await {
                    Ok(existing) => existing,
                    // Its holder went between the create and the look (another manager's
                    // machine destroyed after its job): it was not ours, and the name may
                    // still be in removal, so the caller takes another one.
                    Err(e) if e.is_not_found() => return Err(taken()),
                    Err(e) => return Err(e),
                };
                let labels = existing.config.and_then(|c| c.labels).unwrap_or_default();
                let ours = labels.get(LABEL_PREFIX) == Some(&self.prefix)
                    && owner
                        .is_some_and(|o| labels.get(LABEL_OWNER).map(String::as_str) == Some(o));
                if !ours {
                    return Err(taken());
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

    /// Whether the container named `name` on `engine` records another owner than `owner`:
    /// then it is not the machine a destroy by name means, but another manager's that took
    /// the name first.
    pub(super) async fn held_by_another(
        &self,
        engine: &Engine,
        name: &str,
        owner: Option<&str>,
    ) -> Result<bool, DockerError> {
        let Some(owner) = owner else {
            return Ok(false);
        };
        match inspect(engine, name).await {
            Ok(existing) => {
                let labels = existing.config.and_then(|c| c.labels).unwrap_or_default();
                Ok(labels
                    .get(LABEL_OWNER)
                    .is_some_and(|theirs| theirs.as_str() != owner))
            }
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The tag a job's image name stands for on an engine, if any.
    async fn resolve_image(
        &self,
        engine: &Engine,
        wanted: &str,
    ) -> Result<Option<String>, DockerError> {
        let images = list_images(engine).await?;
        let tags = images
            .iter()
            .flat_map(|i| i.repo_tags.iter().map(String::as_str));
        Ok(image::resolve(wanted, tags))
    }

    /// Removes a container (killing it first), bounded by `docker.rm_timeout`. A container
    /// that is already gone is not an error.
    pub(super) async fn remove(&self, engine: &Engine, id: &str) -> Result<(), DockerError> {
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

    /// Kills a container from the host (the guard against a job that outlives its timeout).
    /// Bounded well inside the worker's grace after the guard ([`RUN_GRACE`]), so that an
    /// engine that no longer answers is reported as such rather than as the job's timeout.
    pub(super) async fn kill(&self, engine: &Engine, id: &str) -> Result<(), DockerError> {
        let result = call(
            engine,
            "kill container",
            Some(KILL_TIMEOUT),
            engine.client.kill_container(
                id,
                Some(KillContainerOptions {
                    signal: "SIGKILL".to_string(),
                }),
            ),
        )
        .await;
        if let Err(e) = &result {
            tracing::warn!(container = id, "could not kill the container: {e}");
        }
        result
    }
}

/// The engine's view of a container (by id or name).
pub(super) async fn inspect(
    engine: &Engine,
    container: &str,
) -> Result<ContainerInspectResponse, DockerError> {
    call(
        engine,
        "inspect container",
        Some(CONTROL_TIMEOUT),
        engine.client.inspect_container(container, None),
    )
    .await
}

/// The images an engine holds.
pub(super) async fn list_images(engine: &Engine) -> Result<Vec<ImageSummary>, DockerError> {
    call(
        engine,
        "list images",
        Some(CONTROL_TIMEOUT),
        engine
            .client
            .list_images(Some(ListImagesOptions::default())),
    )
    .await
}

/// What every container of ours has, machine or holder: no capabilities but those the
/// autodriver needs as root (none are used by a holder), no new privileges, Docker's init as
/// PID 1 to reap orphans, and no log driver (nothing is logged: the run's output is read on
/// its attached streams).
fn confined() -> HostConfig {
    HostConfig {
        cap_drop: Some(vec!["ALL".to_string()]),
        cap_add: Some(CAPABILITIES.iter().map(|c| c.to_string()).collect()),
        security_opt: Some(vec!["no-new-privileges".to_string()]),
        init: Some(true),
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".to_string()),
            config: None,
        }),
        ..Default::default()
    }
}
