//! The `tango` command's client side: everything `tango-cli.py` did, as subcommands of the
//! same binary, one noun per file.
//!
//! Every subcommand takes the server from `--url` (or `TANGO_URL`, default
//! `http://localhost:3000`), optionally overridden piecewise by `--server`/`--port`, and the
//! key from `--key` (or `TANGO_KEY`). Output is for people by default; `--json` prints the
//! server's JSON answer (one document on stdout) for scripts. When the server answers
//! `statusId -1`, its `statusMsg` goes to stderr and the command exits 1; a connection or
//! usage problem exits 2.

#[macro_use]
mod output;

mod build;
mod callbacks;
mod cancel;
mod courselab;
mod info;
mod jobs;
mod pool;
mod run;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

/// The client's subcommands (flattened into `tango`'s).
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Open (create if missing) a courselab directory; lists the files it holds.
    Open(courselab::OpenArgs),
    /// Upload files into a courselab.
    Upload(courselab::UploadArgs),
    /// Add a grading job whose files were uploaded.
    AddJob(jobs::AddJobArgs),
    /// Fetch a job's output file (exit 1 while it is not there).
    Poll(courselab::PollArgs),
    /// Server uptime and counters.
    Info(info::InfoArgs),
    /// List live (or, with --dead, finished) jobs.
    Jobs(jobs::JobsArgs),
    /// Machine pools: all, or one image's.
    Pool(pool::PoolArgs),
    /// Keep NUM machines of IMAGE ready.
    Prealloc(pool::PreallocArgs),
    /// Load a Docker image tarball (`docker save` output) as IMAGE.
    Build(build::BuildArgs),
    /// The output so far of a running job.
    PartialOutput(jobs::PartialOutputArgs),
    /// Open, upload every file of DIR, add the job, wait and print its output.
    Run(run::RunArgs),
    /// Cancel a job, queued or running (an extension of Tango's API).
    Cancel(cancel::CancelArgs),
    /// Callbacks that used up their attempts, kept by the server; --replay sends them
    /// again (an extension of Tango's API).
    Callbacks(callbacks::CallbacksArgs),
}

/// Runs a client subcommand; the exit code says how it went.
pub async fn main(command: ClientCommand) -> ExitCode {
    let result = match command {
        ClientCommand::Open(a) => courselab::open(a).await,
        ClientCommand::Upload(a) => courselab::upload(a).await,
        ClientCommand::AddJob(a) => jobs::add_job(a).await,
        ClientCommand::Poll(a) => courselab::poll(a).await,
        ClientCommand::Info(a) => info::info(a).await,
        ClientCommand::Jobs(a) => jobs::jobs(a).await,
        ClientCommand::Pool(a) => pool::pool(a).await,
        ClientCommand::Prealloc(a) => pool::prealloc(a).await,
        ClientCommand::Build(a) => build::build(a).await,
        ClientCommand::PartialOutput(a) => jobs::partial_output(a).await,
        ClientCommand::Run(a) => run::run(a).await,
        ClientCommand::Cancel(a) => cancel::cancel(a).await,
        ClientCommand::Callbacks(a) => callbacks::callbacks(a).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(ClientError::Server {
            message,
            body,
            json,
        }) => {
            if json {
                output::last_line(format_args!("{}", pretty(&body)));
            }
            errln!("tango: server: {message}");
            ExitCode::from(1)
        }
        Err(ClientError::Failed(message)) => {
            errln!("tango: {message}");
            ExitCode::from(1)
        }
        Err(e) => {
            errln!("tango: {e}");
            ExitCode::from(2)
        }
    }
}

