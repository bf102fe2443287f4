//! Failed callbacks, an extension (Autolab calls none of these): callbacks that used up
//! their attempts are kept in the store (see [`crate::callback`]), and these routes list
//! them and send them again.
//!
//! - `GET /callbacks/KEY/`: the list, oldest first;
//! - `POST /callbacks/KEY/replay/`: every one, each host's in turn;
//! - `POST /callbacks/KEY/replay/JOBID/`: one job's.
//!
//! A replay is one attempt, made by this server (claimed in the store first, so a manager
//! replaying the same one on its own never sends it too), and answered when it is over.
//! Output files show as their names, never as paths on this host.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde::Serialize;

use super::ApiState;
use super::request::{Params, all_digits};
use super::status::{self, ApiError};
use crate::callback::{Replay, Replayer};
use crate::model::{FailedCallback, JobId};
use crate::store::StoreError;

/// A failed callback as the list shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FailedView {
    job_id: JobId,
    job_name: String,
    courselab: String,
    url: String,
    /// The output file's name (it stays in its courselab's output folder).
    output_file: String,
    /// Unix seconds.
    first_failed: f64,
    last_failed: f64,
    attempts: u32,
    last_error: String,
    /// The process sending it now, if one is.
    replaying: Option<String>,
}

impl From<FailedCallback> for FailedView {
    fn from(r: FailedCallback) -> Self {
        let output_file = std::path::Path::new(&r.output_file)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        FailedView {
            job_id: r.job_id,
            job_name: r.job_name,
            courselab: r.courselab,
            url: r.url,
            output_file,
            first_failed: r.first_failed,
            last_failed: r.last_failed,
            attempts: r.attempts,
            last_error: r.last_error,
            replaying: r.replaying,
        }
    }
}

#[derive(Serialize)]
struct FailedList {
    callbacks: Vec<FailedView>,
}

/// `GET /callbacks/KEY/`.
pub async fn list(
    State(api): State<Arc<ApiState>>,
    Params(key): Params<String>,
) -> Result<Response, ApiError> {
    api.keys.check(&key)?;
    let records = api.app.store.failed_callbacks().await?;
    Ok(status::ok(
        status::FOUND_FAILED_CALLBACKS,
        FailedList {
            callbacks: records.into_iter().map(FailedView::from).collect(),
        },
    ))
}

/// One replay's outcome, for the answer.
#[derive(Serialize)]
struct ReplayView {
    #[serde(rename = "jobId")]
    job_id: JobId,
    #[serde(flatten)]
    replay: Replay,
}

#[derive(Serialize)]
struct Replays {
    delivered: usize,
    failed: usize,
    replays: Vec<ReplayView>,
}

/// `POST /callbacks/KEY/replay/`.
pub async fn replay_all(
    State(api): State<Arc<ApiState>>,
    Params(key): Params<String>,
) -> Result<Response, ApiError> {
    api.keys.check(&key)?;
    let replayer = replayer(&api)?;
    let done = detached(async move { replayer.replay_all().await }).await?;
    let count = |f: fn(&Replay) -> bool| done.iter().filter(|(_, r)| f(r)).count();
    let delivered = count(|r| matches!(r, Replay::Delivered { .. }));
    let failed = count(|r| matches!(r, Replay::Failed { .. }));
    tracing::info!(delivered, failed, "failed callbacks replayed on request");
    Ok(status::ok(
        status::REPLAYED_CALLBACKS,
        Replays {
            delivered,
            failed,
            replays: done
                .into_iter()
                .map(|(job_id, replay)| ReplayView { job_id, replay })
                .collect(),
        },
    ))
}

/// `POST /callbacks/KEY/replay/JOBID/`: `statusId` 0 only when it was delivered.
pub async fn replay_one(
    State(api): State<Arc<ApiState>>,
    Params((key, job_id)): Params<(String, String)>,
) -> Result<Response, ApiError> {
    if !all_digits(&job_id) {
        return Err(ApiError::NotFound);
    }
    api.keys.check(&key)?;
    let replayer = replayer(&api)?;
    let replay = match job_id.parse::<u64>() {
        Ok(id) => detached(async move { replayer.replay(id).await }).await?,
        Err(_) => Replay::NotKept, // more digits than any id
    };
    match replay {
        Replay::Delivered { status } => Ok(status::ok(
            status::REPLAYED_CALLBACK,
            ReplayView {
                job_id: job_id.parse().unwrap_or_default(),
                replay: Replay::Delivered { status },
            },
        )),
        Replay::Failed { error } => Err(ApiError::Failed(format!(
            "The callback of job {job_id} failed again: {error}"
        ))),
        Replay::Busy => Err(ApiError::Failed(format!(
            "The callback of job {job_id} is being sent by another process"
        ))),
        Replay::NotKept | Replay::Skipped => Err(ApiError::Failed(format!(
            "No failed callback kept for job {job_id}"
        ))),
    }
}

fn replayer(api: &ApiState) -> Result<Arc<Replayer>, ApiError> {
    api.replayer.clone().ok_or_else(|| {
        ApiError::Failed("Failed callbacks cannot be sent: no callback HTTP client".into())
    })
}

/// Runs replays in a task of their own: a client that hangs up must not cut one short
/// between the server taking the callback and the store hearing of it (it would be sent
/// again once its claim ran out).
async fn detached<T: Send + 'static>(
    replays: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::spawn(replays).await {
        Ok(done) => Ok(done?),
        Err(e) => Err(ApiError::Failed(format!(
            "Internal error: the replay task failed: {e}"
        ))),
    }
}
