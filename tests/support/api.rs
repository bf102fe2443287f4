//! A real tango REST server on 127.0.0.1:0 for API tests, with an in-test backend.
//!
//! The server is the daemon's own router over a real store and a temporary courselabs
//! directory; only the machine backend is a stand-in ([`FakeVmms`]), because the API calls
//! just three of its methods (images, partial output, build) and the tests need to make
//! those fail, panic, or report what they were given.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use md5::{Digest, Md5};
use serde_json::Value;
use tango::app::App;
use tango::config::Config;
use tango::labs::Labs;
use tango::model::{InputFile, Machine};
use tango::store::JobStore;
use tango::store::memory::MemoryStore;
use tango::vmms::{RunOutcome, RunSpec, Vmms, VmmsError};

/// Taken shared by every API test, and exclusively by the one that measures this
/// process's memory, so no other test's allocations blur the measurement.
pub static QUIET: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The key the test servers accept. Distinctive, so a test can look for it in answers.
pub const KEY: &str = "s3cr3t-TEST-key-4242";

/// The images the fake backend offers at first.
pub const IMAGE: &str = "autograding_image";

/// One `/build` call the fake backend received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildCall {
    pub name: String,
    pub size: u64,
    pub md5: String,
}

/// The in-test backend.
pub struct FakeVmms {
    pub images: Mutex<Vec<String>>,
    pub image_lists: AtomicUsize,
    /// When set, `get_images` panics (a bug in a backend, as the API sees it).
    pub panic_on_images: AtomicBool,
    /// What `get_partial_output` answers: bytes, or an error message.
    pub partial_output: Mutex<Result<Vec<u8>, String>>,
    /// The `(machine id, max_bytes)` of each partial output call.
    pub partial_calls: Mutex<Vec<(Option<u64>, u64)>>,
    pub builds: Mutex<Vec<BuildCall>>,
    /// When set, `build_image` fails with this message.
    pub build_error: Mutex<Option<String>>,
}

impl FakeVmms {
    pub fn new() -> FakeVmms {
        FakeVmms {
            images: Mutex::new(vec![IMAGE.to_string(), "rhel.img".to_string()]),
            image_lists: AtomicUsize::new(0),
            panic_on_images: AtomicBool::new(false),
            partial_output: Mutex::new(Ok(b"partial output so far\n".to_vec())),
            partial_calls: Mutex::new(Vec::new()),
            builds: Mutex::new(Vec::new()),
            build_error: Mutex::new(None),
        }
    }
}

fn not_here() -> VmmsError {
    VmmsError::Unsupported("the API tests' backend does not run jobs".into())
}

#[async_trait]
impl Vmms for FakeVmms {
    fn name(&self) -> &str {
        "fake"
    }
    fn instance_name(&self, vm: &Machine) -> String {
        tango::vmms::instance_name("test", vm)
    }
    async fn initialize_vm(&self, _vm: &mut Machine) -> Result<(), VmmsError> {
        Err(not_here())
    }
    async fn wait_vm(&self, _vm: &Machine, _max: Duration) -> Result<(), VmmsError> {
        Err(not_here())
    }
    async fn copy_in(&self, _vm: &Machine, _inputs: &[InputFile]) -> Result<(), VmmsError> {
        Err(not_here())
    }
    async fn run_job(&self, _vm: &Machine, _spec: &RunSpec) -> Result<RunOutcome, VmmsError> {
        Err(not_here())
    }
    async fn copy_out(&self, _vm: &Machine, _dest: &Path, _max: u64) -> Result<(), VmmsError> {
        Err(not_here())
    }
    async fn destroy_vm(&self, _vm: &Machine) -> Result<(), VmmsError> {
        Ok(())
    }
    async fn get_vms(&self) -> Result<Vec<Machine>, VmmsError> {
        Ok(Vec::new())
    }
    async fn exists_vm(&self, _vm: &Machine) -> Result<bool, VmmsError> {
        Ok(false)
    }
    async fn get_images(&self) -> Result<Vec<String>, VmmsError> {
        self.image_lists.fetch_add(1, Ordering::SeqCst);
        if self.panic_on_images.load(Ordering::SeqCst) {
            panic!("fake backend: get_images exploded");
        }
        Ok(self.images.lock().unwrap().clone())
    }
    async fn get_partial_output(&self, vm: &Machine, max_bytes: u64) -> Result<Vec<u8>, VmmsError> {
        self.partial_calls.lock().unwrap().push((vm.id, max_bytes));
        self.partial_output
            .lock()
            .unwrap()
            .clone()
            .map_err(VmmsError::Backend)
    }
    async fn build_image(&self, name: &str, tarball: &Path) -> Result<(), VmmsError> {
        let (size, md5) = md5_file(tarball);
        self.builds.lock().unwrap().push(BuildCall {
            name: name.to_string(),
            size,
            md5,
        });
        if let Some(message) = self.build_error.lock().unwrap().clone() {
            return Err(VmmsError::Backend(message));
        }
        self.images.lock().unwrap().push(name.to_string());
        Ok(())
    }
}

