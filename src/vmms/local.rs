//! The `local` backend: jobs as processes on this host (development and tests only).

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;

use super::{RunOutcome, RunSpec, Vmms, VmmsError};
use crate::config::Config;
use crate::model::{InputFile, Machine};

pub struct LocalVmms {
    prefix: String,
    images: Vec<String>,
}

impl LocalVmms {
    pub fn new(config: &Config) -> Result<Self, VmmsError> {
        Ok(LocalVmms {
            prefix: config.vmms.prefix.clone(),
            images: config.local.images.clone(),
        })
    }
}

#[async_trait]
impl Vmms for LocalVmms {
    fn name(&self) -> &str {
        "local"
    }
    fn instance_name(&self, vm: &Machine) -> String {
        super::instance_name(&self.prefix, vm)
    }
    async fn initialize_vm(&self, _vm: &mut Machine) -> Result<(), VmmsError> {
        Err(VmmsError::Unsupported("local backend not built yet".into()))
    }
    async fn wait_vm(&self, _vm: &Machine, _max: Duration) -> Result<(), VmmsError> {
        Err(VmmsError::Unsupported("local backend not built yet".into()))
    }
    async fn copy_in(&self, _vm: &Machine, _inputs: &[InputFile]) -> Result<(), VmmsError> {
        Err(VmmsError::Unsupported("local backend not built yet".into()))
    }
    async fn run_job(&self, _vm: &Machine, _spec: &RunSpec) -> Result<RunOutcome, VmmsError> {
        Err(VmmsError::Unsupported("local backend not built yet".into()))
    }
    async fn copy_out(&self, _vm: &Machine, _dest: &Path, _max: u64) -> Result<(), VmmsError> {
        Err(VmmsError::Unsupported("local backend not built yet".into()))
    }
    async fn destroy_vm(&self, _vm: &Machine) -> Result<(), VmmsError> {
        Ok(())
    }
    async fn get_vms(&self) -> Result<Vec<Machine>, VmmsError> {
        Ok(Vec::new())
    }
    async fn exists_vm(&self, _vm: &Machine) -> Result<bool, VmmsError> {
        Ok(false)
    }
    async fn get_images(&self) -> Result<Vec<String>, VmmsError> {
        Ok(self.images.clone())
    }
    async fn get_partial_output(&self, _vm: &Machine, _max: u64) -> Result<Vec<u8>, VmmsError> {
        Err(VmmsError::Unsupported("local backend not built yet".into()))
    }
}
