//! The real daemon, as a separate process: `tango serve` (or `tango manager`) started from
//! the binary cargo built, on a free loopback port, with a configuration written for the
//! test, and a client that talks to it the way Autolab does.
//!
//! ```ignore
//! let daemon = Daemon::start(DaemonOptions::local()).await;
//! let id = daemon.submit_job("course-lab", &support::jobs::job("hello"), JobOptions::default()).await;
//! let output = daemon.wait_output("course-lab", &JobOptions::default().output_file, WAIT).await;
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::free_port;

/// What to start.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// `serve`, `serve --no-manager` or `manager`.
    pub mode: Mode,
    /// TOML appended to the generated `[server]` section's file: other sections, e.g.
    /// `[vmms]\nname = "local"\n`. Must not contain a `[server]` table (use `server_extra`).
    pub config: String,
    /// Lines added inside `[server]`.
    pub server_extra: String,
    /// The API key.
    pub key: String,
    /// Reuse this courselabs directory (several processes sharing one), else a fresh one.
    pub courselabs: Option<PathBuf>,
    /// Extra environment variables for the process.
    pub env: Vec<(String, String)>,
}

/// In [`DaemonOptions::config`], replaced by the daemon's own temporary directory.
pub const DAEMON_DIR: &str = "{DAEMON_DIR}";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Serve,
    ServeNoManager,
    Manager,
}

impl DaemonOptions {
    /// The embedded default with the `local` backend and the autodriver cargo built.
    pub fn local() -> DaemonOptions {
        DaemonOptions {
            mode: Mode::Serve,
            // Machines in the daemon's own directory, so that a test sees only its daemon's
            // (daemons sharing one step around each other's names, at the cost of refused
            // creates).
            config: format!(
                "[vmms]\nname = \"local\"\n\n[local]\nautodriver = \"{}\"\nwork_dir = \"{{DAEMON_DIR}}/machines\"\n",
                super::jobs::autodriver_binary().display()
            ),
            server_extra: String::new(),
            key: "test".into(),
            courselabs: None,
            env: Vec::new(),
        }
    }

    /// Appends TOML to the configuration.
    pub fn with(mut self, toml: &str) -> DaemonOptions {
        self.config.push('\n');
        self.config.push_str(toml);
        self.config.push('\n');
        self
    }
}

/// A running daemon process. Killed when dropped.
pub struct Daemon {
    /// The process; None once it has been killed or has exited and been reaped.
    child: Mutex<Option<Child>>,
    pid: u32,
    /// The address it listens on (127.0.0.1, or its network namespace's).
    pub host: String,
    pub port: u16,
    pub key: String,
    pub courselabs: PathBuf,
    /// Where the config, logs and (when owned) courselabs live.
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    client: reqwest::Client,
}

/// The fields of an addJob request (Autolab's seven, plus what tests vary).
#[derive(Clone, Debug)]
pub struct JobOptions {
    pub image: String,
    pub output_file: String,
    pub timeout: u64,
    pub callback_url: String,
    pub job_name: String,
    pub disable_network: bool,
    /// Extra fields merged into the body (`max_kb`, `accessKeyId`, ...).
    pub extra: Value,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            image: "autograding_image".into(),
            output_file: "user@x.edu_1_lab_autograde.txt".into(),
            timeout: 20,
            callback_url: String::new(),
            job_name: "course_lab_1_user@x.edu".into(),
            disable_network: false,
            extra: json!({}),
        }
    }
}

impl Daemon {
    /// Starts the process and waits until `GET /` answers (or, for a bare manager, until it
    /// logs that it runs). Panics with the log when it does not start.
    pub async fn start(options: DaemonOptions) -> Daemon {
        Self::launch(options, None).await
    }

    /// Like [`Daemon::start`], but inside the network namespace `netns` (`ip netns` name),
    /// listening on `addr`, that namespace's address: a process on another "host".
    pub async fn start_in(options: DaemonOptions, netns: &str, addr: &str) -> Daemon {
        Self::launch(options, Some((netns, addr))).await
    }

