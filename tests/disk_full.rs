//! The disk holding COURSELABS filling up (issue 9): during an upload, and when a job's
//! output is written. Each test mounts a 2 MiB tmpfs of its own (tests run as root; a
//! mount that fails fails the test) and puts the courselabs, or the output directory, on it.
//!
//! What must hold: a clear error (an upload answers `statusId -1` saying there is no space;
//! a job's trace says its output could not be written), no truncated file left in place as
//! if complete, no temporary file left behind, and service as usual once space is freed.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::api::{KEY, TestServer, md5_hex};
use support::pipeline::{FakeVmms, JobScript, Receiver, Reply, fake_job, fast_config};
use tango::app::App;
use tango::config::Config;
use tango::labs::Labs;
use tango::manager::Manager;
use tango::model::{Job, JobId};
use tango::store::JobStore;
use tango::store::memory::MemoryStore;
use tango::vmms::Vmms;

/// Only to turn a hang into a failure.
const HANG: Duration = Duration::from_secs(60);

/// A small tmpfs mounted in a temporary directory, unmounted when dropped (also when the
/// test panics), before the directory is removed.
struct Tmpfs {
    mount: PathBuf,
    // Dropped after `drop` below has unmounted it.
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("temp dir");
        let mount = dir.path().join("small");
        std::fs::create_dir(&mount).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a {size} tmpfs on {} failed ({status}); these tests need root",
            mount.display()
        );
        Tmpfs { mount, _dir: dir }
    }

    fn path(&self) -> &Path {
        &self.mount
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mount)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it open (a server task being torn down): detach it.
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
    }
}

/// Writes zeros to `path` until the disk is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("ballast file");
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    assert!(written > 0, "the ballast wrote nothing");
    written
}

/// Names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn says_no_space(answer: &Value) -> bool {
    answer["statusMsg"]
        .as_str()
        .is_some_and(|m| m.contains("No space left on device"))
}

// ---------------------------------------------------------------------------------------
// Upload
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_fills_the_disk_is_refused_cleanly() {
    const LAB: &str = "full";
    let disk = Tmpfs::new("2m");
    let courselabs = disk.path().join("courselabs");
    std::fs::create_dir(&courselabs).expect("courselabs dir");
    let root = courselabs.clone();
    let server = TestServer::start_with(Arc::new(MemoryStore::new()), move |c| {
        c.server.courselabs = root;
    })
    .await;
    let lab_dir = courselabs.join(format!("{}-{LAB}", Labs::tenant(KEY)));
    let tmp_dir = courselabs.join("tmp");

    let opened = server.open(LAB).await;
    assert_eq!(opened["statusId"], 0, "{opened}");

    // 3 MiB onto a 2 MiB disk.
    let big = vec![b'x'; 3 << 20];
    let answer = server.upload(LAB, "big.bin", &big).await;
    assert_eq!(answer["statusId"], -1, "{answer}");
    assert!(says_no_space(&answer), "the message says why: {answer}");
    assert_eq!(entries(&lab_dir), vec!["output".to_string()], "no big.bin");
    assert!(entries(&tmp_dir).is_empty(), "no temporary upload left");

    // Fill the disk, so that even a small file does not fit: refused the same way.
    let ballast = disk.path().join("ballast");
    fill(&ballast);
    let small = b"int main(void) { return 0; }\n";
    let answer = server.upload(LAB, "small.c", small).await;
    assert_eq!(answer["statusId"], -1, "{answer}");
    assert!(says_no_space(&answer), "{answer}");
    assert_eq!(entries(&lab_dir), vec!["output".to_string()], "no small.c");
    assert!(entries(&tmp_dir).is_empty(), "no temporary upload left");

    // Space freed: the same upload succeeds, whole, and open lists its MD5.
    std::fs::remove_file(&ballast).expect("remove ballast");
    let answer = server.upload(LAB, "small.c", small).await;
    assert_eq!(answer["statusId"], 0, "{answer}");
    assert_eq!(
        std::fs::read(lab_dir.join("small.c")).expect("small.c"),
        small
    );
    assert!(entries(&tmp_dir).is_empty(), "no temporary upload left");
    let opened = server.open(LAB).await;
    assert_eq!(opened["statusId"], 0, "{opened}");
    let files = opened["files"].to_string();
    assert!(
        files.contains(&md5_hex(small)),
        "open lists small.c: {opened}"
    );
    assert!(!files.contains("big.bin"), "{opened}");

    // And the server keeps answering.
    let info = server.get_json(&format!("/info/{KEY}/")).await;
    assert_eq!(info["statusId"], 0, "{info}");
    drop(server);
}

