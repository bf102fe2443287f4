//! Errors from Docker engines, and [`call`], which every engine call goes through: it bounds
//! the call, sorts a failure into "the engine answered no" and "the engine did not answer",
//! and keeps the engine's standing in placement up to date.

use std::future::Future;
use std::time::Duration;

use bollard::errors::Error as BollardError;

use super::archive::ArchiveError;
use super::engine::Engine;
use crate::vmms::VmmsError;

/// A failure talking to an engine.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The configuration of an engine cannot work.
    #[error("Docker engine {engine}: {message}")]
    Config { engine: String, message: String },
    /// The engine did not answer (connection refused, timeout, broken stream).
    #[error("Docker engine {engine} is not answering: {message}")]
    Unreachable { engine: String, message: String },
    /// The engine answered with an error.
    #[error("Docker engine {engine}: {message}")]
    Refused {
        engine: String,
        status: u16,
        message: String,
    },
    /// A container of that name exists on the engine and another manager made it.
    #[error("Docker engine {engine}: the name {name} is taken by a container another manager made")]
    NameTaken { engine: String, name: String },
}

impl DockerError {
    /// Sorts a bollard error into "the engine answered no" and "the engine did not answer".
    pub fn from_engine(engine: &str, e: BollardError) -> DockerError {
        let engine = engine.to_string();
        match e {
            BollardError::DockerResponseServerError {
                status_code,
                message,
            } => DockerError::Refused {
                engine,
                status: status_code,
                message: message.trim().to_string(),
            },
            BollardError::DockerStreamError { error } => DockerError::Refused {
                engine,
                status: 500,
                message: error,
            },
            e @ (BollardError::JsonDataError { .. } | BollardError::JsonSerdeError { .. }) => {
                DockerError::Refused {
                    engine,
                    status: 500,
                    message: format!("unexpected answer: {e}"),
                }
            }
            other => DockerError::Unreachable {
                engine,
                message: other.to_string(),
            },
        }
    }

    pub fn is_unreachable(&self) -> bool {
        matches!(self, DockerError::Unreachable { .. })
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            DockerError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Adds what we were doing to the message.
    pub fn doing(self, what: &str) -> DockerError {
        match self {
            DockerError::Config { engine, message } => DockerError::Config {
                engine,
                message: format!("{what}: {message}"),
            },
            DockerError::Unreachable { engine, message } => DockerError::Unreachable {
                engine,
                message: format!("{what}: {message}"),
            },
            DockerError::Refused {
                engine,
                status,
                message,
            } => DockerError::Refused {
                engine,
                status,
                message: format!("{what}: {message}"),
            },
            taken @ DockerError::NameTaken { .. } => taken,
        }
    }
}

impl From<DockerError> for VmmsError {
    fn from(e: DockerError) -> Self {
        match e {
            DockerError::NameTaken { name, .. } => VmmsError::NameTaken(name),
            other => VmmsError::Backend(other.to_string()),
        }
    }
}

pub fn archive_error(e: ArchiveError) -> VmmsError {
    match e {
        ArchiveError::Input { .. } | ArchiveError::BadName(_) => VmmsError::Io(e.to_string()),
        _ => VmmsError::Backend(e.to_string()),
    }
}

/// Runs one call to an engine with a bound, sorts its error, and keeps the engine's standing
/// up to date: a call that gets no answer takes the engine out of placement.
pub async fn call<T>(
    engine: &Engine,
    what: &str,
    bound: Option<Duration>,
    fut: impl Future<Output = Result<T, BollardError>>,
) -> Result<T, DockerError> {
    let result = match bound {
        Some(bound) => match tokio::time::timeout(bound, fut).await {
            Ok(result) => result,
            Err(_) => {
                let e = DockerError::Unreachable {
                    engine: engine.url.clone(),
                    message: format!("{what}: no answer within {} s", bound.as_secs()),
                };
                engine.mark_down(&e.to_string());
                return Err(e);
            }
        },
        None => fut.await,
    };
    match result {
        Ok(value) => {
            engine.mark_up();
            Ok(value)
        }
        Err(e) => {
            let e = DockerError::from_engine(&engine.url, e).doing(what);
            if e.is_unreachable() {
                engine.mark_down(&e.to_string());
            } else {
                engine.mark_up();
            }
            Err(e)
        }
    }
}
