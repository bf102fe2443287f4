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
//!
//! No lost grades. A callback that used up its attempts is kept in the store as a
//! [`FailedCallback`] (job, URL, output file; the output stays in its courselab), not only
//! logged: Tango dropped it, and the student's grade never reached Autolab. A kept callback
//! is sent again ([`Replayer`]), one attempt at a time, by whoever claims it first in the
//! store (so two managers on one Redis never both send it; a claimant that dies leaves it
//! to be claimed again when its lease runs out):
//! - on its own, when a callback to the same scheme, host and port gets through: that
//!   host is back, and its kept callbacks follow, oldest first, one at a time;
//! - every `callback.retry_failed_secs`, the oldest of each host is tried, and the rest
//!   follow if it gets through (a host that came back while no job ran);
//! - on request: `tango callbacks --replay ID|--all` (`POST /callbacks/KEY/replay/...`).
//!
//! A replay reads the output file again and sends the same request the first attempt
//! sent. Delivered, the record is forgotten; failed, it waits with its attempts counted
//! and its last error. At most `callback.max_failed_kept` are kept (oldest dropped, with a
//! warning and `tango_failed_callbacks_dropped_total`), so a long outage cannot fill Redis.
//! Exactly once holds but for one gap no sender can close: a sender that dies after the
//! server took the request and before the store heard of it leaves the record to be sent
//! again.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::HeaderValue;
use reqwest::multipart::{Form, Part};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{CallbackConfig, ServerConfig};
use crate::metrics::Metrics;
use crate::model::{CallbackState, FailedCallback, Job, JobId, unix_now};
use crate::store::{JobStore, StoreError, lab_of, persist};

/// The callbacks one manager is delivering: each in a task of its own, the outcome recorded
/// on the dead job, the count in flight known (shutdown reads it).
pub struct Callbacks {
    /// Sends the failed callbacks again; holds the notifier the first deliveries use too.
    replayer: Arc<Replayer>,
    store: Arc<dyn JobStore>,
    metrics: Arc<Metrics>,
    tasks: TaskTracker,
    /// Cancelled when the manager stops hard: deliveries end at their next await.
    kill: CancellationToken,
    in_flight: AtomicUsize,
    /// Hosts (origins) whose kept callbacks this process is sending now: one pass per host
    /// at a time, however many callbacks to it succeed meanwhile.
    replaying: Mutex<HashSet<String>>,
}

impl Callbacks {
    /// `replayer` also delivers first callbacks (its notifier) and names this process in
    /// claims. With `callback.retry_failed_secs` set, a task tries each host's oldest kept
    /// callback that often, until the manager stops.
    pub fn new(
        replayer: Arc<Replayer>,
        metrics: Arc<Metrics>,
        kill: CancellationToken,
    ) -> Arc<Callbacks> {
        let callbacks = Arc::new(Callbacks {
            store: replayer.store.clone(),
            replayer,
            metrics,
            tasks: TaskTracker::new(),
            kill,
            in_flight: AtomicUsize::new(0),
            replaying: Mutex::new(HashSet::new()),
        });
        let every = callbacks.replayer.notifier.config.retry_failed_secs;
        if every > 0 {
            tokio::spawn(
                callbacks
                    .clone()
                    .retry_failed_loop(Duration::from_secs(every)),
            );
        }
        callbacks
    }

    /// Every `every`, starts a pass over each host with kept callbacks waiting (a pass
    /// stops at its first failure, so a host still down costs one attempt).
    async fn retry_failed_loop(self: Arc<Self>, every: Duration) {
        loop {
            tokio::select! {
                _ = self.kill.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if self.tasks.is_closed() {
                return;
            }
            let waiting = match self.store.failed_callbacks().await {
                Ok(records) => records,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list failed callbacks to retry them");
                    continue;
                }
            };
            let origins: HashSet<String> = waiting
                .iter()
                .filter(|r| r.replaying.is_none())
                .filter_map(|r| url_origin(&r.url))
                .collect();
            for origin in origins {
                self.replay_origin(origin);
            }
        }
    }

