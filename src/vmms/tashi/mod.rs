//! The `tashiSSH` backend: machines are VMs on a Tashi cluster, reached over SSH.
//!
//! Python Tango called Tashi through its Python RPC client. We call Tashi's command-line
//! client instead (`tashi-client`, or any script that speaks like it), so the daemon needs no
//! Python: `tashi.client` with `tashi.create_args`, `tashi.destroy_args` and
//! `tashi.list_args`, where `{name}` (the instance name `<prefix>-<id>-<name>`), `{cores}`,
//! `{memory}` (MiB), `{disk}` and `{image}` (both the machine's image) are filled in. The
//! listing is read from the client's table (a header line naming the columns, a line of
//! dashes, one instance a line), as `tashi-client getMyInstances` prints it.
//!
//! A VM is reached at `tashi.host_template` with `{name}` filled in (Tango: `<name>.vmnet`),
//! on `ssh.port`; everything inside it goes through the shared [`SshRunner`]. Each client
//! call is bounded by `timeouts.initialize_vm`.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;

pub mod settings;

use self::settings::TashiConfig;
use super::ssh::{SshRunner, SshTarget};
use super::{RunOutcome, RunSpec, Vmms, VmmsError};
use crate::config::Config;
use crate::model::{InputFile, Machine};

/// The name jobs and pools use for this backend.
pub const NAME: &str = "tashiSSH";

/// Memory (MiB) asked for a machine that names none and when `limits.memory_mb` is 0.
const FALLBACK_MEMORY_MB: u64 = 1024;

/// One row of the client's instance table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TashiInstance {
    pub id: String,
    pub name: String,
    pub state: String,
    pub disk: String,
    pub memory: Option<u64>,
    pub cores: Option<u64>,
}

/// The `tashiSSH` backend.
pub struct TashiVmms {
    settings: TashiConfig,
    prefix: String,
    default_memory: u64,
    call_timeout: Duration,
    destroy_secs: f64,
    ssh: SshRunner,
}

/// Opens the Tashi backend ([`super::BACKENDS`]).
pub async fn open(config: &Config) -> Result<std::sync::Arc<dyn Vmms>, VmmsError> {
    Ok(std::sync::Arc::new(TashiVmms::new(config)?))
}

impl TashiVmms {
    pub fn new(config: &Config) -> Result<Self, VmmsError> {
        let settings = config.tashi.clone();
        if settings.client.is_empty() {
            return Err(VmmsError::Backend(
                "tashi.client is empty: it must name Tashi's client command".into(),
            ));
        }
        if settings.host_template.is_empty() {
            return Err(VmmsError::Backend("tashi.host_template is empty".into()));
        }
        Ok(TashiVmms {
            settings,
            prefix: config.vmms.prefix.clone(),
            default_memory: if config.limits.memory_mb == 0 {
                FALLBACK_MEMORY_MB
            } else {
                config.limits.memory_mb
            },
            call_timeout: Duration::from_secs(config.timeouts.initialize_vm),
            destroy_secs: config.vmms.destroy_secs,
            ssh: SshRunner::new(config)?,
        })
    }

    /// The SSH host of an instance.
    fn host_of(&self, instance: &str) -> String {
        self.settings.host_template.replace("{name}", instance)
    }

    fn target(&self, vm: &Machine) -> SshTarget {
        let host = vm
            .host
            .clone()
            .unwrap_or_else(|| self.host_of(&self.instance_of(vm)));
        self.ssh.target(&host, None)
    }

    /// The Tashi instance name of a machine: the recorded one, else the one we would give it.
    fn instance_of(&self, vm: &Machine) -> String {
        vm.instance
            .clone()
            .unwrap_or_else(|| self.instance_name(vm))
    }

    /// Fills the placeholders of one argument list.
    fn fill(&self, args: &[String], vm: &Machine, instance: &str) -> Vec<String> {
        // Tashi takes whole cores; a fraction rounds up so the job gets at least what it asked.
        let cores = vm.cores.map(|c| c.ceil().max(1.0) as u64).unwrap_or(1);
        let memory = vm.memory.unwrap_or(self.default_memory);
        args.iter()
            .map(|arg| {
                arg.replace("{name}", instance)
                    .replace("{cores}", &cores.to_string())
                    .replace("{memory}", &memory.to_string())
                    .replace("{disk}", &vm.image)
                    .replace("{image}", &vm.image)
            })
            .collect()
    }

