//! Health checks for process supervisors and load balancers (extensions, not Tango's):
//! `GET /healthz` says the process answers; `GET /readyz` says it can do its work, i.e. the
//! store answers and the machine backend is reachable. No key: a probe carries none, and
//! the answers hold no job, path or key.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ApiState;

/// The routes (config.rs keeps `metrics.path` off them).
pub const PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// How long each check of `/readyz` may take: a probe that hangs is itself a failure.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /healthz`: 200 as long as the process serves requests.
pub async fn healthz() -> Response {
    (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
}

/// `GET /readyz`: 200 when the store answers a ping and the backend lists its images,
/// else 503 naming what failed.
pub async fn readyz(State(api): State<Arc<ApiState>>) -> Response {
    let app = &api.app;
    let store = check(async { app.store.ping().await.map_err(|e| e.to_string()) }).await;
    let vmms = check(async {
        app.vmms
            .get_images()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    let ready = store.is_none() && vmms.is_none();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "store": store.unwrap_or_else(|| "ok".into()),
        "vmms": vmms.unwrap_or_else(|| "ok".into()),
    });
    (status, Json(body)).into_response()
}

/// `None` when `probe` succeeds in time, else what went wrong.
async fn check(probe: impl Future<Output = Result<(), String>>) -> Option<String> {
    match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some(format!("no answer in {} s", CHECK_TIMEOUT.as_secs())),
    }
}
