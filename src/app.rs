//! The services every part of the daemon shares, built once at start and passed explicitly
//! (to handlers as axum state, to the manager and workers as an argument).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Notify;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::JobStore;
use crate::vmms::Vmms;

/// The daemon's shared services.
pub struct App {
    pub config: Arc<Config>,
    /// Jobs, pools, counters.
    pub store: Arc<dyn JobStore>,
    /// The configured machine backend.
    pub vmms: Arc<dyn Vmms>,
    /// When this process started (`/info`'s `elapsed_secs`).
    pub started: Instant,
    /// Rung when `/prealloc` changes a pool's target, so a manager in this process acts at
    /// once (managers in other processes see it at their next heartbeat).
    pub pools_changed: Arc<Notify>,
    /// What this process's workers count and time (see [`crate::metrics`]).
    pub metrics: Arc<Metrics>,
}

impl App {
    pub fn new(config: Config, store: Arc<dyn JobStore>, vmms: Arc<dyn Vmms>) -> Arc<App> {
        Arc::new(App {
            config: Arc::new(config),
            store,
            vmms,
            started: Instant::now(),
            pools_changed: Arc::new(Notify::new()),
            metrics: Arc::new(Metrics::new()),
        })
    }
}
