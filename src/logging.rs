//! Logging with `tracing`: to standard error (journald under systemd) or to LOGFILE, at
//! LOGLEVEL unless `RUST_LOG` says otherwise, as text or JSON lines.
//!
//! Lines are formatted where they are logged and written by a thread of their own, through a
//! buffer that it empties each time it has drained the queue: at LOGLEVEL=debug (Tango's
//! default) every request is logged, and a write system call per line, under a lock shared
//! by every runtime thread, cost the API more than the requests themselves. Nothing is
//! dropped (a full queue makes the logger wait), and a line reaches the file within about a
//! millisecond; only lines still queued when the process is killed with SIGKILL are lost.

use std::fs::OpenOptions;
use std::io::{BufWriter, IsTerminal, Write};
use std::time::Duration;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// Bytes gathered before the log thread writes, when lines come faster than it writes.
const LOG_BUFFER: usize = 64 * 1024;

/// How long the log thread rests after each write.
const LOG_PACE: Duration = Duration::from_millis(1);

/// Keeps the log thread running; dropping it writes out every line still queued. Hold it
/// until the process is about to exit.
#[must_use = "dropping the guard stops the log thread"]
pub struct LogGuard {
    _worker: WorkerGuard,
}

/// The writer the subscriber formats into, and the guard of the thread behind it.
fn background<W: Write + Send + 'static>(writer: W) -> (NonBlocking, LogGuard) {
    let (writer, worker) = NonBlockingBuilder::default()
        // Wait rather than lose lines when the queue is full.
        .lossy(false)
        .thread_name("tango-log")
        .finish(Paced(BufWriter::with_capacity(LOG_BUFFER, writer)));
    (writer, LogGuard { _worker: worker })
}

/// The log thread's writer. The thread writes (flushes) each time it has emptied its queue,
/// then waits for the next line; under load that was a wake-up, two context switches and a
/// write per line. Resting a moment after each write lets the lines of that moment gather
/// into one write, at the cost of their reaching the file up to [`LOG_PACE`] later.
struct Paced<W: Write>(BufWriter<W>);

impl<W: Write> Write for Paced<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let flushed = self.0.flush();
        std::thread::sleep(LOG_PACE);
        flushed
    }
}

/// Installs the global subscriber. Errors name the log file that could not be opened.
pub fn init(config: &LogConfig) -> Result<LogGuard, String> {
    let level = match config.level.to_ascii_lowercase().as_str() {
        "warning" => "warn".to_string(),
        "critical" => "error".to_string(),
        other => other.to_string(),
    };
    // Our own crate at the configured level; dependencies one notch quieter, so that
    // LOGLEVEL=debug (Tango's default) is about jobs, not HTTP internals.
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::new(spec),
        _ => EnvFilter::new(format!("info,tango={level}")),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let (writer, guard, ansi) = if config.file.is_empty() {
        // Colours only for a person at a terminal: journald and files get plain text.
        let ansi = std::io::stderr().is_terminal();
        let (writer, guard) = background(std::io::stderr());
        (writer, guard, ansi)
    } else {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.file)
            .map_err(|e| format!("log.file: cannot open {}: {e}", config.file))?;
        let (writer, guard) = background(file);
        (writer, guard, false)
    };
    let result = if config.json {
        builder
            .json()
            .with_ansi(false)
            .with_writer(writer)
            .try_init()
    } else {
        builder.with_ansi(ansi).with_writer(writer).try_init()
    };
    // A second init (tests starting several servers in one process) keeps the first.
    let _ = result;
    Ok(guard)
}

/// The span every log line about a job is emitted in: it carries the job's id and name,
/// so `grep 'job_id=42'` (or a JSON line's `span.job_id`) finds the job's whole story, in
/// every process. (Not `id`/`name`: JSON lines give the span's own name as `name`.)
pub fn job_span(job: &crate::model::Job) -> tracing::Span {
    tracing::info_span!("job", job_id = job.id, job_name = %job.name)
}
