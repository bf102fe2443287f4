//! `open`, `upload` and `poll`: a client's files in its courselab directory.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use percent_encoding::percent_decode_str;
use serde::Serialize;
use tokio_util::io::ReaderStream;

use super::ApiState;
use super::request::{Params, content_length, header_text, refuse};
use super::status::{self, ApiError, Nothing};
use crate::labs::{LabsError, OutputFile, SafeName, Stored};

#[derive(Serialize)]
struct Files {
    /// Name → MD5 of every input file already there. Always an object: Autolab calls
    /// `has_key?` on it.
    files: BTreeMap<String, String>,
}

/// `GET /open/KEY/CL/`: makes the courselab (and its output directory) if missing, and lists
/// the MD5 of the files it holds, so Autolab uploads only what changed.
pub async fn open(
    State(api): State<Arc<ApiState>>,
    Params((key, courselab)): Params<(String, String)>,
) -> Result<Response, ApiError> {
    let digest = api.keys.check(&key)?;
    let lab = api.labs.courselab_of(&digest, &courselab)?;
    let opened = api.labs.open(&lab).await?;
    let msg = if opened.created {
        tracing::info!(courselab = %lab.name, "created courselab directory");
        status::MADE_DIR
    } else {
        status::FOUND_DIR
    };
    Ok(status::ok(
        msg,
        Files {
            files: opened.files,
        },
    ))
}

/// `POST /upload/KEY/CL/` with header `Filename`: stores the body (any Content-Type: Autolab
/// labels raw bytes form-urlencoded) as that input file.
pub async fn upload(
    State(api): State<Arc<ApiState>>,
    Params((key, courselab)): Params<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Everything that can be refused without the body is checked first; the body is then
    // drained so a client that writes it all before reading still gets our answer.
    let checked = async {
        let digest = api.keys.check(&key)?;
        let lab = api.labs.courselab_of(&digest, &courselab)?;
        let Some(filename) = header_text(&headers, "filename")? else {
            return Err(ApiError::Request(
                "Missing Filename header: it names the file being uploaded".into(),
            ));
        };
        let name = SafeName::new("Filename", &filename)?;
        if !api.labs.exists(&lab).await {
            return Err(LabsError::CourselabNotFound.into());
        }
        Ok((lab, name))
    };
    let (lab, name) = match checked.await {
        Ok(ok) => ok,
        Err(e) => return Err(refuse(body, e)),
    };
    let limit = api.labs.max_input_file_size();
    if content_length(&headers).is_some_and(|length| length > limit) {
        // Not drained: it could be anything up to the declared size. Clients that send
        // `Expect: 100-continue` (curl does for large bodies) read this without sending it.
        return Err(LabsError::TooLarge { limit }.into());
    }
    let received = api.labs.receive(body.into_data_stream()).await?;
    let size = received.size;
    let stored = api.labs.store(&lab, &name, received).await?;
    tracing::info!(courselab = %lab.name, file = %name, size, outcome = ?stored, "upload");
    Ok(status::ok(
        match stored {
            Stored::Uploaded => status::FILE_UPLOADED,
            Stored::Exists => status::FILE_EXISTS,
        },
        Nothing {},
    ))
}

/// `GET /poll/KEY/CL/OUTFILE/`: the output file's bytes, as they are (never re-encoded), or
/// "Output file not found".
pub async fn poll(
    State(api): State<Arc<ApiState>>,
    Params((key, courselab, output_file)): Params<(String, String, String)>,
) -> Result<Response, ApiError> {
    let digest = api.keys.check(&key)?;
    let lab = api.labs.courselab_of(&digest, &courselab)?;
    // Tango decoded the file name a second time (tango-cli quotes it before the URL is
    // encoded); the result is checked like any other name.
    let decoded = percent_decode_str(&output_file).decode_utf8_lossy();
    let name = SafeName::new("output file", &decoded)?;
    let Some(output) = api.labs.open_output(&lab, &name).await? else {
        let answer = if api.app.config.server.poll_not_ready_ok {
            status::ok(status::OUTPUT_NOT_FOUND, Nothing {})
        } else {
            status::failed(status::OUTPUT_NOT_FOUND, Nothing {})
        };
        return Ok(answer);
    };
    let body = match output {
        // Read whole: sent with its length.
        OutputFile::Whole(data) => Body::from(data),
        // Streamed (chunked): a file being replaced meanwhile cannot make us promise a
        // length we do not deliver.
        OutputFile::Stream(file) => Body::from_stream(ReaderStream::new(file)),
    };
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}
