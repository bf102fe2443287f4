//! `run DIR`: the whole round trip Autolab makes, from a directory of job files: open the
//! courselab, upload every file, add the job (or `--jobs N` copies), wait for the outputs,
//! print them (one job) or a summary of statuses and times (several, with a progress bar).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::courselab::{file_name, upload_one};
use super::jobs::{JobFields, job_id};
use super::{Client, ClientError, Conn, Result, read_file};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// A directory of job files: a `Makefile` (or `autograde-Makefile`) and its inputs.
    pub dir: PathBuf,
    /// The courselab to use (default: the directory's name).
    #[arg(long)]
    pub courselab: Option<String>,
    /// Submit this many copies of the job.
    #[arg(long, default_value_t = 1)]
    pub jobs: u32,
    /// The output file's name (default: a fresh one per run; with --jobs, `_N` appended).
    #[arg(long)]
    pub output_file: Option<String>,
    #[command(flatten)]
    pub job: JobFields,
    /// Exit 1 when make ends with a non-zero status in any job ("Autodriver: Job exited with
    /// status N"), which Tango still counts a success: for CI checking a reference solution.
    #[arg(long)]
    pub fail_on_make_error: bool,
    /// Seconds to wait for all outputs before giving up.
    #[arg(long, default_value_t = 1800)]
    pub wait: u64,
    /// Write each output file into this directory too.
    #[arg(long)]
    pub save: Option<PathBuf>,
}

/// One submitted copy and what became of it.
struct Submitted {
    id: u64,
    name: String,
    output_file: String,
    added: Instant,
    output: Option<Vec<u8>>,
    seconds: f64,
}

pub async fn run(args: RunArgs) -> Result<()> {
    if args.jobs == 0 {
        return Err(ClientError::Usage("--jobs must be at least 1".into()));
    }
    let client = Client::new(&args.conn)?;
    let dir_name = file_name(&args.dir)?;
    let courselab = args.courselab.clone().unwrap_or_else(|| dir_name.clone());
    let files = job_files(&args.dir)?;

    client.get(&client.url("open", &[&courselab])).await?;
    let specs = upload_files(&client, &courselab, &files).await?;
    let mut submitted = submit(&client, &args, &courselab, &dir_name, &specs).await?;
    let progress = args.jobs > 1 && !client.json;
    wait_outputs(&client, &courselab, &mut submitted, args.wait, progress).await?;
    let report = build_report(&client, &submitted).await;
    if let Some(save) = &args.save {
        save_outputs(save, &submitted)?;
    }

    let summary = summarize(&report);
    let failed = report.iter().filter(|r| r["status"] != "success").count();
    if client.json {
        outln!(
            "{}",
            super::pretty(&json!({"courselab": courselab, "jobs": report, "summary": summary}))
        );
    } else if args.jobs == 1 {
        if let Some(output) = &submitted[0].output {
            super::output::bytes(output);
        }
    } else {
        print_table(&report, &summary, args.jobs);
    }
    if failed > 0 {
        return Err(ClientError::Failed(format!(
            "{failed} of {} jobs did not succeed",
            args.jobs
        )));
    }
    if args.fail_on_make_error {
        let make_failed: Vec<String> = submitted
            .iter()
            .filter_map(|job| make_status(job.output.as_deref()?).filter(|s| *s != 0))
            .map(|s| s.to_string())
            .collect();
        if !make_failed.is_empty() {
            return Err(ClientError::Failed(format!(
                "make failed in {} of {} jobs (status {})",
                make_failed.len(),
                args.jobs,
                make_failed.join(", ")
            )));
        }
    }
    Ok(())
}

/// make's exit status, from the autodriver's `Autodriver: Job exited with status N` line.
fn make_status(output: &[u8]) -> Option<i64> {
    const LINE: &str = "Autodriver: Job exited with status ";
    let text = String::from_utf8_lossy(output);
    text.lines()
        .find_map(|l| l.strip_prefix(LINE))
        .and_then(|n| n.trim().parse().ok())
}

