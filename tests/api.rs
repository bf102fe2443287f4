//! The REST API against a real server on 127.0.0.1:0, driven the way Autolab drives it
//! (form-urlencoded content types, a lowercase `filename` header, a fresh connection per
//! request), asserting the exact JSON of docs/rest-api.md, types included.

// A test is a scenario read from top to bottom: its length is its story, not several things.
#![allow(clippy::too_many_lines)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use proptest::prelude::*;
use serde_json::{Value, json};
use support::api::{
    IMAGE, KEY, QUIET, TestServer, autolab_job, hello_files, json_of, md5_file, md5_hex,
    request_bytes, resident_bytes,
};
use tango::api::{Endpoint, HELLO};
use tango::labs::{Labs, MAX_NAME_LEN, check_name};
use tango::model::{Machine, PoolTarget};
use tango::store::JobStore;
use tango::store::memory::MemoryStore;

const LAB: &str = "course1-hello";

fn memory() -> Arc<dyn JobStore> {
    Arc::new(MemoryStore::new())
}

/// The Redis store, for the store-generic scenarios below (each `*_memory` test has a
/// `*_redis` twin).
async fn redis() -> Arc<dyn JobStore> {
    support::redis_store(&support::redis_config()).await
}

/// Checks one trace line: `<ctime in UTC, within a minute of now>|<message>`.
fn assert_trace_line(line: &str, message: &str) {
    let (stamp, rest) = line
        .split_once('|')
        .unwrap_or_else(|| panic!("no '|' in trace line {line:?}"));
    assert_eq!(rest, message, "trace line {line:?}");
    let at = chrono::NaiveDateTime::parse_from_str(stamp, "%a %b %e %H:%M:%S %Y")
        .unwrap_or_else(|e| panic!("trace time {stamp:?} is not Python's ctime: {e}"));
    let now = chrono::Utc::now().naive_utc();
    assert!(
        (now - at).num_seconds().abs() < 60,
        "trace time {stamp:?} is not UTC now ({now})"
    );
    assert_eq!(stamp.len(), 24, "ctime is 24 characters: {stamp:?}");
}

// ---------------------------------------------------------------------------------------
// The Autolab round trip

