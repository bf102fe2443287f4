//! The REST API, wire-compatible with Python Tango: same routes (each with its trailing
//! slash), same methods, same status bodies, as `docs/rest-api.md` and `docs/openapi.yaml` describe
//! them.
//!
//! Handlers are thin: they check the key and the names a client sent, then call
//! [`crate::labs`] (files), the store, and the backend through their traits. Errors from
//! inside travel as typed errors and become Tango's `{"statusId": -1, "statusMsg": ...}` in
//! [`status`], and only there. A handler that panics is a bug: a layer catches it, logs it,
//! and answers the same JSON error; the server keeps serving.
//!
//! [`Endpoint::ALL`] is the route table the router is built from (and which a test compares
//! with `docs/openapi.yaml`).

mod callbacks;
mod cancel;
mod courselab;
mod health;
mod images;
mod info;
// Public so the property tests (`tests/fuzz.rs`) can feed it arbitrary bodies.
pub mod job_request;
mod jobs;
mod keys;
mod pools;
mod request;
pub mod status;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{MethodRouter, get, post};
use tower_http::catch_panic::CatchPanicLayer;

use crate::app::App;
use crate::callback::{Notifier, Replayer};
use crate::labs::Labs;

/// The body of `GET /`, which health checks and tango-cli look for.
pub const HELLO: &str = "Hello, world! RESTful Tango here!\n";

/// What every handler gets: the daemon's services and the API's own helpers.
pub(crate) struct ApiState {
    pub app: Arc<App>,
    pub labs: Labs,
    pub keys: keys::Keys,
    /// `server.build_keys`: who may call `/build`; `None`: every key.
    pub build_keys: Option<keys::Keys>,
    /// [`crate::config::Config::security_warnings`], shown by `/info`.
    pub warnings: Vec<String>,
    pub images: images::ImageCache,
    /// Sends failed callbacks again on request; `None` when the HTTP client could not be
    /// built (the routes then say so).
    pub replayer: Option<Arc<Replayer>>,
}

/// One route of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Hello,
    Open,
    Upload,
    AddJob,
    Poll,
    PartialOutput,
    Info,
    Jobs,
    Pools,
    Pool,
    Prealloc,
    Build,
    /// Not Tango's: cancels a job.
    Cancel,
    /// Not Tango's: lists the failed callbacks kept.
    FailedCallbacks,
    /// Not Tango's: sends every failed callback again.
    ReplayCallbacks,
    /// Not Tango's: sends one job's failed callback again.
    ReplayCallback,
}

impl Endpoint {
    /// Every route, in the order of `docs/rest-api.md`: Tango's, then the extensions.
    pub const ALL: [Endpoint; 16] = [
        Endpoint::Hello,
        Endpoint::Open,
        Endpoint::Upload,
        Endpoint::AddJob,
        Endpoint::Poll,
        Endpoint::PartialOutput,
        Endpoint::Info,
        Endpoint::Jobs,
        Endpoint::Pools,
        Endpoint::Pool,
        Endpoint::Prealloc,
        Endpoint::Build,
        Endpoint::Cancel,
        Endpoint::FailedCallbacks,
        Endpoint::ReplayCallbacks,
        Endpoint::ReplayCallback,
    ];

    /// The route's path pattern (axum's syntax, which is also OpenAPI's).
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Hello => "/",
            Endpoint::Open => "/open/{key}/{courselab}/",
            Endpoint::Upload => "/upload/{key}/{courselab}/",
            Endpoint::AddJob => "/addJob/{key}/{courselab}/",
            Endpoint::Poll => "/poll/{key}/{courselab}/{outputFile}/",
            Endpoint::PartialOutput => "/getPartialOutput/{key}/{jobId}/",
            Endpoint::Info => "/info/{key}/",
            Endpoint::Jobs => "/jobs/{key}/{deadJobs}/",
            Endpoint::Pools => "/pool/{key}/",
            Endpoint::Pool => "/pool/{key}/{image}/",
            Endpoint::Prealloc => "/prealloc/{key}/{image}/{num}/",
            Endpoint::Build => "/build/{key}/",
            Endpoint::Cancel => "/cancel/{key}/{jobId}/",
            Endpoint::FailedCallbacks => "/callbacks/{key}/",
            Endpoint::ReplayCallbacks => "/callbacks/{key}/replay/",
            Endpoint::ReplayCallback => "/callbacks/{key}/replay/{jobId}/",
        }
    }

    /// The route's one method (as Python Tango served it).
    pub fn method(self) -> &'static str {
        match self {
            Endpoint::Upload
            | Endpoint::AddJob
            | Endpoint::Prealloc
            | Endpoint::Build
            | Endpoint::Cancel
            | Endpoint::ReplayCallbacks
            | Endpoint::ReplayCallback => "POST",
            _ => "GET",
        }
    }

    fn handler(self) -> MethodRouter<Arc<ApiState>> {
        match self {
            Endpoint::Hello => get(hello),
            Endpoint::Open => get(courselab::open),
            Endpoint::Upload => post(courselab::upload),
            Endpoint::AddJob => post(jobs::add_job),
            Endpoint::Poll => get(courselab::poll),
            Endpoint::PartialOutput => get(jobs::partial_output),
            Endpoint::Info => get(info::info),
            Endpoint::Jobs => get(jobs::jobs),
            Endpoint::Pools => get(pools::all_pools),
            Endpoint::Pool => get(pools::one_pool),
            Endpoint::Prealloc => post(pools::prealloc),
            Endpoint::Build => post(images::build),
            Endpoint::Cancel => post(cancel::cancel),
            Endpoint::FailedCallbacks => get(callbacks::list),
            Endpoint::ReplayCallbacks => post(callbacks::replay_all),
            Endpoint::ReplayCallback => post(callbacks::replay_one),
        }
    }
}