/// Uploads each file under its own name; returns the addJob `files` entries that name them.
async fn upload_files(
    client: &Client,
    courselab: &str,
    files: &[(PathBuf, String)],
) -> Result<Vec<Value>> {
    let upload = client.url("upload", &[courselab]);
    let mut specs = Vec::new();
    for (path, dest) in files {
        let name = file_name(path)?;
        upload_one(client, &upload, &name, read_file(path)?).await?;
        specs.push(json!({"localFile": name, "destFile": dest}));
    }
    Ok(specs)
}

/// Adds the job `--jobs` times, each copy with its own name and output file.
async fn submit(
    client: &Client,
    args: &RunArgs,
    courselab: &str,
    dir_name: &str,
    specs: &[Value],
) -> Result<Vec<Submitted>> {
    // Fresh output names, so an old output of the same name is never taken for ours.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let add = client.url("addJob", &[courselab]);
    let mut submitted = Vec::new();
    for i in 0..args.jobs {
        let suffix = if args.jobs > 1 {
            format!("_{i}")
        } else {
            String::new()
        };
        let output_file = match &args.output_file {
            Some(f) => format!("{f}{suffix}"),
            None => format!("tango-run-{stamp}{suffix}_{dir_name}_autograde.txt"),
        };
        let name = match &args.job.job_name {
            Some(n) => format!("{n}{suffix}"),
            None => format!("{courselab}_run{suffix}"),
        };
        let body = args.job.body(specs.to_vec(), &output_file, &name);
        let v = client.post(&add, &[], body.to_string()).await?;
        submitted.push(Submitted {
            id: job_id(&v)?,
            name,
            output_file,
            added: Instant::now(),
            output: None,
            seconds: 0.0,
        });
    }
    Ok(submitted)
}

/// Waits for every job's output, at most `wait` seconds in all, with a progress bar when
/// `progress`.
async fn wait_outputs(
    client: &Client,
    courselab: &str,
    submitted: &mut [Submitted],
    wait: u64,
    progress: bool,
) -> Result<()> {
    let bar = progress.then(|| progress_bar(submitted.len() as u64));
    let deadline = Instant::now() + Duration::from_secs(wait);
    let waits = submitted
        .iter_mut()
        .map(|job| wait_output(client, courselab, job, deadline, bar.as_ref()));
    let results = futures::future::join_all(waits).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    results.into_iter().collect()
}

