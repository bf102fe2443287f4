//! How the VM backends reach their machines over SSH (`[ssh]`), read by `config.rs` with the
//! rest.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Reaching VMs over SSH (`ec2SSH`, `tashiSSH`): `SSH_RETRIES`, `SSH_INTERVAL`, ...
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SshConfig {
    /// `SSH_RETRIES`.
    pub retries: u32,
    /// `SSH_INTERVAL`, seconds.
    pub interval: f64,
    /// `EC2_USER_NAME`: the login user on the VM.
    pub user: String,
    /// `SECURITY_KEY_PATH`: private key to log in with.
    pub key_path: PathBuf,
    /// SSH port on the VM.
    pub port: u16,
    /// Extra `-o` options for ssh (e.g. `StrictHostKeyChecking=no`).
    pub options: Vec<String>,
    /// The autodriver's path on the VM.
    pub autodriver: String,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            retries: 5,
            interval: 0.5,
            user: "autolab".into(),
            key_path: PathBuf::new(),
            port: 22,
            options: Vec::new(),
            autodriver: "autodriver".into(),
        }
    }
}

impl SshConfig {
    /// Checks the section; the error names the key and says what is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !self.interval.is_finite() || self.interval < 0.0 {
            return Err((
                "ssh.interval".into(),
                format!(
                    "must be a non-negative number of seconds, got {}",
                    self.interval
                ),
            ));
        }
        Ok(())
    }
}