// ---------------------------------------------------------------------------------------
// Output write
// ---------------------------------------------------------------------------------------

/// The pipeline tests' fast settings, with one machine.
fn config() -> Config {
    let mut c = fast_config();
    c.vmms.pool_size = 1;
    c
}

/// A store, the pipeline's fake backend, inputs on the ordinary disk and outputs on the
/// small one.
struct Rig {
    store: Arc<dyn JobStore>,
    fake: Arc<FakeVmms>,
    /// The courselabs directory; its one courselab's output folder is a link to the small
    /// disk (workers refuse paths outside the courselabs).
    root: tempfile::TempDir,
    inputs: PathBuf,
    output_dir: PathBuf,
}

impl Rig {
    fn new(disk: &Tmpfs) -> Rig {
        let root = tempfile::tempdir().expect("temp dir");
        let inputs = root.path().join("t-lab");
        std::fs::create_dir(&inputs).expect("courselab dir");
        let full = disk.path().join("output");
        std::fs::create_dir(&full).expect("output dir");
        let output_dir = inputs.join("output");
        std::os::unix::fs::symlink(&full, &output_dir).expect("output link");
        Rig {
            store: Arc::new(MemoryStore::new()),
            fake: FakeVmms::new("t"),
            root,
            inputs,
            output_dir,
        }
    }

    async fn start(&self) -> Manager {
        let vmms: Arc<dyn Vmms> = self.fake.clone();
        let mut config = config();
        config.server.courselabs = self.root.path().to_path_buf();
        let app = App::new(config, self.store.clone(), vmms);
        Manager::start(app).await.expect("manager starts")
    }

    fn output_path(&self, name: &str) -> PathBuf {
        self.output_dir.join(format!("{name}.txt"))
    }

    async fn submit(&self, name: &str) -> JobId {
        self.submit_with(name, None).await
    }

    async fn submit_with(&self, name: &str, notify_url: Option<&str>) -> JobId {
        let id = self.store.allocate_job_id().await.expect("job id");
        let mut job = fake_job(id, name, &self.inputs, &self.output_path(name), 4 << 20);
        job.notify_url = notify_url.map(str::to_string);
        self.store.enqueue(&job, 0).await.expect("enqueue");
        id
    }

