//! The `ec2SSH` backend: each machine is an Amazon EC2 instance, reached over SSH.
//!
//! EC2 makes and destroys the VM (`aws-sdk-ec2`); everything inside it goes through the
//! shared [`SshRunner`]. What Tango did, kept: the instance type follows the machine's cores
//! and memory through Tango's table, the security group is created when missing, the key pair
//! is the configured one or, for a job that brings its own AWS credentials, a fresh one made
//! in that account and deleted with the instance, and the `Name` tag is the instance name
//! `<prefix>-<id>-<name>`. What we add: the tags are set in the launch request itself (no
//! untagged instance if we die between two calls) and include the prefix, the machine id and
//! the owning manager, so `get_vms` can tell whose leftovers are whose; an instance that does
//! not reach `running` in time is terminated rather than left running; instances of
//! `ec2.reservation_id` are never listed or terminated.
//!
//! Which address the SSH step uses is `ec2.ssh_address`: the public or private IP, the public
//! DNS name, or a fixed `bastion_host` (a forwarded port; for a real jump host use
//! `private_ip` with `ProxyJump` in `ssh.options`). Region, endpoint and credentials come
//! from the configuration or the standard AWS chain.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::{Credentials, Region};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ec2::types::{
    Filter, Instance, InstanceStateName, InstanceType, IpPermission, IpRange, ResourceType, Tag,
    TagSpecification,
};

use super::settings::Ec2Config;
use crate::config::Config;
use crate::model::{InputFile, Machine};
use crate::vmms::ssh::{SshRunner, SshTarget, write_private_file};
use crate::vmms::{RunOutcome, RunSpec, Vmms, VmmsError};

/// The name jobs and pools use for this backend.
pub const NAME: &str = "ec2SSH";

/// Our tags, beside Tango's `Name`.
const TAG_PREFIX: &str = "tango:prefix";
const TAG_ID: &str = "tango:id";
const TAG_POOL: &str = "tango:pool";
const TAG_IMAGE: &str = "tango:image";
const TAG_OWNER: &str = "tango:owner";

/// How often the instance state is polled while waiting (Tango's `TIMER_POLL_INTERVAL`).
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Bounds on every EC2 API call (the SDK sets none on a whole call by default): one attempt,
/// and the call with its retries.
const API_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
const API_CALL_TIMEOUT: Duration = Duration::from_secs(90);

/// Tango's table from a machine's cores and memory (MiB) to a general-purpose instance type;
/// `None` means `ec2.default_instance_type`. A missing memory counts as small, as it did in
/// Python 2.
pub fn instance_type_for(cores: Option<f64>, memory_mb: Option<u64>) -> Option<&'static str> {
    let cores = cores?;
    let memory = memory_mb.unwrap_or(0) as f64;
    if cores == 1.0 && memory <= 613.0 {
        Some("t2.micro")
    } else if cores == 1.0 && memory <= 1.7 * 1024.0 {
        Some("m1.small")
    } else if cores == 1.0 && memory <= 3.75 * 1024.0 {
        Some("m3.medium")
    } else if cores == 2.0 {
        Some("m3.large")
    } else if cores == 4.0 {
        Some("m3.xlarge")
    } else if cores == 8.0 {
        Some("m3.2xlarge")
    } else {
        None
    }
}

/// What every [`Ec2Vmms`] made from one configuration shares.
struct Shared {
    settings: Ec2Config,
    prefix: String,
    ssh: SshRunner,
    /// The SDK configuration the clients are made from (region, endpoint, retries).
    sdk_config: aws_config::SdkConfig,
    initialize_timeout: Duration,
    destroy_secs: f64,
    /// Where per-job private keys are written (`ec2.dynamic_security_key_path`, or a private
    /// directory of ours).
    dynamic_key_dir: PathBuf,
}

/// The `ec2SSH` backend.
pub struct Ec2Vmms {
    shared: Arc<Shared>,
    client: Client,
    /// True for a backend acting with a job's own credentials: every machine gets a fresh key
    /// pair, deleted with it.
    per_job_keys: bool,
}

