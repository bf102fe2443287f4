//! Amazon EC2 (`ec2SSH`): its settings always, the backend with the `ec2` feature (the AWS
//! SDK is most of a cold build, and a school on Docker need not build it).

pub mod settings;

#[cfg(feature = "ec2")]
mod backend;
#[cfg(feature = "ec2")]
pub use backend::*;

/// Opens the EC2 backend ([`super::BACKENDS`]).
#[cfg(feature = "ec2")]
pub async fn open(
    config: &crate::config::Config,
) -> Result<std::sync::Arc<dyn super::Vmms>, super::VmmsError> {
    Ok(std::sync::Arc::new(Ec2Vmms::new(config).await?))
}

/// Without the `ec2` feature the name is known and refused with the reason.
#[cfg(not(feature = "ec2"))]
pub async fn open(
    _config: &crate::config::Config,
) -> Result<std::sync::Arc<dyn super::Vmms>, super::VmmsError> {
    Err(super::VmmsError::Unsupported(
        "this tango was built without the ec2 feature".into(),
    ))
}
