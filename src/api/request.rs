//! Reading requests: path segments, headers and bodies, with errors a client can act on.

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, RawPathParams};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;

use super::status::ApiError;

/// The most a JSON body (addJob, prealloc) may hold. Autolab's are a few hundred bytes.
pub const MAX_JSON_BODY: usize = 1024 * 1024;

/// How much of a body we read and discard before answering an error found before reading it
/// (a wrong key, say). Clients such as Ruby's Net::HTTP send the whole body before they read
/// the answer, and would see a broken pipe instead of our message if we closed early; beyond
/// this we close anyway.
const DRAIN_LIMIT: usize = 32 * 1024 * 1024;

/// Path segments, percent-decoded (`%40` → `@`; `+` stays `+`), as Tornado passed them.
pub struct Params<T>(pub T);

impl<S, T> FromRequestParts<S> for Params<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // Tango's patterns (`.+`) never matched an empty segment: `/jobs/KEY//` was a 404.
        if let Ok(raw) = RawPathParams::from_request_parts(parts, state).await
            && raw.iter().any(|(_, value)| value.is_empty())
        {
            return Err(ApiError::NotFound);
        }
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Params(value)),
            Err(e) => Err(ApiError::Request(format!(
                "Bad request path: {}",
                e.body_text()
            ))),
        }
    }
}

/// True when `segment` is a number as Tango's route patterns (`[0-9]+`) demanded.
pub fn all_digits(segment: &str) -> bool {
    !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit())
}

/// A header's text, looked up without regard to case; an error if it is not UTF-8.
pub fn header_text(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => match std::str::from_utf8(value.as_bytes()) {
            Ok(text) => Ok(Some(text.to_string())),
            Err(_) => Err(ApiError::Request(format!(
                "The {name} header is not valid UTF-8"
            ))),
        },
    }
}

/// The declared body length, when the client sent one.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reads a small body whole; refused beyond `MAX_JSON_BODY` with a message naming the route.
pub async fn small_body(body: Body, route: &str) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_JSON_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => {
            if e.is::<http_body_util::LengthLimitError>() {
                Err(ApiError::Request(format!(
                    "{route} body too large: at most {MAX_JSON_BODY} bytes are accepted"
                )))
            } else {
                Err(ApiError::Request(format!(
                    "Cannot read the {route} body: {e}"
                )))
            }
        }
    }
}

/// Hands back `error` to answer with at once, and reads and discards (a bounded part of)
/// `body` meanwhile, on its own task: the refusal never waits for the body, never holds it in
/// memory, and a client that writes the whole body before reading still gets our answer.
pub fn refuse(body: Body, error: ApiError) -> ApiError {
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut seen = 0usize;
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    });
    error
}
