//! The Docker backend's settings (`[docker]`, with its `[[docker.engines]]`), read by
//! `config.rs` with the rest.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The Docker backends (`localDocker`, `distDocker`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// Engines to run containers on. Empty means the local engine (`DOCKER_HOST` or the
    /// default socket).
    pub engines: Vec<DockerEngineConfig>,
    /// `DOCKER_VOLUME_PATH`: unused, accepted so a migrated config still loads; files go in
    /// and out of containers through the Docker API, no host path is needed.
    pub volume_path: String,
    /// `DOCKER_IMAGE_BUILD_TIMEOUT`, seconds: how long `/build` may take.
    pub image_build_timeout: u64,
    /// `DOCKER_RM_TIMEOUT`, seconds: how long removing a container may take.
    pub rm_timeout: u64,
    /// `DOCKER_HOST_USER`: unused (it was for boot2docker); accepted for migration.
    pub host_user: String,
    /// The user jobs run as inside the container when `job_uid_count` is 0 (Tango's way:
    /// one named user, which the image must have).
    pub user: String,
    /// Numeric uid/gid for images without that user.
    pub fallback_uid: u32,
    pub fallback_gid: u32,
    /// Each container's job runs as its own uid (and gid), `job_uid_base + id %
    /// job_uid_count`: RLIMIT_NPROC counts processes per uid across the whole host, so jobs
    /// sharing a uid would share one process budget. 0 means all jobs run as `user`.
    pub job_uid_base: u32,
    pub job_uid_count: u32,
    /// Where our static autodriver is, to inject into images that lack one; empty means the
    /// one next to the `tango` binary.
    pub autodriver: PathBuf,
    /// Moved to `timeouts.kill_margin_secs` (it applies to every backend); accepted here so
    /// that a configuration that sets it still starts, and copied there at load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill_margin_secs: Option<u64>,
    /// Keep containers' network namespaces from job to job (one job at a time in each), so
    /// that a container does not set up and tear down a network of its own; false gives
    /// each container its own, as `docker run` does.
    pub reuse_network: bool,
}

/// One Docker engine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DockerEngineConfig {
    /// `unix:///var/run/docker.sock`, `tcp://host:2376`, ...
    pub url: String,
    /// Most jobs (and containers being made) at once on this engine; absent means twice the
    /// engine's CPUs.
    pub capacity: Option<u32>,
    /// TLS client material for a remote engine; all three or none.
    pub tls_ca: PathBuf,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            engines: Vec::new(),
            volume_path: String::new(),
            image_build_timeout: 300,
            rm_timeout: 5,
            host_user: String::new(),
            user: "autograde".into(),
            fallback_uid: 65534,
            fallback_gid: 65534,
            job_uid_base: 200_000,
            job_uid_count: 50_000,
            autodriver: PathBuf::new(),
            kill_margin_secs: None,
            reuse_network: true,
        }
    }
}

impl Default for DockerEngineConfig {
    fn default() -> Self {
        DockerEngineConfig {
            url: "unix:///var/run/docker.sock".into(),
            capacity: None,
            tls_ca: PathBuf::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
        }
    }
}

impl DockerConfig {
    /// Checks the section; the error names the key and says what is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (i, engine) in self.engines.iter().enumerate() {
            let tls = [&engine.tls_ca, &engine.tls_cert, &engine.tls_key]
                .iter()
                .filter(|p| !p.as_os_str().is_empty())
                .count();
            if tls != 0 && tls != 3 {
                return Err((
                    format!("docker.engines[{i}]"),
                    "tls_ca, tls_cert and tls_key go together: give all three or none".into(),
                ));
            }
            if engine.capacity == Some(0) {
                return Err((
                    format!("docker.engines[{i}].capacity"),
                    "must be at least 1".into(),
                ));
            }
        }
        if self.job_uid_count > 0 {
            // The range must stay clear of root and the system's users, and fit in a uid.
            let last = u64::from(self.job_uid_base) + u64::from(self.job_uid_count) - 1;
            if self.job_uid_base < 1000 || last >= u64::from(u32::MAX) {
                return Err((
                    "docker.job_uid_base".into(),
                    format!(
                        "job uids {}..={last} must start at 1000 or above and stay below {}",
                        self.job_uid_base,
                        u32::MAX
                    ),
                ));
            }
        }
        Ok(())
    }
}