impl Ec2Vmms {
    /// Makes the backend from `config`; the EC2 API is not called until it is used.
    pub async fn new(config: &Config) -> Result<Self, VmmsError> {
        let settings = config.ec2.clone();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(API_ATTEMPT_TIMEOUT)
                    .operation_timeout(API_CALL_TIMEOUT)
                    .build(),
            );
        if !settings.region.is_empty() {
            loader = loader.region(Region::new(settings.region.clone()));
        }
        if !settings.endpoint_url.is_empty() {
            loader = loader.endpoint_url(settings.endpoint_url.clone());
        }
        if !settings.access_key_id.is_empty() || !settings.secret_access_key.is_empty() {
            if settings.access_key_id.is_empty() || settings.secret_access_key.is_empty() {
                return Err(VmmsError::Backend(
                    "ec2.access_key_id and ec2.secret_access_key go together: give both or neither"
                        .into(),
                ));
            }
            loader = loader.credentials_provider(Credentials::new(
                settings.access_key_id.clone(),
                settings.secret_access_key.clone(),
                None,
                None,
                "tango-config",
            ));
        }
        let sdk_config = loader.load().await;
        if sdk_config.region().is_none() {
            return Err(VmmsError::Backend(
                "no AWS region: set ec2.region, or AWS_REGION, or a region in the AWS profile"
                    .into(),
            ));
        }
        let ssh = SshRunner::new(config)?;
        let dynamic_key_dir = if settings.dynamic_security_key_path.as_os_str().is_empty() {
            ssh.private_dir().to_path_buf()
        } else {
            settings.dynamic_security_key_path.clone()
        };
        let client = Client::new(&sdk_config);
        Ok(Ec2Vmms {
            shared: Arc::new(Shared {
                settings,
                prefix: config.vmms.prefix.clone(),
                ssh,
                sdk_config,
                initialize_timeout: Duration::from_secs(config.timeouts.initialize_vm),
                destroy_secs: config.vmms.destroy_secs,
                dynamic_key_dir,
            }),
            client,
            per_job_keys: false,
        })
    }

    /// The key pair a machine starts with: its name, and the private key to log in with
    /// (`None`: `ssh.key_path`).
    fn key_pair(&self, vm: &Machine) -> (Option<String>, Option<PathBuf>) {
        if self.per_job_keys {
            let name = self.instance_name(vm);
            let path = self.shared.dynamic_key_dir.join(format!("{name}.pem"));
            (Some(name), Some(path))
        } else if self.shared.settings.security_key_name.is_empty() {
            (None, None)
        } else {
            (Some(self.shared.settings.security_key_name.clone()), None)
        }
    }

    fn target(&self, vm: &Machine) -> Result<SshTarget, VmmsError> {
        let host = vm.host.as_deref().ok_or_else(|| {
            VmmsError::NotFound(format!("{} (no address recorded)", self.instance_name(vm)))
        })?;
        Ok(self.shared.ssh.target(host, self.key_pair(vm).1))
    }

    /// The AMI for an image: an `ami-…` id as is; else an AMI of ours with that name; else
    /// `ec2.default_ami` (Tango used the default for every image).
    async fn ami_for(&self, image: &str) -> Result<String, VmmsError> {
        if image.starts_with("ami-") {
            return Ok(image.to_string());
        }
        let found = self
            .client
            .describe_images()
            .owners("self")
            .filters(Filter::builder().name("name").values(image).build())
            .send()
            .await
            .map_err(|e| api_error("DescribeImages", e))?;
        if let Some(id) = found.images().iter().find_map(|i| i.image_id()) {
            return Ok(id.to_string());
        }
        if self.shared.settings.default_ami.is_empty() {
            return Err(VmmsError::Backend(format!(
                "no AMI named {image:?} in this account and no ec2.default_ami"
            )));
        }
        Ok(self.shared.settings.default_ami.clone())
    }

    /// The id of `ec2.default_security_group`, created (allowing SSH in) when missing.
    async fn security_group(&self) -> Result<Option<String>, VmmsError> {
        let name = &self.shared.settings.default_security_group;
        if name.is_empty() {
            return Ok(None);
        }
        let found = self
            .client
            .describe_security_groups()
            .filters(Filter::builder().name("group-name").values(name).build())
            .send()
            .await
            .map_err(|e| api_error("DescribeSecurityGroups", e))?;
        if let Some(id) = found.security_groups().iter().find_map(|g| g.group_id()) {
            return Ok(Some(id.to_string()));
        }
        let created = match self
            .client
            .create_security_group()
            .group_name(name)
            .description("Tango autograding VMs: SSH in")
            .send()
            .await
        {
            Ok(created) => created,
            // Another manager made it between our look and our create.
            Err(e) if e.code() == Some("InvalidGroup.Duplicate") => {
                return Box::pin(self.security_group()).await;
            }
            Err(e) => return Err(api_error("CreateSecurityGroup", e)),
        };
        let id = created
            .group_id()
            .ok_or_else(|| VmmsError::Backend("CreateSecurityGroup returned no id".into()))?
            .to_string();
        // SSH is all Tango needs from outside; narrow the source range to Tango's own
        // address in production (docs/backends.md).
        self.client
            .authorize_security_group_ingress()
            .group_id(&id)
            .ip_permissions(
                IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(22)
                    .to_port(22)
                    .ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build())
                    .build(),
            )
            .send()
            .await
            .map_err(|e| api_error("AuthorizeSecurityGroupIngress", e))?;
        Ok(Some(id))
    }

    /// Makes a fresh key pair for a machine and writes its private key (mode 0600).
    async fn create_key_pair(&self, name: &str, path: &Path) -> Result<(), VmmsError> {
        // A leftover of the same name (a crash, a reused id) would make the create fail.
        let _ = self.client.delete_key_pair().key_name(name).send().await;
        let created = self
            .client
            .create_key_pair()
            .key_name(name)
            .send()
            .await
            .map_err(|e| api_error("CreateKeyPair", e))?;
        let material = created
            .key_material()
            .ok_or_else(|| VmmsError::Backend("CreateKeyPair returned no key".into()))?;
        std::fs::create_dir_all(&self.shared.dynamic_key_dir).map_err(|e| {
            VmmsError::Io(format!(
                "cannot make {}: {e}",
                self.shared.dynamic_key_dir.display()
            ))
        })?;
        write_private_file(path, material.as_bytes())
    }

    async fn delete_key_pair(&self, vm: &Machine) {
        if let (true, (Some(name), Some(path))) = (self.per_job_keys, self.key_pair(vm)) {
            if let Err(e) = self.client.delete_key_pair().key_name(&name).send().await {
                tracing::warn!(key = %name, error = %DisplayErrorContext(&e), "deleting a per-job key pair failed");
            }
            let _ = std::fs::remove_file(path);
        }
    }

    /// One instance by id; `None` when EC2 no longer knows it.
    async fn describe(&self, instance_id: &str) -> Result<Option<(Instance, String)>, VmmsError> {
        let result = self
            .client
            .describe_instances()
            .instance_ids(instance_id)
            .send()
            .await;
        let output = match result {
            Ok(output) => output,
            Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => return Ok(None),
            Err(e) => return Err(api_error("DescribeInstances", e)),
        };
        Ok(output.reservations().iter().find_map(|r| {
            r.instances()
                .iter()
                .find(|i| i.instance_id() == Some(instance_id))
                .map(|i| {
                    (
                        i.clone(),
                        r.reservation_id().unwrap_or_default().to_string(),
                    )
                })
        }))
    }

    /// Waits for `running`; returns the instance as it is then.
    async fn wait_running(&self, instance_id: &str, name: &str) -> Result<Instance, VmmsError> {
        let deadline = Instant::now() + self.shared.initialize_timeout;
        loop {
            if let Some((instance, _)) = self.describe(instance_id).await? {
                let state = instance.state().and_then(|s| s.name()).cloned();
                match state {
                    Some(InstanceStateName::Running) => return Ok(instance),
                    Some(
                        InstanceStateName::Terminated
                        | InstanceStateName::ShuttingDown
                        | InstanceStateName::Stopped
                        | InstanceStateName::Stopping,
                    ) => {
                        return Err(VmmsError::Backend(format!(
                            "instance {instance_id} ({name}) stopped before it ran: {}",
                            instance
                                .state_reason()
                                .and_then(|r| r.message())
                                .unwrap_or("no reason given")
                        )));
                    }
                    other => {
                        tracing::debug!(instance = instance_id, %name, state = ?other, "waiting for running");
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(VmmsError::Timeout {
                    step: "initialize_vm",
                    secs: self.shared.initialize_timeout.as_secs(),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The address the SSH step uses, per `ec2.ssh_address`.
    fn ssh_address(&self, instance: &Instance) -> Option<String> {
        let settings = &self.shared.settings;
        let address = match settings.ssh_address.as_str() {
            "private_ip" => instance.private_ip_address(),
            "dns_name" => instance.public_dns_name(),
            "bastion" => Some(settings.bastion_host.as_str()),
            _ => instance.public_ip_address(),
        };
        address.filter(|a| !a.is_empty()).map(str::to_string)
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), VmmsError> {
        match self
            .client
            .terminate_instances()
            .instance_ids(instance_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => {
                Err(VmmsError::NotFound(instance_id.to_string()))
            }
            Err(e) => Err(api_error("TerminateInstances", e)),
        }
    }

    /// The instance id of a machine: the recorded one, else found by its `Name` tag.
    async fn instance_id(&self, vm: &Machine) -> Result<Option<String>, VmmsError> {
        if let Some(id) = &vm.instance {
            return Ok(Some(id.clone()));
        }
        let name = self.instance_name(vm);
        Ok(self
            .list(Some(&name))
            .await?
            .into_iter()
            .find_map(|m| m.instance))
    }

    /// Our live instances (optionally only the one named `name`), as machines.
    async fn list(&self, name: Option<&str>) -> Result<Vec<Machine>, VmmsError> {
        let pattern = match name {
            Some(name) => name.to_string(),
            None => format!("{}-*", self.shared.prefix),
        };
        let mut machines = Vec::new();
        let mut pages = self
            .client
            .describe_instances()
            .filters(Filter::builder().name("tag:Name").values(pattern).build())
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .values("pending")
                    .values("running")
                    .values("stopping")
                    .values("stopped")
                    .build(),
            )
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| api_error("DescribeInstances", e))?;
            for reservation in page.reservations() {
                if self.is_reserved(reservation.reservation_id()) {
                    continue;
                }
                for instance in reservation.instances() {
                    if let Some(machine) = self.machine_of(instance) {
                        machines.push(machine);
                    }
                }
            }
        }
        Ok(machines)
    }

    fn is_reserved(&self, reservation_id: Option<&str>) -> bool {
        let reserved = &self.shared.settings.reservation_id;
        !reserved.is_empty() && reservation_id == Some(reserved.as_str())
    }

    /// A machine from an instance named `<prefix>-<id>-<name>`; `None` for any other.
    fn machine_of(&self, instance: &Instance) -> Option<Machine> {
        let tag = |key: &str| {
            instance
                .tags()
                .iter()
                .find(|t| t.key() == Some(key))
                .and_then(|t| t.value())
                .map(str::to_string)
        };
        let full_name = tag("Name")?;
        let rest = full_name.strip_prefix(&format!("{}-", self.shared.prefix))?;
        let (id, name) = rest.split_once('-')?;
        let id: u64 = id.parse().ok()?;
        let name = tag(TAG_POOL).unwrap_or_else(|| name.to_string());
        Some(Machine {
            image: tag(TAG_IMAGE).unwrap_or_else(|| name.clone()),
            name,
            vmms: NAME.to_string(),
            id: Some(id),
            instance: instance.instance_id().map(str::to_string),
            host: self.ssh_address(instance),
            owner: tag(TAG_OWNER),
            ..Machine::default()
        })
    }
}

#[async_trait]
impl Vmms for Ec2Vmms {
    fn name(&self) -> &str {
        NAME
    }

    fn instance_name(&self, vm: &Machine) -> String {
        crate::vmms::instance_name(&self.shared.prefix, vm)
    }

    async fn initialize_vm(&self, vm: &mut Machine) -> Result<(), VmmsError> {
        let name = self.instance_name(vm);
        let settings = &self.shared.settings;
        let instance_type = match instance_type_for(vm.cores, vm.memory) {
            Some(t) => t.to_string(),
            None if !settings.default_instance_type.is_empty() => {
                settings.default_instance_type.clone()
            }
            None => {
                return Err(VmmsError::Backend(format!(
                    "no instance type for {:?} cores and {:?} MiB: set ec2.default_instance_type",
                    vm.cores, vm.memory
                )));
            }
        };
        let ami = self.ami_for(&vm.image).await?;
        let group = self.security_group().await?;
        let (key_name, key_path) = self.key_pair(vm);
        if let (true, Some(key_name), Some(key_path)) = (self.per_job_keys, &key_name, &key_path) {
            self.create_key_pair(key_name, key_path).await?;
        }
        let mut tags = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .tags(tag("Name", &name))
            .tags(tag(TAG_PREFIX, &self.shared.prefix))
            .tags(tag(TAG_ID, &vm.id.unwrap_or(0).to_string()))
            .tags(tag(TAG_POOL, &vm.name))
            .tags(tag(TAG_IMAGE, &vm.image));
        if let Some(owner) = &vm.owner {
            tags = tags.tags(tag(TAG_OWNER, owner));
        }
        let mut request = self
            .client
            .run_instances()
            .image_id(&ami)
            .instance_type(InstanceType::from(instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .tag_specifications(tags.build());
        if let Some(key_name) = &key_name {
            request = request.key_name(key_name);
        }
        if let Some(group) = &group {
            request = request.security_group_ids(group);
        }
        let launched = match request.send().await {
            Ok(launched) => launched,
            Err(e) => {
                self.delete_key_pair(vm).await;
                return Err(api_error("RunInstances", e));
            }
        };
        let instance_id = launched
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .ok_or_else(|| VmmsError::Backend("RunInstances returned no instance".into()))?
            .to_string();
        tracing::info!(instance = %instance_id, %name, %ami, %instance_type, "EC2 instance launched");
        vm.instance = Some(instance_id.clone());
        vm.vmms = NAME.to_string();

        let ready = async {
            let instance = self.wait_running(&instance_id, &name).await?;
            self.ssh_address(&instance).ok_or_else(|| {
                VmmsError::Backend(format!(
                    "instance {instance_id} ({name}) has no {} to SSH to",
                    settings.ssh_address
                ))
            })
        };
        match ready.await {
            Ok(address) => {
                vm.host = Some(address);
                Ok(())
            }
            Err(e) => {
                // Never leave a paid-for instance behind a failed start.
                if let Err(term) = self.terminate(&instance_id).await {
                    tracing::warn!(instance = %instance_id, error = %term, "terminating a failed instance failed");
                }
                self.delete_key_pair(vm).await;
                Err(e)
            }
        }
    }

    async fn wait_vm(&self, vm: &Machine, max: Duration) -> Result<(), VmmsError> {
        let target = self.target(vm)?;
        self.shared.ssh.wait_ready(&target, max).await
    }

    async fn copy_in(&self, vm: &Machine, inputs: &[InputFile]) -> Result<(), VmmsError> {
        let target = self.target(vm)?;
        self.shared.ssh.copy_in(&target, inputs).await
    }

    async fn run_job(&self, vm: &Machine, spec: &RunSpec) -> Result<RunOutcome, VmmsError> {
        let target = self.target(vm)?;
        self.shared.ssh.run_job(&target, spec).await
    }

    async fn copy_out(&self, vm: &Machine, dest: &Path, max_output: u64) -> Result<(), VmmsError> {
        let target = self.target(vm)?;
        self.shared.ssh.copy_out(&target, dest, max_output).await
    }

    async fn destroy_vm(&self, vm: &Machine) -> Result<(), VmmsError> {
        if let Ok(target) = self.target(vm) {
            self.shared.ssh.forget(&target).await;
        }
        let result = match self.instance_id(vm).await? {
            Some(id) => {
                if let Some((_, reservation)) = self.describe(&id).await?
                    && self.is_reserved(Some(&reservation))
                {
                    return Err(VmmsError::Backend(format!(
                        "instance {id} belongs to the reserved reservation {reservation}; not terminating it"
                    )));
                }
                self.terminate(&id).await
            }
            None => Err(VmmsError::NotFound(self.instance_name(vm))),
        };
        self.delete_key_pair(vm).await;
        result
    }

    async fn safe_destroy_vm(&self, vm: &Machine) -> Result<(), VmmsError> {
        let id = match self.instance_id(vm).await? {
            Some(id) => id,
            None => {
                tracing::debug!(vm = %self.instance_name(vm), "vanished before destroy");
                self.delete_key_pair(vm).await;
                return Ok(());
            }
        };
        let vm_with_id = Machine {
            instance: Some(id.clone()),
            ..vm.clone()
        };
        match self.destroy_vm(&vm_with_id).await {
            Ok(()) | Err(VmmsError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let deadline = Instant::now() + Duration::from_secs_f64(self.shared.destroy_secs.max(1.0));
        loop {
            if !self.exists_vm(&vm_with_id).await? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(VmmsError::Backend(format!(
                    "EC2 did not terminate {id} ({}) within {} s",
                    self.instance_name(vm),
                    self.shared.destroy_secs
                )));
            }
            tokio::time::sleep(POLL_INTERVAL.min(Duration::from_millis(500))).await;
        }
    }

    async fn get_vms(&self) -> Result<Vec<Machine>, VmmsError> {
        self.list(None).await
    }

    /// True while the instance is pending, running, stopping or stopped: terminating (or
    /// terminated) counts as gone.
    async fn exists_vm(&self, vm: &Machine) -> Result<bool, VmmsError> {
        let Some(id) = self.instance_id(vm).await? else {
            return Ok(false);
        };
        Ok(match self.describe(&id).await? {
            Some((instance, _)) => !matches!(
                instance.state().and_then(|s| s.name()),
                Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown) | None
            ),
            None => false,
        })
    }

    /// `ec2.images` when set; else the names of the AMIs this account owns.
    async fn get_images(&self) -> Result<Vec<String>, VmmsError> {
        if !self.shared.settings.images.is_empty() {
            return Ok(self.shared.settings.images.clone());
        }
        let owned = self
            .client
            .describe_images()
            .owners("self")
            .send()
            .await
            .map_err(|e| api_error("DescribeImages", e))?;
        let mut names: Vec<String> = owned
            .images()
            .iter()
            .filter_map(|i| i.name().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn get_partial_output(&self, vm: &Machine, max_bytes: u64) -> Result<Vec<u8>, VmmsError> {
        let target = self.target(vm)?;
        self.shared.ssh.partial_output(&target, max_bytes).await
    }

    fn with_credentials(
        &self,
        access_key_id: &str,
        access_key: &str,
    ) -> Result<Arc<dyn Vmms>, VmmsError> {
        if access_key_id.is_empty() || access_key.is_empty() {
            return Err(VmmsError::Backend(
                "a job's accessKeyId and accessKey go together".into(),
            ));
        }
        let config = aws_sdk_ec2::config::Builder::from(&self.shared.sdk_config)
            .credentials_provider(Credentials::new(
                access_key_id,
                access_key,
                None,
                None,
                "tango-job",
            ))
            .build();
        Ok(Arc::new(Ec2Vmms {
            shared: self.shared.clone(),
            client: Client::from_conf(config),
            per_job_keys: true,
        }))
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// An EC2 API error as one line naming the call (the SDK's own Display says only "service
/// error").
fn api_error<E, R>(call: &str, e: aws_sdk_ec2::error::SdkError<E, R>) -> VmmsError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    VmmsError::Backend(format!("EC2 {call}: {}", DisplayErrorContext(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_types_follow_tangos_table() {
        assert_eq!(instance_type_for(Some(1.0), Some(512)), Some("t2.micro"));
        assert_eq!(instance_type_for(Some(1.0), None), Some("t2.micro"));
        assert_eq!(instance_type_for(Some(1.0), Some(1024)), Some("m1.small"));
        assert_eq!(instance_type_for(Some(1.0), Some(3840)), Some("m3.medium"));
        assert_eq!(instance_type_for(Some(1.0), Some(8192)), None);
        assert_eq!(instance_type_for(Some(2.0), Some(8192)), Some("m3.large"));
        assert_eq!(instance_type_for(Some(4.0), None), Some("m3.xlarge"));
        assert_eq!(instance_type_for(Some(8.0), None), Some("m3.2xlarge"));
        assert_eq!(instance_type_for(Some(3.0), None), None);
        assert_eq!(instance_type_for(None, Some(512)), None);
    }
}
