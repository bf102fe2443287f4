//! The Tashi backend's settings (`[tashi]`), read by `config.rs` with the rest.

use serde::{Deserialize, Serialize};

/// Tashi clusters (`tashiSSH`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TashiConfig {
    /// Tashi's client command.
    pub client: String,
    /// Arguments for createVm, destroyVm and getInstances; `{name}`, `{cores}`, `{memory}`,
    /// `{disk}` and `{image}` are filled in.
    pub create_args: Vec<String>,
    pub destroy_args: Vec<String>,
    pub list_args: Vec<String>,
    /// Host name of a VM from its instance name (Tango: `<instance>.vmnet`).
    pub host_template: String,
    /// Disk images jobs may ask for.
    pub images: Vec<String>,
}

impl Default for TashiConfig {
    fn default() -> Self {
        TashiConfig {
            client: "tashi".into(),
            create_args: vec![
                "createVm".into(),
                "--name".into(),
                "{name}".into(),
                "--cores".into(),
                "{cores}".into(),
                "--memory".into(),
                "{memory}".into(),
                "--disks".into(),
                "{disk}".into(),
            ],
            destroy_args: vec!["destroyVm".into(), "--instance".into(), "{name}".into()],
            list_args: vec!["getMyInstances".into()],
            host_template: "{name}.vmnet".into(),
            images: Vec::new(),
        }
    }
}