    async fn launch(options: DaemonOptions, netns: Option<(&str, &str)>) -> Daemon {
        let host = netns.map_or("127.0.0.1", |(_, addr)| addr).to_string();
        let dir = tempfile::tempdir().expect("temp dir");
        // Traversable, so the local backend's jobs (other uids) reach machines under it.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .expect("chmod temp dir");
        let courselabs = options
            .courselabs
            .clone()
            .unwrap_or_else(|| dir.path().join("courselabs"));
        std::fs::create_dir_all(&courselabs).expect("courselabs dir");
        let port = free_port();
        let config_path = dir.path().join("tango.toml");
        let config = format!(
            "[server]\nbind = \"{host}\"\nport = {port}\nkeys = [\"{key}\"]\ncourselabs = \"{cl}\"\n{extra}\n{rest}\n",
            key = options.key,
            cl = courselabs.display(),
            extra = options.server_extra,
            rest = options
                .config
                .replace(DAEMON_DIR, &dir.path().display().to_string()),
        );
        std::fs::write(&config_path, config).expect("write config");
        let log = dir.path().join("tango.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        // nsenter switches only the network namespace (`ip netns exec` would also remount
        // /sys, hiding the cgroup mounts), then execs tango: the child's pid is tango's.
        let mut command = match netns {
            Some((name, _)) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{name}"))
                    .arg(env!("CARGO_BIN_EXE_tango"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_tango")),
        };
        match options.mode {
            Mode::Serve => command.arg("serve"),
            Mode::ServeNoManager => command.args(["serve", "--no-manager"]),
            Mode::Manager => command.arg("manager"),
        };
        command
            .arg("--config")
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .env("RUST_LOG", "info,tango=debug")
            .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file);
        // Keep the test's environment from reconfiguring the daemon behind its back.
        for (name, _) in std::env::vars() {
            if name.starts_with("TANGO_") && name != "TANGO_TEST_REDIS" {
                command.env_remove(&name);
            }
        }
        let child = command.spawn().expect("spawn tango");
        let daemon = Daemon {
            pid: child.id(),
            child: Mutex::new(Some(child)),
            host,
            port,
            key: options.key.clone(),
            courselabs,
            dir,
            log,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client"),
        };
        if options.mode != Mode::Manager {
            daemon.wait_ready(Duration::from_secs(60)).await;
        }
        daemon
    }

    /// `http://HOST:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{}", self.host, self.port, path)
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(r) = self.client.get(self.url("/")).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "tango exited ({status}) before answering:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "tango did not answer within {limit:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Some(exit status) once the process has ended (it is reaped then).
    pub fn exited(&self) -> Option<ExitStatus> {
        let mut child = self.child();
        let status = child.as_mut()?.try_wait().ok()??;
        *child = None;
        Some(status)
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) while the process runs.
    pub fn signal(&self, signal: i32) {
        if self.child().is_some() {
            // SAFETY: kill(2) on our own, not yet reaped, child's pid.
            unsafe {
                libc::kill(self.pid as i32, signal);
            }
        }
    }

    /// kill -9, and reap.
    pub fn kill9(&self) {
        if let Some(mut child) = self.child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `limit` for the exit; returns its status, or None when it
    /// had to be killed.
    pub fn terminate(&self, limit: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() > deadline {
                self.kill9();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // ---- the client, as Autolab speaks ----

    /// GET a JSON route.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = self
            .client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let text = response.text().await.expect("body");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"))
    }

    /// POST bytes with Autolab's headers; JSON answer.
    pub async fn post_json(&self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Value {
        let mut request = self
            .client
            .post(self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let text = response.text().await.expect("body");
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {text}"))
    }

    pub async fn open(&self, courselab: &str) -> Value {
        let v = self
            .get_json(&format!("/open/{}/{}/", self.key, courselab))
            .await;
        assert_eq!(v["statusId"], 0, "open: {v}");
        v
    }

    pub async fn upload(&self, courselab: &str, name: &str, bytes: Vec<u8>) -> Value {
        let v = self
            .post_json(
                &format!("/upload/{}/{}/", self.key, courselab),
                &[("filename", name)],
                bytes,
            )
            .await;
        assert_eq!(v["statusId"], 0, "upload {name}: {v}");
        v
    }

    /// addJob with a raw JSON body; the answer as is.
    pub async fn add_job_raw(&self, courselab: &str, body: &Value) -> Value {
        self.post_json(
            &format!("/addJob/{}/{}/", self.key, courselab),
            &[],
            body.to_string().into_bytes(),
        )
        .await
    }

    /// Opens the courselab, uploads every file of `job`'s directory (its Makefile as
    /// `Makefile`), adds the job; returns its id. Panics when it is not accepted.
    pub async fn submit_job(
        &self,
        courselab: &str,
        job: &super::jobs::Job,
        options: &JobOptions,
    ) -> u64 {
        self.open(courselab).await;
        let mut files = Vec::new();
        for path in job.input_files() {
            let name = file_name(&path);
            let bytes = std::fs::read(&path).expect("read job file");
            self.upload(courselab, &name, bytes).await;
            files.push(json!({"localFile": name, "destFile": name}));
        }
        self.add_job(courselab, files, options).await
    }

    /// addJob with Autolab's seven fields (and `options.extra`); returns the job id.
    pub async fn add_job(&self, courselab: &str, files: Vec<Value>, options: &JobOptions) -> u64 {
        let mut body = json!({
            "image": options.image,
            "files": files,
            "output_file": options.output_file,
            "timeout": options.timeout,
            "callback_url": options.callback_url,
            "jobName": options.job_name,
            "disable_network": options.disable_network,
        });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), options.extra.as_object()) {
            for (k, v) in extra {
                body.insert(k.clone(), v.clone());
            }
        }
        let v = self.add_job_raw(courselab, &body).await;
        assert_eq!(v["statusId"], 0, "addJob: {v}");
        v["jobId"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("addJob jobId: {v}"))
    }

    /// The output file's bytes, or None while `poll` says it is not there.
    pub async fn poll(&self, courselab: &str, output_file: &str) -> Option<Vec<u8>> {
        let encoded = percent_encode(output_file);
        let response = self
            .client
            .get(self.url(&format!("/poll/{}/{}/{}/", self.key, courselab, encoded)))
            .send()
            .await
            .expect("poll");
        let is_json = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let bytes = response.bytes().await.expect("poll body").to_vec();
        if is_json {
            let v: Value = serde_json::from_slice(&bytes).expect("poll JSON");
            assert_eq!(v["statusMsg"], "Output file not found", "poll: {v}");
            None
        } else {
            Some(bytes)
        }
    }

    /// Polls until the output file is there (and its job is dead), at most `limit`.
    pub async fn wait_output(
        &self,
        courselab: &str,
        output_file: &str,
        limit: Duration,
    ) -> Vec<u8> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(bytes) = self.poll(courselab, output_file).await {
                return bytes;
            }
            assert!(
                Instant::now() < deadline,
                "no output {output_file} within {limit:?}; live jobs: {}\nlog:\n{}",
                self.get_json(&format!("/jobs/{}/0/", self.key)).await,
                tail(&self.log_text(), 60)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `/jobs/KEY/0|1/`'s jobs.
    pub async fn jobs(&self, dead: bool) -> Vec<Value> {
        let v = self
            .get_json(&format!("/jobs/{}/{}/", self.key, u8::from(dead)))
            .await;
        v["jobs"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until job `id` is in the dead list; returns it.
    pub async fn wait_dead(&self, id: u64, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(job) = self.jobs(true).await.into_iter().find(|j| j["id"] == id) {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not dead within {limit:?}; live: {:?}\nlog:\n{}",
                self.jobs(false).await,
                tail(&self.log_text(), 60)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Percent-encodes a path segment the way tango-cli's `urllib.parse.quote` does (`@` too).
pub fn percent_encode(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs the `tango` CLI with `args` against `daemon` (server and key through `TANGO_URL` /
/// `TANGO_KEY`, every other `TANGO_` variable of the test's environment removed).
pub async fn tango_cli(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tango"));
    for (name, _) in std::env::vars() {
        if name.starts_with("TANGO_") {
            command.env_remove(&name);
        }
    }
    command
        .args(args)
        .env("TANGO_URL", daemon.url(""))
        .env("TANGO_KEY", &daemon.key)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run tango {args:?}: {e}"))
}