/// Every route of the API, with Tornado's 404 and 405 pages and the panic guard.
pub fn router(app: Arc<App>) -> Router {
    let state = Arc::new(ApiState {
        labs: Labs::new(&app.config.server),
        keys: keys::Keys::new(&app.config.server.keys),
        build_keys: (!app.config.server.build_keys.is_empty())
            .then(|| keys::Keys::new(&app.config.server.build_keys)),
        warnings: app.config.security_warnings(),
        images: images::ImageCache::new(),
        replayer: replayer(&app),
        app,
    });
    let mut router = Router::new();
    for endpoint in Endpoint::ALL {
        router = router.route(endpoint.path(), endpoint.handler());
    }
    // Not Tango's: health checks and Prometheus's metrics, outside the table above.
    router = router
        .route(health::PATHS[0], get(health::healthz))
        .route(health::PATHS[1], get(health::readyz));
    let metrics = &state.app.config.metrics;
    // (config.rs refuses a metrics.path that is a health route.)
    if metrics.enabled && metrics.path != "/" {
        router = router.route(&metrics.path, get(metrics_text));
    }
    router
        .fallback(|| async { status::not_found() })
        .method_not_allowed_fallback(|| async { status::method_not_allowed() })
        .layer(axum::middleware::from_fn(log_request))
        .layer(CatchPanicLayer::custom(status::panicked))
        .with_state(state)
}

/// The API's own replayer: it claims in the store under an owner id of its own, like a
/// manager's, so the two never send the same callback.
fn replayer(app: &Arc<App>) -> Option<Arc<Replayer>> {
    match Notifier::new(&app.config.callback) {
        Ok(notifier) => Some(Replayer::new(
            notifier,
            app.store.clone(),
            app.metrics.clone(),
            app.config.server.clone(),
            crate::owner::owner_id(),
        )),
        Err(e) => {
            tracing::error!(error = %e, "failed callbacks cannot be replayed on request");
            None
        }
    }
}

async fn hello() -> Response {
    let mut response = Response::new(axum::body::Body::from(HELLO));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(status::HTML_TYPE),
    );
    response
}

/// `GET metrics.path`: Prometheus metrics (no key: scrapers do not carry one, and the
/// body holds counts only, never a key, a path or a job's name).
/// The format follows `Accept`: OpenMetrics when asked for, else Prometheus text.
async fn metrics_text(
    axum::extract::State(api): axum::extract::State<Arc<ApiState>>,
    headers: axum::http::HeaderMap,
) -> Response {
    use axum::response::IntoResponse;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::metrics::Format::from_accept(accept);
    let app = &api.app;
    match crate::metrics::render(app.store.as_ref(), app.started, &app.metrics, format).await {
        Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(e) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}\n"),
        )
            .into_response(),
    }
}

/// Logs each request by its route pattern (never the raw path: it holds the key), at trace
/// level: at Tango's default (debug) a line per request cost a quarter of a simple request's
/// time, and Autolab's polling fills a log with them. Refused requests are logged at debug
/// where their answer is made ([`status`]).
async fn log_request(request: Request, next: Next) -> Response {
    // Off: no allocation and no clock read.
    if !tracing::enabled!(tracing::Level::TRACE) {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "(no route)".into());
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    tracing::trace!(
        %method,
        route,
        status = response.status().as_u16(),
        millis = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}
