//! The EC2 backend's settings (`[ec2]`), read by `config.rs` with the rest. Compiled with or
//! without the `ec2` feature, so a configuration is read the same either way.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Amazon EC2 (`ec2SSH`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Ec2Config {
    /// `EC2_REGION`.
    pub region: String,
    /// API endpoint override (e.g. an emulator); empty means AWS's.
    pub endpoint_url: String,
    /// `DEFAULT_AMI`.
    pub default_ami: String,
    /// `DEFAULT_INST_TYPE`: used when cores/memory map to no type.
    pub default_instance_type: String,
    /// `DEFAULT_SECURITY_GROUP`: created when missing.
    pub default_security_group: String,
    /// `SECURITY_KEY_NAME`: the key pair instances start with.
    pub security_key_name: String,
    /// `DYNAMIC_SECURITY_KEY_PATH`: where per-job key pairs are written.
    pub dynamic_security_key_path: PathBuf,
    /// `TANGO_RESERVATION_ID`: instances of this reservation are never ours.
    pub reservation_id: String,
    /// Which address to SSH to: `public_ip`, `private_ip`, `dns_name`, or `bastion`.
    pub ssh_address: String,
    /// With `ssh_address = "bastion"`: the host every VM is reached at (e.g. a jump host or
    /// a forwarded port).
    pub bastion_host: String,
    /// Images (AMI names) jobs may ask for; empty means every AMI we own.
    pub images: Vec<String>,
    /// Static credentials; empty means the standard AWS chain.
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl Default for Ec2Config {
    fn default() -> Self {
        Ec2Config {
            region: String::new(),
            endpoint_url: String::new(),
            default_ami: String::new(),
            default_instance_type: String::new(),
            default_security_group: String::new(),
            security_key_name: String::new(),
            dynamic_security_key_path: PathBuf::new(),
            reservation_id: String::new(),
            ssh_address: "public_ip".into(),
            bastion_host: String::new(),
            images: Vec::new(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
        }
    }
}

impl Ec2Config {
    /// Checks the section; the error names the key and says what is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !["public_ip", "private_ip", "dns_name", "bastion"].contains(&self.ssh_address.as_str())
        {
            return Err((
                "ec2.ssh_address".into(),
                format!(
                    "expected public_ip, private_ip, dns_name or bastion, got {:?}",
                    self.ssh_address
                ),
            ));
        }
        Ok(())
    }
}
