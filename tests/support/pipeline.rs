//! Test doubles for the job pipeline: an in-test machine backend whose every step can be
//! told to succeed, fail or hang, and a callback receiver that speaks plain HTTP/1.1.
//!
//! [`FakeVmms`] "runs" a job by producing the autodriver output and status a test scripted
//! for its name, and records every call, so tests can check order, concurrency and that no
//! machine is left behind. A job's name is known to the backend from its first input file
//! (`<dir>/<job name>.mk`, see [`input_file`]) at copy-in, and from the run spec at run.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tango::app::App;
use tango::config::Config;
use tango::manager::Manager;
use tango::model::{InputFile, Job, JobId, Machine};
use tango::store::JobStore;
use tango::vmms::{Pacing, RunOutcome, RunSpec, Vmms, VmmsError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend step a test can script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Initialize,
    Wait,
    CopyIn,
    Run,
    CopyOut,
    Destroy,
}

/// What a scripted step does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Fails with a backend error (a machine-level failure).
    Fail(String),
    /// Fails with an I/O error on this host.
    Io(String),
    /// Fails as unsupported.
    Unsupported,
    /// Never returns.
    Hang,
    /// Succeeds after a pause.
    Delay(Duration),
}

/// Which calls a rule applies to.
#[derive(Debug, Clone)]
pub enum When {
    Always,
    /// The n-th calls of the step (1-based, counted over all machines and jobs).
    Calls(RangeInclusive<u32>),
    /// Calls for this job (known from copy-in on).
    Job(String),
}

#[derive(Debug, Clone)]
struct Rule {
    step: Step,
    when: When,
    action: Action,
}

/// What running a job produces.
#[derive(Debug, Clone)]
pub struct JobScript {
    /// The autodriver's output (what copy-out hands back).
    pub output: Vec<u8>,
    pub outcome: RunOutcome,
    /// How long the run takes.
    pub run_time: Duration,
}

impl Default for JobScript {
    fn default() -> Self {
        JobScript {
            output: b"Autodriver: Job exited with status 0\nhello\n{\"scores\": {\"q\": 1}}\n"
                .to_vec(),
            outcome: RunOutcome::Exited(0),
            run_time: Duration::ZERO,
        }
    }
}

/// Everything the fake has seen and holds.
#[derive(Default)]
pub struct FakeState {
    /// Machines that exist now, by instance name.
    pub live: BTreeMap<String, Machine>,
    /// Instance names of every machine made, in order, and when each was begun.
    pub created: Vec<String>,
    pub created_at: Vec<Instant>,
    /// The machine (instance name) of every run, in the order the runs started.
    pub run_on: Vec<String>,
    /// Instance names of every machine destroyed, in order.
    pub destroyed: Vec<String>,
    /// Job ids in the order their runs started.
    pub runs: Vec<u64>,
    /// Runs started per job name.
    pub runs_by_name: HashMap<String, u32>,
    /// Runs going on now, and the most at once.
    pub running: u32,
    pub max_running: u32,
    /// `initialize_vm` calls going on now, and the most at once.
    pub initializing: u32,
    pub max_initializing: u32,
    calls: HashMap<Step, u32>,
    rules: Vec<Rule>,
    scripts: HashMap<String, JobScript>,
    /// Instance → the job whose input it holds.
    on_machine: HashMap<String, String>,
    /// Instance → the output of its last run.
    outputs: HashMap<String, Vec<u8>>,
}

/// The in-test backend.
pub struct FakeVmms {
    prefix: String,
    state: Mutex<FakeState>,
    /// Set for a backend of single-use machines (as Docker's): how many jobs it takes at
    /// once, which is also how many machines it makes at once, with no pause.
    single_use: Option<u32>,
}

impl FakeVmms {
    /// A backend of reusable machines (as a VM backend's), paced as configured.
    pub fn new(prefix: &str) -> Arc<FakeVmms> {
        Arc::new(FakeVmms {
            prefix: prefix.to_string(),
            state: Mutex::new(FakeState::default()),
            single_use: None,
        })
    }

    /// A backend of single-use machines that takes `capacity` jobs at once, as Docker does.
    pub fn single_use(prefix: &str, capacity: u32) -> Arc<FakeVmms> {
        Arc::new(FakeVmms {
            prefix: prefix.to_string(),
            state: Mutex::new(FakeState::default()),
            single_use: Some(capacity),
        })
    }

    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Scripts `step`: the first rule that matches a call decides it; no rule, success.
    pub fn on(&self, step: Step, when: When, action: Action) {
        self.state().rules.push(Rule { step, when, action });
    }