    /// Runs the client; its standard output when it succeeded.
    async fn call(&self, args: &[String]) -> Result<String, VmmsError> {
        let what = args.first().map(String::as_str).unwrap_or("(no arguments)");
        let mut command = tokio::process::Command::new(&self.settings.client);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(self.call_timeout, command.output()).await {
            Err(_) => {
                return Err(VmmsError::Timeout {
                    step: "tashi client",
                    secs: self.call_timeout.as_secs(),
                });
            }
            Ok(Err(e)) => {
                return Err(VmmsError::Backend(format!(
                    "cannot run the Tashi client {:?}: {e}",
                    self.settings.client
                )));
            }
            Ok(Ok(output)) => output,
        };
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        // tashi-client reports failures on standard output, sometimes with status 0.
        let failed = !output.status.success()
            || stdout.contains("TashiException")
            || stdout.starts_with("Failed in calling");
        if failed {
            let message = format!("{} {}", stdout.trim(), stderr.trim());
            return Err(VmmsError::Backend(format!(
                "Tashi {what} failed ({}): {}",
                output.status,
                message.split_whitespace().collect::<Vec<_>>().join(" ")
            )));
        }
        Ok(stdout)
    }

    /// The instances the client lists.
    pub async fn instances(&self) -> Result<Vec<TashiInstance>, VmmsError> {
        let output = self.call(&self.settings.list_args).await?;
        Ok(parse_instance_table(&output))
    }

    fn machine_of(&self, instance: &TashiInstance) -> Option<Machine> {
        let rest = instance.name.strip_prefix(&format!("{}-", self.prefix))?;
        let (id, name) = rest.split_once('-')?;
        let id: u64 = id.parse().ok()?;
        // tashi-client marks a persistent disk with ":True".
        let image = instance
            .disk
            .strip_suffix(":True")
            .unwrap_or(&instance.disk)
            .to_string();
        Some(Machine {
            name: name.to_string(),
            image,
            vmms: NAME.to_string(),
            cores: instance.cores.map(|c| c as f64),
            memory: instance.memory,
            id: Some(id),
            instance: Some(instance.name.clone()),
            host: Some(self.host_of(&instance.name)),
            ..Machine::default()
        })
    }
}

#[async_trait]
impl Vmms for TashiVmms {
    fn name(&self) -> &str {
        NAME
    }

    fn instance_name(&self, vm: &Machine) -> String {
        super::instance_name(&self.prefix, vm)
    }

    async fn initialize_vm(&self, vm: &mut Machine) -> Result<(), VmmsError> {
        let instance = self.instance_name(vm);
        let args = self.fill(&self.settings.create_args, vm, &instance);
        self.call(&args).await?;
        tracing::info!(%instance, image = %vm.image, "Tashi VM created");
        vm.host = Some(self.host_of(&instance));
        vm.instance = Some(instance);
        vm.vmms = NAME.to_string();
        Ok(())
    }

    async fn wait_vm(&self, vm: &Machine, max: Duration) -> Result<(), VmmsError> {
        self.ssh.wait_ready(&self.target(vm), max).await
    }

    async fn copy_in(&self, vm: &Machine, inputs: &[InputFile]) -> Result<(), VmmsError> {
        self.ssh.copy_in(&self.target(vm), inputs).await
    }

    async fn run_job(&self, vm: &Machine, spec: &RunSpec) -> Result<RunOutcome, VmmsError> {
        self.ssh.run_job(&self.target(vm), spec).await
    }

    async fn copy_out(&self, vm: &Machine, dest: &Path, max_output: u64) -> Result<(), VmmsError> {
        self.ssh.copy_out(&self.target(vm), dest, max_output).await
    }

