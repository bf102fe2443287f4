//! The `local` backend's settings (`[local]`), read by `config.rs` with the rest.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `local` backend: jobs as processes on this host (development and tests only).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LocalConfig {
    /// Where machine directories are made; empty means a directory under the system temp dir.
    pub work_dir: PathBuf,
    /// The autodriver binary; empty means the one next to the `tango` binary.
    pub autodriver: PathBuf,
    /// Images the backend claims to have (it runs everything on the host).
    pub images: Vec<String>,
    /// When tango runs as root, each machine runs its jobs as its own uid (and gid of the
    /// same number) from `uid_base .. uid_base + uid_count`, so that the process limit and
    /// the kill-everything-of-the-uid at the end touch that machine alone. These ids need
    /// not exist in /etc/passwd; pick a range no user or service has.
    pub uid_base: u32,
    /// How many machines may exist at once.
    pub uid_count: u32,
    /// Allows running without root. Jobs then run as tango's own user, and can read what it
    /// can: its configuration (the keys) and every courselab. Off: the backend refuses to
    /// start unless tango is root.
    pub allow_unisolated: bool,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig {
            work_dir: PathBuf::new(),
            autodriver: PathBuf::new(),
            images: vec!["autograding_image".into()],
            uid_base: 2_000_000_000,
            uid_count: 1000,
            allow_unisolated: false,
        }
    }
}

impl LocalConfig {
    /// Checks the section; the error names the key and says what is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.uid_base == 0
            || self.uid_count == 0
            || u64::from(self.uid_base) + u64::from(self.uid_count) > i32::MAX as u64
        {
            return Err((
                "local.uid_base".into(),
                format!(
                    "local.uid_base and local.uid_count must give a range of non-root ids \
                     below 2^31, got {} and {}",
                    self.uid_base, self.uid_count
                ),
            ));
        }
        Ok(())
    }
}
