//! A second Docker engine, started by the test on a host of its own (a network namespace
//! from [`super::netns`]): its own data root, exec root, pidfile and empty config file, a
//! bridge of its own made in its namespace (never `docker0`: a `dockerd` started with
//! `--bridge=none` deletes the host's `docker0`), no iptables, and its API on TCP with TLS
//! on the namespace's address, with certificates made here by `openssl`. The test image is
//! loaded into it from the machine's engine.
//!
//! Everything lives under [`BASE`]; [`RemoteEngine::start`] first stops and removes what a
//! killed run left there, and `Drop` stops the engine (and its containerd) and removes it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::netns::{Host, ip};

/// Where the engine's files live (data root, exec root, certificates, log).
pub const BASE: &str = "/tmp/tmh-dockerd";
/// The engine's API port (Docker's TLS port).
pub const PORT: u16 = 2376;
/// The bridge its containers use, made in its namespace.
const BRIDGE: &str = "tmh-dbr";
const BRIDGE_ADDR: &str = "172.31.231.1/24";

/// The client's TLS files, as `[[docker.engines]]` names them.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A running second `dockerd`.
pub struct RemoteEngine {
    pub url: String,
    pub tls: ClientTls,
    host: Host,
    child: Option<Child>,
}

fn run(command: &mut Command, what: &str) -> Output {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A CA, a server certificate for `addr` and a client certificate, in `dir`.
fn make_certificates(dir: &Path, addr: &str) -> ClientTls {
    std::fs::create_dir_all(dir).expect("certificate dir");
    let sh = format!(
        "set -e; cd '{dir}'
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.pem -days 2 -subj '/CN=tmh CA'
openssl req -newkey rsa:2048 -nodes -keyout server-key.pem -out server.csr -subj '/CN={addr}'
printf 'subjectAltName=IP:{addr}\\nextendedKeyUsage=serverAuth\\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out server.pem -days 2 -extfile server.ext
openssl req -newkey rsa:2048 -nodes -keyout key.pem -out client.csr -subj '/CN=tango'
printf 'extendedKeyUsage=clientAuth\\n' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out cert.pem -days 2 -extfile client.ext",
        dir = dir.display()
    );
    run(Command::new("sh").args(["-c", &sh]), "make certificates");
    ClientTls {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    }
}

impl RemoteEngine {
    /// Starts `dockerd` in `host`'s namespace, waits until it answers over TLS, and loads
    /// the test image into it (also tagged `autograding_image`).
    pub fn start(host: &Host, image: &str) -> RemoteEngine {
        sweep();
        let base = Path::new(BASE);
        std::fs::create_dir_all(base.join("data")).expect("data root");
        std::fs::create_dir_all(base.join("exec")).expect("exec root");
        std::fs::write(base.join("daemon.json"), "{}").expect("config file");
        let tls = make_certificates(&base.join("certs"), &host.addr);
        ip(&["-n", &host.netns, "link", "add", BRIDGE, "type", "bridge"]);
        ip(&["-n", &host.netns, "addr", "add", BRIDGE_ADDR, "dev", BRIDGE]);
        ip(&["-n", &host.netns, "link", "set", BRIDGE, "up"]);
        let log = std::fs::File::create(base.join("dockerd.log")).expect("dockerd log");
        let certs = base.join("certs");
        let child = host
            .command("dockerd")
            .arg("--config-file")
            .arg(base.join("daemon.json"))
            .arg("--data-root")
            .arg(base.join("data"))
            .arg("--exec-root")
            .arg(base.join("exec"))
            .arg("--pidfile")
            .arg(base.join("dockerd.pid"))
            .arg(format!("--bridge={BRIDGE}"))
            .args(["--iptables=false", "--ip-forward=false", "--ip-masq=false"])
            .args(["-H", &format!("tcp://{}:{PORT}", host.addr), "--tlsverify"])
            .arg("--tlscacert")
            .arg(certs.join("ca.pem"))
            .arg("--tlscert")
            .arg(certs.join("server.pem"))
            .arg("--tlskey")
            .arg(certs.join("server-key.pem"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        let engine = RemoteEngine {
            url: format!("tcp://{}:{PORT}", host.addr),
            tls,
            host: host.clone(),
            child: Some(child),
        };
        engine.wait_answering(Duration::from_secs(60));
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker save");
        let mut load = engine.cli(&["load", "-q"]);
        load.stdin(save.stdout.take().expect("docker save output"));
        run(&mut load, "docker load into the second engine");
        let saved = save.wait().expect("docker save");
        assert!(saved.success(), "docker save {image}: {saved}");
        run(
            &mut engine.cli(&["tag", image, "autograding_image:latest"]),
            "docker tag",
        );
        engine
    }

    /// The `docker` CLI aimed at this engine over TLS.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.args(["-H", &self.url, "--tlsverify"])
            .arg("--tlscacert")
            .arg(&self.tls.ca)
            .arg("--tlscert")
            .arg(&self.tls.cert)
            .arg("--tlskey")
            .arg(&self.tls.key)
            .args(args);
        c
    }

    fn wait_answering(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let out = self
                .cli(&["version", "--format", "{{.Server.Version}}"])
                .output();
            if out.is_ok_and(|o| o.status.success()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the second dockerd did not answer within {limit:?}:\n{}",
                std::fs::read_to_string(Path::new(BASE).join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The `[[docker.engines]]` table that reaches this engine.
    pub fn engine_toml(&self, capacity: u32) -> String {
        format!(
            "[[docker.engines]]\nurl = \"{}\"\ncapacity = {capacity}\ntls_ca = \"{}\"\n\
             tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            self.url,
            self.tls.ca.display(),
            self.tls.cert.display(),
            self.tls.key.display()
        )
    }

    /// Names of the containers on this engine whose name starts with `prefix`.
    pub fn containers(&self, prefix: &str) -> Vec<String> {
        let out = self
            .cli(&["ps", "-a", "--format", "{{.Names}}"])
            .output()
            .expect("docker ps");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|n| n.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    /// The host it runs on.
    pub fn host(&self) -> &Host {
        &self.host
    }
}

impl Drop for RemoteEngine {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        sweep();
    }
}

/// Stops whatever runs from [`BASE`] (a dockerd, its containerd and shims left by a killed
/// run), unmounts what is mounted under it, and removes it.
pub fn sweep() {
    let base = Path::new(BASE);
    if !base.exists() {
        return;
    }
    for _ in 0..50 {
        let pids = processes_naming(BASE);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: kill(2) on processes started from our own directory.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut under: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(BASE))
        .collect();
    // Deepest first.
    under.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in under {
        let _ = Command::new("umount").args(["-l", mount]).output();
    }
    let _ = std::fs::remove_dir_all(base);
}

/// Processes whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if pid != me && cmdline.contains(needle) {
            found.push(pid);
        }
    }
    found
}