async fn autolab_round_trip(store: Arc<dyn JobStore>) {
    let server = TestServer::start_with(store, |_| {}).await;

    // GET / is the liveness text.
    let hello = server.client.get(&server.url).send().await.unwrap();
    assert_eq!(hello.status(), 200);
    assert_eq!(hello.headers()["content-type"], "text/html; charset=UTF-8");
    assert_eq!(hello.text().await.unwrap(), HELLO);

    // open: a new courselab.
    assert_eq!(
        server.open(LAB).await,
        json!({"statusId": 0, "statusMsg": "Created directory", "files": {}})
    );
    assert!(server.lab_dir(LAB).join("output").is_dir());

    // upload, as Autolab does.
    for (name, body) in hello_files() {
        assert_eq!(
            server.upload(LAB, name, body).await,
            json!({"statusId": 0, "statusMsg": "Uploaded file"})
        );
        assert_eq!(std::fs::read(server.lab_dir(LAB).join(name)).unwrap(), body);
    }

    // open again: the real MD5 of each file, so Autolab can skip unchanged uploads.
    let files: BTreeMap<&str, String> = hello_files()
        .iter()
        .map(|(name, body)| (*name, md5_hex(body)))
        .collect();
    assert_eq!(
        server.open(LAB).await,
        json!({"statusId": 0, "statusMsg": "Found directory", "files": files})
    );

    // The same bytes again: "File exists"; different bytes: replaced.
    let (name, body) = hello_files()[1];
    assert_eq!(
        server.upload(LAB, name, body).await,
        json!({"statusId": 0, "statusMsg": "File exists"})
    );
    assert_eq!(
        server
            .upload(LAB, name, b"int main(void) { return 1; }\n")
            .await,
        json!({"statusId": 0, "statusMsg": "Uploaded file"})
    );
    assert_eq!(
        std::fs::read(server.lab_dir(LAB).join(name)).unwrap(),
        b"int main(void) { return 1; }\n"
    );
    assert_eq!(
        server.open(LAB).await["files"][name],
        md5_hex(b"int main(void) { return 1; }\n")
    );

    // addJob with Autolab's seven fields.
    let job = autolab_job("course1");
    let added = server.add_job(LAB, &job).await;
    let job_id = added["jobId"]
        .as_str()
        .unwrap_or_else(|| panic!("jobId must be a string: {added}"))
        .to_string();
    assert_eq!(
        added,
        json!({"statusId": 0, "statusMsg": "Job added", "jobId": job_id})
    );
    let id: u64 = job_id.parse().expect("jobId is a number");

    // jobs: the queued job, in Tango's shape.
    let live = server.get_json(&format!("/jobs/{KEY}/0/")).await;
    assert!(
        !serde_json::to_string(&live).unwrap().contains(KEY),
        "the key leaked into /jobs: {live}"
    );
    assert_eq!(live["statusId"], 0);
    assert_eq!(live["statusMsg"], "Found list of jobs");
    let jobs = live["jobs"].as_array().expect("jobs is a list");
    assert_eq!(jobs.len(), 1);
    let listed = &jobs[0];
    let lab_dir = server.lab_dir(LAB);
    let lab_dir = lab_dir.to_str().unwrap();
    let trace = listed["trace"].as_array().expect("trace is a list");
    assert_eq!(trace.len(), 1);
    assert_trace_line(
        trace[0].as_str().unwrap(),
        &format!("Added job course1_hello_1_user@x.edu:{id} to queue"),
    );
    let tango_fields = json!({
        "retries": 0,
        "outputFile": format!("{lab_dir}/output/user@x.edu_1_hello_autograde.txt"),
        "name": "course1_hello_1_user@x.edu",
        "notifyURL": job["callback_url"],
        "maxOutputFileSize": 1_024_000,
        "assigned": false,
        "timeout": 180,
        "id": id,
        "trace": trace,
        "vm": {"network": null, "resume": null, "image": IMAGE, "memory": 2048,
               "vmms": "localDocker", "cores": null, "disk": null, "id": null, "name": IMAGE},
        "input": [
            {"destFile": "hello.c", "localFile": format!("{lab_dir}/user@x.edu_1_hello.c")},
            {"destFile": "Makefile", "localFile": format!("{lab_dir}/autograde-Makefile")},
            {"destFile": "autograde.tar", "localFile": format!("{lab_dir}/autograde.tar")},
        ],
    });
    for (field, expected) in tango_fields.as_object().unwrap() {
        assert_eq!(&listed[field], expected, "field {field} of {listed}");
    }
    // Autolab's redaction strips `courselabs/<up to the first '-'>`: the shape is kept.
    assert!(
        listed["outputFile"]
            .as_str()
            .unwrap()
            .contains(&format!("courselabs/{}-{LAB}/", Labs::tenant(KEY))),
        "{listed}"
    );
    // Our extra fields come after Tango's.
    assert_eq!(listed["disable_network"], false);
    assert!(listed["timings"]["added"].is_f64(), "{listed}");

    assert_eq!(
        server.get_json(&format!("/jobs/{KEY}/1/")).await,
        json!({"statusId": 0, "statusMsg": "Found list of jobs", "jobs": []})
    );

    // info: nine fields, with Tango's types.
    let info = server.get_json(&format!("/info/{KEY}/")).await;
    assert_eq!(info["statusId"], 0);
    assert_eq!(info["statusMsg"], "Found info successfully");
    let fields = info["info"].as_object().expect("info is an object");
    assert_eq!(
        fields.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "elapsed_secs",
            "job_requests",
            "job_retries",
            "waitvm_timeouts",
            "runjob_timeouts",
            "copyin_errors",
            "runjob_errors",
            "copyout_errors",
            "num_threads"
        ])
    );
    assert!(info["info"]["elapsed_secs"].is_f64());
    assert!(info["info"]["elapsed_secs"].as_f64().unwrap() >= 0.0);
    assert_eq!(info["info"]["job_requests"], 1);
    for counter in [
        "job_retries",
        "waitvm_timeouts",
        "runjob_timeouts",
        "copyin_errors",
        "runjob_errors",
        "copyout_errors",
    ] {
        assert_eq!(info["info"][counter], 0, "{counter}");
    }
    assert_eq!(info["info"]["num_threads"], 1);

    // pool: no pools yet.
    assert_eq!(
        server.get_json(&format!("/pool/{KEY}/")).await,
        json!({"statusId": 0, "statusMsg": "Found all pools", "pools": {}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autolab_round_trip_memory() {
    let _shared = QUIET.read().await;
    autolab_round_trip(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autolab_round_trip_redis() {
    let _shared = QUIET.read().await;
    autolab_round_trip(redis().await).await;
}

// ---------------------------------------------------------------------------------------
// addJob validation and options

async fn rejected_job_is_answered_with_its_trace_and_kept_dead(store: Arc<dyn JobStore>) {
    let server = TestServer::start_with(store, |_| {}).await;
    // The courselab was never opened: its output directory does not exist.
    let job = json!({
        "image": "nosuchimage",
        "files": [{"localFile": "a.c", "destFile": "a.c"}],
        "output_file": "out.txt",
        "timeout": 30,
        "callback_url": "http://autolab/cb?dave=X&submission_id=1",
        "jobName": "",
        "disable_network": false,
    });
    let answer = server.add_job("never-opened", &job).await;
    assert_eq!(answer["statusId"], -1);
    let lines = answer["statusMsg"]
        .as_array()
        .unwrap_or_else(|| panic!("statusMsg must be the trace list: {answer}"));
    let output = server
        .lab_dir("never-opened")
        .join("output/out.txt")
        .to_str()
        .unwrap()
        .to_string();
    let expected = [
        "validateJob: Missing job.name".to_string(),
        "validateJob: Image not found: nosuchimage".to_string(),
        format!("validateJob: Bad output path: {output}"),
        "validateJob: Missing Makefile in input files.".to_string(),
        "validateJob: Job rejected: 4 errors".to_string(),
    ];
    assert_eq!(lines.len(), expected.len(), "{answer}");
    for (line, message) in lines.iter().zip(&expected) {
        assert_trace_line(line.as_str().unwrap(), message);
    }

    // The rejected job is in the dead list, with the same trace.
    let dead = server.get_json(&format!("/jobs/{KEY}/1/")).await;
    let dead = dead["jobs"].as_array().unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0]["id"].is_u64());
    assert_eq!(dead[0]["trace"], answer["statusMsg"]);
    assert_eq!(
        dead[0]["notifyURL"],
        "http://autolab/cb?dave=X&submission_id=1"
    );
    assert_eq!(dead[0]["vm"]["id"], Value::Null);
    assert_eq!(dead[0]["assigned"], false);
    assert_eq!(dead[0]["timeout"], 30);
    // Nothing was queued; the request was counted, as Python counted it.
    assert_eq!(
        server.get_json(&format!("/jobs/{KEY}/0/")).await["jobs"],
        json!([])
    );
    assert_eq!(
        server.get_json(&format!("/info/{KEY}/")).await["info"]["job_requests"],
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_job_is_answered_with_its_trace_and_kept_dead_memory() {
    let _shared = QUIET.read().await;
    rejected_job_is_answered_with_its_trace_and_kept_dead(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_job_is_answered_with_its_trace_and_kept_dead_redis() {
    let _shared = QUIET.read().await;
    rejected_job_is_answered_with_its_trace_and_kept_dead(redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_job_options_are_honoured() {
    let _shared = QUIET.read().await;
    let server = TestServer::start().await;
    server.prepare_lab(LAB).await;

    // max_kb lowers the output cap; timeout 0 means the configured default; tango-cli's
    // notifyURL is the callback when callback_url is absent.
    let mut job = autolab_job("course1");
    let fields = job.as_object_mut().unwrap();
    fields.remove("callback_url");
    fields.insert("notifyURL".into(), json!("http://cli.example/cb"));
    fields.insert("max_kb".into(), json!(4));
    fields.insert("timeout".into(), json!(0));
    fields.insert("disable_network".into(), json!(true));
    let a = server.add_job(LAB, &job).await;
    assert_eq!(a["statusId"], 0, "{a}");

    // An empty callback_url is echoed as sent (Autolab's polling mode).
    let mut job = autolab_job("course1");
    job["output_file"] = json!("user@x.edu_2_hello_autograde.txt");
    job["callback_url"] = json!("");
    job["max_kb"] = json!(1_000_000_000u64);
    job["timeout"] = json!(null);
    let b = server.add_job(LAB, &job).await;
    assert_eq!(b["statusId"], 0, "{b}");

    let live = server.get_json(&format!("/jobs/{KEY}/0/")).await;
    let by_id = |id: &Value| {
        live["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["id"].as_u64().map(|n| n.to_string()).as_deref() == id.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("job {id} not listed: {live}"))
    };
    let a = by_id(&a["jobId"]);
    assert_eq!(a["maxOutputFileSize"], 4096);
    assert_eq!(a["timeout"], 60);
    assert_eq!(a["notifyURL"], "http://cli.example/cb");
    assert_eq!(a["disable_network"], true);
    let b = by_id(&b["jobId"]);
    assert_eq!(
        b["maxOutputFileSize"], 1_024_000,
        "max_kb never raises the cap"
    );
    assert_eq!(b["notifyURL"], "");
    assert_eq!(b["timeout"], 60);
    assert_eq!(b["disable_network"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_jobs_with_the_stores_message() {
    let _shared = QUIET.read().await;
    let server = TestServer::start_with(memory(), |c| c.jobs.max_queued = 1).await;
    server.prepare_lab(LAB).await;
    let first = server.add_job(LAB, &autolab_job("course1")).await;
    assert_eq!(first["statusId"], 0, "{first}");
    let mut second = autolab_job("course1");
    second["output_file"] = json!("user@x.edu_2_hello_autograde.txt");
    assert_eq!(
        server.add_job(LAB, &second).await,
        json!({"statusId": -1, "statusMsg": "Job queue is full (1 jobs waiting); try again later"})
    );
}

/// Autolab resends an addJob whose answer timed out: the resend gets the queued job's id,
/// and only one job runs. Another submission of the same lab is a job of its own.
async fn a_submission_sent_twice_is_queued_once(store: Arc<dyn JobStore>) {
    let _shared = QUIET.read().await;
    let server = TestServer::start_with(store, |_| {}).await;
    server.prepare_lab(LAB).await;
    let first = server.add_job(LAB, &autolab_job("course1")).await;
    assert_eq!(first["statusId"], 0, "{first}");
    let again = server.add_job(LAB, &autolab_job("course1")).await;
    assert_eq!(
        again, first,
        "the resend is answered as the first was, with its id"
    );
    let mut other = autolab_job("course1");
    other["output_file"] = json!("user@x.edu_2_hello_autograde.txt");
    let second = server.add_job(LAB, &other).await;
    assert_eq!(second["statusId"], 0, "{second}");
    assert_ne!(second["jobId"], first["jobId"]);
    let live = server.get_json(&format!("/jobs/{KEY}/0/")).await;
    assert_eq!(live["jobs"].as_array().map(Vec::len), Some(2), "{live}");
    let info = server.get_json(&format!("/info/{KEY}/")).await;
    assert_eq!(info["info"]["job_requests"], 3, "every request is counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_sent_twice_is_queued_once_memory() {
    a_submission_sent_twice_is_queued_once(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_sent_twice_is_queued_once_redis() {
    a_submission_sent_twice_is_queued_once(redis().await).await;
}

/// `/cancel` (an extension): a queued job leaves the queue; ended, unknown, wrong key and
/// a malformed id each get their answer. (A manager ending the job: `tests/pipeline.rs`.)
async fn cancel_answers_for_each_state_of_a_job(store: Arc<dyn JobStore>) {
    let _shared = QUIET.read().await;
    let server = TestServer::start_with(store, |_| {}).await;
    server.prepare_lab(LAB).await;
    let added = server.add_job(LAB, &autolab_job("course1")).await;
    let id = added["jobId"].as_str().unwrap().to_string();
    let wrong = server
        .post(&format!("/cancel/nokey/{id}/"), &[], Vec::new())
        .await;
    assert_eq!(
        wrong,
        json!({"statusId": -1, "statusMsg": "Key not recognized"})
    );
    let answer = server
        .post(&format!("/cancel/{KEY}/{id}/"), &[], Vec::new())
        .await;
    assert_eq!(
        answer,
        json!({"statusId": 0, "statusMsg": "Cancel requested", "jobId": id, "was": "queued"})
    );
    let server_store = server.app.store.clone();
    assert!(server_store.queued_ids().await.unwrap().is_empty());
    let unknown = server
        .post(&format!("/cancel/{KEY}/987654/"), &[], Vec::new())
        .await;
    assert_eq!(
        unknown,
        json!({"statusId": -1, "statusMsg": "Job 987654 not found"})
    );
    // A rejected job is among the dead ones: already finished.
    let mut bad = autolab_job("course1");
    bad["image"] = json!("nosuchimage");
    bad["output_file"] = json!("other.txt");
    server.add_job(LAB, &bad).await;
    let dead = server.get_json(&format!("/jobs/{KEY}/1/")).await;
    let dead_id = dead["jobs"][0]["id"].as_u64().expect("a dead job");
    let finished = server
        .post(&format!("/cancel/{KEY}/{dead_id}/"), &[], Vec::new())
        .await;
    assert_eq!(
        finished,
        json!({"statusId": -1, "statusMsg": format!("Job {dead_id} has already finished")})
    );
    let raw = server
        .raw(
            format!("POST /cancel/{KEY}/x1/ HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
                .into_bytes(),
        )
        .await;
    assert_eq!(raw.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_answers_for_each_state_of_a_job_memory() {
    cancel_answers_for_each_state_of_a_job(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_answers_for_each_state_of_a_job_redis() {
    cancel_answers_for_each_state_of_a_job(redis().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_duplicate_guard_a_resend_is_queued_again() {
    let _shared = QUIET.read().await;
    let server = TestServer::start_with(memory(), |c| c.jobs.deduplicate = false).await;
    server.prepare_lab(LAB).await;
    let first = server.add_job(LAB, &autolab_job("course1")).await;
    let again = server.add_job(LAB, &autolab_job("course1")).await;
    assert_eq!(again["statusId"], 0, "{again}");
    assert_ne!(
        again["jobId"], first["jobId"],
        "Tango's behaviour: two jobs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_backend_is_a_json_error_and_the_server_lives_on() {
    let _shared = QUIET.read().await;
    let server = TestServer::start().await;
    server.prepare_lab(LAB).await;
    server.vmms.panic_on_images.store(true, Ordering::SeqCst);
    assert_eq!(
        server.add_job(LAB, &autolab_job("course1")).await,
        json!({"statusId": -1,
               "statusMsg": "Internal error in tango (please report it): fake backend: get_images exploded"})
    );
    server.vmms.panic_on_images.store(false, Ordering::SeqCst);
    let again = server.add_job(LAB, &autolab_job("course1")).await;
    assert_eq!(again["statusMsg"], "Job added", "{again}");
    let hello = server.client.get(&server.url).send().await.unwrap();
    assert_eq!(hello.text().await.unwrap(), HELLO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_is_a_clear_error_on_every_route_that_needs_it() {
    let _shared = QUIET.read().await;
    let server = TestServer::start_with(Arc::new(support::api::DownStore), |_| {}).await;
    let unavailable = json!({"statusId": -1,
        "statusMsg": format!("job store unavailable: {}", support::api::DOWN)});
    // Files do not need the store.
    server.prepare_lab(LAB).await;
    assert_eq!(
        server.add_job(LAB, &autolab_job("course1")).await,
        unavailable
    );
    for path in [
        "/jobs/{KEY}/0/",
        "/jobs/{KEY}/1/",
        "/info/{KEY}/",
        "/pool/{KEY}/",
        "/pool/{KEY}/img/",
        "/getPartialOutput/{KEY}/1/",
    ] {
        let path = path.replace("{KEY}", KEY);
        assert_eq!(server.get_json(&path).await, unavailable, "{path}");
    }
    assert_eq!(
        server
            .post(&format!("/prealloc/{KEY}/{IMAGE}/2/"), &[], Vec::new())
            .await,
        json!({"statusId": -1,
               "statusMsg": format!("Preallocate VM failed: job store unavailable: {}", support::api::DOWN)})
    );
}

// ---------------------------------------------------------------------------------------
// poll, getPartialOutput, info, pool, prealloc, build

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_serves_regular_files_of_any_size_and_nothing_else() {
    let _shared = QUIET.read().await;
    let server = TestServer::start().await;
    server.open(LAB).await;
    let output = server.lab_dir(LAB).join("output");
    let poll = |name: &str| {
        let url = format!("{}/poll/{KEY}/{LAB}/{name}/", server.url);
        let client = server.client.clone();
        async move {
            let response = client.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap().to_vec()
        }
    };
    // Sizes on each side of the limits of reading on the async thread (64 KiB) and of
    // reading whole rather than streaming (4 MiB), and an empty file.
    for size in [0usize, 1, 64 * 1024, 64 * 1024 + 1, 4 << 20, (4 << 20) + 1] {
        let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        std::fs::write(output.join("sized.txt"), &bytes).unwrap();
        let got = poll("sized.txt").await;
        assert_eq!(got.len(), size);
        assert!(got == bytes, "{size} bytes came back changed");
    }

    let not_found = json!({"statusId": -1, "statusMsg": "Output file not found"});
    // A link is not followed, even to a file the daemon may read.
    let secret = server.lab_dir(LAB).join("secret.txt");
    std::fs::write(&secret, b"not an output").unwrap();
    std::os::unix::fs::symlink(&secret, output.join("link.txt")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", output.join("passwd.txt")).unwrap();
    // A FIFO has no writer: opening it must not wait for one.
    let fifo = output.join("fifo.txt");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
    std::fs::create_dir(output.join("dir.txt")).unwrap();
    for name in ["link.txt", "passwd.txt", "fifo.txt", "dir.txt"] {
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            server.get_json(&format!("/poll/{KEY}/{LAB}/{name}/")),
        )
        .await
        .unwrap_or_else(|_| panic!("poll of {name} hung"));
        assert_eq!(answer, not_found, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_returns_the_output_bytes_as_they_are() {
    let _shared = QUIET.read().await;
    let server = TestServer::start().await;
    server.open(LAB).await;
    let output = server.lab_dir(LAB).join("output");
    let bytes = b"Autograder [Sun Nov 29 13:08:49 2026]: Received job x:1\r\nhello \xff world\n{\"scores\": {\"a\": 1}}\n";
    std::fs::write(output.join("user+tag@x.edu_1_hello_autograde.txt"), bytes).unwrap();
    std::fs::write(output.join("a b.txt"), b"spaced").unwrap();

    // `+` stays `+`, `%40` is `@`; invalid UTF-8 and CRLF come back untouched.
    let response = server
        .client
        .get(format!(
            "{}/poll/{KEY}/{LAB}/user+tag%40x.edu_1_hello_autograde.txt/",
            server.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), bytes);

    // The name is decoded twice, as Tango did: %2520 → %20 → space.
    let response = server
        .client
        .get(format!("{}/poll/{KEY}/{LAB}/a%2520b.txt/", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"spaced");

    assert_eq!(
        server
            .get_json(&format!("/poll/{KEY}/{LAB}/not-yet.txt/"))
            .await,
        json!({"statusId": -1, "statusMsg": "Output file not found"})
    );

    // Opt-in: a "not ready" Autolab's poller does not take for an error.
    let lenient = TestServer::start_with(memory(), |c| c.server.poll_not_ready_ok = true).await;
    lenient.open(LAB).await;
    assert_eq!(
        lenient
            .get_json(&format!("/poll/{KEY}/{LAB}/not-yet.txt/"))
            .await,
        json!({"statusId": 0, "statusMsg": "Output file not found"})
    );
}

/// Claims the queue's head as a manager would and marks it running on machine 1000.
async fn run_next_job(server: &TestServer) -> tango::model::Job {
    let store = &server.app.store;
    store
        .heartbeat("test-manager", Duration::from_secs(60))
        .await
        .unwrap();
    let mut job = store
        .claim_next("test-manager", Duration::from_millis(0))
        .await
        .unwrap()
        .expect("a queued job");
    job.assigned = true;
    job.vm.id = Some(1000);
    store.update_live(&job).await.unwrap();
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_output_of_a_running_job() {
    let _shared = QUIET.read().await;
    let server = TestServer::start().await;
    server.prepare_lab(LAB).await;
    let mut job = autolab_job("course1");
    job["max_kb"] = json!(8);
    let id = server.add_job(LAB, &job).await["jobId"]
        .as_str()
        .unwrap()
        .to_string();

    assert_eq!(
        server
            .get_json(&format!("/getPartialOutput/{KEY}/{id}/"))
            .await,
        json!({"statusId": -1,
               "statusMsg": format!("getPartialOutput request failed: Job {id} is not running yet")})
    );

    run_next_job(&server).await;
    *server.vmms.partial_output.lock().unwrap() = Ok(b"line 1\n\xffline 2\n".to_vec());
    assert_eq!(
        server
            .get_json(&format!("/getPartialOutput/{KEY}/{id}/"))
            .await,
        json!({"statusId": 0, "statusMsg": "Partial output obtained",
               "output": "line 1\n\u{FFFD}line 2\n"})
    );
    assert_eq!(
        server.vmms.partial_calls.lock().unwrap().last(),
        Some(&(Some(1000), 8 * 1024)),
        "the job's machine and its own output cap"
    );

    *server.vmms.partial_output.lock().unwrap() = Err("docker exec failed".into());
    assert_eq!(
        server
            .get_json(&format!("/getPartialOutput/{KEY}/{id}/"))
            .await,
        json!({"statusId": -1,
               "statusMsg": "getPartialOutput request failed: docker exec failed"})
    );

    // A running job counts as a thread, as Python's worker threads did.
    assert_eq!(
        server.get_json(&format!("/info/{KEY}/")).await["info"]["num_threads"],
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_are_listed_whole_or_one_by_one() {
    let _shared = QUIET.read().await;
    let server = TestServer::start().await;
    let store = &server.app.store;
    store
        .heartbeat("test-manager", Duration::from_secs(60))
        .await
        .unwrap();
    for id in [1000, 1001] {
        let vm = Machine {
            name: IMAGE.into(),
            image: IMAGE.into(),
            vmms: "localDocker".into(),
            id: Some(id),
            ..Machine::default()
        };
        store.pool_add("test-manager", IMAGE, &vm).await.unwrap();
        if id == 1001 {
            assert!(store.pool_free("test-manager", IMAGE, &vm).await.unwrap());
        }
    }
    let pools = json!({IMAGE: {"total": [1000, 1001], "free": [1001]}});
    assert_eq!(
        server.get_json(&format!("/pool/{KEY}/")).await,
        json!({"statusId": 0, "statusMsg": "Found all pools", "pools": pools})
    );
    assert_eq!(
        server.get_json(&format!("/pool/{KEY}/{IMAGE}/")).await,
        json!({"statusId": 0, "statusMsg": "Found pool", "pools": pools})
    );
    assert_eq!(
        server.get_json(&format!("/pool/{KEY}/nosuch/")).await,
        json!({"statusId": -1, "statusMsg": "Pool not found", "pools": pools})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prealloc_records_a_pool_target_and_wakes_the_manager() {
    let _shared = QUIET.read().await;
    let server = TestServer::start_with(memory(), |c| c.limits.cores = Some(1.5)).await;
    let app = server.app.clone();

    // An empty body means the configured defaults (Python answered 500 here).
    let answer = server
        .post(&format!("/prealloc/{KEY}/{IMAGE}/3/"), &[], Vec::new())
        .await;
    assert_eq!(
        answer,
        json!({"statusId": 0, "statusMsg": "VMs preallocated"})
    );
    tokio::time::timeout(Duration::from_secs(10), app.pools_changed.notified())
        .await
        .expect("the manager is told the targets changed");

    // tango-cli's body: cores and memory together are used.
    let answer = server
        .post(
            &format!("/prealloc/{KEY}/rhel.img/2/"),
            &[],
            br#"{"vmms": "localDocker", "cores": 2, "memory": 512}"#.to_vec(),
        )
        .await;
    assert_eq!(answer["statusMsg"], "VMs preallocated", "{answer}");

    let targets = app.store.pool_targets().await.unwrap();
    assert_eq!(
        targets.get(IMAGE),
        Some(&PoolTarget {
            image: IMAGE.into(),
            vmms: "localDocker".into(),
            size: 3,
            cores: Some(1.5),
            memory: Some(2048),
        })
    );
    assert_eq!(
        targets.get("rhel"),
        Some(&PoolTarget {
            image: "rhel.img".into(),
            vmms: "localDocker".into(),
            size: 2,
            cores: Some(2.0),
            memory: Some(512),
        }),
        "pools are named by the image minus its extension"
    );

    assert_eq!(
        server
            .post(&format!("/prealloc/{KEY}/nosuch/2/"), &[], Vec::new())
            .await,
        json!({"statusId": -1, "statusMsg": "Invalid image name"})
    );
    assert_eq!(
        server
            .post(
                &format!("/prealloc/{KEY}/{IMAGE}/99999999999/"),
                &[],
                Vec::new()
            )
            .await,
        json!({"statusId": -1, "statusMsg": "Invalid prealloc size"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_hands_the_tarball_to_the_backend() {
    let _shared = QUIET.read().await;
    let server = TestServer::start().await;
    server.prepare_lab(LAB).await;
    let tarball: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();

    // Autolab's request: octet-stream, `imageName` (sent as `Imagename:`).
    let response = server
        .client
        .post(format!("{}/build/{KEY}/", server.url))
        .header("Content-Type", "application/octet-stream")
        .header("Imagename", "newimage")
        .body(tarball.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_of(response).await,
        json!({"statusId": 0, "statusMsg": "Docker image built"})
    );
    assert_eq!(
        server.vmms.builds.lock().unwrap().last().cloned(),
        Some(support::api::BuildCall {
            name: "newimage".into(),
            size: tarball.len() as u64,
            md5: md5_hex(&tarball),
        })
    );
    assert_eq!(
        std::fs::read_dir(server.courselabs().join("tmp"))
            .unwrap()
            .count(),
        0,
        "the temporary tarball is removed"
    );

    // The new image is usable at once: the image list is not served stale after a build.
    let mut job = autolab_job("course1");
    job["image"] = json!("newimage");
    let added = server.add_job(LAB, &job).await;
    assert_eq!(added["statusMsg"], "Job added", "{added}");

    *server.vmms.build_error.lock().unwrap() = Some("no space left on device".into());
    let failed = server
        .post(
            &format!("/build/{KEY}/"),
            &[("imageName", "other")],
            b"tar".to_vec(),
        )
        .await;
    assert_eq!(
        failed,
        json!({"statusId": -1, "statusMsg": "Image build failed: no space left on device"})
    );
}

// ---------------------------------------------------------------------------------------
// Bad input

/// What a bad request must get.
enum Expect {
    /// HTTP 200, JSON, statusId -1 and exactly this message.
    Error(&'static str),
    /// HTTP 200, JSON, statusId -1 and a message starting with this.
    ErrorStarting(&'static str),
    /// HTTP 200, JSON, statusId 0 and this message.
    Success(&'static str),
    /// Tornado's 404 page.
    NotFound,
    /// Tornado's 405 page.
    MethodNotAllowed,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_answer_and_the_server_keeps_serving() {
    let _shared = QUIET.read().await;
    let server = TestServer::start().await;
    server.prepare_lab(LAB).await;

    let job = |edit: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut job = autolab_job("course1");
        edit(job.as_object_mut().unwrap());
        serde_json::to_vec(&job).unwrap()
    };
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let get = |path: String| request_bytes("GET", &path, &[], b"");
    let post = |path: String, headers: &[(&str, &str)], body: Vec<u8>| {
        let mut all = vec![form];
        all.extend_from_slice(headers);
        request_bytes("POST", &path, &all, &body)
    };
    let upload = |filename: &str| {
        post(
            format!("/upload/{KEY}/{LAB}/"),
            &[("filename", filename)],
            b"data".to_vec(),
        )
    };
    let add_job = |body: Vec<u8>| post(format!("/addJob/{KEY}/{LAB}/"), &[], body);
    let long = "c".repeat(MAX_NAME_LEN);

    use Expect::*;
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        // A wrong key, on every route (each route of the table answers, too).
        (
            "wrong key: open",
            get(format!("/open/wrong/{LAB}/")),
            Error("Key not recognized"),
        ),
        (
            "wrong key: upload",
            post(
                format!("/upload/wrong/{LAB}/"),
                &[("filename", "a")],
                b"x".to_vec(),
            ),
            Error("Key not recognized"),
        ),
        (
            "wrong key: addJob",
            post(format!("/addJob/wrong/{LAB}/"), &[], job(&|_| {})),
            Error("Key not recognized"),
        ),
        (
            "wrong key: poll",
            get(format!("/poll/wrong/{LAB}/out.txt/")),
            Error("Key not recognized"),
        ),
        (
            "wrong key: getPartialOutput",
            get("/getPartialOutput/wrong/1/".into()),
            Error("Key not recognized"),
        ),
        (
            "wrong key: info",
            get("/info/wrong/".into()),
            Error("Key not recognized"),
        ),
        (
            "wrong key: jobs",
            get("/jobs/wrong/0/".into()),
            Error("Key not recognized"),
        ),
        (
            "wrong key: pool",
            get("/pool/wrong/".into()),
            Error("Key not recognized"),
        ),
        (
            "wrong key: pool image",
            get(format!("/pool/wrong/{IMAGE}/")),
            Error("Key not recognized"),
        ),
        (
            "wrong key: prealloc",
            post(format!("/prealloc/wrong/{IMAGE}/2/"), &[], Vec::new()),
            Error("Key not recognized"),
        ),
        (
            "wrong key: build",
            post(
                "/build/wrong/".into(),
                &[("imageName", "x")],
                b"tar".to_vec(),
            ),
            Error("Key not recognized"),
        ),
        (
            "key prefix",
            get(format!("/info/{}/", &KEY[..KEY.len() - 1])),
            Error("Key not recognized"),
        ),
        (
            "key plus a space",
            get(format!("/info/{KEY}%20/")),
            Error("Key not recognized"),
        ),
        // Traversal through the courselab.
        (
            "courselab ..",
            get(format!("/open/{KEY}/../")),
            Error("Invalid courselab \"..\": '.' and '..' are not file names"),
        ),
        (
            "courselab .%2E",
            get(format!("/open/{KEY}/.%2E/")),
            Error("Invalid courselab \"..\": '.' and '..' are not file names"),
        ),
        (
            "courselab .",
            get(format!("/open/{KEY}/./")),
            Error("Invalid courselab \".\": '.' and '..' are not file names"),
        ),
        (
            "courselab with %2F",
            get(format!("/open/{KEY}/..%2F..%2Fetc/")),
            Error("Invalid courselab \"../../etc\": it contains '/'"),
        ),
        (
            "courselab with %5C",
            get(format!("/open/{KEY}/a%5Cb/")),
            Error("Invalid courselab \"a\\\\b\": it contains '\\'"),
        ),
        (
            "courselab with NUL",
            get(format!("/open/{KEY}/a%00b/")),
            Error("Invalid courselab \"a\\0b\": it contains a NUL byte"),
        ),
        (
            "courselab too long",
            get(format!("/open/{KEY}/{long}/")),
            ErrorStarting("Invalid courselab \"ccccc"),
        ),
        (
            "upload to a traversing courselab",
            post(
                format!("/upload/{KEY}/..%2F..%2Ftmp/"),
                &[("filename", "x")],
                b"x".to_vec(),
            ),
            Error("Invalid courselab \"../../tmp\": it contains '/'"),
        ),
        (
            "addJob to a traversing courselab",
            post(format!("/addJob/{KEY}/..%2Fx/"), &[], job(&|_| {})),
            Error("Invalid courselab \"../x\": it contains '/'"),
        ),
        (
            "poll in a traversing courselab",
            get(format!("/poll/{KEY}/..%2Fx/out/")),
            Error("Invalid courselab \"../x\": it contains '/'"),
        ),
        (
            "path not UTF-8",
            get(format!("/open/{KEY}/%FF/")),
            ErrorStarting("Bad request path: "),
        ),
        // Traversal through Filename.
        (
            "Filename ../evil",
            upload("../evil"),
            Error("Invalid Filename \"../evil\": it contains '/'"),
        ),
        (
            "Filename ..",
            upload(".."),
            Error("Invalid Filename \"..\": '.' and '..' are not file names"),
        ),
        (
            "Filename .",
            upload("."),
            Error("Invalid Filename \".\": '.' and '..' are not file names"),
        ),
        (
            "Filename with a backslash",
            upload("..\\evil"),
            Error("Invalid Filename \"..\\\\evil\": it contains '\\'"),
        ),
        (
            "Filename /etc/passwd",
            upload("/etc/passwd"),
            Error("Invalid Filename \"/etc/passwd\": it contains '/'"),
        ),
        (
            "Filename empty",
            upload(""),
            Error("Invalid Filename \"\": it is empty"),
        ),
        (
            "Filename of the output directory",
            upload("output"),
            Error("Cannot store output: a directory of that name exists"),
        ),
        (
            "no Filename",
            post(format!("/upload/{KEY}/{LAB}/"), &[], b"data".to_vec()),
            Error("Missing Filename header: it names the file being uploaded"),
        ),
        (
            "upload before open",
            post(
                format!("/upload/{KEY}/not-opened/"),
                &[("filename", "a")],
                b"x".to_vec(),
            ),
            Error("Courselab not found"),
        ),
        // Traversal through addJob's names.
        (
            "localFile traversal",
            add_job(job(&|j| {
                j["files"][0]["localFile"] = json!("../../../etc/passwd");
            })),
            Error("Invalid localFile \"../../../etc/passwd\": it contains '/'"),
        ),
        (
            "localFile ..",
            add_job(job(&|j| {
                j["files"][0]["localFile"] = json!("..");
            })),
            Error("Invalid localFile \"..\": '.' and '..' are not file names"),
        ),
        (
            "destFile traversal",
            add_job(job(&|j| {
                j["files"][1]["destFile"] = json!("../Makefile");
            })),
            Error("Invalid destFile \"../Makefile\": it contains '/'"),
        ),
        (
            "output_file traversal",
            add_job(job(&|j| {
                j["output_file"] = json!("../../x");
            })),
            Error("Invalid output_file \"../../x\": it contains '/'"),
        ),
        (
            "output_file empty",
            add_job(job(&|j| {
                j["output_file"] = json!("");
            })),
            Error("Invalid output_file \"\": it is empty"),
        ),
        (
            "image traversal",
            add_job(job(&|j| {
                j["image"] = json!("../img");
            })),
            Error("Invalid image \"../img\": it contains '/'"),
        ),
        // Missing and wrong-typed addJob fields, invalid JSON.
        (
            "missing jobName",
            add_job(job(&|j| {
                j.remove("jobName");
            })),
            Error("'jobName'"),
        ),
        (
            "missing output_file",
            add_job(job(&|j| {
                j.remove("output_file");
            })),
            Error("'output_file'"),
        ),
        (
            "missing timeout",
            add_job(job(&|j| {
                j.remove("timeout");
            })),
            Error("'timeout'"),
        ),
        (
            "missing files",
            add_job(job(&|j| {
                j.remove("files");
            })),
            Error("'files'"),
        ),
        (
            "missing image",
            add_job(job(&|j| {
                j.remove("image");
            })),
            Error("'image'"),
        ),
        (
            "missing destFile",
            add_job(job(&|j| {
                j["files"][0].as_object_mut().unwrap().remove("destFile");
            })),
            Error("'destFile'"),
        ),
        (
            "timeout as a string",
            add_job(job(&|j| {
                j["timeout"] = json!("180");
            })),
            Error("timeout must be a number of seconds, not a string"),
        ),
        (
            "jobName as a number",
            add_job(job(&|j| {
                j["jobName"] = json!(5);
            })),
            Error("jobName must be a string, not a number"),
        ),
        (
            "files as a string",
            add_job(job(&|j| {
                j["files"] = json!("hello.c");
            })),
            Error("files must be a list of {\"localFile\", \"destFile\"} objects, not a string"),
        ),
        (
            "callback_url as a list",
            add_job(job(&|j| {
                j["callback_url"] = json!([]);
            })),
            Error("callback_url must be a string, not a list"),
        ),
        (
            "invalid JSON",
            add_job(b"{\"image\": ".to_vec()),
            ErrorStarting("Invalid JSON in the addJob body: "),
        ),
        (
            "empty addJob body",
            add_job(Vec::new()),
            ErrorStarting("Invalid JSON in the addJob body: "),
        ),
        (
            "form-encoded addJob body",
            add_job(b"image=x&timeout=1".to_vec()),
            ErrorStarting("Invalid JSON in the addJob body: "),
        ),
        (
            "addJob body a list",
            add_job(b"[]".to_vec()),
            Error("The addJob body must be a JSON object, not a list"),
        ),
        (
            "addJob body too large",
            add_job(vec![b' '; 2 * 1024 * 1024]),
            Error("addJob body too large: at most 1048576 bytes are accepted"),
        ),
        // Poll names, decoded twice.
        (
            "poll traversal",
            get(format!("/poll/{KEY}/{LAB}/..%252F..%252Fetc%252Fpasswd/")),
            Error("Invalid output file \"../../etc/passwd\": it contains '/'"),
        ),
        (
            "poll ..",
            get(format!("/poll/{KEY}/{LAB}/%252E%252E/")),
            Error("Invalid output file \"..\": '.' and '..' are not file names"),
        ),
        // Unknown job ids, non-numeric job lists.
        (
            "unknown job id",
            get(format!("/getPartialOutput/{KEY}/999999/")),
            Error("getPartialOutput request failed: Invalid job id"),
        ),
        (
            "job id beyond u64",
            get(format!("/getPartialOutput/{KEY}/99999999999999999999999/")),
            Error("getPartialOutput request failed: Invalid job id"),
        ),
        (
            "non-numeric job id",
            get(format!("/getPartialOutput/{KEY}/abc/")),
            NotFound,
        ),
        (
            "non-numeric jobs list",
            get(format!("/jobs/{KEY}/abc/")),
            Error("Invalid job list \"abc\": use 0 for live jobs or 1 for dead jobs"),
        ),
        (
            "other jobs list",
            get(format!("/jobs/{KEY}/7/")),
            Success("Found list of jobs"),
        ),
        (
            "negative jobs list",
            get(format!("/jobs/{KEY}/-1/")),
            Success("Found list of jobs"),
        ),
        // prealloc and build.
        (
            "prealloc invalid JSON",
            post(format!("/prealloc/{KEY}/{IMAGE}/2/"), &[], b"{".to_vec()),
            ErrorStarting("Invalid JSON in the prealloc body: "),
        ),
        (
            "prealloc non-numeric size",
            post(format!("/prealloc/{KEY}/{IMAGE}/two/"), &[], Vec::new()),
            NotFound,
        ),
        (
            "prealloc traversing image",
            post(format!("/prealloc/{KEY}/..%2Fx/2/"), &[], Vec::new()),
            Error("Invalid image \"../x\": it contains '/'"),
        ),
        (
            "build without imageName",
            post(format!("/build/{KEY}/"), &[], b"tar".to_vec()),
            Error("Missing imageName header: it names the image to build"),
        ),
        (
            "build with a bad imageName",
            post(
                format!("/build/{KEY}/"),
                &[("imageName", "../Bad")],
                b"tar".to_vec(),
            ),
            ErrorStarting("Invalid imageName \"../Bad\": "),
        ),
        // Routes as Tornado matched them.
        (
            "no trailing slash",
            get(format!("/open/{KEY}/{LAB}")),
            NotFound,
        ),
        (
            "poll without trailing slash (Autolab's poller)",
            get(format!("/poll/{KEY}/{LAB}/out.txt")),
            NotFound,
        ),
        ("missing segment", get(format!("/open/{KEY}/")), NotFound),
        ("empty segment", get(format!("/jobs/{KEY}//")), NotFound),
        ("unknown route", get("/nosuch/".into()), NotFound),
        (
            "GET prealloc",
            get(format!("/prealloc/{KEY}/{IMAGE}/2/")),
            MethodNotAllowed,
        ),
        (
            "POST open",
            post(format!("/open/{KEY}/{LAB}/"), &[], Vec::new()),
            MethodNotAllowed,
        ),
        (
            "GET upload",
            get(format!("/upload/{KEY}/{LAB}/")),
            MethodNotAllowed,
        ),
        (
            "PUT addJob",
            request_bytes("PUT", &format!("/addJob/{KEY}/{LAB}/"), &[], b"{}"),
            MethodNotAllowed,
        ),
        (
            "DELETE jobs",
            request_bytes("DELETE", &format!("/jobs/{KEY}/0/"), &[], b""),
            MethodNotAllowed,
        ),
    ];

    for (what, request, expect) in cases {
        let response = server.raw(request).await;
        match expect {
            Error(message) => {
                assert_eq!(
                    response.json(),
                    json!({"statusId": -1, "statusMsg": message}),
                    "{what}"
                );
            }
            ErrorStarting(prefix) => {
                let body = response.json();
                assert_eq!(body["statusId"], -1, "{what}: {body}");
                let message = body["statusMsg"].as_str().unwrap_or_default();
                assert!(message.starts_with(prefix), "{what}: {body}");
            }
            Success(message) => {
                let body = response.json();
                assert_eq!(body["statusId"], 0, "{what}: {body}");
                assert_eq!(body["statusMsg"], message, "{what}: {body}");
            }
            NotFound => {
                assert_eq!(response.status, 404, "{what}");
                assert_eq!(
                    response.header("content-type"),
                    Some("text/html; charset=UTF-8")
                );
                assert_eq!(
                    response.body,
                    b"<html><title>404: Not Found</title><body>404: Not Found</body></html>",
                    "{what}"
                );
            }
            MethodNotAllowed => {
                assert_eq!(response.status, 405, "{what}");
                assert_eq!(
                    response.header("content-type"),
                    Some("text/html; charset=UTF-8")
                );
                assert_eq!(
                    response.body,
                    b"<html><title>405: Method Not Allowed</title><body>405: Method Not Allowed</body></html>",
                    "{what}"
                );
            }
        }
        // The server keeps serving.
        let hello = server.raw(request_bytes("GET", "/", &[], b"")).await;
        assert_eq!(hello.body, HELLO.as_bytes(), "after {what}");
    }

    // Nothing escaped: the temp dir holds the courselabs and nothing else; the courselabs
    // hold the one opened lab and the upload area.
    let top: BTreeSet<_> = std::fs::read_dir(server.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(top, BTreeSet::from(["courselabs".to_string()]));
    let labs: BTreeSet<_> = std::fs::read_dir(server.courselabs())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        labs,
        BTreeSet::from([format!("{}-{LAB}", Labs::tenant(KEY)), "tmp".to_string()])
    );
    let files: BTreeSet<_> = std::fs::read_dir(server.lab_dir(LAB))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut expected: BTreeSet<String> = hello_files().iter().map(|(n, _)| n.to_string()).collect();
    expected.insert("output".into());
    assert_eq!(files, expected);
    assert_eq!(
        std::fs::read_dir(server.courselabs().join("tmp"))
            .unwrap()
            .count(),
        0
    );
    // No job was queued or recorded by any of these.
    assert_eq!(server.app.store.live_jobs().await.unwrap().len(), 0);
    assert_eq!(server.app.store.dead_jobs().await.unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_upload_is_refused_and_leaves_nothing() {
    let _shared = QUIET.read().await;
    const LIMIT: u64 = 1024 * 1024;
    let server = TestServer::start_with(memory(), |c| c.server.max_input_file_size = LIMIT).await;
    server.open(LAB).await;
    let too_large = json!({"statusId": -1,
        "statusMsg": "File too large: the limit is 1048576 bytes (server.max_input_file_size); nothing was stored"});

    // Declared too large: refused before the body is sent (curl's Expect: 100-continue).
    let request = format!(
        "POST /upload/{KEY}/{LAB}/ HTTP/1.1\r\nHost: tango\r\nConnection: close\r\n\
         filename: big.bin\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        2 * LIMIT
    );
    assert_eq!(server.raw(request.into_bytes()).await.json(), too_large);

    // No length given (chunked): refused once the limit is passed.
    let chunks = futures::stream::iter(0..17u8)
        .map(|i| Ok::<_, std::io::Error>(Bytes::from(vec![i; 64 * 1024])));
    let response = server
        .client
        .post(format!("{}/upload/{KEY}/{LAB}/", server.url))
        .header("filename", "big.bin")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(response).await, too_large);

    assert!(!server.lab_dir(LAB).join("big.bin").exists());
    assert_eq!(
        std::fs::read_dir(server.courselabs().join("tmp"))
            .unwrap()
            .count(),
        0
    );

    // Exactly the limit is fine.
    let body = vec![7u8; LIMIT as usize];
    assert_eq!(
        server.upload(LAB, "big.bin", &body).await,
        json!({"statusId": 0, "statusMsg": "Uploaded file"})
    );
    assert_eq!(
        md5_file(&server.lab_dir(LAB).join("big.bin")),
        (LIMIT, md5_hex(&body))
    );
}

/// Chunk `i` of the 1 GiB upload: a fixed pattern with the chunk's number at its start, so
/// a lost, repeated or reordered chunk shows.
fn pattern_chunk(base: &[u8], i: u64) -> Vec<u8> {
    let mut chunk = base.to_vec();
    chunk[..8].copy_from_slice(&i.to_be_bytes());
    chunk
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_upload_streams_in_constant_memory() {
    // Alone in this process, so its resident memory is ours to measure.
    let _alone = QUIET.write().await;
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: u64 = 4096; // 1 GiB
    const ALLOWED_GROWTH: u64 = 32 * 1024 * 1024;

    let server = TestServer::start().await;
    server.open("big").await;
    let base: Arc<Vec<u8>> = Arc::new((0..CHUNK).map(|i| (i % 251) as u8).collect());

    let baseline = resident_bytes();
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(resident_bytes(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let chunks = {
        let base = base.clone();
        futures::stream::iter(0..CHUNKS)
            .map(move |i| Ok::<_, std::io::Error>(Bytes::from(pattern_chunk(&base, i))))
    };
    let response = server
        .client
        .post(format!("{}/upload/{KEY}/big/", server.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("filename", "big.bin")
        .body(reqwest::Body::wrap_stream(chunks))
        .timeout(Duration::from_secs(900))
        .send()
        .await
        .unwrap();
    let answer = json_of(response).await;
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    assert_eq!(answer, json!({"statusId": 0, "statusMsg": "Uploaded file"}));

    let growth = peak.load(Ordering::SeqCst).saturating_sub(baseline);
    eprintln!(
        "1 GiB upload: resident memory {} MiB before, peak growth {:.1} MiB",
        baseline / (1024 * 1024),
        growth as f64 / (1024.0 * 1024.0)
    );
    assert!(
        growth < ALLOWED_GROWTH,
        "resident memory grew by {growth} bytes during a 1 GiB upload"
    );

    // The stored file is the stream, byte for byte, and /open reports its true MD5
    // (checked with coreutils' md5sum, independent of our code).
    let stored = server.lab_dir("big").join("big.bin");
    assert_eq!(
        std::fs::metadata(&stored).unwrap().len(),
        CHUNK as u64 * CHUNKS
    );
    let md5sum = std::process::Command::new("md5sum")
        .arg(&stored)
        .output()
        .expect("md5sum (coreutils) is needed for this test");
    let md5sum = String::from_utf8(md5sum.stdout).unwrap();
    let md5sum = md5sum.split_whitespace().next().unwrap().to_string();
    assert_eq!(server.open("big").await["files"]["big.bin"], md5sum);
    {
        use std::io::Read;
        let mut file = std::fs::File::open(&stored).unwrap();
        let mut chunk = vec![0u8; CHUNK];
        for i in 0..CHUNKS {
            file.read_exact(&mut chunk).unwrap();
            assert!(chunk == pattern_chunk(&base, i), "chunk {i} differs");
        }
    }
    std::fs::remove_file(&stored).unwrap();
}

// ---------------------------------------------------------------------------------------
// Names and the route table

proptest! {
    /// Whatever a client sends, a name that passes the check is one plain component: joined
    /// to a directory, it stays directly inside it.
    #[test]
    fn a_checked_name_never_leaves_its_directory(name in "[./\\\\a-z\\x00\\n%~ -]{0,12}|\\PC{0,40}") {
        if check_name(&name, MAX_NAME_LEN).is_ok() {
            let root = Path::new("/srv/courselabs/lab");
            let joined = root.join(&name);
            prop_assert_eq!(joined.parent(), Some(root));
            let components: Vec<_> = Path::new(&name).components().collect();
            prop_assert_eq!(components.len(), 1);
            prop_assert!(matches!(components[0], Component::Normal(_)));
            prop_assert!(!name.contains('/') && !name.contains('\\') && !name.contains('\0'));
        } else {
            prop_assert!(
                name.is_empty() || name == "." || name == ".."
                    || name.chars().any(|c| c == '/' || c == '\\' || c.is_control())
                    || name.len() > MAX_NAME_LEN
            );
        }
    }

    /// The same for courselab directories: always one level below the courselabs root.
    #[test]
    fn a_courselab_directory_is_always_directly_under_the_root(name in "[./\\\\a-z\\x00-]{0,12}|\\PC{0,40}") {
        let config = tango::config::ServerConfig {
            courselabs: "/srv/courselabs".into(),
            ..Default::default()
        };
        let labs = Labs::new(&config);
        if let Ok(lab) = labs.courselab(KEY, &name) {
            prop_assert_eq!(lab.dir.parent(), Some(Path::new("/srv/courselabs")));
            prop_assert!(!lab.dir.to_string_lossy().contains(KEY));
        }
    }
}

/// `(METHOD, path)` of every operation in `docs/openapi.yaml`, read line by line (the file
/// keeps the usual layout: paths at two spaces, methods at four).
fn openapi_routes() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml"))
        .expect("docs/openapi.yaml");
    let mut routes = BTreeSet::new();
    let mut in_paths = false;
    let mut path = None;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() {
            in_paths = line.trim_end() == "paths:";
            path = None;
            continue;
        }
        if !in_paths {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let item = line.trim().trim_end_matches(':');
        if indent == 2 && line.trim_end().ends_with(':') {
            path = Some(item.trim_matches(|c| c == '"' || c == '\'').to_string());
        } else if indent == 4
            && let Some(path) = &path
            && ["get", "post", "put", "delete", "patch", "head", "options"].contains(&item)
        {
            routes.insert((item.to_ascii_uppercase(), path.clone()));
        }
    }
    routes
}

#[test]
fn openapi_describes_exactly_the_routes_the_router_serves() {
    let served: BTreeSet<(String, String)> = Endpoint::ALL
        .iter()
        .map(|e| (e.method().to_string(), e.path().to_string()))
        .collect();
    assert_eq!(openapi_routes(), served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_of_the_table_is_served() {
    let _shared = QUIET.read().await;
    let server = TestServer::start().await;
    for endpoint in Endpoint::ALL {
        let path = endpoint
            .path()
            .replace("{key}", "wrong")
            .replace("{jobId}", "1")
            .replace("{num}", "1")
            .replace("{deadJobs}", "0")
            .replace(['{', '}'], "");
        let response = server
            .raw(request_bytes(
                endpoint.method(),
                &path,
                &[("imageName", "x"), ("Filename", "x")],
                b"",
            ))
            .await;
        if endpoint == Endpoint::Hello {
            assert_eq!(response.body, HELLO.as_bytes());
        } else {
            assert_eq!(
                response.json(),
                json!({"statusId": -1, "statusMsg": "Key not recognized"}),
                "{} {path}",
                endpoint.method()
            );
        }
    }
}