    async fn wait_dead(&self, id: JobId) -> Job {
        let deadline = Instant::now() + HANG;
        loop {
            if let Some(job) = self.store.dead_job(id).await.expect("dead job") {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not dead after {HANG:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn runs(&self, name: &str) -> u32 {
        self.fake
            .state()
            .runs_by_name
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}

fn trace_messages(job: &Job) -> Vec<String> {
    job.trace
        .iter()
        .map(|line| {
            line.split_once('|')
                .map_or(line.as_str(), |(_, m)| m)
                .to_string()
        })
        .collect()
}

/// Asserts `job` ended once, saying its output could not be written for lack of space, and
/// left nothing at its output path.
fn assert_output_not_written(rig: &Rig, job: &Job, name: &str) {
    let trace = trace_messages(job);
    let path = rig.output_path(name);
    assert!(
        trace.iter().any(|m| m.starts_with(&format!(
            "Error: Cannot write the output file {}",
            path.display()
        )) && m.contains("No space left on device")),
        "the trace says the output could not be written: {trace:#?}"
    );
    assert!(!job.assigned, "ended");
    assert_eq!(job.retries, 0, "not retried");
    assert_eq!(rig.runs(name), 1, "run once");
    assert!(
        !path.exists(),
        "no output file in place (it could only be truncated)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_that_cannot_be_written_ends_the_job_and_leaves_nothing() {
    let disk = Tmpfs::new("2m");
    let rig = Rig::new(&disk);
    let ballast = disk.path().join("ballast");
    let manager = rig.start().await;

    // 1. The disk is full before the job ends: not even the copy-out fits.
    fill(&ballast);
    let id = rig.submit("full").await;
    let job = rig.wait_dead(id).await;
    assert_output_not_written(&rig, &job, "full");
    assert!(
        trace_messages(&job)
            .last()
            .is_some_and(|m| m.contains("Error: Copy out from VM failed (status=-1)")),
        "{:#?}",
        job.trace
    );
    assert!(
        entries(&rig.output_dir).is_empty(),
        "no temporary file left"
    );

    // 2. The copy-out fits (64 KiB free, a 64 KiB output), the output file (Tango's header
    //    on top of it) does not.
    let capacity = std::fs::metadata(&ballast).expect("ballast").len();
    let free = 64 * 1024;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&ballast)
        .expect("open ballast")
        .set_len(capacity - free)
        .expect("shrink ballast");
    rig.fake.script(
        "exact",
        JobScript {
            output: vec![b'y'; free as usize],
            ..JobScript::default()
        },
    );
    let receiver = Receiver::start(|_| Reply::Status(204)).await;
    let id = rig.submit_with("exact", Some(&receiver.url)).await;
    let job = rig.wait_dead(id).await;
    assert_output_not_written(&rig, &job, "exact");
    // Autolab still gets the output it would have read, through the callback.
    let deadline = Instant::now() + HANG;
    while receiver.requests().is_empty() {
        assert!(Instant::now() < deadline, "no callback after {HANG:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1, "one callback");
    let parts = requests[0].multipart();
    assert_eq!(parts.len(), 1, "one part");
    let content = &parts[0].1;
    assert!(content.starts_with(b"Autograder ["), "header first");
    assert!(
        content.ends_with(&vec![b'y'; free as usize]),
        "the whole autodriver output, last"
    );
    assert!(
        trace_messages(&job)
            .iter()
            .any(|m| m.starts_with("Output copied for job exact") && m.ends_with("[status=0]")),
        "the copy-out fitted: {:#?}",
        job.trace
    );
    assert_eq!(
        trace_messages(&job).last().map(String::as_str),
        Some("Success: Autodriver returned normally")
    );
    assert!(
        entries(&rig.output_dir).is_empty(),
        "no temporary file left"
    );

    // 3. Space freed: the daemon goes on, and the next job's output is whole.
    std::fs::remove_file(&ballast).expect("remove ballast");
    let id = rig.submit("after").await;
    let job = rig.wait_dead(id).await;
    assert_eq!(
        trace_messages(&job).last().map(String::as_str),
        Some("Success: Autodriver returned normally")
    );
    let output = std::fs::read(rig.output_path("after")).expect("output file");
    assert!(output.starts_with(b"Autograder ["), "header first");
    assert!(
        output.ends_with(&JobScript::default().output),
        "the autodriver's output whole, last"
    );
    assert_eq!(entries(&rig.output_dir), vec!["after.txt".to_string()]);

    manager.shutdown(Duration::from_secs(5)).await;
}

/// An output file an earlier run left at the path is not touched when the new one cannot be
/// written: it stays complete (old, not truncated), and no temporary file is left beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_output_file_is_left_untouched_by_a_failed_write() {
    let disk = Tmpfs::new("2m");
    let rig = Rig::new(&disk);
    let earlier = b"Autograder [Sun Dec  6 00:00:00 2026]: an earlier run, complete\n".repeat(64);
    std::fs::write(rig.output_path("again"), &earlier).expect("earlier output");
    let manager = rig.start().await;
    fill(&disk.path().join("ballast"));
    let id = rig.submit("again").await;
    let job = rig.wait_dead(id).await;
    let trace = trace_messages(&job);
    assert!(
        trace
            .iter()
            .any(|m| m.starts_with("Error: Cannot write the output file")
                && m.contains("No space left on device")),
        "the trace says the output could not be written: {trace:#?}"
    );
    assert_eq!(rig.runs("again"), 1, "run once");
    assert!(
        std::fs::read(rig.output_path("again")).expect("the earlier file") == earlier,
        "the earlier run's output file was changed"
    );
    assert_eq!(
        entries(&rig.output_dir),
        vec!["again.txt".to_string()],
        "no temporary file left"
    );
    manager.shutdown(Duration::from_secs(5)).await;
}
