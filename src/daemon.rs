//! Starting and stopping the daemon's processes: `tango serve` and `tango manager`.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::app::App;
use crate::config::Config;

/// Runs the REST server (and, with `with_manager`, the job manager) until SIGINT or SIGTERM.
/// Errors are one line, for the terminal and the journal.
pub async fn serve(config: Config, with_manager: bool) -> Result<(), String> {
    crate::logging::init(&config.log)?;
    let _ = with_manager;
    std::fs::create_dir_all(&config.server.courselabs).map_err(|e| {
        format!(
            "tango: server.courselabs: cannot create {}: {e}",
            config.server.courselabs.display()
        )
    })?;
    let store = crate::store::open(&config)
        .await
        .map_err(|e| format!("tango: store: {e}"))?;
    store
        .ping()
        .await
        .map_err(|e| format!("tango: store: {e}"))?;
    let vmms = crate::vmms::open(&config)
        .await
        .map_err(|e| format!("tango: vmms.name: {e}"))?;
    let addr = format!("{}:{}", config.server.bind, config.server.port);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("tango: cannot listen on {addr}: {e}"))?;
    let app = App::new(config, store, vmms);
    let local: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(addr = ?local, "RESTful Tango listening");
    axum::serve(listener, crate::api::router(app))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| format!("tango: server: {e}"))
}

/// Runs only the job manager.
pub async fn manager(config: Config) -> Result<(), String> {
    crate::logging::init(&config.log)?;
    Err("tango: the stand-alone manager is not built yet".into())
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
