//! `info`: how long this server has run and what its jobs have met.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde::Serialize;

use super::ApiState;
use super::request::Params;
use super::status::{self, ApiError};

/// Tango's `/info` object, in its key order.
#[derive(Serialize)]
struct Info {
    elapsed_secs: f64,
    job_requests: u64,
    job_retries: u64,
    waitvm_timeouts: u64,
    runjob_timeouts: u64,
    copyin_errors: u64,
    runjob_errors: u64,
    copyout_errors: u64,
    /// Python reported its thread count: one main thread plus a worker thread per running
    /// job. We report the same quantity: live jobs out of the queue plus one.
    num_threads: u64,
}

#[derive(Serialize)]
struct InfoBody<'a> {
    info: Info,
    /// An extension (absent when empty, so Python's shape is kept): what the operator must
    /// hear about this setup, such as the default key served beyond this host.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
}

/// `GET /info/KEY/`.
pub async fn info(
    State(api): State<Arc<ApiState>>,
    Params(key): Params<String>,
) -> Result<Response, ApiError> {
    api.keys.check(&key)?;
    let app = &api.app;
    // One store call (one round trip with Redis). Jobs out of the queue (running, or given
    // a machine now) come from the store's counts: reading every live job here made `info`
    // slower with each queued job.
    let (counters, stats) = app.store.overview().await?;
    let running = stats.live.saturating_sub(stats.queued);
    Ok(status::ok(
        status::OBTAINED_INFO,
        InfoBody {
            info: Info {
                elapsed_secs: app.started.elapsed().as_secs_f64(),
                job_requests: counters.job_requests,
                job_retries: counters.job_retries,
                waitvm_timeouts: counters.waitvm_timeouts,
                runjob_timeouts: counters.runjob_timeouts,
                copyin_errors: counters.copyin_errors,
                runjob_errors: counters.runjob_errors,
                copyout_errors: counters.copyout_errors,
                num_threads: running + 1,
            },
            warnings: &api.warnings,
        },
    ))
}