/// What can go wrong in a client command.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered `statusId -1` (or a job ended badly, for `run`).
    #[error("{message}")]
    Server {
        message: String,
        /// The whole answer, printed on stdout under `--json`.
        body: Value,
        json: bool,
    },
    /// Jobs ran but did not all succeed (`run`).
    #[error("{0}")]
    Failed(String),
    /// Talking to the server failed; the text names the server (never the key) and the
    /// cause at the bottom of the error's chain ("Connection refused").
    #[error("{0}")]
    Http(String),
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {error}")]
    File { path: String, error: std::io::Error },
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// Where the server is, how to talk to it, how to print.
#[derive(Args, Clone, Debug)]
pub struct Conn {
    /// The server's base URL.
    #[arg(long, env = "TANGO_URL", default_value = "http://localhost:3000")]
    pub url: String,
    /// Server host name (replaces the URL's host).
    #[arg(long, short = 's')]
    pub server: Option<String>,
    /// Server port (replaces the URL's port; `-P` as in tango-cli.py, `-p` as `serve`).
    #[arg(long, short = 'P', visible_short_alias = 'p')]
    pub port: Option<u16>,
    /// The API key (better from the environment than on a command line others can see).
    #[arg(
        long,
        short = 'k',
        env = "TANGO_KEY",
        default_value = "test",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub key: String,
    /// Print the server's JSON (one document on stdout) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for one HTTP answer.
    #[arg(long, default_value_t = 600)]
    pub http_timeout: u64,
}

/// What a path segment may hold unencoded (as `urllib.parse.quote` with `safe=""`).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A connection to one Tango server with one key.
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// `base` as errors print it.
    shown: String,
    key: String,
    pub json: bool,
}

impl Client {
    pub fn new(conn: &Conn) -> Result<Client> {
        let mut url = parse_url(&conn.url)?;
        if let Some(host) = &conn.server {
            url.set_host(Some(host))
                .map_err(|e| ClientError::Usage(format!("--server {host:?}: {e}")))?;
        }
        if let Some(port) = conn.port {
            url.set_port(Some(port))
                .map_err(|()| ClientError::Usage(format!("--port {port}: not for this URL")))?;
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(conn.http_timeout.max(1)))
            .build()
            .map_err(|e| ClientError::Http(format!("cannot make an HTTP client: {e}")))?;
        let base = url.as_str().trim_end_matches('/').to_string();
        // What errors show: the server without a password a URL might carry.
        let _ = url.set_password(None);
        Ok(Client {
            http,
            shown: url.as_str().trim_end_matches('/').to_string(),
            base,
            key: conn.key.clone(),
            json: conn.json,
        })
    }

    /// `BASE/VERB/KEY/SEG.../`, each segment percent-encoded.
    pub fn url(&self, verb: &str, segments: &[&str]) -> String {
        let mut url = format!("{}/{verb}/{}/", self.base, encode(&self.key));
        for s in segments {
            url.push_str(&encode(s));
            url.push('/');
        }
        url
    }

    /// GET a JSON route; `Err(Server)` when it answers `statusId -1`.
    pub async fn get(&self, url: &str) -> Result<Value> {
        let response = self.http.get(url).send().await;
        self.answer(self.reached(response)?).await
    }