/// Size and lowercase hex MD5 of a file.
pub fn md5_file(path: &Path) -> (u64, String) {
    let mut file = std::fs::File::open(path).expect("open file to hash");
    let mut hasher = Md5::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer).expect("read file to hash");
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buffer[..n]);
    }
    (size, hex::encode(hasher.finalize()))
}

pub fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(Md5::digest(bytes))
}

/// The configuration test servers start from: our key, a private courselabs directory.
pub fn test_config(courselabs: &Path) -> Config {
    let mut config = Config::default();
    config.server.keys = vec![KEY.to_string(), "second-key".to_string()];
    config.server.courselabs = courselabs.to_path_buf();
    config
}

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    pub app: Arc<App>,
    pub vmms: Arc<FakeVmms>,
    pub client: reqwest::Client,
    /// Holds the courselabs directory.
    pub dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// A server over the memory store with the default test configuration.
    pub async fn start() -> TestServer {
        Self::start_with(Arc::new(MemoryStore::new()), |_| {}).await
    }

    /// A server over `store`, its configuration adjusted by `edit`.
    pub async fn start_with(
        store: Arc<dyn JobStore>,
        edit: impl FnOnce(&mut Config),
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let courselabs = dir.path().join("courselabs");
        std::fs::create_dir(&courselabs).expect("courselabs dir");
        let mut config = test_config(&courselabs);
        edit(&mut config);
        config.validate().expect("test config is valid");
        let vmms = Arc::new(FakeVmms::new());
        let app = App::new(config, store, vmms.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let router = tango::api::router(app.clone());
        // Served as the daemon serves it: its timeouts, connection cap and body rate.
        let limits = tango::http::HttpLimits::new(&app.config.http);
        let task = tokio::spawn(tango::http::serve(
            listener,
            router,
            limits,
            std::future::pending(),
        ));
        // Autolab opens a fresh connection for every request.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client");
        TestServer {
            addr,
            url: format!("http://{addr}"),
            app,
            vmms,
            client,
            dir,
            task,
        }
    }

    pub fn courselabs(&self) -> PathBuf {
        std::path::absolute(self.dir.path().join("courselabs")).expect("courselabs")
    }

    /// Where the courselab `name` of `KEY` lives.
    pub fn lab_dir(&self, name: &str) -> PathBuf {
        self.courselabs()
            .join(format!("{}-{}", Labs::tenant(KEY), name))
    }

    /// GET, expecting a JSON answer with HTTP 200; returns the parsed body.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = self
            .client
            .get(format!("{}{}", self.url, path))
            .header("User-Agent", "Ruby")
            .send()
            .await
            .expect("GET");
        json_of(response).await
    }

    /// `/open/KEY/<lab>/`.
    pub async fn open(&self, lab: &str) -> Value {
        self.get_json(&format!("/open/{KEY}/{lab}/")).await
    }

    /// POSTs as Autolab does: raw bytes labelled form-urlencoded, plus `extra` headers.
    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Value {
        let mut request = self
            .client
            .post(format!("{}{}", self.url, path))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("User-Agent", "Ruby")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        json_of(request.send().await.expect("POST")).await
    }

    /// Autolab's upload: lowercase `filename` header, form-urlencoded raw bytes.
    pub async fn upload(&self, lab: &str, filename: &str, body: &[u8]) -> Value {
        self.post(
            &format!("/upload/{KEY}/{lab}/"),
            &[("filename", filename)],
            body.to_vec(),
        )
        .await
    }

    /// Autolab's addJob: the JSON text, labelled form-urlencoded.
    pub async fn add_job(&self, lab: &str, job: &Value) -> Value {
        self.post(
            &format!("/addJob/{KEY}/{lab}/"),
            &[],
            serde_json::to_vec(job).expect("job JSON"),
        )
        .await
    }

    /// Opens `lab` and uploads the files an Autolab hello job has.
    pub async fn prepare_lab(&self, lab: &str) {
        self.open(lab).await;
        for (name, body) in hello_files() {
            let answer = self.upload(lab, name, body).await;
            assert_eq!(answer["statusId"], 0, "{answer}");
        }
    }

    /// A raw HTTP/1.1 exchange, bytes as given (no URL normalisation: `..` reaches the
    /// server as sent). Returns the status code, the headers (lowercase names) and the body.
    pub async fn raw(&self, request: Vec<u8>) -> RawResponse {
        let addr = self.addr;
        tokio::task::spawn_blocking(move || raw_exchange(addr, &request))
            .await
            .expect("raw exchange")
    }
}

