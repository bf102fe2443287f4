//! Starting and stopping the daemon's processes: `tango serve` and `tango manager`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::app::App;
use crate::config::{Config, StoreBackend};
use crate::manager::Manager;

/// Why the daemon could not start (or stopped), one line for the terminal and the journal,
/// with the exit status that tells a supervisor whether trying again can help (sysexits.h;
/// the systemd unit has `RestartPreventExitStatus=78`).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The configuration cannot work as written: a restart would fail the same way.
    #[error("{0}")]
    Config(String),
    /// Something it needs (the store, the backend, the port) is not there yet: a restart
    /// later may succeed (a Redis that comes up after Tango).
    #[error("{0}")]
    Unavailable(String),
    /// The server failed while running.
    #[error("{0}")]
    Runtime(String),
}

impl Failure {
    /// EX_CONFIG (78), EX_TEMPFAIL (75), or 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Config(_) => 78,
            Failure::Unavailable(_) => 75,
            Failure::Runtime(_) => 1,
        }
    }
}

/// Runs the REST server (and, with `with_manager`, the job manager) until SIGINT or SIGTERM.
/// Errors are one line, for the terminal and the journal.
pub async fn serve(config: Config, with_manager: bool) -> Result<(), Failure> {
    if !with_manager && config.store.backend == StoreBackend::Memory {
        return Err(Failure::Config(
            "tango: --no-manager: store.backend is memory, so no other process \
                    could run the jobs; use store.backend = \"redis\" (or --store redis) with \
                    `tango manager` processes, or drop --no-manager"
                .into(),
        ));
    }
    // Held to the end: dropping it writes out the lines still queued.
    let _log = crate::logging::init(&config.log).map_err(Failure::Config)?;
    reopen_logs_on_hangup()?;
    std::fs::create_dir_all(&config.server.courselabs).map_err(|e| {
        Failure::Config(format!(
            "tango: server.courselabs: cannot create {}: {e}",
            config.server.courselabs.display()
        ))
    })?;
    let app = open_app(config).await?;
    let addr = format!("{}:{}", app.config.server.bind, app.config.server.port);
    let listener = TcpListener::bind(&addr).await.map_err(|e| {
        let message = format!("tango: cannot listen on {addr}: {e}");
        // Taken by another process: it may go. Not ours to take: it will not.
        match e.kind() {
            std::io::ErrorKind::AddrInUse => Failure::Unavailable(message),
            _ => Failure::Config(message),
        }
    })?;
    let manager = if with_manager {
        Some(start_manager(&app).await?)
    } else {
        None
    };
    let listen = listener
        .local_addr()
        .map_or_else(|_| addr.clone(), |a: SocketAddr| a.to_string());
    let limits = crate::http::HttpLimits::new(&app.config.http);
    // Python Tango's words, which scripts (and scripts/quickstart.sh) look for.
    tracing::info!(
        version = %crate::VERSION,
        commit = %crate::COMMIT,
        listen = %listen,
        backend = %app.config.vmms.name,
        store = %store_description(&app.config),
        manager = with_manager,
        max_connections = limits.max_connections,
        "RESTful Tango listening"
    );
    // Listening, and open_app has had the store answer a ping.
    notify_systemd(sd_notify::NotifyState::Ready);
    // Graceful: on the signal the listener closes (no new requests), requests in flight
    // finish, then the manager stops dispatching and gives running jobs the grace period.
    crate::http::serve(
        listener,
        crate::api::router(app.clone()),
        limits,
        stopping(),
    )
    .await;
    if let Some(manager) = manager {
        manager.shutdown(grace(&app)).await;
        report_lost_jobs(&app).await;
    }
    Ok(())
}

/// Runs only the job manager, sharing a Redis store with `tango serve --no-manager` and
/// other managers.
pub async fn manager(config: Config) -> Result<(), Failure> {
    if config.store.backend == StoreBackend::Memory {
        return Err(Failure::Config(
            "tango: manager: store.backend is memory, which a separate process cannot \
                    share; set store.backend = \"redis\" (or --store redis), or run `tango serve` \
                    with its built-in manager"
                .into(),
        ));
    }
    // Held to the end: dropping it writes out the lines still queued.
    let _log = crate::logging::init(&config.log).map_err(Failure::Config)?;
    reopen_logs_on_hangup()?;
    let app = open_app(config).await?;
    let manager = start_manager(&app).await?;
    notify_systemd(sd_notify::NotifyState::Ready);
    stopping().await;
    manager.shutdown(grace(&app)).await;
    Ok(())
}

/// The store as the start line names it: never its password.
fn store_description(config: &Config) -> String {
    let store = &config.store;
    match store.backend {
        StoreBackend::Memory => "memory".into(),
        StoreBackend::Redis => format!(
            "redis://{}:{}/{} (namespace {})",
            store.redis_host, store.redis_port, store.redis_db, store.namespace
        ),
    }
}

/// Opens the log file again on each SIGHUP (logrotate's `postrotate`), instead of dying of
/// it, which is SIGHUP's default.
fn reopen_logs_on_hangup() -> Result<(), Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())
        .map_err(|e| Failure::Runtime(format!("tango: cannot handle SIGHUP: {e}")))?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            crate::logging::reopen();
            tracing::info!("SIGHUP: log file reopened");
        }
    });
    Ok(())
}

/// The store, the backend and the shared services, checked to work.
async fn open_app(config: Config) -> Result<Arc<App>, Failure> {
    for notice in config.notices() {
        tracing::warn!("configuration: {notice}");
    }
    let store = crate::store::open(&config)
        .await
        .map_err(|e| Failure::Unavailable(format!("tango: store: {e}")))?;
    store
        .ping()
        .await
        .map_err(|e| Failure::Unavailable(format!("tango: store: {e}")))?;
    let vmms = crate::vmms::open(&config)
        .await
        .map_err(|e| Failure::Unavailable(format!("tango: vmms.name: {e}")))?;
    Ok(App::new(config, store, vmms))
}

async fn start_manager(app: &Arc<App>) -> Result<Manager, Failure> {
    Manager::start(app.clone())
        .await
        .map_err(|e| Failure::Unavailable(format!("tango: manager: {e}")))
}

fn grace(app: &App) -> Duration {
    Duration::from_secs(app.config.server.shutdown_grace_secs)
}

/// Tells systemd (`Type=notify`) how we are. Without `NOTIFY_SOCKET` it does nothing; a
/// failure to send is logged, never fatal (systemd then times the start out itself).
fn notify_systemd(state: sd_notify::NotifyState) {
    let name = state.to_string();
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!(error = %e, state = name, "cannot notify systemd");
    }
}

/// Resolves on SIGINT or SIGTERM, having told systemd that we are stopping.
async fn stopping() {
    shutdown_signal().await;
    tracing::info!("signal received: no new requests or jobs; shutting down");
    notify_systemd(sd_notify::NotifyState::Stopping);
}

/// With the memory store, whatever is still live when the process ends is lost: say
/// which jobs, so an operator can resubmit them. (With Redis they stay queued and run
/// after a restart or on another manager.)
async fn report_lost_jobs(app: &App) {
    if app.config.store.backend != StoreBackend::Memory {
        return;
    }
    match app.store.live_jobs().await {
        Ok(jobs) => {
            for job in &jobs {
                tracing::warn!(
                    job = job.id,
                    name = %job.name,
                    "job lost at exit: the memory store keeps nothing; resubmit it"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list the jobs lost at exit"),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
