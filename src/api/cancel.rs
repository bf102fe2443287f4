//! `POST /cancel/KEY/JOBID/`: cancelling a job. An extension (Python Tango had no way to
//! stop a job short of its timeout); Autolab does not call it.
//!
//! The handler only asks the store ([`crate::store::JobStore::request_cancel`]): a queued
//! job leaves the queue at once; a manager then ends the job, wherever it runs, with the
//! trace line and output file `Cancelled` and its callback.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde::Serialize;

use super::ApiState;
use super::request::{Params, all_digits};
use super::status::{self, ApiError};
use crate::store::CancelRequest;

#[derive(Serialize)]
struct Cancelling {
    /// A string, like addJob's.
    #[serde(rename = "jobId")]
    job_id: String,
    /// Where the job was: `queued` or `running`.
    was: &'static str,
}

/// `POST /cancel/KEY/JOBID/`.
pub async fn cancel(
    State(api): State<Arc<ApiState>>,
    Params((key, job_id)): Params<(String, String)>,
) -> Result<Response, ApiError> {
    if !all_digits(&job_id) {
        return Err(ApiError::NotFound);
    }
    api.keys.check(&key)?;
    let found = match job_id.parse::<u64>() {
        Ok(id) => api.app.store.request_cancel(id).await?,
        Err(_) => CancelRequest::Unknown, // more digits than any id
    };
    let was = match found {
        CancelRequest::Queued => "queued",
        CancelRequest::Running => "running",
        CancelRequest::Finished => {
            return Err(ApiError::Failed(format!(
                "Job {job_id} has already finished"
            )));
        }
        CancelRequest::Unknown => return Err(ApiError::Failed(format!("Job {job_id} not found"))),
    };
    tracing::info!(job = %job_id, was, "job cancel requested");
    Ok(status::ok(
        status::CANCEL_REQUESTED,
        Cancelling { job_id, was },
    ))
}