    /// POST a body (with headers); `Err(Server)` when it answers `statusId -1`.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> Result<Value> {
        let mut request = self.http.post(url).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await;
        self.answer(self.reached(response)?).await
    }

    /// GET that may answer raw bytes (poll): `Ok(Ok(bytes))` or `Ok(Err(json))`.
    pub async fn get_raw(&self, url: &str) -> Result<std::result::Result<Vec<u8>, Value>> {
        let response = self.reached(self.http.get(url).send().await)?;
        if is_json(&response) {
            let status = response.status();
            let text = response.text().await.map_err(|e| self.failed(&e))?;
            let value: Value = serde_json::from_str(&text)
                .map_err(|e| ClientError::Protocol(format!("HTTP {status}: not JSON ({e})")))?;
            return Ok(Err(value));
        }
        let status = response.status();
        if !status.is_success() {
            return Err(ClientError::Protocol(format!("HTTP {status}")));
        }
        let bytes = response.bytes().await.map_err(|e| self.failed(&e))?;
        Ok(Ok(bytes.to_vec()))
    }

    /// The response, or what went wrong reaching the server.
    pub fn reached(
        &self,
        response: reqwest::Result<reqwest::Response>,
    ) -> Result<reqwest::Response> {
        response.map_err(|e| self.failed(&e))
    }

    /// An HTTP error as one line: the server (never the request's URL, which holds the key)
    /// and the innermost cause, which is the one that says what to fix.
    pub fn failed(&self, error: &reqwest::Error) -> ClientError {
        let what = if error.is_timeout() {
            "no answer in time from"
        } else if error.is_connect() {
            "cannot connect to"
        } else if error.is_body() || error.is_decode() {
            "cannot read the answer of"
        } else {
            "cannot talk to"
        };
        ClientError::Http(format!("{what} {}: {}", self.shown, root_cause(error)))
    }

    async fn answer(&self, response: reqwest::Response) -> Result<Value> {
        let status = response.status();
        let text = response.text().await.map_err(|e| self.failed(&e))?;
        let value: Value = serde_json::from_str(&text).map_err(|_| {
            ClientError::Protocol(format!(
                "HTTP {status}: not a Tango answer: {}",
                text.chars().take(200).collect::<String>()
            ))
        })?;
        self.check(value)
    }

    /// `Err(Server)` for `statusId -1` (or any negative one).
    pub fn check(&self, value: Value) -> Result<Value> {
        if value["statusId"].as_i64().is_some_and(|s| s < 0) {
            return Err(ClientError::Server {
                message: status_message(&value),
                body: value,
                json: self.json,
            });
        }
        Ok(value)
    }

    /// Prints `value` for `--json`, else runs `human`.
    pub fn print(&self, value: &Value, human: impl FnOnce(&Value)) {
        if self.json {
            outln!("{}", pretty(value));
        } else {
            human(value);
        }
    }
}

/// Parses `--url`; one without a scheme (`127.0.0.1:3000`) gets a hint, not the URL
/// parser's "relative URL without a base".
fn parse_url(text: &str) -> Result<reqwest::Url> {
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(url),
        Ok(url) if url.has_host() => Err(ClientError::Usage(format!(
            "--url {text:?}: scheme {:?} is not http or https",
            url.scheme()
        ))),
        _ if !text.contains("://") => Err(ClientError::Usage(format!(
            "--url {text:?}: not a URL; did you mean http://{text} ?"
        ))),
        Err(e) => Err(ClientError::Usage(format!("--url {text:?}: {e}"))),
        Ok(_) => Err(ClientError::Usage(format!("--url {text:?}: no host"))),
    }
}

/// The innermost error of a chain ("Connection refused (os error 111)"), without any URL.
fn root_cause(error: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    if std::ptr::addr_eq(cause, error) {
        // No inner cause: reqwest's own text, with the URL taken out.
        let mut text = error.to_string();
        if let Some(url) = error.url() {
            text = text
                .replace(&format!(" for url ({url})"), "")
                .replace(url.as_str(), "");
        }
        return text;
    }
    cause.to_string()
}

fn is_json(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// `statusMsg` as text: a string as is, a list (addJob's validation trace) one per line.
pub fn status_message(value: &Value) -> String {
    match &value["statusMsg"] {
        Value::String(s) => s.clone(),
        Value::Array(lines) if lines.is_empty() => "rejected (no reason given)".into(),
        Value::Array(lines) => lines
            .iter()
            .map(|l| l.as_str().map_or_else(|| l.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => "(no statusMsg)".into(),
        other => other.to_string(),
    }
}

pub fn encode(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// Reads a file for upload, naming it in the error.
pub fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|error| ClientError::File {
        path: path.display().to_string(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded_like_tango_cli() {
        assert_eq!(encode("user@x.edu_1.txt"), "user%40x.edu_1.txt");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn list_status_messages_become_lines() {
        let v = serde_json::json!({"statusId": -1, "statusMsg": ["a|x", "b|y"]});
        assert_eq!(status_message(&v), "a|x\nb|y");
    }
}
