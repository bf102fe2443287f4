//! The measuring half of the benchmarks; `scripts/bench.sh` builds it, starts the daemons and
//! the load generators, and writes `docs/benchmarks.md`. Each subcommand prints one JSON
//! object on standard output (progress goes to standard error):
//!
//! - `ceiling PORT`: a bare axum server that answers every request with a constant, on the
//!   same multi-threaded runtime as `tango serve`: the most this machine serves.
//! - `scale`: adds jobs one after another through `addJob` (none runs: the daemon's manager
//!   is off or plugged) and reports `addJob` latency at the start and after N queued jobs,
//!   `jobs/0` and `info` response times, and the daemon's resident memory.
//! - `jobs`: runs a job (a directory with a Makefile) COUNT times end to end, from sending
//!   `addJob` to its output file being present, one at a time or all at once.
//! - `hostile`: the same for a normal job, while hostile jobs are kept running beside it.
//! - `burst`: COUNT jobs sent at once (or one after another), each timed from `addJob` to
//!   its callback; and `docker-run`: bare `docker run --rm IMAGE true`, COUNT times,
//!   PARALLEL at once, the engine's own pace (`bench/burst.rs`).
//! - `fair`: COUNT jobs of one courselab sent at once, then one job of another; the lone
//!   job's time to its callback, fair share against FIFO (`bench/burst.rs`).
//!
//! Times are taken here, on the client side, with the monotonic clock.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

#[path = "bench/burst.rs"]
mod burst;

#[derive(Parser)]
#[command(about = "tango-rs benchmarks (run through scripts/bench.sh)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A bare axum server returning a constant, on 127.0.0.1:PORT.
    Ceiling { port: u16 },
    /// addJob latency, jobs/0 and info times, and resident memory, as the queue grows.
    Scale {
        #[command(flatten)]
        target: Target,
        /// Jobs queued before the second measurement.
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        /// addJob calls measured at the start and after `jobs`.
        #[arg(long, default_value_t = 1_000)]
        sample: usize,
        /// The daemon's process id (for its resident memory).
        #[arg(long)]
        pid: u32,
    },
    /// End-to-end time of a job, COUNT times.
    Jobs {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        job: JobArgs,
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Submit every job at once (throughput) instead of one after another.
        #[arg(long)]
        all_at_once: bool,
        /// Before each job, wait until the image's pool has a free machine (a warm pool).
        #[arg(long)]
        wait_pool: bool,
        /// Jobs run (and not timed) before the measured ones.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
    },
    /// COUNT jobs sent at once (or one after another), each timed to its callback.
    Burst {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        job: JobArgs,
        #[arg(long, default_value_t = 40)]
        count: usize,
        /// One after another (each sent when the last one's callback came) instead.
        #[arg(long)]
        sequential: bool,
        /// Jobs run (and not timed) before the measured ones.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
    },
    /// COUNT jobs of one courselab at once, then one of another: the lone job's wait.
    Fair {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        job: JobArgs,
        #[arg(long, default_value_t = 100)]
        count: usize,
    },
    /// `docker run --rm IMAGE true`, COUNT times, PARALLEL at once.
    DockerRun {
        #[arg(long, default_value = "autograding_image")]
        image: String,
        #[arg(long, default_value_t = 40)]
        count: usize,
        #[arg(long, default_value_t = 8)]
        parallel: usize,
        /// Every run joins one idle container's network namespace.
        #[arg(long)]
        shared_netns: bool,
    },
    /// End-to-end time of a normal job alone, then beside hostile jobs kept running.
    Hostile {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        job: JobArgs,
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Directories of the hostile jobs; each is kept running (resubmitted when it ends).
        #[arg(long = "hostile", required = true)]
        hostile: Vec<PathBuf>,
        /// Timeout of the hostile jobs, seconds.
        #[arg(long, default_value_t = 10)]
        hostile_timeout: u64,
        /// Pause after each normal job, alone and beside, in milliseconds: the normal jobs
        /// then meet the hostile ones over several of their lives (a fresh one starting, an
        /// old one being killed), not only in the instant after they were started.
        #[arg(long, default_value_t = 200)]
        pace_ms: u64,
    },
}

