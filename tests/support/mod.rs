//! Shared test setup: real components on loopback, started when missing.
//!
//! Redis: `TANGO_TEST_REDIS` (`host:port`, set by `scripts/test.sh`) names a running
//! server; without it, the first test that needs Redis starts a private `redis-server` on a
//! free loopback port for this test binary. Each test gets its own key namespace, so tests
//! run in parallel against one server without seeing each other.

#![allow(dead_code)]

pub mod api;
pub mod daemon;
pub mod docker;
pub mod dockerd;
pub mod e2e;
pub mod jobs;
#[cfg(feature = "ec2")]
pub mod moto;
pub mod netns;
pub mod pipeline;
pub mod private_redis;
pub mod sshd;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tango::config::{StoreBackend, StoreConfig};
use tango::store::JobStore;
use tango::store::redis::RedisStore;

/// A Redis server this test binary may use.
pub struct RedisServer {
    pub host: String,
    pub port: u16,
    /// Held so the private server lives as long as the test binary.
    _child: Option<ChildGuard>,
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released for the caller to bind).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// The Redis server for this test binary.
pub fn redis_server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        if let Ok(addr) = std::env::var("TANGO_TEST_REDIS") {
            let (host, port) = addr
                .rsplit_once(':')
                .expect("TANGO_TEST_REDIS must be host:port");
            return RedisServer {
                host: host.to_string(),
                port: port.parse().expect("TANGO_TEST_REDIS port"),
                _child: None,
            };
        }
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server is needed for these tests: run scripts/test.sh (it installs \
                 and starts one) or set TANGO_TEST_REDIS=host:port",
            );
        // The server lives in a static, and statics are never dropped: stop it when the
        // test binary exits instead of leaving one redis-server behind per run.
        PRIVATE_REDIS_PID.store(child.id() as i32, std::sync::atomic::Ordering::SeqCst);
        // SAFETY: registers a plain function with no captured state.
        unsafe {
            libc::atexit(stop_private_redis);
        }
        let guard = ChildGuard(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer {
            host: "127.0.0.1".into(),
            port,
            _child: Some(guard),
        }
    })
}

/// The pid of the private redis-server of this test binary, 0 when there is none.
static PRIVATE_REDIS_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn stop_private_redis() {
    let pid = PRIVATE_REDIS_PID.load(std::sync::atomic::Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) on the pid of a child this process started.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

/// A store configuration for a fresh, private namespace on the test Redis.
pub fn redis_config() -> StoreConfig {
    let server = redis_server();
    StoreConfig {
        backend: StoreBackend::Redis,
        redis_host: server.host.clone(),
        redis_port: server.port,
        namespace: format!("test-{}", unique()),
        ..StoreConfig::default()
    }
}

/// Connects to the test Redis with `config` (one more connection each call).
pub async fn redis_store(config: &StoreConfig) -> Arc<dyn JobStore> {
    match RedisStore::connect(config).await {
        Ok(store) => Arc::new(store),
        Err(e) => panic!(
            "cannot open the redis store at {}:{}: {e}",
            config.redis_host, config.redis_port
        ),
    }
}

/// A string unique within this machine for this run.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}
