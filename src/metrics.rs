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
//! - **The process**: `tango_build_info{version,commit}` and the `process_*` metrics every
//!   Prometheus client exports (resident memory, open file descriptors, CPU seconds, start
//!   time), read from the kernel at each scrape.
//!
//! The body is OpenMetrics when the scraper asks for it in `Accept` (Prometheus does), else
//! Prometheus text 0.0.4, which `promtool check metrics`, curl users and older scrapers read:
//! [`Format`]. The registry encodes OpenMetrics; [`to_prometheus_text`] rewrites it.

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

/// The two formats of the metrics body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0: counters' families without `_total`, `# EOF` at the end.
    OpenMetrics,
    /// Prometheus text 0.0.4.
    Text,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics only when it names it (and does
    /// not refuse it with `q=0`), since a client that names nothing cannot be assumed to read
    /// it.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let asks = |item: &str| {
            let mut parts = item.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f64>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        };
        if accept.is_some_and(|accept| accept.split(',').any(asks)) {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// The body's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

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
    /// Replays of failed callbacks, by outcome.
    replays: Family<Labels, Counter>,
    /// Failed callbacks dropped beyond `callback.max_failed_kept`.
    dropped: Counter,
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
        let replays = Family::<Labels, Counter>::default();
        registry.register(
            "tango_failed_callback_replays",
            "Failed callbacks sent again by this process, by outcome (delivered, failed)",
            replays.clone(),
        );
        let dropped = Counter::default();
        registry.register(
            "tango_failed_callbacks_dropped",
            "Failed callbacks this process dropped, oldest first, beyond callback.max_failed_kept",
            dropped.clone(),
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
            let _ = replays.get_or_create(&vec![("outcome", outcome)]);
        }
        for phase in Phase::ALL {
            let _ = phases.get_or_create(&vec![("phase", phase.label())]);
        }
        Metrics {
            registry,
            finished,
            callbacks,
            replays,
            dropped,
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

    /// A failed callback was sent again: delivered, or failed again.
    pub fn failed_callback_replayed(&self, delivered: bool) {
        let outcome = if delivered { "delivered" } else { "failed" };
        self.replays
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }

    /// `count` failed callbacks were dropped to keep `callback.max_failed_kept`.
    pub fn failed_callbacks_dropped(&self, count: u64) {
        self.dropped.inc_by(count);
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

/// The whole metrics body in `format`: the state read from `store` now, this process's
/// events, then the process itself. `started`: when this process started.
pub async fn render(
    store: &dyn JobStore,
    started: Instant,
    events: &Metrics,
    format: Format,
) -> Result<String, StoreError> {
    let state = state_registry(store, started).await?;
    let mut body = String::new();
    // Writing to a String cannot fail; the encoder's Result is for other writers.
    let _ = encode_registry(&mut body, &state);
    let _ = encode_registry(&mut body, &events.registry);
    let _ = encode_registry(&mut body, &process_registry());
    let _ = encode_eof(&mut body);
    Ok(match format {
        Format::OpenMetrics => body,
        Format::Text => to_prometheus_text(&body),
    })
}

/// What the store says now: `/info`'s counters, the queue, the job lists, the pools.
async fn state_registry(store: &dyn JobStore, started: Instant) -> Result<Registry, StoreError> {
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
        (
            "tango_failed_callbacks",
            "Callbacks that used up their attempts, kept for a replay (waiting or being sent)",
            stats.failed_callbacks as i64,
        ),
    ] {
        let g = Gauge::<i64>::default();
        g.set(value);
        state.register(name, help, g);
    }
    let machines = Family::<Vec<(&'static str, String)>, Gauge>::default();
    for (pool, view) in &pools {
        let free = view.free.len() as i64;
        // A machine listed free but not in total (a moment between two store writes) is
        // not counted twice: busy is never negative.
        let busy = (view.total.len() as i64 - free).max(0);
        for (state, value) in [("free", free), ("busy", busy)] {
            machines
                .get_or_create(&vec![("pool", pool.clone()), ("state", state.into())])
                .set(value);
        }
    }
    state.register(
        "tango_pool_machines",
        "Machines per pool (image), free or busy: their sum is the pool's size",
        machines,
    );
    Ok(state)
}

/// This build, and the process as the kernel sees it (the names every Prometheus client
/// library uses, so stock dashboards work). A value the kernel will not give is left out.
fn process_registry() -> Registry {
    let mut registry = Registry::default();
    let build = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
    build
        .get_or_create(&vec![
            ("version", crate::VERSION),
            ("commit", crate::COMMIT),
        ])
        .set(1);
    registry.register(
        "tango_build_info",
        "This build of tango-rs: its version and git commit (always 1)",
        build,
    );
    let process = ProcessStats::read();
    let cpu = Counter::<f64, AtomicU64>::default();
    cpu.inc_by(process.cpu_seconds);
    registry.register(
        "process_cpu_seconds",
        "User and system CPU time spent, in seconds",
        cpu,
    );
    for (name, help, value) in [
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            process.resident_bytes,
        ),
        (
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            process.virtual_bytes,
        ),
        (
            "process_open_fds",
            "Number of open file descriptors",
            process.open_fds,
        ),
        (
            "process_max_fds",
            "Maximum number of open file descriptors",
            process.max_fds,
        ),
        (
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            process.start_time_seconds,
        ),
    ] {
        if let Some(value) = value {
            let g = Gauge::<f64, AtomicU64>::default();
            g.set(value);
            registry.register(name, help, g);
        }
    }
    registry
}

/// What the kernel says about this process; `None` where it would not say.
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
    start_time_seconds: Option<f64>,
}

impl ProcessStats {
    fn read() -> ProcessStats {
        // SAFETY: getrusage, getrlimit and sysconf only write into the structs given them.
        let (cpu_seconds, max_fds, page, ticks) = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            let cpu = if libc::getrusage(libc::RUSAGE_SELF, &raw mut usage) == 0 {
                let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
                seconds(usage.ru_utime) + seconds(usage.ru_stime)
            } else {
                0.0
            };
            let mut limit: libc::rlimit = std::mem::zeroed();
            let max_fds = (libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0)
                .then_some(limit.rlim_cur as f64);
            let page = libc::sysconf(libc::_SC_PAGESIZE);
            let ticks = libc::sysconf(libc::_SC_CLK_TCK);
            (cpu, max_fds, page, ticks)
        };
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let mut pages = statm
            .split_whitespace()
            .map(|n| n.parse::<f64>().ok().map(|n| n * page as f64));
        let virtual_bytes = pages.next().flatten();
        let resident_bytes = pages.next().flatten();
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| dir.count() as f64);
        ProcessStats {
            cpu_seconds,
            resident_bytes,
            virtual_bytes,
            open_fds,
            max_fds,
            start_time_seconds: start_time(ticks as f64),
        }
    }
}

