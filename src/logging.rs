//! Logging with `tracing`: to standard error (journald under systemd) or to LOGFILE, at
//! LOGLEVEL unless `RUST_LOG` says otherwise, as text or JSON lines.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// Installs the global subscriber. Errors name the log file that could not be opened.
pub fn init(config: &LogConfig) -> Result<(), String> {
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
    let result = if config.file.is_empty() {
        // Colours only for a person at a terminal: journald and files get plain text.
        let ansi = std::io::stderr().is_terminal();
        if config.json {
            builder
                .json()
                .with_ansi(false)
                .with_writer(std::io::stderr)
                .try_init()
        } else {
            builder
                .with_ansi(ansi)
                .with_writer(std::io::stderr)
                .try_init()
        }
    } else {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.file)
            .map_err(|e| format!("log.file: cannot open {}: {e}", config.file))?;
        let writer = Mutex::new(file);
        if config.json {
            builder
                .json()
                .with_ansi(false)
                .with_writer(writer)
                .try_init()
        } else {
            builder.with_ansi(false).with_writer(writer).try_init()
        }
    };
    // A second init (tests starting several servers in one process) keeps the first.
    let _ = result;
    Ok(())
}

/// The span every log line about a job is emitted in: it carries the job's id and name,
/// so `grep 'job_id=42'` (or a JSON line's `span.job_id`) finds the job's whole story, in
/// every process. (Not `id`/`name`: JSON lines give the span's own name as `name`.)
pub fn job_span(job: &crate::model::Job) -> tracing::Span {
    tracing::info_span!("job", job_id = job.id, job_name = %job.name)
}