/// An answer read off the socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        assert_eq!(
            self.status,
            200,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/json; charset=UTF-8")
        );
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// An HTTP/1.1 request as bytes, with `Host`, `Connection: close` and `Content-Length`.
pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: tango\r\nConnection: close\r\nUser-Agent: Ruby\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends `request` on a fresh connection (it should say `Connection: close`) and reads the
/// answer to the end.
pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    stream.write_all(request).expect("send request");
    read_response(&mut stream)
}

/// Reads one HTTP/1.1 response (Content-Length, chunked, or until close).
pub fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut data = Vec::new();
    let mut buffer = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = find(&data, b"\r\n\r\n") {
            break end;
        }
        let n = stream.read(&mut buffer).expect("read response head");
        assert!(n > 0, "connection closed before a response head");
        data.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut rest = data[head_end + 4..].to_vec();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(length) = get("content-length") {
        let length: usize = length.parse().expect("content-length");
        while rest.len() < length {
            let n = stream.read(&mut buffer).expect("read body");
            assert!(n > 0, "connection closed inside the body");
            rest.extend_from_slice(&buffer[..n]);
        }
        rest.truncate(length);
        rest
    } else if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            if let Some(body) = dechunk(&rest) {
                break body;
            }
            let n = stream.read(&mut buffer).expect("read chunked body");
            assert!(n > 0, "connection closed inside a chunked body");
            rest.extend_from_slice(&buffer[..n]);
        }
    } else {
        loop {
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break rest,
                Ok(n) => rest.extend_from_slice(&buffer[..n]),
            }
        }
    };
    RawResponse {
        status,
        headers,
        body,
    }
}

/// The body of a complete chunked encoding, or None if more is needed.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = find(data, b"\r\n")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        if data.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads an answer that must be Tango JSON: HTTP 200, `application/json`, an integer
/// `statusId` and a `statusMsg`.
pub async fn json_of(response: reqwest::Response) -> Value {
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.bytes().await.expect("body");
    assert_eq!(status, 200, "body: {}", String::from_utf8_lossy(&body));
    assert_eq!(content_type, "application/json; charset=UTF-8");
    let value: Value = serde_json::from_slice(&body).expect("JSON body");
    assert!(
        value["statusId"].is_i64(),
        "statusId must be an integer: {value}"
    );
    assert!(
        value.get("statusMsg").is_some(),
        "statusMsg missing: {value}"
    );
    value
}