    /// What running job `name` produces.
    pub fn script(&self, name: &str, script: JobScript) {
        self.state().scripts.insert(name.to_string(), script);
    }

    /// Puts a machine in the backend as if a previous process had made it.
    pub fn plant(&self, vm: Machine) {
        let instance = self.name_of(&vm);
        let mut vm = vm;
        vm.instance = Some(instance.clone());
        self.state().live.insert(instance, vm);
    }

    pub fn live_instances(&self) -> Vec<String> {
        self.state().live.keys().cloned().collect()
    }

    pub fn calls(&self, step: Step) -> u32 {
        self.state().calls.get(&step).copied().unwrap_or(0)
    }

    fn name_of(&self, vm: &Machine) -> String {
        format!("{}-{}-{}", self.prefix, vm.id.unwrap_or(0), vm.name)
    }

    /// Counts the call and finds its scripted action.
    fn decide(&self, step: Step, job: Option<&str>) -> Option<Action> {
        let mut s = self.state();
        let n = {
            let count = s.calls.entry(step).or_insert(0);
            *count += 1;
            *count
        };
        s.rules
            .iter()
            .find(|r| {
                r.step == step
                    && match &r.when {
                        When::Always => true,
                        When::Calls(range) => range.contains(&n),
                        When::Job(name) => job == Some(name.as_str()),
                    }
            })
            .map(|r| r.action.clone())
    }

    async fn act(&self, step: Step, job: Option<&str>) -> Result<(), VmmsError> {
        match self.decide(step, job) {
            None => Ok(()),
            Some(Action::Fail(m)) => Err(VmmsError::Backend(m)),
            Some(Action::Io(m)) => Err(VmmsError::Io(m)),
            Some(Action::Unsupported) => Err(VmmsError::Unsupported("not here".into())),
            Some(Action::Hang) => std::future::pending().await,
            Some(Action::Delay(d)) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
        }
    }

    fn job_on(&self, vm: &Machine) -> Option<String> {
        self.state().on_machine.get(&self.name_of(vm)).cloned()
    }

    fn check_live(&self, vm: &Machine) -> Result<String, VmmsError> {
        let instance = self.name_of(vm);
        if self.state().live.contains_key(&instance) {
            Ok(instance)
        } else {
            Err(VmmsError::NotFound(instance))
        }
    }
}

/// Decrements the initializing count when an `initialize_vm` ends, however it ends.
struct Initializing<'a>(&'a FakeVmms);

impl Drop for Initializing<'_> {
    fn drop(&mut self) {
        self.0.state().initializing -= 1;
    }
}

/// Decrements the running count when a run ends, however it ends.
struct Running<'a>(&'a FakeVmms);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.state().running -= 1;
    }
}

#[async_trait]
impl Vmms for FakeVmms {
    fn name(&self) -> &str {
        "fake"
    }

    fn instance_name(&self, vm: &Machine) -> String {
        self.name_of(vm)
    }

    fn reusable(&self) -> bool {
        self.single_use.is_none()
    }

    fn pacing(&self) -> Option<Pacing> {
        self.single_use.map(|capacity| Pacing {
            pause: Duration::ZERO,
            parallel: capacity,
        })
    }

    fn job_capacity(&self) -> Option<u32> {
        self.single_use
    }

    async fn initialize_vm(&self, vm: &mut Machine) -> Result<(), VmmsError> {
        let instance = self.name_of(vm);
        vm.instance = Some(instance.clone());
        vm.host = Some("fake-host".into());
        {
            // Made before the scripted outcome, so a failed or hung initialize leaves
            // something behind to clean up, as a real backend can.
            let mut s = self.state();
            s.created.push(instance.clone());
            s.created_at.push(Instant::now());
            s.live.insert(instance, vm.clone());
            s.initializing += 1;
            s.max_initializing = s.max_initializing.max(s.initializing);
        }
        let _ending = Initializing(self);
        self.act(Step::Initialize, None).await
    }

