//! A `redis-server` of a test's own, which the test may stop and start again (the shared
//! test server must never be stopped), and a raw client for looking under the store.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tango::config::{StoreBackend, StoreConfig};

use super::{free_port, unique};

/// A private `redis-server` on a free loopback port, with its data in a temporary directory
/// (append-only file, fsync on every write), killed when dropped.
pub struct PrivateRedis {
    /// The address it listens on: 127.0.0.1, or its network namespace's.
    pub host: String,
    pub port: u16,
    pub password: Option<String>,
    netns: Option<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        Self::start_with_password(None)
    }

    pub fn start_with_password(password: Option<&str>) -> PrivateRedis {
        Self::launch_new(password, None)
    }

    /// A server in the network namespace `netns` (`ip netns` name), on `addr`, that
    /// namespace's address: a Redis on a host of its own, which (off loopback) serves
    /// only clients that know `password`.
    pub fn start_in(netns: &str, addr: &str, port: u16, password: &str) -> PrivateRedis {
        Self::launch_new(Some(password), Some((netns, addr, port)))
    }

    fn launch_new(password: Option<&str>, netns: Option<(&str, &str, u16)>) -> PrivateRedis {
        let mut server = PrivateRedis {
            host: netns.map_or("127.0.0.1", |(_, addr, _)| addr).to_string(),
            netns: netns.map(|(name, _, _)| name.to_string()),
            port: netns.map_or_else(free_port, |(_, _, port)| port),
            password: password.map(str::to_string),
            dir: tempfile::tempdir().expect("temporary directory for redis"),
            child: None,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let mut command = match &self.netns {
            Some(name) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{name}"))
                    .arg("redis-server");
                c
            }
            None => Command::new("redis-server"),
        };
        command
            .args(["--port", &self.port.to_string(), "--bind", &self.host])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command.spawn().expect(
            "redis-server is needed for these tests: run scripts/test.sh or install the \
             redis-server package",
        );
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until the server answers PING (not merely accepts connections).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut conn) = self.raw_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "private redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// The server's process id while it runs (to pause it with SIGSTOP, say).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A store configuration for a fresh namespace on this server.
    pub fn config(&self) -> StoreConfig {
        StoreConfig {
            backend: StoreBackend::Redis,
            redis_host: self.host.clone(),
            redis_port: self.port,
            redis_password: self.password.clone().unwrap_or_default(),
            namespace: format!("test-{}", unique()),
            ..StoreConfig::default()
        }
    }

    /// A plain synchronous connection, database 0.
    pub fn raw_connection(&self) -> redis::RedisResult<redis::Connection> {
        raw_connection(&self.host, self.port, self.password.as_deref(), 0)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plain synchronous connection to any Redis, for looking at what the store wrote.
pub fn raw_connection(
    host: &str,
    port: u16,
    password: Option<&str>,
    db: i64,
) -> redis::RedisResult<redis::Connection> {
    let auth = password.map(|p| format!(":{p}@")).unwrap_or_default();
    let client = redis::Client::open(format!("redis://{auth}{host}:{port}/{db}"))?;
    client.get_connection_with_timeout(Duration::from_secs(2))
}
