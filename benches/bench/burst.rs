//! Deadline bursts: many jobs sent at once, each timed from its `addJob` to its callback (what
//! Autolab waits for), and the engine's own limit measured the same way, with bare
//! `docker run --rm IMAGE true` processes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::routing::post;
use serde_json::{Value, json};

use super::{Client, Error, JobArgs, Target, job_body, output_name, percentile, summary};

/// Callbacks received: job number -> when its callback arrived, and whether its output held
/// what it should.
#[derive(Default)]
struct Arrivals {
    at: HashMap<usize, (Instant, bool)>,
}

type Shared = Arc<(Mutex<Arrivals>, tokio::sync::Notify, Option<String>)>;

/// A callback receiver on 127.0.0.1; returns its base URL and what it records.
async fn receiver(expect: Option<String>) -> Result<(String, Shared), Error> {
    let shared: Shared = Arc::new((
        Mutex::new(Arrivals::default()),
        tokio::sync::Notify::new(),
        expect,
    ));
    let app = axum::Router::new()
        .route(
            "/cb/{n}",
            post(
                |State(shared): State<Shared>,
                 UrlPath(n): UrlPath<usize>,
                 body: axum::body::Bytes| async move {
                    let now = Instant::now();
                    let ok = shared
                        .2
                        .as_ref()
                        .is_none_or(|e| memchr::memmem::find(&body, e.as_bytes()).is_some());
                    if let Ok(mut arrivals) = shared.0.lock() {
                        arrivals.at.entry(n).or_insert((now, ok));
                    }
                    shared.1.notify_waiters();
                    "ok"
                },
            ),
        )
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, shared))
}

/// Waits until jobs `numbers` have all been called back, or `patience` runs out.
async fn wait_for(shared: &Shared, numbers: &[usize], patience: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + patience;
    loop {
        let notified = shared.1.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let missing = {
            let arrivals = shared.0.lock().map_err(|_| "lock")?;
            numbers
                .iter()
                .filter(|n| !arrivals.at.contains_key(n))
                .count()
        };
        if missing == 0 {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("{missing} callbacks missing after {patience:?}").into());
        }
        let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), notified).await;
    }
}

/// Jobs sent at once (`sequential` false) or one after another, each timed from `addJob` to
/// its callback. Reports jobs/s over the whole burst (first `addJob` sent to last callback)
/// and the spread of each job's time.
pub async fn burst(
    target: &Target,
    job: &JobArgs,
    count: usize,
    sequential: bool,
    warmup: usize,
) -> Result<Value, Error> {
    let client = Arc::new(Client::new(target));
    let lab = target.courselab.clone();
    let files = client.upload_job(&lab, &job.job).await?;
    let (url, shared) = receiver(job.expect.clone()).await?;
    let patience = Duration::from_secs(job.patience);
    let body_for = |n: usize| {
        let mut body = job_body(&job.image, &files, &output_name("burst"), job.timeout);
        body["callback_url"] = json!(format!("{url}/cb/{n}"));
        body
    };
    for n in 0..warmup {
        client.add_job(&lab, &body_for(usize::MAX - n)).await?;
        wait_for(&shared, &[usize::MAX - n], patience).await?;
    }
    let mut sent: Vec<Instant> = Vec::with_capacity(count);
    let start = Instant::now();
    if sequential {
        for n in 0..count {
            sent.push(Instant::now());
            client.add_job(&lab, &body_for(n)).await?;
            wait_for(&shared, &[n], patience).await?;
        }
    } else {
        // Every addJob in flight at once, as a class's submissions arrive on deadline night.
        let adds = (0..count).map(|n| {
            let client = client.clone();
            let body = body_for(n);
            let lab = lab.clone();
            async move {
                let at = Instant::now();
                client.add_job(&lab, &body).await.map(|_| at)
            }
        });
        for added in futures::future::join_all(adds).await {
            sent.push(added?);
        }
        let numbers: Vec<usize> = (0..count).collect();
        wait_for(&shared, &numbers, patience).await?;
    }
    let arrivals = shared.0.lock().map_err(|_| "lock")?;
    let mut samples = Vec::with_capacity(count);
    let mut last = start;
    let mut wrong = 0;
    for (n, at) in sent.iter().enumerate() {
        let (done, ok) = arrivals.at[&n];
        samples.push(done.duration_since(*at));
        last = last.max(done);
        if !ok {
            wrong += 1;
        }
    }
    if wrong > 0 {
        return Err(format!("{wrong} outputs lacked {:?}", job.expect).into());
    }
    let wall = last.duration_since(start).as_secs_f64();
    let mut out = summary(&samples);
    out["wall_s"] = json!(wall);
    out["jobs_per_s"] = json!(count as f64 / wall);
    out["first_ms"] = json!(
        samples
            .iter()
            .min()
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    );
    Ok(out)
}

