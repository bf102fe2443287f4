//! Notifying Autolab that a job has ended: one POST of the output file to the job's
//! `callback_url` (docs/rest-api.md, `POST /addJob`).
//!
//! The request is what Autolab's `autograde_done` action parses: `multipart/form-data` with
//! one part named `file` that carries a `filename` (Rails exposes a part as an uploaded file
//! only when it has one; Python sent literally `filename="file"`, and so do we), no part
//! content type, the output decoded as UTF-8 with invalid bytes *dropped* (Python's
//! `errors="ignore"`), and a `Filename: <basename of the output file>` header.
//!
//! Where Tango could hang or lose a grade, we bound and retry:
//! - every attempt has a timeout (`callback.timeout_secs`; Python set none, so a silent
//!   server held a worker thread forever);
//! - connection errors, timeouts and the gateway answers 502/503/504 (the request never
//!   reached Autolab) are retried with exponential back-off and jitter
//!   (`callback.backoff_secs`, doubling up to `callback.max_backoff_secs`), at most
//!   `callback.attempts` attempts in all;
//! - any other HTTP answer ends delivery, as in Tango: Autolab answers 204 even when it
//!   fails inside, so a retry could not help;
//! - TLS certificates are checked only when `callback.verify_tls` is set (Tango: never).
//!
//! Delivery runs in its own task ([`Callbacks::spawn`]), so a slow or dead callback server
//! never delays other jobs; the outcome is recorded on the dead job as a [`CallbackState`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::header::HeaderValue;
use reqwest::multipart::{Form, Part};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::CallbackConfig;
use crate::metrics::Metrics;
use crate::model::{CallbackState, Job, unix_now};
use crate::store::{JobStore, persist};

/// The callbacks one manager is delivering: each in a task of its own, the outcome recorded
/// on the dead job, the count in flight known (shutdown reads it).
pub struct Callbacks {
    notifier: Notifier,
    store: Arc<dyn JobStore>,
    metrics: Arc<Metrics>,
    tasks: TaskTracker,
    /// Cancelled when the manager stops hard: deliveries end at their next await.
    kill: CancellationToken,
    in_flight: AtomicUsize,
}

impl Callbacks {
    pub fn new(
        notifier: Notifier,
        store: Arc<dyn JobStore>,
        metrics: Arc<Metrics>,
        kill: CancellationToken,
    ) -> Arc<Callbacks> {
        Arc::new(Callbacks {
            notifier,
            store,
            metrics,
            tasks: TaskTracker::new(),
            kill,
            in_flight: AtomicUsize::new(0),
        })
    }

    /// Callbacks being delivered now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Delivers a finished job's callback in its own task, then records the outcome on the
    /// dead job. `content` is the output file's content.
    pub fn spawn(self: &Arc<Self>, mut job: Job, content: Vec<u8>) {
        let Some(url) = job.notify_url.clone().filter(|u| !u.is_empty()) else {
            return;
        };
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let in_flight = InFlight(self.clone());
        let this = self.clone();
        let span = crate::logging::job_span(&job);
        let task = async move {
            let _in_flight = in_flight;
            let name = std::path::Path::new(&job.output_file)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            tokio::select! {
                _ = this.kill.cancelled() => {}
                _ = async {
                    let state = this.notifier.deliver(&url, &name, &content).await;
                    let delivered = state.delivered;
                    job.callback = Some(state);
                    job.timings.called_back = Some(unix_now());
                    this.metrics.callback_done(&job, delivered);
                    let store = this.store.clone();
                    persist(&this.kill, "record callback", || {
                        let store = store.clone();
                        let job = job.clone();
                        async move {
                            if !store.update_dead(&job).await? {
                                tracing::debug!(job = job.id, "dead job already dropped");
                            }
                            Ok(())
                        }
                    })
                    .await;
                } => {}
            }
        };
        self.tasks.spawn(task.instrument(span));
    }

    /// No more deliveries will be started.
    pub fn close(&self) {
        self.tasks.close();
    }

    /// Until every delivery started has ended.
    pub async fn wait(&self) {
        self.tasks.wait().await;
    }
}