/// The daemon under test.
#[derive(Args, Clone)]
struct Target {
    /// e.g. http://127.0.0.1:3000
    #[arg(long)]
    url: String,
    #[arg(long, default_value = "test")]
    key: String,
    /// The daemon's courselabs directory (output files are looked for there).
    #[arg(long)]
    courselabs: PathBuf,
    #[arg(long, default_value = "bench-lab")]
    courselab: String,
}

#[derive(Args, Clone)]
struct JobArgs {
    /// The job: a directory whose files are uploaded (its Makefile is the job's Makefile).
    #[arg(long)]
    job: PathBuf,
    #[arg(long, default_value = "autograding_image")]
    image: String,
    /// The job's timeout, seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Text the output must contain, else the run fails.
    #[arg(long)]
    expect: Option<String>,
    /// Longest wait for one job's output, seconds.
    #[arg(long, default_value_t = 300)]
    patience: u64,
    /// How often to look for the output file: often for a job being timed,
    /// seldom for one only kept running (its checks would compete with the timed one).
    #[arg(skip = Duration::from_millis(1))]
    poll: Duration,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Ceiling { port } => ceiling(port).await.map(|()| Value::Null),
            Command::Scale {
                target,
                jobs,
                sample,
                pid,
            } => scale(&target, jobs, sample, pid).await,
            Command::Jobs {
                target,
                job,
                count,
                all_at_once,
                wait_pool,
                warmup,
            } => run_jobs(&target, &job, count, all_at_once, wait_pool, warmup).await,
            Command::Burst {
                target,
                job,
                count,
                sequential,
                warmup,
            } => burst::burst(&target, &job, count, sequential, warmup).await,
            Command::Fair { target, job, count } => burst::fair(&target, &job, count).await,
            Command::DockerRun {
                image,
                count,
                parallel,
                shared_netns,
            } => burst::docker_run(&image, count, parallel, shared_netns).await,
            Command::Hostile {
                target,
                job,
                count,
                hostile,
                hostile_timeout,
                pace_ms,
            } => {
                let pace = Duration::from_millis(pace_ms);
                run_hostile(&target, &job, count, &hostile, hostile_timeout, pace).await
            }
        }
    });
    match result {
        Ok(Value::Null) => {}
        Ok(value) => println!("{value}"),
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    }
}

// ---- ceiling ----

async fn ceiling(port: u16) -> Result<(), Error> {
    use axum::http::header;
    const BODY: &str = "{\"statusId\": 0, \"statusMsg\": \"constant\"}";
    let app = axum::Router::new().fallback(|| async {
        (
            [(header::CONTENT_TYPE, "application/json; charset=UTF-8")],
            BODY,
        )
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

// ---- a client speaking to the daemon as Autolab does ----

struct Client {
    http: reqwest::Client,
    target: Target,
}

impl Client {
    fn new(target: &Target) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .pool_max_idle_per_host(256)
                .build()
                .expect("http client"),
            target: target.clone(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.target.url, path)
    }

    async fn get(&self, path: &str) -> Result<Value, Error> {
        let text = self.http.get(self.url(path)).send().await?.text().await?;
        Ok(serde_json::from_str(&text).map_err(|e| format!("GET {path}: {e}: {text}"))?)
    }

    async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Value, Error> {
        let mut request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let text = request.send().await?.text().await?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| format!("POST {path}: {e}: {text}"))?;
        if value["statusId"] != 0 {
            return Err(format!("POST {path}: {value}").into());
        }
        Ok(value)
    }

    async fn open(&self, courselab: &str) -> Result<(), Error> {
        let v = self
            .get(&format!("/open/{}/{}/", self.target.key, courselab))
            .await?;
        if v["statusId"] != 0 {
            return Err(format!("open: {v}").into());
        }
        Ok(())
    }

    /// Opens `courselab` and uploads every file of `dir`; returns addJob's `files`.
    async fn upload_job(&self, courselab: &str, dir: &Path) -> Result<Vec<Value>, Error> {
        self.open(courselab).await?;
        let mut files = Vec::new();
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "expect"))
            .collect();
        entries.sort();
        for path in entries {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let bytes = std::fs::read(&path)?;
            self.post(
                &format!("/upload/{}/{}/", self.target.key, courselab),
                &[("filename", &name)],
                bytes,
            )
            .await?;
            files.push(json!({"localFile": name, "destFile": name}));
        }
        Ok(files)
    }

    async fn add_job(&self, courselab: &str, body: &Value) -> Result<u64, Error> {
        let v = self
            .post(
                &format!("/addJob/{}/{}/", self.target.key, courselab),
                &[],
                body.to_string().into_bytes(),
            )
            .await?;
        v["jobId"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| v["jobId"].as_u64())
            .ok_or_else(|| format!("addJob: no jobId in {v}").into())
    }

    /// Where the output file `name` of `courselab` appears.
    fn output_path(&self, courselab: &str, name: &str) -> PathBuf {
        self.target
            .courselabs
            .join(format!(
                "{}-{}",
                tango::labs::Labs::tenant(&self.target.key),
                courselab
            ))
            .join("output")
            .join(name)
    }

    /// Free machines of `pool` now.
    async fn free_machines(&self, pool: &str) -> Result<usize, Error> {
        let v = self
            .get(&format!("/pool/{}/{}/", self.target.key, pool))
            .await?;
        Ok(v["pools"][pool]["free"].as_array().map_or(0, Vec::len))
    }
}

