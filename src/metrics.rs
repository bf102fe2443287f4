//! Prometheus metrics, served at `metrics.path` (default `/metrics`) when `metrics.enabled`.
//!
//! Two kinds, and why:
//!
//! - **State**, read from the store at each scrape: the `/info` counters, queue depth, live
//!   and dead jobs, machines per pool (total and free). The store is the truth shared by
//!   every process, so any server scraped reports the same values, and a restart loses
//!   nothing (with Redis).
//! - **Events**, counted in this process as they happen: jobs finished by final status,
//!   callback deliveries and failures, and histograms of the seconds each job spent in each
//!   phase. They live in [`Metrics`], which the manager's workers feed. With
//!   `tango serve --no-manager` the jobs run in other processes, so these stay at zero on
//!   that server (documented in docs/deployment.md).
//!
//! The body is OpenMetrics text (Prometheus reads it; counters end in `_total`).

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::model::{Counter as InfoCounter, Job};
use crate::store::{JobStore, StoreError};

/// The `Content-Type` of the metrics body.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds, in seconds, of the phase histograms' buckets: from a container start
/// (tens of milliseconds) to a long grading run or a slow EC2 boot (half an hour).
const PHASE_BUCKETS: [f64; 16] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// One phase of a job, as a label value of `tango_job_phase_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Added → dispatched (claimed and given a machine).
    Queued,
    /// Dispatched → the machine answered `waitVM`.
    MachineAcquired,
    /// Machine ready → input copied in.
    CopyIn,
    /// Input copied in → the run ended.
    Run,
    /// Run ended → output copied out.
    CopyOut,
    /// Job finished → callback delivered or given up.
    Callback,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Queued,
        Phase::MachineAcquired,
        Phase::CopyIn,
        Phase::Run,
        Phase::CopyOut,
        Phase::Callback,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::MachineAcquired => "machine_acquired",
            Phase::CopyIn => "copy_in",
            Phase::Run => "run",
            Phase::CopyOut => "copy_out",
            Phase::Callback => "callback",
        }
    }
}

type Labels = Vec<(&'static str, &'static str)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn phase_histogram() -> Histogram {
    Histogram::new(PHASE_BUCKETS)
}

/// The event metrics of this process.
pub struct Metrics {
    registry: Registry,
    finished: Family<Labels, Counter>,
    callbacks: Family<Labels, Counter>,
    phases: HistogramFamily,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let finished = Family::<Labels, Counter>::default();
        registry.register(
            "tango_jobs_finished",
            "Jobs that ended in this process, by final status (success, error, timeout, internal_error)",
            finished.clone(),
        );
        let callbacks = Family::<Labels, Counter>::default();
        registry.register(
            "tango_callbacks",
            "Callbacks sent by this process, by outcome (delivered, failed)",
            callbacks.clone(),
        );
        let phases: HistogramFamily = Family::new_with_constructor(phase_histogram);
        registry.register(
            "tango_job_phase_seconds",
            "Seconds jobs spent in each phase (queued, machine_acquired, copy_in, run, copy_out, callback)",
            phases.clone(),
        );
        // Every label value exists from the start, so a dashboard sees zeros, not gaps.
        for status in ["success", "error", "timeout", "internal_error"] {
            let _ = finished.get_or_create(&vec![("status", status)]);
        }
        for outcome in ["delivered", "failed"] {
            let _ = callbacks.get_or_create(&vec![("outcome", outcome)]);
        }
        for phase in Phase::ALL {
            let _ = phases.get_or_create(&vec![("phase", phase.label())]);
        }
        Metrics {
            registry,
            finished,
            callbacks,
            phases,
        }
    }

    /// A job reached its final message and is in the dead list: counts it by status and
    /// records its phases up to copy-out.
    pub fn job_finished(&self, job: &Job, final_message: &str) {
        self.finished
            .get_or_create(&vec![("status", final_status(final_message))])
            .inc();
        let t = &job.timings;
        for (phase, from, to) in [
            (Phase::Queued, t.added, t.dispatched),
            (Phase::MachineAcquired, t.dispatched, t.machine_ready),
            (Phase::CopyIn, t.machine_ready, t.copied_in),
            (Phase::Run, t.copied_in, t.ran),
            (Phase::CopyOut, t.ran, t.copied_out),
        ] {
            self.observe(phase, from, to);
        }
    }

    /// A callback ended (delivered, or given up after its attempts).
    pub fn callback_done(&self, job: &Job, delivered: bool) {
        let outcome = if delivered { "delivered" } else { "failed" };
        self.callbacks
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
        self.observe(
            Phase::Callback,
            job.timings.finished,
            job.timings.called_back,
        );
    }

    fn observe(&self, phase: Phase, from: Option<f64>, to: Option<f64>) {
        if let (Some(from), Some(to)) = (from, to) {
            // A clock step backwards must not make a negative duration.
            self.phases
                .get_or_create(&vec![("phase", phase.label())])
                .observe((to - from).max(0.0));
        }
    }
}