/// Counts a delivery while it lives.
struct InFlight(Arc<Callbacks>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why the callback client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the callback HTTP client: {0}")]
pub struct NotifierError(String);

/// Sends callbacks. One per manager; cheap to share (`reqwest::Client` pools connections).
pub struct Notifier {
    client: reqwest::Client,
    config: CallbackConfig,
}

impl Notifier {
    pub fn new(config: &CallbackConfig) -> Result<Notifier, NotifierError> {
        let timeout = Duration::from_secs(config.timeout_secs.max(1));
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .tls_danger_accept_invalid_certs(!config.verify_tls)
            .user_agent(concat!("tango-rs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NotifierError(e.to_string()))?;
        Ok(Notifier {
            client,
            config: config.clone(),
        })
    }

    /// Posts `output` to `url`, retrying as the module doc says, and reports what happened.
    /// `output_name` is the output file's base name, sent in the `Filename` header. The
    /// returned state has no `sender`: delivery is over, one way or the other.
    pub async fn deliver(&self, url: &str, output_name: &str, output: &[u8]) -> CallbackState {
        // Decoding once: every attempt sends the same text.
        let text = drop_invalid_utf8(output);
        let attempts = self.config.attempts.max(1);
        let mut state = CallbackState::default();
        for attempt in 1..=attempts {
            state.attempts = attempt;
            match self.post_once(url, output_name, &text).await {
                Attempt::Answered(status) => {
                    tracing::info!(url, status, attempt, "callback delivered");
                    state.delivered = true;
                    state.status = Some(status);
                    state.error = None;
                    return state;
                }
                Attempt::Retry(error) => {
                    tracing::warn!(url, attempt, attempts, %error, "callback attempt failed");
                    state.error = Some(error);
                }
                Attempt::Fatal(error) => {
                    tracing::error!(url, %error, "callback cannot be sent");
                    state.error = Some(error);
                    return state;
                }
            }
            if attempt < attempts {
                tokio::time::sleep(backoff_delay(&self.config, attempt)).await;
            }
        }
        tracing::error!(url, attempts, error = ?state.error, "callback given up");
        state
    }

    async fn post_once(&self, url: &str, output_name: &str, text: &str) -> Attempt {
        let form = Form::new().part("file", Part::text(text.to_owned()).file_name("file"));
        // from_bytes, not from_str: an output name may hold non-ASCII (an e-mail address
        // with an accent), which HTTP allows as opaque bytes.
        let filename = HeaderValue::from_bytes(header_safe(output_name).as_bytes())
            .unwrap_or_else(|_| HeaderValue::from_static("output"));
        let request = self
            .client
            .post(url)
            .header("Filename", filename)
            .multipart(form);
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                if matches!(status, 502..=504) {
                    Attempt::Retry(format!("HTTP {status} from a gateway"))
                } else {
                    Attempt::Answered(status)
                }
            }
            // A URL reqwest cannot even build a request for will not get better.
            Err(e) if e.is_builder() => Attempt::Fatal(describe(&e)),
            Err(e) => Attempt::Retry(describe(&e)),
        }
    }
}

enum Attempt {
    /// The server answered; delivery is over.
    Answered(u16),
    /// Worth trying again; the error for the record.
    Retry(String),
    /// Not worth trying again (a malformed URL).
    Fatal(String),
}

/// The pause after failed attempt number `attempt` (1-based): `backoff_secs` doubling each
/// time up to `max_backoff_secs`, then "equal jitter" (between half and all of it), so that
/// callbacks failing together do not retry in lock step.
pub fn backoff_delay(config: &CallbackConfig, attempt: u32) -> Duration {
    let doubling = 2f64.powi(attempt.saturating_sub(1).min(62) as i32);
    let base = (config.backoff_secs * doubling).min(config.max_backoff_secs);
    let jittered = base * (0.5 + rand::random::<f64>() * 0.5);
    Duration::from_secs_f64(jittered.max(0.0))
}

/// The output as text with invalid UTF-8 dropped, as Python's `str(bytes, errors="ignore")`
/// does (not replaced by U+FFFD, which `String::from_utf8_lossy` would do).
pub fn drop_invalid_utf8(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                out.push_str(valid);
                return out;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                // Safe by construction: from_utf8 vouched for this prefix.
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    Some(bad) => rest = &after[bad..],
                    // A truncated sequence at the very end: drop it.
                    None => return out,
                }
            }
        }
    }
}

/// A header value cannot hold control characters; output names are checked by the API,
/// but a callback must never fail on a name, so anything odd becomes `_`.
fn header_safe(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect()
}

/// reqwest's error with its causes, on one line ("error sending request: connection refused").
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_is_dropped_not_replaced() {
        assert_eq!(drop_invalid_utf8(b"hello \xff world"), "hello  world");
        assert_eq!(drop_invalid_utf8("caf\u{e9}".as_bytes()), "caf\u{e9}");
        // A truncated three-byte sequence in the middle and at the end.
        assert_eq!(drop_invalid_utf8(b"a\xe2\x82b\xe2\x82"), "ab");
        assert_eq!(drop_invalid_utf8(b""), "");
        assert_eq!(
            drop_invalid_utf8(b"\x80\x80{\"scores\": {}}"),
            "{\"scores\": {}}"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter() {
        let config = CallbackConfig {
            backoff_secs: 1.0,
            max_backoff_secs: 5.0,
            ..CallbackConfig::default()
        };
        for (attempt, full) in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (40, 5.0)] {
            for _ in 0..20 {
                let d = backoff_delay(&config, attempt).as_secs_f64();
                assert!(d >= full / 2.0 && d <= full, "attempt {attempt}: {d}");
            }
        }
    }

    #[test]
    fn header_names_lose_control_characters() {
        assert_eq!(header_safe("a\nb.txt"), "a_b.txt");
        assert_eq!(header_safe("bob@cmu.edu_3_x.txt"), "bob@cmu.edu_3_x.txt");
    }
}
