//! `addJob`, `jobs` and `getPartialOutput`: jobs in the store.
//!
//! addJob only checks and queues (one store call, one cached image list): the manager
//! runs the job. It answers in milliseconds, well inside Autolab's 30-second timeout, so
//! Autolab never retries a POST that had in fact succeeded.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use serde::Serialize;

use super::ApiState;
use super::job_request::JobRequest;
use super::request::{Params, all_digits, refuse, small_body};
use super::status::{self, ApiError};
use crate::labs::{Courselab, SafeName};
use crate::model::{Counter, InputFile, Job, JobView, Machine};
use crate::store::Added;

/// How long fetching a running job's partial output may take (Autolab waits 30 s).
const PARTIAL_OUTPUT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Serialize)]
struct JobAdded {
    /// A string, as Python sent it (Autolab calls `.to_i`).
    #[serde(rename = "jobId")]
    job_id: String,
}

/// `POST /addJob/KEY/CL/`: checks the job like Python's `validateJob` and queues it.
pub async fn add_job(
    State(api): State<Arc<ApiState>>,
    Params((key, courselab)): Params<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    // The key and the courselab name before the body: a stranger's body is never read.
    let checked = api
        .keys
        .check(&key)
        .and_then(|digest| Ok(api.labs.courselab_of(&digest, &courselab)?));
    let lab = match checked {
        Ok(lab) => lab,
        Err(e) => return Err(refuse(body, e)),
    };
    let body = small_body(body, "addJob").await?;
    let request = JobRequest::parse(&body).map_err(ApiError::Request)?;
    let mut job = build_job(&api, &lab, &request)?;

    let app = &api.app;
    // Python counted each job that reached validation, rejected or not: a rejected one
    // here, an accepted one by `add_job` (so that adding costs one store call).
    let problems = validate(&api, &lab, &job).await?;
    if !problems.is_empty() {
        for problem in &problems {
            job.trace(format!("validateJob: {problem}"));
        }
        job.trace(format!(
            "validateJob: Job rejected: {} errors",
            problems.len()
        ));
        app.store.incr(Counter::JobRequests, 1).await?;
        job.id = app.store.allocate_job_id().await?;
        app.store.add_dead(&job, app.config.jobs.max_dead).await?;
        tracing::info!(job = job.id, name = %job.name, courselab = %lab.name, ?problems, "job rejected");
        return Err(ApiError::Rejected(job.trace));
    }

    // One store call: counts the request, takes the id, stamps the job and queues it (or,
    // with the duplicate guard, finds the live job this request sends again).
    let max_queued = app.config.jobs.max_queued;
    let id = if app.config.jobs.deduplicate {
        match app.store.add_job_once(&mut job, max_queued).await? {
            Added::New => job.id,
            Added::Existing(id) => {
                tracing::info!(job = id, name = %job.name, courselab = %lab.name, "job sent again: answered with the live one");
                id
            }
        }
    } else {
        app.store.add_job(&mut job, max_queued).await?;
        job.id
    };
    if id == job.id {
        tracing::info!(job = job.id, name = %job.name, courselab = %lab.name, image = %job.vm.image, "job added");
    }
    Ok(status::ok(
        status::JOB_ADDED,
        JobAdded {
            job_id: id.to_string(),
        },
    ))
}

/// The job a request describes, its names checked and its paths made.
/// A path as the job stores it: its own buffer when it is UTF-8 (as one made of safe names
/// under a UTF-8 courselabs directory is), which spares `to_string_lossy`'s slower scan and
/// a copy on every `addJob`.
fn path_text(path: std::path::PathBuf) -> String {
    path.into_os_string()
        .into_string()
        .unwrap_or_else(|raw| raw.to_string_lossy().into_owned())
}

fn build_job(api: &ApiState, lab: &Courselab, request: &JobRequest) -> Result<Job, ApiError> {
    let config = &api.app.config;
    let mut input = Vec::with_capacity(request.files.len());
    for file in &request.files {
        let local = SafeName::new("localFile", &file.local_file)?;
        let dest = SafeName::new("destFile", &file.dest_file)?;
        input.push(InputFile {
            local_file: path_text(lab.file(&local)),
            dest_file: dest.as_str().to_string(),
        });
    }
    let output = SafeName::new("output_file", &request.output_file)?;
    // An empty image is reported by validation, as Tango did ("Missing job.vm.image").
    if !request.image.is_empty() {
        SafeName::new("image", &request.image)?;
    }
    let memory = match config.limits.memory_mb {
        0 => None,
        mb => Some(mb),
    };
    Ok(Job {
        name: request.name.clone(),
        vm: Machine {
            name: Machine::pool_name(&request.image),
            image: request.image.clone(),
            vmms: config.vmms.name.clone(),
            cores: config.limits.cores,
            memory,
            ..Machine::default()
        },
        input,
        output_file: path_text(api.labs.output_path(lab, &output)),
        notify_url: request.notify_url.clone(),
        timeout: request.timeout.unwrap_or(config.timeouts.run_job),
        max_output: config.max_output(request.max_kb),
        disable_network: request.disable_network,
        access_key_id: request.access_key_id.clone(),
        access_key: request.access_key.clone(),
        ..Job::default()
    })
}