/// The `status` label of a final trace message (Tango's wording, see worker.rs).
pub fn final_status(message: &str) -> &'static str {
    if message.starts_with("Success") {
        if message.contains("Error:") {
            "error" // Success followed by a failed copy-out
        } else {
            "success"
        }
    } else if message.starts_with("Internal error") {
        "internal_error"
    } else if message.contains("timed out") {
        "timeout"
    } else {
        "error"
    }
}

/// The whole metrics body: the state read from `store` now, then this process's events.
/// `started`: when this process started.
pub async fn render(
    store: &dyn JobStore,
    started: Instant,
    events: &Metrics,
) -> Result<String, StoreError> {
    let (counters, stats) = store.overview().await?;
    let running = store
        .live_jobs()
        .await?
        .iter()
        .filter(|job| job.assigned)
        .count() as i64;
    let pools = store.pools().await?;

    let mut state = Registry::default();
    let uptime = Gauge::<f64, AtomicU64>::default();
    uptime.set(started.elapsed().as_secs_f64());
    state.register(
        "tango_elapsed_seconds",
        "Seconds since this server started (/info elapsed_secs)",
        uptime,
    );
    for counter in InfoCounter::ALL {
        let c = Counter::<u64>::default();
        c.inc_by(counters.get(counter));
        state.register(
            format!("tango_{}", counter.name()),
            format!(
                "/info {} (shared by every process of this store)",
                counter.name()
            ),
            c,
        );
    }
    for (name, help, value) in [
        (
            "tango_queue_depth",
            "Jobs waiting in the queue",
            stats.queued as i64,
        ),
        (
            "tango_live_jobs",
            "Live jobs: queued or running",
            stats.live as i64,
        ),
        (
            "tango_running_jobs",
            "Live jobs dispatched to a machine",
            running,
        ),
        (
            "tango_dead_jobs",
            "Jobs in the dead list (finished, kept up to jobs.max_dead)",
            stats.dead as i64,
        ),
    ] {
        let g = Gauge::<i64>::default();
        g.set(value);
        state.register(name, help, g);
    }
    let machines = Family::<Vec<(&'static str, String)>, Gauge>::default();
    for (pool, view) in &pools {
        machines
            .get_or_create(&vec![("pool", pool.clone()), ("state", "total".into())])
            .set(view.total.len() as i64);
        machines
            .get_or_create(&vec![("pool", pool.clone()), ("state", "free".into())])
            .set(view.free.len() as i64);
    }
    state.register(
        "tango_pool_machines",
        "Machines per pool (image): total and free",
        machines,
    );

    let mut body = String::new();
    // Writing to a String cannot fail; the encoder's Result is for other writers.
    let _ = encode_registry(&mut body, &state);
    let _ = encode_registry(&mut body, &events.registry);
    let _ = encode_eof(&mut body);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_messages_map_to_statuses() {
        assert_eq!(
            final_status("Success: Autodriver returned normally"),
            "success"
        );
        assert_eq!(
            final_status(
                "Success: Autodriver returned normallyError: Copy out from VM failed (status=-1)"
            ),
            "error"
        );
        assert_eq!(
            final_status("Error: Job timed out after 5 seconds"),
            "timeout"
        );
        assert_eq!(
            final_status("Internal error: waitVM timeout after 30 secs"),
            "internal_error"
        );
        assert_eq!(
            final_status("Error: Autodriver usage error (status=1)"),
            "error"
        );
    }

    #[test]
    fn phases_are_observed_from_timings() {
        let metrics = Metrics::new();
        let mut job = Job::default();
        job.timings.added = Some(100.0);
        job.timings.dispatched = Some(101.5);
        job.timings.machine_ready = Some(102.0);
        job.timings.copied_in = Some(102.0);
        job.timings.ran = Some(105.0);
        job.timings.copied_out = Some(105.25);
        job.timings.finished = Some(106.0);
        metrics.job_finished(&job, "Success: Autodriver returned normally");
        job.timings.called_back = Some(107.0);
        metrics.callback_done(&job, true);
        let mut text = String::new();
        encode_registry(&mut text, &metrics.registry).expect("encode");
        assert!(
            text.contains("tango_jobs_finished_total{status=\"success\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("tango_callbacks_total{outcome=\"delivered\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("tango_job_phase_seconds_sum{phase=\"queued\"} 1.5\n"),
            "{text}"
        );
        assert!(
            text.contains("tango_job_phase_seconds_sum{phase=\"run\"} 3.0\n"),
            "{text}"
        );
        assert!(
            text.contains("tango_job_phase_seconds_count{phase=\"callback\"} 1\n"),
            "{text}"
        );
    }
}
