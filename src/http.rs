//! The listener: how connections are accepted and served, with the bounds that keep a slow or
//! idle client from holding the daemon (`[http]` in the configuration).
//!
//! `axum::serve` gives hyper no timer, so hyper's header timeout is off there and a client
//! sending a header byte every few seconds holds its connection forever; it has no cap on
//! connections either. Here:
//! - a connection has `http.header_timeout_secs` to send a request's headers, counted from
//!   when it opens or the previous answer ends (so it is also the idle keep-alive timeout),
//!   and is closed within a quarter of that timeout after it runs out ([`Activity`]);
//! - a request body must bring `http.body_min_bytes_per_sec` on average over each window of
//!   `http.body_window_secs` while the handler waits for it ([`MinRate`]);
//! - at most `http.max_connections` are served at once; beyond that new ones wait in the
//!   kernel's listen backlog, so the daemon never runs out of file descriptors for them.
//!
//! Shutdown is graceful as before: on the signal the listener closes, every connection is told
//! to finish its request in flight, and `serve` returns when they have.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{MissedTickBehavior, Sleep};
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::config::HttpConfig;

/// How long to wait before accepting again after the process ran out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The bounds a connection is served under (from `[http]`).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub body_rate: BodyRate,
}

impl HttpLimits {
    /// The limits `config` asks for; `max_connections = 0` becomes [`auto_max_connections`].
    pub fn new(config: &HttpConfig) -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_secs(config.header_timeout_secs),
            max_connections: match config.max_connections {
                0 => auto_max_connections(),
                n => n,
            },
            body_rate: BodyRate {
                min_bytes: config
                    .body_min_bytes_per_sec
                    .saturating_mul(config.body_window_secs),
                window: Duration::from_secs(config.body_window_secs),
            },
        }
    }
}

/// The slowest a request body may arrive: `min_bytes` in each `window` (0: no bound).
#[derive(Debug, Clone, Copy)]
pub struct BodyRate {
    pub min_bytes: u64,
    pub window: Duration,
}

/// Raises the soft limit on open files to the hard one (systemd and shells start services at
/// 1024 however high the hard limit is) and returns the soft limit now in force.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// Half the open-file limit (each connection may also open a file, an upload or an output),
/// less a reserve for the store, the backend and the logs; at least 64.
pub fn auto_max_connections() -> usize {
    let files = raise_open_files_limit().min(1 << 20) as usize;
    (files.saturating_sub(256) / 2).max(64)
}

/// Serves `router` on `listener` under `limits` until `shutdown` resolves, then waits for the
/// requests in flight to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let (stop, stopping) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A permit first: over the cap, connections stay in the backlog, unaccepted.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let tcp = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
        };
        connections.spawn(serve_connection(
            tcp,
            router.clone(),
            limits,
            stopping.clone(),
            permit,
        ));
    }
    drop(listener);
    // Every connection is told to finish its request and close.
    drop(stop);
    connections.close();
    connections.wait().await;
}

