//! Tango's answers: status bodies (`{"statusId": 0|-1, "statusMsg": ...}` plus a route's own
//! fields, always HTTP 200 and JSON), Tornado's HTML error pages, and [`ApiError`], the one
//! place where a typed error from inside becomes a status body.

use std::any::Any;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::labs::LabsError;
use crate::store::StoreError;
use crate::vmms::VmmsError;

// Python Tango's status messages (restful_tango/tangoREST.py, class Status).
pub const FOUND_DIR: &str = "Found directory";
pub const MADE_DIR: &str = "Created directory";
pub const FILE_UPLOADED: &str = "Uploaded file";
pub const FILE_EXISTS: &str = "File exists";
pub const JOB_ADDED: &str = "Job added";
pub const OBTAINED_INFO: &str = "Found info successfully";
pub const OBTAINED_JOBS: &str = "Found list of jobs";
pub const PREALLOCATED: &str = "VMs preallocated";
pub const OBTAINED_POOL: &str = "Found pool";
pub const OBTAINED_ALL_POOLS: &str = "Found all pools";
pub const PARTIAL_OUTPUT_OBTAINED: &str = "Partial output obtained";
pub const IMAGE_BUILT: &str = "Docker image built";
/// Not Tango's: `/cancel` took the request.
pub const CANCEL_REQUESTED: &str = "Cancel requested";
pub const FOUND_FAILED_CALLBACKS: &str = "Found failed callbacks";
pub const REPLAYED_CALLBACKS: &str = "Replayed failed callbacks";
pub const REPLAYED_CALLBACK: &str = "Failed callback delivered";
pub const WRONG_KEY: &str = "Key not recognized";
pub const OUTPUT_NOT_FOUND: &str = "Output file not found";
pub const INVALID_IMAGE: &str = "Invalid image name";
pub const INVALID_PREALLOC_SIZE: &str = "Invalid prealloc size";
pub const POOL_NOT_FOUND: &str = "Pool not found";
pub const PREALLOC_FAILED: &str = "Preallocate VM failed";
pub const IMAGE_BUILD_FAILED: &str = "Image build failed";

/// Tornado's content type for `write(dict)`.
pub const JSON_TYPE: &str = "application/json; charset=UTF-8";
/// Tornado's content type for text and its error pages.
pub const HTML_TYPE: &str = "text/html; charset=UTF-8";

/// Tornado's 404 page (a path no route matches, e.g. without the trailing slash).
pub const NOT_FOUND_PAGE: &str =
    "<html><title>404: Not Found</title><body>404: Not Found</body></html>";
/// Tornado's 405 page (a route asked with the wrong method).
pub const METHOD_NOT_ALLOWED_PAGE: &str =
    "<html><title>405: Method Not Allowed</title><body>405: Method Not Allowed</body></html>";

/// A status body: Tango's two keys, then the route's own fields, in Python's order.
#[derive(Serialize)]
struct StatusBody<'a, M: Serialize, T: Serialize> {
    #[serde(rename = "statusId")]
    status_id: i32,
    #[serde(rename = "statusMsg")]
    status_msg: &'a M,
    #[serde(flatten)]
    extra: T,
}

/// No extra fields.
#[derive(Serialize)]
pub struct Nothing {}

/// `{"statusId": 0, "statusMsg": msg, ...extra}`.
pub fn ok<T: Serialize>(msg: &str, extra: T) -> Response {
    status_body(0, &msg, extra)
}

/// `{"statusId": -1, "statusMsg": msg, ...extra}`.
pub fn failed<T: Serialize>(msg: &str, extra: T) -> Response {
    status_body(-1, &msg, extra)
}

fn status_body<M: Serialize, T: Serialize>(status_id: i32, msg: &M, extra: T) -> Response {
    let body = StatusBody {
        status_id,
        status_msg: msg,
        extra,
    };
    match serde_json::to_vec(&body) {
        Ok(bytes) => json_response(bytes),
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize a status body");
            let fallback = serde_json::json!({
                "statusId": -1,
                "statusMsg": format!("Internal error: cannot serialize the answer: {e}"),
            });
            json_response(fallback.to_string().into_bytes())
        }
    }
}

fn json_response(bytes: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(bytes));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_TYPE));
    response
}

/// An HTML page with a status code, as Tornado writes its errors.
pub fn html_page(status: StatusCode, page: &'static str) -> Response {
    let mut response = Response::new(Body::from(page));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(HTML_TYPE));
    response
}

/// Tornado's 404.
pub fn not_found() -> Response {
    html_page(StatusCode::NOT_FOUND, NOT_FOUND_PAGE)
}

/// Tornado's 405.
pub fn method_not_allowed() -> Response {
    html_page(StatusCode::METHOD_NOT_ALLOWED, METHOD_NOT_ALLOWED_PAGE)
}

/// Why a request failed. Every variant but [`ApiError::NotFound`] answers HTTP 200 with
/// `statusId -1` and the `Display` text as `statusMsg`, as Tango does.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{WRONG_KEY}")]
    WrongKey,
    /// The request itself is wrong (a missing header, bad JSON, a wrong type, ...).
    #[error("{0}")]
    Request(String),
    #[error(transparent)]
    Labs(#[from] LabsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A backend call failed; the text says which.
    #[error("{context}: {source}")]
    Vmms {
        context: String,
        #[source]
        source: VmmsError,
    },
    /// A failure with Tango's own wording (e.g. `getPartialOutput request failed: ...`).
    #[error("{0}")]
    Failed(String),
    /// addJob's validation failure: `statusMsg` is the rejected job's trace, a list.
    #[error("{}", .0.join("; "))]
    Rejected(Vec<String>),
    /// No route: Tornado's 404 page (e.g. a job id that is not a number, as Tango's route
    /// patterns demanded digits).
    #[error("404: Not Found")]
    NotFound,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Every refusal, with what it says (which never holds the key).
        tracing::debug!(answer = %self, "request refused");
        match self {
            ApiError::NotFound => not_found(),
            ApiError::Rejected(trace) => status_body(-1, &trace, Nothing {}),
            other => failed(&other.to_string(), Nothing {}),
        }
    }
}

/// The answer to a handler that panicked: a bug, logged, answered like any other error so
/// Autolab shows a message, while the server keeps serving.
pub fn panicked(err: Box<dyn Any + Send + 'static>) -> Response {
    let detail = if let Some(s) = err.downcast_ref::<String>() {
        s.as_str()
    } else if let Some(s) = err.downcast_ref::<&str>() {
        s
    } else {
        "(no message)"
    };
    tracing::error!(
        panic = detail,
        "a request handler panicked (a bug in tango)"
    );
    failed(
        &format!("Internal error in tango (please report it): {detail}"),
        Nothing {},
    )
}