/// The three files of an Autolab hello job: (upload name, content).
pub fn hello_files() -> [(&'static str, &'static [u8]); 3] {
    [
        ("autograde-Makefile", b"all:\n\t@cat hello.c\n".as_slice()),
        (
            "user@x.edu_1_hello.c",
            b"int main(void) { return 0; }\n".as_slice(),
        ),
        ("autograde.tar", b"not really a tarball\0\xff".as_slice()),
    ]
}

/// The addJob body Autolab sends for the hello job, fields in Autolab's order.
pub fn autolab_job(lab_course: &str) -> Value {
    serde_json::json!({
        "image": IMAGE,
        "files": [
            {"localFile": "user@x.edu_1_hello.c", "destFile": "hello.c"},
            {"localFile": "autograde-Makefile", "destFile": "Makefile"},
            {"localFile": "autograde.tar", "destFile": "autograde.tar"},
        ],
        "output_file": "user@x.edu_1_hello_autograde.txt",
        "timeout": 180,
        "callback_url": format!("https://autolab.example.edu/courses/{lab_course}/assessments/hello/autograde_done?dave=ABCDEFG&submission_id=7"),
        "jobName": format!("{lab_course}_hello_1_user@x.edu"),
        "disable_network": false,
    })
}

/// Resident memory of this process now, in bytes (Linux `VmRSS`).
pub fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kib * 1024
}

/// A store that cannot be reached: every call fails as a Redis store does when its server
/// is down. (The memory store cannot fail; this is the one fault the API tests must cause.)
pub struct DownStore;

pub const DOWN: &str = "connection refused (test)";

fn down<T>() -> Result<T, tango::store::StoreError> {
    Err(tango::store::StoreError::Unavailable(DOWN.into()))
}