/// An accept error: a connection that failed before we took it is not ours to report; out
/// of descriptors (or memory), wait a moment for some to be freed.
async fn accept_failed(error: &io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(%error, "cannot accept a connection; retrying shortly");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// Serves one connection's requests; the permit is released when it closes.
async fn serve_connection(
    tcp: TcpStream,
    router: Router,
    limits: HttpLimits,
    mut stopping: watch::Receiver<()>,
    _permit: OwnedSemaphorePermit,
) {
    // TCP_NODELAY: an answer written in pieces (poll streams the file: headers, chunks, the
    // last chunk) must not wait for the client's delayed ACK, 40 ms a request (Nagle).
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let rate = limits.body_rate;
    let activity = Arc::new(Activity::default());
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let request = request.map(|body| Body::new(MinRate::new(body, rate)));
            let busy = Busy::begin(&activity);
            // A Router is always ready: no `poll_ready` needed before `call`.
            let answer = router.clone().call(request);
            async move {
                let response = answer.await?;
                Ok::<_, Infallible>(response.map(|body| Tracked { body, _busy: busy }))
            }
        })
    };
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
    let mut connection = std::pin::pin!(connection);
    let mut idle = std::pin::pin!(activity.idle_for(limits.header_timeout));
    let mut stop = std::pin::pin!(stopping.changed());
    let mut told = false;
    let ended = std::future::poll_fn(|cx| {
        if let Poll::Ready(served) = connection.as_mut().poll(cx) {
            return Poll::Ready(Some(served));
        }
        // Changed or closed: either way the daemon is stopping.
        if !told && stop.as_mut().poll(cx).is_ready() {
            told = true;
            connection.as_mut().graceful_shutdown();
            if let Poll::Ready(served) = connection.as_mut().poll(cx) {
                return Poll::Ready(Some(served));
            }
        }
        // The timer is looked at only between requests: one in flight keeps the connection
        // anyway, and its wakes (the store's answers, the body's chunks) are most of a
        // connection's. Requests begin and end only inside the connection's poll above, so
        // the look once the last one has ended always comes.
        if activity.in_flight() == 0 && idle.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await;
    match ended {
        Some(Err(e)) => tracing::trace!(error = %e, "connection ended with an error"),
        Some(Ok(())) => {}
        None => tracing::debug!(
            "closing a connection that sent no request within http.header_timeout_secs"
        ),
    }
}

/// What a connection's requests are doing, for the header timeout. hyper's own (its
/// `header_read_timeout`) reads the clock, boxes, arms and drops a timer around every
/// request's head and reads the socket once more after every answer (`docs/benchmarks.md`).
/// Here the requests only count themselves, and one coarse timer per connection looks at
/// the count.
///
/// One word: the low 32 bits are the requests in flight (headers read, answer not yet fully
/// written), the high 32 count requests begun (wrapping). Any change means progress.
#[derive(Default)]
struct Activity(AtomicU64);

/// How many looks at a connection's [`Activity`] a header timeout is divided into: a
/// connection is closed between 1 and 1 + 1/`LOOKS` timeouts after its last progress.
const LOOKS: u32 = 4;

impl Activity {
    /// Requests in flight now.
    fn in_flight(&self) -> u64 {
        self.0.load(Ordering::Relaxed) & u64::from(u32::MAX)
    }

    /// Resolves once `timeout` (and at most a [`LOOKS`]th more) has passed with no request in
    /// flight and none begun: the client is idle, or trickling a request's head.
    async fn idle_for(&self, timeout: Duration) {
        let look = (timeout / LOOKS).max(Duration::from_millis(1));
        let mut looks = tokio::time::interval_at(tokio::time::Instant::now() + look, look);
        looks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut seen = self.0.load(Ordering::Relaxed);
        let mut quiet = 0;
        loop {
            looks.tick().await;
            let now = self.0.load(Ordering::Relaxed);
            if now != seen || self.in_flight() != 0 {
                seen = now;
                quiet = 0;
                continue;
            }
            // Quiet since a look at least `quiet` looks ago: past the timeout once more
            // than LOOKS looks have passed (the progress may have come just before one).
            quiet += 1;
            if quiet > LOOKS {
                return;
            }
        }
    }
}

/// A request in flight, from its head read until its answer is written or dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn begin(activity: &Arc<Activity>) -> Busy {
        activity.0.fetch_add((1 << 32) + 1, Ordering::Relaxed);
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An answer's body, holding its request's [`Busy`] until hyper has written (or dropped) it.
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that fails when it arrives slower than a [`BodyRate`] while it is being
/// waited for, so a client trickling bytes cannot hold a handler (and its connection) for
/// ever. A body that arrives at any normal speed, however large, passes untouched.
pub struct MinRate<B> {
    inner: B,
    rate: BodyRate,
    /// Bytes seen since the current window opened.
    seen: u64,
    /// When the current window closes; opened when the body first has nothing ready, so a
    /// body that is there at once never reads the clock.
    deadline: Option<Pin<Box<Sleep>>>,
}

/// The error a too-slow body ends with (the handler reports it as a bad request body).
#[derive(Debug, thiserror::Error)]
#[error(
    "the request body arrived too slowly (fewer than {min_bytes} bytes in {secs} seconds; see http.body_min_bytes_per_sec)"
)]
pub struct TooSlow {
    min_bytes: u64,
    secs: u64,
}

impl<B> MinRate<B> {
    pub fn new(inner: B, rate: BodyRate) -> MinRate<B> {
        MinRate {
            inner,
            rate,
            seen: 0,
            deadline: None,
        }
    }
}

impl<B> http_body::Body for MinRate<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen = this.seen.saturating_add(data.len() as u64);
                    if this.seen >= this.rate.min_bytes {
                        // Enough for this window: the next one opens at the next wait.
                        this.seen = 0;
                        this.deadline = None;
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.rate.min_bytes == 0 {
                    return Poll::Pending;
                }
                let window = this.rate.window;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(window)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(TooSlow {
                        min_bytes: this.rate.min_bytes,
                        secs: window.as_secs(),
                    })))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