/// When this process started, in Unix seconds: its start in clock ticks after boot
/// (`/proc/self/stat`, field 22) plus the boot time, which is the wall clock less the
/// time since boot (`CLOCK_BOOTTIME`; `/proc/stat` is hidden under systemd's
/// `ProcSubset=pid`).
fn start_time(ticks_per_second: f64) -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may itself hold spaces and parentheses.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let ticks: f64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    // SAFETY: clock_gettime only writes into the struct given it.
    let since_boot = unsafe {
        let mut t: libc::timespec = std::mem::zeroed();
        (libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut t) == 0)
            .then(|| t.tv_sec as f64 + t.tv_nsec as f64 / 1e9)
    }?;
    (ticks_per_second > 0.0).then(|| now - since_boot + ticks / ticks_per_second)
}

/// Rewrites an OpenMetrics body as Prometheus text 0.0.4. The samples are the same; what
/// differs is that a counter's family (`# HELP`, `# TYPE`) is named without `_total` in
/// OpenMetrics and with it in Prometheus text (promtool: "no help text" otherwise), and that
/// Prometheus text has no `# UNIT` and no `# EOF`.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let family = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match family {
            Some(renamed) => out.push_str(&renamed),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
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
    fn accept_chooses_the_format() {
        let prometheus =
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(None), Format::Text);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Text);
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Text);
        assert_eq!(
            Format::from_accept(Some("application/openmetrics-text; q=0, text/plain")),
            Format::Text
        );
    }

    #[test]
    fn prometheus_text_names_counter_families_with_total() {
        let openmetrics = "# HELP a_b Some a.\n# TYPE a_b counter\na_b_total 3\n\
                           # HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(openmetrics),
            "# HELP a_b_total Some a.\n# TYPE a_b_total counter\na_b_total 3\n\
             # HELP g A gauge.\n# TYPE g gauge\ng 1\n"
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