    async fn wait_vm(&self, vm: &Machine, _max: Duration) -> Result<(), VmmsError> {
        let job = self.job_on(vm);
        self.act(Step::Wait, job.as_deref()).await?;
        self.check_live(vm).map(|_| ())
    }

    async fn copy_in(&self, vm: &Machine, inputs: &[InputFile]) -> Result<(), VmmsError> {
        let instance = self.check_live(vm)?;
        let job = inputs
            .first()
            .and_then(|f| Path::new(&f.local_file).file_stem())
            .map(|s| s.to_string_lossy().into_owned());
        if let Some(job) = &job {
            self.state()
                .on_machine
                .insert(instance.clone(), job.clone());
        }
        self.act(Step::CopyIn, job.as_deref()).await?;
        for input in inputs {
            if std::fs::metadata(&input.local_file).is_err() {
                return Err(VmmsError::Io(format!("{}: no such file", input.local_file)));
            }
        }
        Ok(())
    }

    async fn run_job(&self, vm: &Machine, spec: &RunSpec) -> Result<RunOutcome, VmmsError> {
        let instance = self.check_live(vm)?;
        let script = {
            let mut s = self.state();
            s.runs.push(spec.job_id);
            s.run_on.push(instance.clone());
            *s.runs_by_name.entry(spec.job_name.clone()).or_insert(0) += 1;
            s.running += 1;
            s.max_running = s.max_running.max(s.running);
            s.scripts.get(&spec.job_name).cloned().unwrap_or_default()
        };
        let _running = Running(self);
        self.act(Step::Run, Some(&spec.job_name)).await?;
        tokio::time::sleep(script.run_time).await;
        self.state().outputs.insert(instance, script.output);
        Ok(script.outcome)
    }

    async fn copy_out(&self, vm: &Machine, dest: &Path, max_bytes: u64) -> Result<(), VmmsError> {
        let instance = self.check_live(vm)?;
        let job = self.job_on(vm);
        self.act(Step::CopyOut, job.as_deref()).await?;
        let mut output = self.state().outputs.remove(&instance).unwrap_or_default();
        output.truncate(max_bytes as usize);
        tokio::fs::write(dest, output).await?;
        Ok(())
    }

    async fn destroy_vm(&self, vm: &Machine) -> Result<(), VmmsError> {
        self.act(Step::Destroy, None).await?;
        let instance = self.name_of(vm);
        let mut s = self.state();
        s.on_machine.remove(&instance);
        s.outputs.remove(&instance);
        match s.live.remove(&instance) {
            Some(_) => {
                s.destroyed.push(instance);
                Ok(())
            }
            None => Err(VmmsError::NotFound(instance)),
        }
    }

    async fn get_vms(&self) -> Result<Vec<Machine>, VmmsError> {
        Ok(self.state().live.values().cloned().collect())
    }

    async fn exists_vm(&self, vm: &Machine) -> Result<bool, VmmsError> {
        Ok(self.state().live.contains_key(&self.name_of(vm)))
    }

    async fn get_images(&self) -> Result<Vec<String>, VmmsError> {
        Ok(vec!["img".into()])
    }

    async fn get_partial_output(&self, vm: &Machine, max: u64) -> Result<Vec<u8>, VmmsError> {
        let instance = self.check_live(vm)?;
        let mut out = self
            .state()
            .outputs
            .get(&instance)
            .cloned()
            .unwrap_or_default();
        out.truncate(max as usize);
        Ok(out)
    }
}

/// The input file that names a job to the fake backend: `<dir>/<name>.mk`, created.
pub fn input_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.mk"));
    std::fs::write(&path, b"all:\n\techo hello\n").expect("write input file");
    path
}

/// A job for the fake backend as addJob builds it, not queued: its input `<dir>/<name>.mk`
/// (created), its output file `output`, a 10 s timeout, and the "Added" trace line.
pub fn fake_job(id: JobId, name: &str, dir: &Path, output: &Path, max_output: u64) -> Job {
    let input = input_file(dir, name);
    let mut job = Job {
        id,
        name: name.to_string(),
        vm: Machine {
            name: "img".into(),
            image: "img".into(),
            vmms: "fake".into(),
            ..Machine::default()
        },
        input: vec![InputFile {
            local_file: input.to_string_lossy().into_owned(),
            dest_file: "Makefile".into(),
        }],
        output_file: output.to_string_lossy().into_owned(),
        timeout: 10,
        max_output,
        ..Job::default()
    };
    job.timings.added = Some(tango::model::unix_now());
    job.trace(format!("Added job {} to queue", job.label()));
    job
}