fn job_body(image: &str, files: &[Value], output_file: &str, timeout: u64) -> Value {
    json!({
        "image": image,
        "files": files,
        "output_file": output_file,
        "timeout": timeout,
        "callback_url": "",
        "jobName": format!("bench_{output_file}"),
        "disable_network": false,
    })
}

/// Waits until `path` exists (the daemon renames a complete file into place), checking
/// `every` so often; returns its content.
async fn wait_file(path: &Path, patience: Duration, every: Duration) -> Result<Vec<u8>, Error> {
    let deadline = Instant::now() + patience;
    loop {
        match tokio::fs::read(path).await {
            Ok(bytes) => return Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display()).into()),
        }
        if Instant::now() > deadline {
            return Err(format!("no output {} within {patience:?}", path.display()).into());
        }
        tokio::time::sleep(every).await;
    }
}

// ---- statistics ----

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p`th percentile (nearest rank) of `samples`, in milliseconds.
fn percentile(samples: &[Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted: Vec<Duration> = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    ms(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn summary(samples: &[Duration]) -> Value {
    json!({
        "n": samples.len(),
        "p50_ms": percentile(samples, 50.0),
        "p90_ms": percentile(samples, 90.0),
        "p99_ms": percentile(samples, 99.0),
        "min_ms": samples.iter().min().map_or(f64::NAN, |d| ms(*d)),
        "max_ms": samples.iter().max().map_or(f64::NAN, |d| ms(*d)),
    })
}

/// Resident memory of `pid`, MiB.
fn rss_mib(pid: u32) -> Result<f64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or("no VmRSS")?;
    Ok(kb / 1024.0)
}

// ---- scale ----

async fn scale(target: &Target, jobs: usize, sample: usize, pid: u32) -> Result<Value, Error> {
    let client = Client::new(target);
    let key = &target.key;
    let lab = &target.courselab;
    let rss_idle = rss_mib(pid)?;
    client.open(lab).await?;
    let files = vec![json!({"localFile": "Makefile", "destFile": "Makefile"})];
    client
        .post(
            &format!("/upload/{key}/{lab}/"),
            &[("filename", "Makefile")],
            b"autograde:\n\t@echo ok\n".to_vec(),
        )
        .await?;
    let jobs0 = format!("/jobs/{key}/0/");
    let info = format!("/info/{key}/");
    let timed_get = |path: String| {
        let client = &client;
        async move {
            let mut samples = Vec::new();
            let mut count = 0;
            for _ in 0..5 {
                let t = Instant::now();
                let v = client.get(&path).await?;
                samples.push(t.elapsed());
                count = v["jobs"].as_array().map_or(0, Vec::len);
            }
            Ok::<_, Error>((percentile(&samples, 50.0), count))
        }
    };
    let (jobs0_start, live_start) = timed_get(jobs0.clone()).await?;
    let (info_start, _) = timed_get(info.clone()).await?;

    let mut n = 0usize;
    let mut first = Vec::with_capacity(sample);
    for _ in 0..sample {
        first.push(add_one(&client, lab, &files, &mut n).await?);
    }
    let fill_start = Instant::now();
    while n < jobs {
        add_one(&client, lab, &files, &mut n).await?;
        if n.is_multiple_of(2000) {
            eprintln!("bench scale: {n} jobs queued");
        }
    }
    let fill_secs = fill_start.elapsed().as_secs_f64();
    let rss_full = rss_mib(pid)?;
    let (jobs0_full, live_full) = timed_get(jobs0.clone()).await?;
    let (info_full, _) = timed_get(info.clone()).await?;
    let mut last = Vec::with_capacity(sample);
    for _ in 0..sample {
        last.push(add_one(&client, lab, &files, &mut n).await?);
    }
    Ok(json!({
        "queued": jobs,
        "rss_idle_mib": rss_idle,
        "rss_full_mib": rss_full,
        "addjob_start": summary(&first),
        "addjob_after": summary(&last),
        "fill_jobs_per_s": (jobs - sample.min(jobs)) as f64 / fill_secs,
        "jobs0_start_ms": jobs0_start,
        "jobs0_start_count": live_start,
        "jobs0_full_ms": jobs0_full,
        "jobs0_full_count": live_full,
        "info_start_ms": info_start,
        "info_full_ms": info_full,
    }))
}

/// One more job (the `n`th) through addJob; returns how long the call took.
async fn add_one(
    client: &Client,
    lab: &str,
    files: &[Value],
    n: &mut usize,
) -> Result<Duration, Error> {
    *n += 1;
    let body = job_body(
        "autograding_image",
        files,
        &format!("user{n}@x.edu_1_lab_autograde.txt"),
        60,
    );
    let t = Instant::now();
    client.add_job(lab, &body).await?;
    Ok(t.elapsed())
}

// ---- jobs end to end ----

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A fresh output file name (unique within this process and run).
fn output_name(tag: &str) -> String {
    format!(
        "{tag}-{}-{}.txt",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    )
}

/// Submits one job and waits for its output; returns its end-to-end time.
async fn one_job(
    client: &Client,
    lab: &str,
    files: &[Value],
    job: &JobArgs,
    tag: &str,
) -> Result<Duration, Error> {
    let name = output_name(tag);
    let path = client.output_path(lab, &name);
    let body = job_body(&job.image, files, &name, job.timeout);
    let t = Instant::now();
    client.add_job(lab, &body).await?;
    let output = wait_file(&path, Duration::from_secs(job.patience), job.poll).await?;
    let elapsed = t.elapsed();
    check_output(&output, job, &name)?;
    Ok(elapsed)
}

/// Waits until `pool` has a free machine.
async fn wait_for_pool(client: &Client, pool: &str, patience: u64) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(patience);
    while client.free_machines(pool).await? == 0 {
        if Instant::now() > deadline {
            return Err(format!("pool {pool} has no free machine").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn check_output(output: &[u8], job: &JobArgs, name: &str) -> Result<(), Error> {
    if let Some(expect) = &job.expect {
        let text = String::from_utf8_lossy(output);
        if !text.contains(expect.as_str()) {
            return Err(format!("output {name} lacks {expect:?}:\n{text}").into());
        }
    }
    Ok(())
}

async fn run_jobs(
    target: &Target,
    job: &JobArgs,
    count: usize,
    all_at_once: bool,
    wait_pool: bool,
    warmup: usize,
) -> Result<Value, Error> {
    let client = Arc::new(Client::new(target));
    let lab = target.courselab.clone();
    let files = client.upload_job(&lab, &job.job).await?;
    let pool = job.image.split('.').next().unwrap_or_default().to_string();
    for _ in 0..warmup {
        if wait_pool {
            wait_for_pool(&client, &pool, job.patience).await?;
        }
        one_job(&client, &lab, &files, job, "warmup").await?;
    }
    let mut samples = Vec::with_capacity(count);
    let wall = Instant::now();
    if all_at_once {
        let mut pending = Vec::with_capacity(count);
        for _ in 0..count {
            let name = output_name("batch");
            let path = client.output_path(&lab, &name);
            let body = job_body(&job.image, &files, &name, job.timeout);
            let t = Instant::now();
            client.add_job(&lab, &body).await?;
            pending.push((t, path, name));
        }
        let patience = Duration::from_secs(job.patience);
        let waits = pending.into_iter().map(|(t, path, name)| async move {
            let output = wait_file(&path, patience, job.poll).await?;
            check_output(&output, job, &name)?;
            Ok::<_, Error>(t.elapsed())
        });
        for result in futures::future::join_all(waits).await {
            samples.push(result?);
        }
    } else {
        for i in 0..count {
            if wait_pool {
                wait_for_pool(&client, &pool, job.patience).await?;
            }
            samples.push(one_job(&client, &lab, &files, job, "seq").await?);
            if (i + 1).is_multiple_of(10) {
                eprintln!("bench jobs: {}/{count}", i + 1);
            }
        }
    }
    let wall_secs = wall.elapsed().as_secs_f64();
    let mut out = summary(&samples);
    out["wall_s"] = json!(wall_secs);
    out["jobs_per_s"] = json!(count as f64 / wall_secs);
    Ok(out)
}

async fn run_hostile(
    target: &Target,
    job: &JobArgs,
    count: usize,
    hostile: &[PathBuf],
    hostile_timeout: u64,
    pace: Duration,
) -> Result<Value, Error> {
    let client = Arc::new(Client::new(target));
    let lab = target.courselab.clone();
    let files = client.upload_job(&lab, &job.job).await?;
    // Warm up (machines made, caches filled), then the normal job alone.
    one_job(&client, &lab, &files, job, "warmup").await?;
    let mut alone = Vec::with_capacity(count);
    for _ in 0..count {
        alone.push(one_job(&client, &lab, &files, job, "alone").await?);
        tokio::time::sleep(pace).await;
    }

    // Each hostile job in its own courselab, resubmitted whenever it ends, until we stop.
    let stop = Arc::new(AtomicBool::new(false));
    let hostile_runs = Arc::new(AtomicU64::new(0));
    let mut keepers = Vec::new();
    for dir in hostile {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let hlab = format!("{lab}-{name}");
        let hfiles = client.upload_job(&hlab, dir).await?;
        let hjob = JobArgs {
            job: dir.clone(),
            image: job.image.clone(),
            timeout: hostile_timeout,
            expect: None,
            patience: hostile_timeout + 120,
            poll: Duration::from_millis(50),
        };
        let (client, stop, runs) = (client.clone(), stop.clone(), hostile_runs.clone());
        keepers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                if let Err(e) = one_job(&client, &hlab, &hfiles, &hjob, &name).await {
                    eprintln!("bench hostile: {name}: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                runs.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Let the hostile jobs get going.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut beside = Vec::with_capacity(count);
    let mut failure = None;
    for _ in 0..count {
        match one_job(&client, &lab, &files, job, "beside").await {
            Ok(d) => {
                beside.push(d);
                tokio::time::sleep(pace).await;
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    stop.store(true, Ordering::Release);
    eprintln!("bench hostile: waiting for the hostile jobs in flight to end");
    for k in keepers {
        let _ = k.await;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let ratio = percentile(&beside, 50.0) / percentile(&alone, 50.0);
    Ok(json!({
        "alone": summary(&alone),
        "beside": summary(&beside),
        "median_ratio": ratio,
        "hostile_jobs_run": hostile_runs.load(Ordering::Relaxed),
    }))
}
