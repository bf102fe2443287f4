//! The REST API, wire-compatible with Python Tango (PROTOCOL.md is the contract).

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::app::App;

/// The body of `GET /`, which health checks and tango-cli look for.
pub const HELLO: &str = "Hello, world! RESTful Tango here!\n";

/// Every route of the API.
pub fn router(app: Arc<App>) -> Router {
    Router::new().route("/", get(hello)).with_state(app)
}

async fn hello() -> (
    [(axum::http::header::HeaderName, &'static str); 1],
    &'static str,
) {
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=UTF-8")],
        HELLO,
    )
}