    /// Sends `origin`'s kept callbacks in a task, unless this process is at it already.
    fn replay_origin(self: &Arc<Self>, origin: String) {
        if self.tasks.is_closed() {
            return;
        }
        {
            let mut replaying = self
                .replaying
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !replaying.insert(origin.clone()) {
                return;
            }
        }
        let this = self.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = this.kill.cancelled() => {}
                result = this.replayer.replay_host(&origin, || !this.tasks.is_closed()) => {
                    if let Err(e) = result {
                        tracing::warn!(%origin, error = %e, "failed callbacks not sent: the store cannot be read");
                    }
                }
            }
            this.replaying
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(&origin);
        });
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
                    let (state, exhausted) =
                        this.replayer.notifier.deliver_or_give_up(&url, &name, &content).await;
                    let delivered = state.delivered;
                    if delivered {
                        // Kept already if an earlier sender gave up on it and died before
                        // recording that on the job (which is why this one resent it).
                        this.replayer.forget(job.id).await;
                        if let Some(origin) = url_origin(&url) {
                            this.replay_origin(origin);
                        }
                    }
                    if exhausted {
                        this.replayer.keep(&job, &url, &state).await;
                    }
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

/// What one replay of a failed callback came to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Replay {
    /// The server answered (with this status); the record is forgotten.
    Delivered { status: u16 },
    /// It failed again, and waits with this error.
    Failed { error: String },
    /// Another process is sending it now.
    Busy,
    /// Not tried: one to the same host failed just before.
    Skipped,
    /// No failed callback is kept for this job.
    NotKept,
}

/// Hosts [`Replayer::replay_all`] sends to at once. Each host gets its replays one at a
/// time: one that has been down a while is not met with a burst of every grade it missed.
const HOSTS_AT_ONCE: usize = 4;

/// Sends kept failed callbacks again: each claimed in the store first, one attempt each.
/// One per process that replays (a manager, and the API for `POST /callbacks/...`).
pub struct Replayer {
    notifier: Notifier,
    store: Arc<dyn JobStore>,
    metrics: Arc<Metrics>,
    /// Where output files may be: a path read back from the store is checked first.
    server: ServerConfig,
    /// This process, in claims.
    owner: String,
}

impl Replayer {
    pub fn new(
        notifier: Notifier,
        store: Arc<dyn JobStore>,
        metrics: Arc<Metrics>,
        server: ServerConfig,
        owner: String,
    ) -> Arc<Replayer> {
        Arc::new(Replayer {
            notifier,
            store,
            metrics,
            server,
            owner,
        })
    }

    /// How long a claim holds: one attempt (connecting and answering, each bounded by
    /// `timeout_secs`) and the store writes around it, with room to spare. A claimant
    /// still sending when it runs out could send twice, so it errs long.
    fn lease(&self) -> Duration {
        Duration::from_secs(self.notifier.config.timeout_secs.max(1) * 2 + 30)
    }

    /// Keeps `job`'s callback, which used up its attempts, for a replay; logs and counts
    /// the oldest dropped to make room.
    async fn keep(&self, job: &Job, url: &str, state: &CallbackState) {
        let now = unix_now();
        let lab = lab_of(&job.output_file);
        let record = FailedCallback {
            job_id: job.id,
            job_name: job.name.clone(),
            // `<tenant>-<courselab>`: the courselab as Autolab named it.
            courselab: lab
                .split_once('-')
                .map_or(lab, |(_, name)| name)
                .to_string(),
            url: url.to_string(),
            output_file: job.output_file.clone(),
            first_failed: now,
            last_failed: now,
            attempts: state.attempts,
            last_error: state.error.clone().unwrap_or_default(),
            replaying: None,
        };
        let max_kept = self.notifier.config.max_failed_kept;
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        // Until the store takes it (a Redis outage ends): the grade is at stake.
        persist(&CancellationToken::new(), "keep failed callback", || {
            let store = store.clone();
            let record = record.clone();
            let metrics = metrics.clone();
            async move {
                let dropped = store.keep_failed_callback(&record, max_kept).await?;
                if !dropped.is_empty() {
                    metrics.failed_callbacks_dropped(dropped.len() as u64);
                    tracing::warn!(
                        jobs = ?dropped,
                        max_failed_kept = max_kept,
                        "failed callbacks dropped, oldest first, to keep callback.max_failed_kept: their grades must be sent by hand"
                    );
                }
                Ok(())
            }
        })
        .await;
    }