// ---- a callback receiver ----

/// How the receiver treats one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Answer with this status.
    Status(u16),
    /// Read the request, then close the connection without answering.
    Drop,
    /// Read the request and never answer.
    Hang,
}

/// One part of a multipart body: its headers (names lower-cased) and its content.
pub type Part = (Vec<(String, String)>, Vec<u8>);

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub target: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When its head arrived.
    pub at: std::time::Instant,
    /// The status it was answered with; `None` when the connection was dropped or hung.
    pub answered: Option<u16>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }

    /// The parts of a `multipart/form-data` body: (part headers lower-cased, content).
    pub fn multipart(&self) -> Vec<Part> {
        let content_type = self.header("content-type").unwrap_or_default();
        let boundary = content_type
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("boundary="))
            .next()
            .expect("a multipart boundary")
            .trim_matches('"')
            .to_string();
        let delimiter = format!("--{boundary}").into_bytes();
        let mut parts = Vec::new();
        let chunks = split_bytes(&self.body, &delimiter);
        // chunks[0] is the preamble; the last starts with "--" (the closing delimiter).
        for chunk in chunks.iter().skip(1) {
            if chunk.starts_with(b"--") {
                break;
            }
            let chunk = chunk.strip_prefix(b"\r\n").unwrap_or(chunk);
            let chunk = chunk.strip_suffix(b"\r\n").unwrap_or(chunk);
            let split = find(chunk, b"\r\n\r\n").expect("part headers end");
            let head = String::from_utf8_lossy(&chunk[..split]).into_owned();
            let headers = head
                .split("\r\n")
                .filter_map(|line| line.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            parts.push((headers, chunk[split + 4..].to_vec()));
        }
        parts
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn split_bytes(data: &[u8], delimiter: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(at) = find(rest, delimiter) {
        out.push(rest[..at].to_vec());
        rest = &rest[at + delimiter.len()..];
    }
    out.push(rest.to_vec());
    out
}

/// A callback receiver on 127.0.0.1: each request is answered as `reply(n)` says (n is the
/// 1-based request count) and recorded.
pub struct Receiver {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub async fn start(reply: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Receiver {
        Self::start_on("127.0.0.1", reply).await
    }

    /// Like [`Receiver::start`], listening on `ip` (an address other network namespaces
    /// reach).
    pub async fn start_on(
        ip: &str,
        reply: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let reply = Arc::new(reply);
        let count = Arc::new(Mutex::new(0usize));
        let task = {
            let received = received.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let received = received.clone();
                    let reply = reply.clone();
                    let count = count.clone();
                    tokio::spawn(async move {
                        serve_connection(stream, received, reply, count).await;
                    });
                }
            })
        };
        Receiver {
            url: format!("http://{addr}/courses/c/assessments/a/autograde_done?dave=X"),
            received,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Requests whose URL carries `job=<id>` (tests put the job in the URL).
    pub fn for_job(&self, id: u64) -> usize {
        let tag = format!("job={id}");
        self.requests()
            .iter()
            .filter(|r| r.target.split(['?', '&']).any(|p| p == tag))
            .count()
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    received: Arc<Mutex<Vec<Received>>>,
    reply: Arc<dyn Fn(usize) -> Reply + Send + Sync>,
    count: Arc<Mutex<usize>>,
) {
    // Keep-alive: serve requests until the client closes.
    let mut buffer = Vec::new();
    loop {
        let Some(request) = read_request(&mut stream, &mut buffer).await else {
            return;
        };
        let n = {
            let mut c = count.lock().unwrap_or_else(|p| p.into_inner());
            *c += 1;
            *c
        };
        let answer = reply(n);
        let mut request = request;
        if let Reply::Status(code) = answer {
            request.answered = Some(code);
        }
        received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(request);
        match answer {
            Reply::Status(code) => {
                let text = format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n");
                if stream.write_all(text.as_bytes()).await.is_err() {
                    return;
                }
            }
            Reply::Drop => return,
            Reply::Hang => {
                std::future::pending::<()>().await;
            }
        }
    }
}

async fn read_request(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Received> {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = find(buffer, b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let at = std::time::Instant::now();
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let target = request_line.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    buffer.drain(..head_end + 4);
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(at) = find(buffer, b"\r\n") {
                    break at;
                }
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buffer.extend_from_slice(&chunk[..n]);
            };
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&buffer[..line_end]).trim(), 16)
                    .ok()?;
            buffer.drain(..line_end + 2);
            while buffer.len() < size + 2 {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            body.extend_from_slice(&buffer[..size]);
            buffer.drain(..size + 2);
            if size == 0 {
                break body;
            }
        }
    } else {
        while buffer.len() < length {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
        buffer.drain(..length).collect()
    };
    Some(Received {
        method,
        target,
        headers,
        body,
        at,
        answered: None,
    })
}

/// Small timeouts and back-offs, so that every path runs in seconds.
pub fn fast_config() -> Config {
    let mut c = Config::default();
    c.vmms.prefix = "t".into();
    c.vmms.reuse_vms = true;
    c.vmms.pool_size = 2;
    c.vmms.createvm_secs = 0.0;
    c.vmms.destroy_secs = 1.0;
    c.timeouts.initialize_vm = 5;
    c.timeouts.wait_vm = 5;
    c.timeouts.copy_in = 5;
    c.timeouts.run_job = 5;
    c.timeouts.copy_out = 5;
    c.jobs.lease_secs = 2;
    c.jobs.retries = 2;
    c.jobs.max_dead = 0;
    c.timeouts.kill_margin_secs = 0;
    c.callback.timeout_secs = 2;
    c.callback.attempts = 3;
    c.callback.backoff_secs = 0.05;
    c.callback.max_backoff_secs = 0.2;
    c
}

/// Managers in this process over a store, the fake backend and one courselab directory
/// for inputs and outputs (tests add their own methods).
pub struct Rig {
    pub store: Arc<dyn JobStore>,
    pub fake: Arc<FakeVmms>,
    /// The courselabs directory (workers refuse paths outside it).
    pub root: tempfile::TempDir,
    /// The one courselab, in `root`.
    pub dir: std::path::PathBuf,
}

impl Rig {
    pub fn new(store: Arc<dyn JobStore>) -> Rig {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("t-lab");
        std::fs::create_dir_all(dir.join("output")).expect("output dir");
        Rig {
            store,
            fake: FakeVmms::new("t"),
            root,
            dir,
        }
    }

    /// A rig whose backend's machines are single-use, `capacity` jobs at once (as Docker's).
    pub fn single_use(store: Arc<dyn JobStore>, capacity: u32) -> Rig {
        Rig {
            fake: FakeVmms::single_use("t", capacity),
            ..Rig::new(store)
        }
    }

    pub fn app(&self, mut config: Config) -> Arc<App> {
        config.server.courselabs = self.root.path().to_path_buf();
        let vmms: Arc<dyn Vmms> = self.fake.clone();
        App::new(config, self.store.clone(), vmms)
    }

    pub async fn start(&self, config: Config) -> (Arc<App>, Manager) {
        let app = self.app(config);
        let manager = Manager::start(app.clone()).await.expect("manager starts");
        (app, manager)
    }

    pub fn output_path(&self, name: &str) -> String {
        self.dir
            .join("output")
            .join(format!("{name}.txt"))
            .to_string_lossy()
            .into_owned()
    }

    /// A job as addJob builds it (not queued).
    pub async fn job(&self, name: &str, notify_url: Option<&str>) -> Job {
        let id = self.store.allocate_job_id().await.expect("job id");
        let output = self.output_path(name);
        let mut job = fake_job(id, name, &self.dir, std::path::Path::new(&output), 1 << 20);
        job.notify_url = notify_url.map(|u| u.replace("{id}", &id.to_string()));
        job
    }

    pub async fn submit(&self, name: &str) -> JobId {
        self.submit_with(name, None).await
    }

    /// Queues a job whose run takes `run_time`.
    pub async fn submit_running(&self, name: &str, run_time: Duration) -> JobId {
        self.fake.script(
            name,
            JobScript {
                run_time,
                ..JobScript::default()
            },
        );
        self.submit(name).await
    }

    pub async fn submit_with(&self, name: &str, notify_url: Option<&str>) -> JobId {
        let job = self.job(name, notify_url).await;
        self.store.enqueue(&job, 0).await.expect("enqueue");
        job.id
    }
}