#[async_trait]
impl JobStore for DownStore {
    fn kind(&self) -> &'static str {
        "down"
    }
    async fn ping(&self) -> Result<(), tango::store::StoreError> {
        down()
    }
    async fn allocate_job_id(&self) -> Result<u64, tango::store::StoreError> {
        down()
    }
    async fn allocate_vm_id(&self) -> Result<u64, tango::store::StoreError> {
        down()
    }
    async fn enqueue(&self, _: &tango::model::Job, _: u64) -> Result<(), tango::store::StoreError> {
        down()
    }
    async fn add_job(
        &self,
        _: &mut tango::model::Job,
        _: u64,
    ) -> Result<(), tango::store::StoreError> {
        down()
    }
    async fn add_job_once(
        &self,
        _: &mut tango::model::Job,
        _: u64,
    ) -> Result<tango::store::Added, tango::store::StoreError> {
        down()
    }
    async fn request_cancel(
        &self,
        _: u64,
    ) -> Result<tango::store::CancelRequest, tango::store::StoreError> {
        down()
    }
    async fn take_cancels(
        &self,
        _: &str,
    ) -> Result<Vec<tango::model::Job>, tango::store::StoreError> {
        down()
    }
    async fn keep_failed_callback(
        &self,
        _: &tango::model::FailedCallback,
        _: u64,
    ) -> Result<Vec<u64>, tango::store::StoreError> {
        down()
    }
    async fn failed_callbacks(
        &self,
    ) -> Result<Vec<tango::model::FailedCallback>, tango::store::StoreError> {
        down()
    }
    async fn claim_failed_callback(
        &self,
        _: u64,
        _: &str,
        _: Duration,
    ) -> Result<Option<tango::model::FailedCallback>, tango::store::StoreError> {
        down()
    }
    async fn settle_failed_callback(
        &self,
        _: u64,
        _: &str,
        _: Option<&tango::model::FailedCallback>,
    ) -> Result<bool, tango::store::StoreError> {
        down()
    }
    async fn claim_next(
        &self,
        _: &str,
        _: Duration,
    ) -> Result<Option<tango::model::Job>, tango::store::StoreError> {
        down()
    }
    async fn update_live(&self, _: &tango::model::Job) -> Result<(), tango::store::StoreError> {
        down()
    }
    async fn requeue(&self, _: &tango::model::Job) -> Result<(), tango::store::StoreError> {
        down()
    }
    async fn finish(&self, _: &tango::model::Job, _: u64) -> Result<(), tango::store::StoreError> {
        down()
    }
    async fn add_dead(
        &self,
        _: &tango::model::Job,
        _: u64,
    ) -> Result<(), tango::store::StoreError> {
        down()
    }
    async fn update_dead(&self, _: &tango::model::Job) -> Result<bool, tango::store::StoreError> {
        down()
    }
    async fn live_job(
        &self,
        _: u64,
    ) -> Result<Option<tango::model::Job>, tango::store::StoreError> {
        down()
    }
    async fn dead_job(
        &self,
        _: u64,
    ) -> Result<Option<tango::model::Job>, tango::store::StoreError> {
        down()
    }
    async fn live_jobs(&self) -> Result<Vec<tango::model::Job>, tango::store::StoreError> {
        down()
    }
    async fn dead_jobs(&self) -> Result<Vec<tango::model::Job>, tango::store::StoreError> {
        down()
    }
    async fn queued_ids(&self) -> Result<Vec<u64>, tango::store::StoreError> {
        down()
    }
    async fn stats(&self) -> Result<tango::store::StoreStats, tango::store::StoreError> {
        down()
    }
    async fn heartbeat(&self, _: &str, _: Duration) -> Result<(), tango::store::StoreError> {
        down()
    }
    async fn release_owner(&self, _: &str) -> Result<Vec<u64>, tango::store::StoreError> {
        down()
    }
    async fn live_owners(&self) -> Result<Vec<String>, tango::store::StoreError> {
        down()
    }
    async fn reap_expired(&self) -> Result<tango::store::Reaped, tango::store::StoreError> {
        down()
    }
    async fn pool_add(
        &self,
        _: &str,
        _: &str,
        _: &Machine,
    ) -> Result<(), tango::store::StoreError> {
        down()
    }
    async fn pool_free(
        &self,
        _: &str,
        _: &str,
        _: &Machine,
    ) -> Result<bool, tango::store::StoreError> {
        down()
    }
    async fn pool_take(
        &self,
        _: &str,
        _: &str,
    ) -> Result<Option<Machine>, tango::store::StoreError> {
        down()
    }
    async fn pool_remove(
        &self,
        _: &str,
        _: &str,
        _: u64,
    ) -> Result<bool, tango::store::StoreError> {
        down()
    }
    async fn pools(
        &self,
    ) -> Result<std::collections::BTreeMap<String, tango::model::PoolView>, tango::store::StoreError>
    {
        down()
    }
    async fn owner_pools(
        &self,
        _: &str,
    ) -> Result<std::collections::BTreeMap<String, tango::model::PoolView>, tango::store::StoreError>
    {
        down()
    }
    async fn set_pool_target(
        &self,
        _: &str,
        _: &tango::model::PoolTarget,
    ) -> Result<(), tango::store::StoreError> {
        down()
    }
    async fn pool_targets(
        &self,
    ) -> Result<
        std::collections::BTreeMap<String, tango::model::PoolTarget>,
        tango::store::StoreError,
    > {
        down()
    }
    async fn incr(&self, _: tango::model::Counter, _: u64) -> Result<(), tango::store::StoreError> {
        down()
    }
    async fn counters(&self) -> Result<tango::model::Counters, tango::store::StoreError> {
        down()
    }
}