fn progress_bar(jobs: u64) -> ProgressBar {
    let bar = ProgressBar::new(jobs);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// One row per job: its final status and message and its server-side times, from the dead
/// list, and its output.
async fn build_report(client: &Client, submitted: &[Submitted]) -> Vec<Value> {
    let dead = client
        .get(&client.url("jobs", &["1"]))
        .await
        .ok()
        .and_then(|v| v["jobs"].as_array().cloned())
        .unwrap_or_default();
    let by_id: BTreeMap<u64, &Value> = dead
        .iter()
        .filter_map(|j| j["id"].as_u64().map(|id| (id, j)))
        .collect();
    submitted
        .iter()
        .map(|job| report_row(job, by_id.get(&job.id).copied()))
        .collect()
}

/// A job's row of the report; `server` is the job as the dead list shows it, if it does.
fn report_row(job: &Submitted, server: Option<&Value>) -> Value {
    let final_message = server
        .and_then(|j| j["trace"].as_array())
        .and_then(|t| t.last())
        .and_then(Value::as_str)
        .map(|l| l.split_once('|').map_or(l, |(_, m)| m).to_string());
    let status = match (&job.output, &final_message) {
        (None, _) => "no_output",
        (Some(_), Some(m)) => tango::metrics::final_status(m),
        (Some(_), None) => "unknown",
    };
    let t = server.map(|j| &j["timings"]);
    let between = |a: &str, b: &str| match t {
        Some(t) => match (t[a].as_f64(), t[b].as_f64()) {
            (Some(a), Some(b)) => json!(((b - a) * 1000.0).round() / 1000.0),
            _ => Value::Null,
        },
        None => Value::Null,
    };
    json!({
        "id": job.id,
        "name": job.name,
        "output_file": job.output_file,
        "status": status,
        "final_message": final_message,
        "seconds": (job.seconds * 1000.0).round() / 1000.0,
        "queued_seconds": between("added", "dispatched"),
        "run_seconds": between("copied_in", "ran"),
        "output": job.output.as_ref().map(|o| String::from_utf8_lossy(o).into_owned()),
    })
}

/// Writes each output that came into `save`, under its output file's name (`--save`).
fn save_outputs(save: &Path, submitted: &[Submitted]) -> Result<()> {
    std::fs::create_dir_all(save).map_err(|error| ClientError::File {
        path: save.display().to_string(),
        error,
    })?;
    for job in submitted {
        if let Some(output) = &job.output {
            let path = save.join(&job.output_file);
            std::fs::write(&path, output).map_err(|error| ClientError::File {
                path: path.display().to_string(),
                error,
            })?;
        }
    }
    Ok(())
}

/// The report for people: one line per job, then the counts and times of `summary`.
fn print_table(report: &[Value], summary: &Value, jobs: u32) {
    outln!(
        "{:>6}  {:<16}  {:>8}  {:>8}  {:>8}  OUTPUT FILE",
        "ID",
        "STATUS",
        "SECONDS",
        "QUEUED",
        "RUN"
    );
    for r in report {
        outln!(
            "{:>6}  {:<16}  {:>8}  {:>8}  {:>8}  {}",
            r["id"].to_string(),
            r["status"].as_str().unwrap_or(""),
            r["seconds"].to_string(),
            r["queued_seconds"].to_string(),
            r["run_seconds"].to_string(),
            r["output_file"].as_str().unwrap_or("")
        );
    }
    let statuses = summary["statuses"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let s = &summary["seconds"];
    outln!(
        "{jobs} jobs: {statuses}; seconds min {} median {} max {}",
        s["min"],
        s["median"],
        s["max"]
    );
}

/// The files to upload: every regular, non-hidden file of `dir`, sorted, with its name in
/// the machine. An `autograde-Makefile` (Autolab's name) becomes the `Makefile` unless
/// there is one.
fn job_files(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let entries = std::fs::read_dir(dir).map_err(|error| ClientError::File {
        path: dir.display().to_string(),
        error,
    })?;
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_file() && !name.starts_with('.') {
            files.push((path, name));
        }
    }
    files.sort();
    let has_makefile = files.iter().any(|(_, n)| n == "Makefile");
    if !has_makefile {
        for (_, dest) in files.iter_mut() {
            if dest == "autograde-Makefile" {
                *dest = "Makefile".into();
            }
        }
    }
    if !files.iter().any(|(_, n)| n == "Makefile") {
        return Err(ClientError::Usage(format!(
            "{}: no Makefile (or autograde-Makefile) to run",
            dir.display()
        )));
    }
    Ok(files)
}

/// Polls one job's output until it is there or `deadline` passes.
async fn wait_output(
    client: &Client,
    courselab: &str,
    job: &mut Submitted,
    deadline: Instant,
    bar: Option<&ProgressBar>,
) -> Result<()> {
    let url = client.url("poll", &[courselab, &job.output_file]);
    let mut delay = Duration::from_millis(100);
    loop {
        match client.get_raw(&url).await? {
            Ok(bytes) => {
                job.seconds = job.added.elapsed().as_secs_f64();
                job.output = Some(bytes);
                if let Some(bar) = bar {
                    bar.inc(1);
                    bar.set_message(format!("job {} done", job.id));
                }
                return Ok(());
            }
            Err(v) if super::status_message(&v) == "Output file not found" => {}
            Err(v) => client.check(v).map(|_| ())?,
        }
        if Instant::now() >= deadline {
            job.seconds = job.added.elapsed().as_secs_f64();
            return Ok(());
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

/// Counts by status and client-side seconds (min, median, max, mean).
fn summarize(report: &[Value]) -> Value {
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    for r in report {
        *statuses
            .entry(r["status"].as_str().unwrap_or("unknown").to_string())
            .or_default() += 1;
    }
    let mut secs: Vec<f64> = report
        .iter()
        .filter_map(|r| r["seconds"].as_f64())
        .collect();
    secs.sort_by(f64::total_cmp);
    let seconds = if secs.is_empty() {
        Value::Null
    } else {
        json!({
            "min": secs[0],
            "median": secs[secs.len() / 2],
            "max": secs[secs.len() - 1],
            "mean": ((secs.iter().sum::<f64>() / secs.len() as f64) * 1000.0).round() / 1000.0,
        })
    };
    json!({"count": report.len(), "statuses": statuses, "seconds": seconds})
}