/// Python's `validateJob` checks, in its order, with its messages. Input files are not
/// required to exist yet (Tango did not check either).
async fn validate(api: &ApiState, lab: &Courselab, job: &Job) -> Result<Vec<String>, ApiError> {
    let mut problems = Vec::new();
    if job.name.is_empty() {
        problems.push("Missing job.name".to_string());
    }
    if job.vm.image.is_empty() {
        problems.push("Missing job.vm.image".to_string());
    } else if !api
        .images
        .contains(api.app.vmms.as_ref(), &job.vm.image)
        .await?
    {
        problems.push(format!("Image not found: {}", job.vm.image));
    }
    // One stat of a local directory costs microseconds, less than a trip to tokio's
    // blocking pool (a thread wake-up and two context switches), as in `labs.rs`.
    let output_dir_exists = std::fs::metadata(api.labs.output_dir(lab))
        .map(|m| m.is_dir())
        .unwrap_or(false);
    if !output_dir_exists {
        // Python repeated this line once per input file too (a copy-paste slip); once is
        // enough to say that `open` was not called.
        problems.push(format!("Bad output path: {}", job.output_file));
    }
    if !job.input.iter().any(|f| f.dest_file == "Makefile") {
        problems.push("Missing Makefile in input files.".to_string());
    }
    Ok(problems)
}

#[derive(Serialize)]
struct JobList<'a> {
    jobs: Vec<JobView<'a>>,
}

/// `GET /jobs/KEY/0/` (live jobs) or `/jobs/KEY/1/` (dead jobs); any other number: `[]`.
pub async fn jobs(
    State(api): State<Arc<ApiState>>,
    Params((key, which)): Params<(String, String)>,
) -> Result<Response, ApiError> {
    api.keys.check(&key)?;
    let Ok(which) = which.trim().parse::<i64>() else {
        return Err(ApiError::Request(format!(
            "Invalid job list {which:?}: use 0 for live jobs or 1 for dead jobs"
        )));
    };
    let mut jobs = match which {
        0 => api.app.store.live_jobs().await?,
        1 => api.app.store.dead_jobs().await?,
        _ => Vec::new(),
    };
    jobs.sort_by_key(|job| job.id);
    Ok(status::ok(
        status::OBTAINED_JOBS,
        JobList {
            jobs: jobs.iter().map(Job::view).collect(),
        },
    ))
}

#[derive(Serialize)]
struct PartialOutput {
    output: String,
}

/// `GET /getPartialOutput/KEY/JOBID/`: what a running job has written so far.
pub async fn partial_output(
    State(api): State<Arc<ApiState>>,
    Params((key, job_id)): Params<(String, String)>,
) -> Result<Response, ApiError> {
    if !all_digits(&job_id) {
        return Err(ApiError::NotFound); // Tango's route demanded digits
    }
    api.keys.check(&key)?;
    let failed = |why: String| ApiError::Failed(format!("getPartialOutput request failed: {why}"));
    let job = match job_id.parse::<u64>() {
        Ok(id) => api.app.store.live_job(id).await?,
        Err(_) => None, // more digits than any id
    };
    let Some(job) = job else {
        return Err(failed("Invalid job id".into()));
    };
    if !job.assigned || job.vm.id.is_none() {
        return Err(failed(format!("Job {} is not running yet", job.id)));
    }
    let output = tokio::time::timeout(
        PARTIAL_OUTPUT_TIMEOUT,
        api.app.vmms.get_partial_output(&job.vm, job.max_output),
    )
    .await
    .map_err(|_| {
        failed(format!(
            "the backend did not answer within {} seconds",
            PARTIAL_OUTPUT_TIMEOUT.as_secs()
        ))
    })?
    .map_err(|e| failed(e.to_string()))?;
    Ok(status::ok(
        status::PARTIAL_OUTPUT_OBTAINED,
        PartialOutput {
            output: String::from_utf8_lossy(&output).into_owned(),
        },
    ))
}
