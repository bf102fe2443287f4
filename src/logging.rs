//! Logging with `tracing`: to standard error (journald under systemd) or to LOGFILE, at
//! LOGLEVEL unless `RUST_LOG` says otherwise, as text or JSON lines.
//!
//! Lines are formatted where they are logged and written by a thread of their own, through a
//! buffer that it empties each time it has drained the queue: at LOGLEVEL=debug (Tango's
//! default) every request is logged, and a write system call per line, under a lock shared
//! by every runtime thread, cost the API more than the requests themselves. Nothing is
//! dropped (a full queue makes the logger wait), and a line reaches the file within about a
//! millisecond; only lines still queued when the process is killed with SIGKILL are lost.
//!
//! A log file is opened again on [`reopen`] (SIGHUP, see `daemon.rs`), so that logrotate can
//! move it away and the next line starts the new one. Colours are used only for a person at a
//! terminal, and never when `NO_COLOR` is set (<https://no-color.org>).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Set by [`reopen`]; the log thread opens the file again before its next write.
static REOPEN: AtomicBool = AtomicBool::new(false);

/// Asks the log thread to open `log.file` again (by its name) before it next writes: after
/// logrotate has renamed it, lines go to a new file of that name. Without a log file, does
/// nothing.
pub fn reopen() {
    REOPEN.store(true, Ordering::SeqCst);
}

/// `log.file`, opened for appending, and opened again when [`reopen`] asks.
struct LogFile {
    path: PathBuf,
    file: File,
}

impl LogFile {
    fn open(path: &PathBuf) -> std::io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path)
    }

    /// Switches to a fresh open of the path if asked; on failure keeps the old file (the
    /// lines still land somewhere) and says so there.
    fn reopen_if_asked(&mut self) {
        if !REOPEN.swap(false, Ordering::SeqCst) {
            return;
        }
        match LogFile::open(&self.path) {
            Ok(file) => self.file = file,
            Err(e) => {
                let _ = writeln!(
                    self.file,
                    "tango: cannot reopen the log file {}: {e}; still writing here",
                    self.path.display()
                );
            }
        }
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.reopen_if_asked();
        self.file.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.reopen_if_asked();
        self.file.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Whether to colour lines: only for a terminal, and not when `NO_COLOR` is set to
/// anything but the empty string.
fn use_colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
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
        let ansi = use_colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        );
        let (writer, guard) = background(std::io::stderr());
        (writer, guard, ansi)
    } else {
        let path = PathBuf::from(&config.file);
        let file = LogFile::open(&path)
            .map_err(|e| format!("log.file: cannot open {}: {e}", config.file))?;
        let (writer, guard) = background(LogFile { path, file });
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

#[cfg(test)]
mod tests {
    use super::use_colour;

    #[test]
    fn colour_only_at_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("".into())));
        assert!(!use_colour(true, Some("1".into())));
        assert!(!use_colour(false, None));
    }
}