    /// Forgets job `id`'s kept callback, if there is one no one is sending: its callback
    /// has just been delivered another way.
    async fn forget(&self, id: JobId) {
        let claimed = self
            .store
            .claim_failed_callback(id, &self.owner, self.lease())
            .await;
        match claimed {
            Ok(None) => {}
            Ok(Some(_)) => {
                if let Err(e) = self.settle(id, None).await {
                    tracing::warn!(job = id, error = %e, "a delivered callback stays kept");
                }
            }
            Err(e) => tracing::debug!(job = id, error = %e, "kept callback not looked up"),
        }
    }

    /// Sends job `id`'s kept callback again, once, if no one else is at it.
    pub async fn replay(&self, id: JobId) -> Result<Replay, StoreError> {
        let claimed = self
            .store
            .claim_failed_callback(id, &self.owner, self.lease())
            .await?;
        let Some(mut record) = claimed else {
            let kept = self
                .store
                .failed_callbacks()
                .await?
                .iter()
                .any(|r| r.job_id == id);
            return Ok(if kept { Replay::Busy } else { Replay::NotKept });
        };
        let sent = self.send(&record).await;
        record.attempts = record.attempts.saturating_add(1);
        record.replaying = None;
        let (settled, replay) = match sent {
            Ok(status) => {
                tracing::info!(
                    job = id,
                    url = record.url,
                    status,
                    "failed callback delivered"
                );
                (None, Replay::Delivered { status })
            }
            Err(error) => {
                tracing::warn!(job = id, url = record.url, %error, "failed callback failed again");
                record.last_error = error.clone();
                record.last_failed = unix_now();
                (Some(&record), Replay::Failed { error })
            }
        };
        let delivered = settled.is_none();
        self.metrics.failed_callback_replayed(delivered);
        if !self.settle(id, settled).await? {
            tracing::warn!(
                job = id,
                "failed callback: the claim ran out before it was settled; another sender may send it too"
            );
        }
        if let Replay::Delivered { status } = &replay {
            self.mark_delivered(id, *status, record.attempts).await;
        }
        Ok(replay)
    }