/// `docker run --rm IMAGE true`, `count` times, `parallel` at once: the engine's own pace for
/// a container that does nothing, with the engine's defaults. With `shared_netns`, every run
/// joins one idle container's network namespace (`--network container:ID`) instead of
/// having one made: what the engine spends on a container's own network.
pub async fn docker_run(
    image: &str,
    count: usize,
    parallel: usize,
    shared_netns: bool,
) -> Result<Value, Error> {
    let holder = if shared_netns {
        let out = tokio::process::Command::new("docker")
            .args([
                "run",
                "-d",
                "--rm",
                "--log-driver",
                "none",
                image,
                "sleep",
                "86400",
            ])
            .output()
            .await?;
        if !out.status.success() {
            return Err(format!(
                "cannot start a holder: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        None
    };
    let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
    if let Some(id) = &holder {
        args.extend(["--network".into(), format!("container:{id}")]);
    }
    args.extend([image.to_string(), "true".into()]);
    let slots = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let start = Instant::now();
    let runs = (0..count).map(|_| {
        let slots = slots.clone();
        let args = args.clone();
        let image = image.to_string();
        async move {
            let _slot = slots.acquire().await.map_err(|e| e.to_string())?;
            let t = Instant::now();
            let status = tokio::process::Command::new("docker")
                .args(&args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("docker run --rm {image} true: {status}"));
            }
            Ok::<_, String>(t.elapsed())
        }
    });
    let results = futures::future::join_all(runs).await;
    let wall = start.elapsed().as_secs_f64();
    if let Some(id) = &holder {
        let _ = tokio::process::Command::new("docker")
            .args(["rm", "-f", id])
            .output()
            .await;
    }
    let mut samples = Vec::with_capacity(count);
    for run in results {
        samples.push(run?);
    }
    let mut out = summary(&samples);
    out["parallel"] = json!(parallel);
    out["shared_netns"] = json!(shared_netns);
    out["wall_s"] = json!(wall);
    out["runs_per_s"] = json!(count as f64 / wall);
    out["p50_ms"] = json!(percentile(&samples, 50.0));
    Ok(out)
}

/// Fair share under a burst: `count` jobs of one courselab sent at once, then, once they are
/// all queued, one job of another courselab. Reports that lone job's time from its `addJob`
/// to its callback (`lone_ms`), beside the burst's own times and its length: under FIFO the
/// lone job waits for the whole burst; with fair share it runs next.
pub async fn fair(target: &Target, job: &JobArgs, count: usize) -> Result<Value, Error> {
    let client = Arc::new(Client::new(target));
    let busy = target.courselab.clone();
    let lone_lab = format!("{busy}-other");
    let files = client.upload_job(&busy, &job.job).await?;
    client.upload_job(&lone_lab, &job.job).await?;
    let (url, shared) = receiver(job.expect.clone()).await?;
    let patience = Duration::from_secs(job.patience);
    let body_for = |n: usize| {
        let mut body = job_body(&job.image, &files, &output_name("fair"), job.timeout);
        body["callback_url"] = json!(format!("{url}/cb/{n}"));
        body
    };
    let start = Instant::now();
    let adds = (0..count).map(|n| {
        let client = client.clone();
        let body = body_for(n);
        let lab = busy.clone();
        async move {
            let at = Instant::now();
            client.add_job(&lab, &body).await.map(|_| at)
        }
    });
    let mut sent = Vec::with_capacity(count);
    for added in futures::future::join_all(adds).await {
        sent.push(added?);
    }
    let lone_sent = Instant::now();
    client.add_job(&lone_lab, &body_for(count)).await?;
    let numbers: Vec<usize> = (0..=count).collect();
    wait_for(&shared, &numbers, patience).await?;
    let arrivals = shared.0.lock().map_err(|_| "lock")?;
    let samples: Vec<Duration> = sent
        .iter()
        .enumerate()
        .map(|(n, at)| arrivals.at[&n].0.duration_since(*at))
        .collect();
    let (lone_done, _) = arrivals.at[&count];
    let last = arrivals
        .at
        .values()
        .map(|(at, _)| *at)
        .max()
        .unwrap_or(start);
    let done_before_lone = arrivals
        .at
        .iter()
        .filter(|(n, (at, _))| **n < count && *at < lone_done)
        .count();
    let mut out = json!({
        "count": count,
        "lone_ms": lone_done.duration_since(lone_sent).as_secs_f64() * 1000.0,
        "burst_jobs_before_lone": done_before_lone,
        "wall_s": last.duration_since(start).as_secs_f64(),
    });
    out["burst"] = summary(&samples);
    Ok(out)
}