    async fn destroy_vm(&self, vm: &Machine) -> Result<(), VmmsError> {
        self.ssh.forget(&self.target(vm)).await;
        let instance = self.instance_of(vm);
        let args = self.fill(&self.settings.destroy_args, vm, &instance);
        self.call(&args).await.map(|_| ())
    }

    /// Tango's safeDestroyVM: destroy only what exists, then wait until Tashi no longer
    /// lists it, up to `vmms.destroy_secs`.
    async fn safe_destroy_vm(&self, vm: &Machine) -> Result<(), VmmsError> {
        if !self.exists_vm(vm).await? {
            tracing::debug!(vm = %self.instance_of(vm), "vanished before destroy");
            self.ssh.forget(&self.target(vm)).await;
            return Ok(());
        }
        self.destroy_vm(vm).await?;
        let deadline = Instant::now() + Duration::from_secs_f64(self.destroy_secs.max(1.0));
        loop {
            if !self.exists_vm(vm).await? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(VmmsError::Backend(format!(
                    "Tashi never destroyed VM {} (waited {} s)",
                    self.instance_of(vm),
                    self.destroy_secs
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn get_vms(&self) -> Result<Vec<Machine>, VmmsError> {
        Ok(self
            .instances()
            .await?
            .iter()
            .filter_map(|i| self.machine_of(i))
            .collect())
    }

    async fn exists_vm(&self, vm: &Machine) -> Result<bool, VmmsError> {
        let name = self.instance_of(vm);
        Ok(self
            .instances()
            .await?
            .iter()
            .any(|i| i.name == name && i.state != "Exited"))
    }

    async fn get_images(&self) -> Result<Vec<String>, VmmsError> {
        Ok(self.settings.images.clone())
    }

    async fn get_partial_output(&self, vm: &Machine, max_bytes: u64) -> Result<Vec<u8>, VmmsError> {
        self.ssh.partial_output(&self.target(vm), max_bytes).await
    }
}

/// Reads `tashi-client`'s table: a header naming the columns, a line of dashes, then one
/// row a line, columns separated by blanks. Rows that do not have every column are skipped.
pub fn parse_instance_table(text: &str) -> Vec<TashiInstance> {
    let mut lines = text.lines();
    let header: Vec<&str> = loop {
        match lines.next() {
            Some(line) if line.split_whitespace().any(|w| w == "name") => {
                break line.split_whitespace().collect();
            }
            Some(_) => continue,
            None => return Vec::new(),
        }
    };
    let column = |name: &str| header.iter().position(|h| *h == name);
    let (Some(name_col), id_col, state_col, disk_col, memory_col, cores_col) = (
        column("name"),
        column("id"),
        column("state"),
        column("disk"),
        column("memory"),
        column("cores"),
    ) else {
        return Vec::new();
    };
    let mut instances = Vec::new();
    for line in lines {
        if line.trim().is_empty() || line.trim_start().starts_with('-') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != header.len() {
            continue;
        }
        let get = |col: Option<usize>| col.map(|c| fields[c].to_string()).unwrap_or_default();
        instances.push(TashiInstance {
            id: get(id_col),
            name: fields[name_col].to_string(),
            state: get(state_col),
            disk: get(disk_col),
            memory: memory_col.and_then(|c| fields[c].parse().ok()),
            cores: cores_col.and_then(|c| fields[c].parse().ok()),
        });
    }
    instances
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_table_is_read_by_its_header() {
        let text = "\
 id hostId name             user  state   disk            memory cores
----------------------------------------------------------------------
 7  2      local-1000-rhel  tango Running rhel.img        1024   1
 9  None   local-1001-rhel  tango Pending rhel.img:True   2048   2
";
        let rows = parse_instance_table(text);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, "7");
        assert_eq!(rows[0].name, "local-1000-rhel");
        assert_eq!(rows[0].state, "Running");
        assert_eq!(rows[1].disk, "rhel.img:True");
        assert_eq!(rows[1].memory, Some(2048));
        assert_eq!(rows[1].cores, Some(2));
        assert!(parse_instance_table("").is_empty());
        assert!(parse_instance_table("TashiException:\nno such user\n").is_empty());
    }
}