    /// Ends the claim, through a short store outage: a delivered record left claimed
    /// would be sent again when the claim runs out.
    async fn settle(
        &self,
        id: JobId,
        still_failing: Option<&FailedCallback>,
    ) -> Result<bool, StoreError> {
        let mut delay = Duration::from_millis(100);
        let mut tries = 0;
        loop {
            match self
                .store
                .settle_failed_callback(id, &self.owner, still_failing)
                .await
            {
                Err(StoreError::Unavailable(_)) if tries < 8 => {
                    tries += 1;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    /// The dead job, if still kept, says its callback got through at last.
    async fn mark_delivered(&self, id: JobId, status: u16, attempts: u32) {
        let Ok(Some(mut job)) = self.store.dead_job(id).await else {
            return;
        };
        job.callback = Some(CallbackState {
            delivered: true,
            attempts,
            status: Some(status),
            error: None,
            sender: None,
        });
        if let Err(e) = self.store.update_dead(&job).await {
            tracing::debug!(job = id, error = %e, "dead job not marked delivered");
        }
    }

    /// One attempt with the request the first delivery sent: the output file read again.
    async fn send(&self, record: &FailedCallback) -> Result<u16, String> {
        let stored = Job {
            output_file: record.output_file.clone(),
            ..Job::default()
        };
        crate::labs::check_stored_paths(&self.server, &stored)?;
        let output = tokio::fs::read(&record.output_file)
            .await
            .map_err(|e| format!("cannot read the output file: {e}"))?;
        let name = std::path::Path::new(&record.output_file)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = drop_invalid_utf8(&output);
        match self.notifier.post_once(&record.url, &name, &text).await {
            Attempt::Answered(status) => Ok(status),
            Attempt::Retry(error) | Attempt::Fatal(error) => Err(error),
        }
    }

    /// Sends `origin`'s waiting callbacks again, oldest first, one at a time, stopping at
    /// the first that fails (the host is still down) or when `keep_going` says so.
    pub async fn replay_host(
        &self,
        origin: &str,
        keep_going: impl Fn() -> bool,
    ) -> Result<Vec<(JobId, Replay)>, StoreError> {
        let ids: Vec<JobId> = self
            .store
            .failed_callbacks()
            .await?
            .into_iter()
            .filter(|r| r.replaying.is_none() && url_origin(&r.url).as_deref() == Some(origin))
            .map(|r| r.job_id)
            .collect();
        self.replay_in_turn(ids, keep_going).await
    }

    /// `ids` one after another, the rest [`Replay::Skipped`] after one fails.
    async fn replay_in_turn(
        &self,
        ids: Vec<JobId>,
        keep_going: impl Fn() -> bool,
    ) -> Result<Vec<(JobId, Replay)>, StoreError> {
        let mut done = Vec::with_capacity(ids.len());
        let mut failed = false;
        for id in ids {
            if failed || !keep_going() {
                done.push((id, Replay::Skipped));
                continue;
            }
            let replay = self.replay(id).await?;
            failed = matches!(replay, Replay::Failed { .. });
            done.push((id, replay));
        }
        Ok(done)
    }

    /// Sends every waiting callback again (those another process is sending are
    /// [`Replay::Busy`]): each host's in turn as [`Replayer::replay_host`] does, a few hosts
    /// at once. In the order listed.
    pub async fn replay_all(&self) -> Result<Vec<(JobId, Replay)>, StoreError> {
        use futures::StreamExt;
        let records = self.store.failed_callbacks().await?;
        let mut by_host: BTreeMap<String, Vec<JobId>> = BTreeMap::new();
        let mut results: BTreeMap<JobId, Replay> = BTreeMap::new();
        for record in &records {
            if record.replaying.is_some() {
                results.insert(record.job_id, Replay::Busy);
                continue;
            }
            // A URL without a host is its own group: it fails alone.
            let host = url_origin(&record.url).unwrap_or_else(|| format!("#{}", record.job_id));
            by_host.entry(host).or_default().push(record.job_id);
        }
        let groups: Vec<Result<Vec<(JobId, Replay)>, StoreError>> =
            futures::stream::iter(by_host.into_values())
                .map(|ids| self.replay_in_turn(ids, || true))
                .buffer_unordered(HOSTS_AT_ONCE)
                .collect()
                .await;
        for group in groups {
            results.extend(group?);
        }
        Ok(records
            .iter()
            .filter_map(|r| results.remove(&r.job_id).map(|replay| (r.job_id, replay)))
            .collect())
    }
}

/// `scheme://host:port` of `url` (its default port made explicit), or `None` when it is
/// not a URL with a host: the "same host" whose success is the sign its kept callbacks may
/// get through too.
pub fn url_origin(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    let host = url.host_str()?;
    let port = url.port_or_known_default()?;
    Some(format!("{}://{}:{}", url.scheme(), host, port))
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
        self.deliver_or_give_up(url, output_name, output).await.0
    }

    /// [`Notifier::deliver`], and whether it failed by using up its attempts (a callback
    /// worth keeping for a replay, unlike one whose URL cannot be sent to at all).
    async fn deliver_or_give_up(
        &self,
        url: &str,
        output_name: &str,
        output: &[u8],
    ) -> (CallbackState, bool) {
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
                    return (state, false);
                }
                Attempt::Retry(error) => {
                    tracing::warn!(url, attempt, attempts, %error, "callback attempt failed");
                    state.error = Some(error);
                }
                Attempt::Fatal(error) => {
                    tracing::error!(url, %error, "callback cannot be sent");
                    state.error = Some(error);
                    return (state, false);
                }
            }
            if attempt < attempts {
                tokio::time::sleep(backoff_delay(&self.config, attempt)).await;
            }
        }
        tracing::error!(url, attempts, error = ?state.error, "callback given up; kept for a replay");
        (state, true)
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
    fn the_same_host_is_scheme_host_and_port() {
        let origin = |u: &str| url_origin(u);
        assert_eq!(
            origin("https://autolab.example.edu/courses/x/autograde_done?dave=1"),
            Some("https://autolab.example.edu:443".into())
        );
        assert_eq!(
            origin("https://autolab.example.edu:443/other"),
            origin("https://autolab.example.edu/x")
        );
        assert_ne!(
            origin("http://autolab.example.edu/x"),
            origin("https://autolab.example.edu/x")
        );
        assert_ne!(
            origin("http://127.0.0.1:8001/x"),
            origin("http://127.0.0.1:8002/x")
        );
        assert_eq!(origin("not a url"), None);
    }

    #[test]
    fn header_names_lose_control_characters() {
        assert_eq!(header_safe("a\nb.txt"), "a_b.txt");
        assert_eq!(header_safe("bob@cmu.edu_3_x.txt"), "bob@cmu.edu_3_x.txt");
    }
}
