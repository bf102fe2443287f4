//! Test setup for the Docker backend: the real engine, the test image, the static
//! autodriver, and a guard that removes whatever a test made, even when it fails.
//!
//! The image comes from `scripts/build-test-image.sh` (built once when missing: Debian
//! minbase with make, no autodriver) and the autodriver from `scripts/build-autodriver.sh`,
//! unless `TANGO_TEST_AUTODRIVER` names one. Each test uses its own machine-name prefix, and
//! [`Cleanup`] removes every container with that prefix's label, and every image it was
//! told about, when it drops.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use tango::config::Config;
use tango::model::Machine;

/// The image the tests run jobs in (no autodriver inside).
pub const TEST_IMAGE: &str = "tango-test:latest";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Makes sure the test image exists (building it when missing) and returns its name.
pub fn test_image() -> &'static str {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let out = Command::new(repo_root().join("scripts/build-test-image.sh"))
            .output()
            .expect("run scripts/build-test-image.sh");
        assert!(
            out.status.success(),
            "scripts/build-test-image.sh failed (it needs a running Docker engine and root \
             for debootstrap):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    TEST_IMAGE
}

/// The static autodriver: `TANGO_TEST_AUTODRIVER`, or the one `scripts/build-autodriver.sh`
/// builds (once per test binary).
pub fn autodriver() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Ok(path) = std::env::var("TANGO_TEST_AUTODRIVER") {
            return PathBuf::from(path);
        }
        let out = Command::new(repo_root().join("scripts/build-autodriver.sh"))
            .output()
            .expect("run scripts/build-autodriver.sh");
        assert!(
            out.status.success(),
            "scripts/build-autodriver.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        PathBuf::from(path)
    })
}

/// A machine-name prefix no other test (or run) uses: config allows letters, digits, `_`
/// and `.`.
pub fn unique_prefix(tag: &str) -> String {
    format!("t{}_{}", super::unique().replace('-', "_"), tag)
}

/// A Docker-backend configuration for one test: its own prefix, our autodriver, small
/// limits so the tests are quick.
pub fn config(prefix: &str) -> Config {
    let mut config = Config::default();
    config.vmms.name = "localDocker".into();
    config.vmms.prefix = prefix.to_string();
    config.docker.autodriver = autodriver().to_path_buf();
    config.limits.memory_mb = 256;
    config.limits.pids = 256;
    config
}

/// A machine as the pipeline would hand it to `initialize_vm`.
pub fn machine(id: u64, image: &str, owner: &str) -> Machine {
    Machine {
        name: Machine::pool_name(image),
        image: image.to_string(),
        vmms: "localDocker".into(),
        id: Some(id),
        owner: Some(owner.to_string()),
        ..Machine::default()
    }
}

/// Runs the docker CLI (for setting up and checking what the backend did).
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run the docker CLI")
}

/// Runs the docker CLI and returns its standard output; panics with its error otherwise.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes, when dropped, every container labelled with the prefix, every container and
/// image it was told about, and its temporary files.
pub struct Cleanup {
    prefix: String,
    containers: Vec<String>,
    images: Vec<String>,
}

impl Cleanup {
    pub fn new(prefix: &str) -> Cleanup {
        Cleanup {
            prefix: prefix.to_string(),
            containers: Vec::new(),
            images: Vec::new(),
        }
    }

    /// Also removes this container (one the test made without the prefix's label).
    pub fn container(&mut self, name: &str) {
        self.containers.push(name.to_string());
    }

    /// Also removes this image reference.
    pub fn image(&mut self, reference: &str) {
        self.images.push(reference.to_string());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let label = format!("label=tango.prefix={}", self.prefix);
        let listed = docker(&["ps", "-aq", "--filter", &label]);
        let mut ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        ids.extend(self.containers.iter().cloned());
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            let _ = docker(&args);
        }
        for image in &self.images {
            let _ = docker(&["rmi", "--no-prune", image]);
        }
    }
}

/// Creates three containers that a daemon with `prefix` must never touch, all with names
/// that look like ours at a glance: one with our name's shape but no label, one with our
/// label but a name outside our prefix, one of prefix `{prefix}x`. `cleanup` removes them.
/// Returns their names in that order.
pub fn plant_foreign_containers(prefix: &str, image: &str, cleanup: &mut Cleanup) -> [String; 3] {
    let no_label = format!("{prefix}-900-foreign");
    let wrong_name = format!("x{prefix}-901-foreign");
    let other_prefix = format!("{prefix}x-902-foreign");
    docker_ok(&["create", "--name", &no_label, image, "true"]);
    for (name, label) in [
        (&wrong_name, prefix.to_string()),
        (&other_prefix, format!("{prefix}x")),
    ] {
        docker_ok(&[
            "create",
            "--name",
            name,
            "--label",
            &format!("tango.prefix={label}"),
            image,
            "true",
        ]);
    }
    for c in [&no_label, &wrong_name, &other_prefix] {
        cleanup.container(c);
    }
    [no_label, wrong_name, other_prefix]
}
