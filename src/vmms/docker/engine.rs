//! The Docker engines a backend runs containers on: how to reach each one, how many of our
//! containers each holds, and which ones have stopped answering.
//!
//! Placement is by free capacity: a new container goes to the answering engine with the most
//! room (`capacity` minus the containers we have there or are creating there). An engine's
//! capacity is configured, or twice its CPUs (asked of the engine when it first answers):
//! enough containers being made, started and removed at once to keep its CPUs busy, since
//! each step waits on the kernel or a helper process part of the time. An engine that
//! fails to answer (connection refused, timeout, broken stream) is taken out of placement and
//! tried again after a back-off that doubles with each failed try, up to [`MAX_RETRY_AFTER`];
//! the calls that fail together in one outage count as one failure. When every engine is
//! out, they are all tried anyway, soonest first, so a lone engine that restarts is used the
//! moment it is back.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bollard::{ClientVersion, Docker};

use super::DockerError;
use super::settings::{DockerConfig, DockerEngineConfig};

/// The newest Engine API version we speak: Debian's docker.io 20.10 speaks 1.41, and every
/// call this backend makes exists there. Older engines are negotiated down at start.
pub const MAX_API_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// First pause before an engine that stopped answering is tried again.
const FIRST_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Longest pause between tries of an engine that keeps failing: a probe is one cheap call,
/// and an engine back from a blip on deadline night should not sit idle for long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How long a control call (create, start, inspect, exec setup, remove) may take before the
/// engine is deemed not answering. Data transfers are bounded by the worker's step timeouts.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the probe of an engine that was out may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// An engine's capacity when none is configured: this many per CPU it reports.
const CAPACITY_PER_CPU: u32 = 2;
/// The capacity of an engine with none configured, until it has said how many CPUs it has.
const CAPACITY_UNTIL_KNOWN: u32 = 4;

/// One Docker engine.
pub struct Engine {
    /// The URL as configured (`unix:///var/run/docker.sock`, `tcp://host:2376`): it names the
    /// engine in `Machine.host`, in logs and in errors.
    pub url: String,
    pub client: Docker,
    /// Most of our containers at once on this engine: `capacity` as configured, else
    /// [`CAPACITY_PER_CPU`] per CPU of the engine once it has answered.
    capacity: AtomicU32,
    /// Whether `capacity` was configured (else it is sized from the engine's CPUs).
    capacity_configured: bool,
    state: Mutex<EngineState>,
}

#[derive(Default)]
struct EngineState {
    /// Our containers on this engine (by id), made by this backend and not yet destroyed.
    live: HashSet<String>,
    /// Containers being created right now (not yet with an id).
    creating: u32,
    /// Set while the engine is out of placement: when to try it again.
    retry_at: Option<Instant>,
    /// Failures in a row, for the back-off.
    failures: u32,
    /// Whether the API version was negotiated with this engine yet.
    negotiated: bool,
    /// A background probe of this engine is under way.
    probing: bool,
}

impl Engine {
    fn state(&self) -> MutexGuard<'_, EngineState> {
        // A panic while holding this lock cannot leave the counters inconsistent in a way
        // that matters more than losing placement entirely, so keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Containers we have here or are making here.
    pub fn load(&self) -> u32 {
        let s = self.state();
        s.live.len() as u32 + s.creating
    }

    /// Most of our containers (and jobs) at once on this engine.
    pub fn capacity(&self) -> u32 {
        self.capacity.load(Ordering::Relaxed)
    }

    fn free(&self) -> i64 {
        i64::from(self.capacity()) - i64::from(self.load())
    }

    /// Whether the engine is in placement (answered last time, or never failed).
    pub fn is_up(&self) -> bool {
        self.state().retry_at.is_none()
    }

    /// Takes the engine out of placement after it failed to answer.
    pub fn mark_down(&self, why: &str) {
        let mut s = self.state();
        let now = Instant::now();
        if s.retry_at.is_some_and(|at| at > now) {
            // Already out and not yet due: one more call that was under way when the engine
            // went silent. Counting it would stretch the back-off by the number of calls in
            // flight, not by the tries that failed.
            tracing::debug!(engine = %self.url, "Docker engine still not answering: {why}");
            return;
        }
        s.failures = s.failures.saturating_add(1);
        let pause = FIRST_RETRY_AFTER
            .saturating_mul(1 << (s.failures - 1).min(16))
            .min(MAX_RETRY_AFTER);
        s.retry_at = Some(now + pause);
        tracing::warn!(
            engine = %self.url,
            retry_in_secs = pause.as_secs(),
            "Docker engine not answering, taken out of placement: {why}"
        );
    }

    /// Puts the engine back after it answered.
    pub fn mark_up(&self) {
        let mut s = self.state();
        if s.retry_at.take().is_some() {
            tracing::info!(engine = %self.url, "Docker engine answers again");
        }
        s.failures = 0;
    }

    /// Records that a container of ours now lives here.
    pub fn add_container(&self, id: &str) {
        self.state().live.insert(id.to_string());
    }

    /// Records that a container is gone (whether or not we counted it).
    pub fn remove_container(&self, id: &str) {
        self.state().live.remove(id);
    }

    /// Holds a place for a container being created, released when the guard drops.
    pub fn reserve(self: &Arc<Self>) -> Reservation {
        self.state().creating += 1;
        Reservation {
            engine: Arc::clone(self),
        }
    }

    /// Agrees on an API version with the engine (at most [`MAX_API_VERSION`]). Done once per
    /// engine, at start or at the first time it answers; it doubles as a liveness probe.
    pub async fn negotiate(&self) -> Result<(), DockerError> {
        let probe = self.client.clone().negotiate_version();
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(_)) => {
                self.state().negotiated = true;
                self.mark_up();
                if !self.capacity_configured {
                    self.size_from_cpus().await;
                }
                Ok(())
            }
            Ok(Err(e)) => {
                let e = DockerError::from_engine(&self.url, e);
                if e.is_unreachable() {
                    self.mark_down(&e.to_string());
                }
                Err(e)
            }
            Err(_) => {
                let e = DockerError::Unreachable {
                    engine: self.url.clone(),
                    message: format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
                };
                self.mark_down(&e.to_string());
                Err(e)
            }
        }
    }

    /// Sets an unconfigured capacity from the CPUs the engine reports.
    async fn size_from_cpus(&self) {
        let info = tokio::time::timeout(PROBE_TIMEOUT, self.client.info()).await;
        match info {
            Ok(Ok(info)) => {
                let cpus = info.ncpu.and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
                if cpus > 0 {
                    let capacity = cpus.saturating_mul(CAPACITY_PER_CPU);
                    self.capacity.store(capacity, Ordering::Relaxed);
                    tracing::info!(engine = %self.url, cpus, capacity, "Docker engine capacity set from its CPUs");
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(engine = %self.url, "cannot ask the engine for its CPUs: {e}")
            }
            Err(_) => {
                tracing::warn!(engine = %self.url, "cannot ask the engine for its CPUs: no answer")
            }
        }
    }

    fn needs_negotiation(&self) -> bool {
        !self.state().negotiated
    }
}

/// A place held on an engine while a container is created there.
pub struct Reservation {
    engine: Arc<Engine>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut s = self.engine.state();
        s.creating = s.creating.saturating_sub(1);
    }
}

/// All engines of a backend.
pub struct Engines {
    list: Vec<Arc<Engine>>,
}

impl Engines {
    /// Makes a client for each configured engine (the local one when none is), and agrees on
    /// an API version with each that answers. An engine that does not answer is kept, out of
    /// placement until it does; a configuration that cannot work (bad URL, missing TLS files,
    /// no local socket) is an error.
    pub async fn connect(config: &DockerConfig) -> Result<Engines, DockerError> {
        let configured = if config.engines.is_empty() {
            vec![local_engine_config()]
        } else {
            config.engines.clone()
        };
        // Loading an image can take as long as `/build` may; every other call has its own,
        // shorter bound (see CONTROL_TIMEOUT).
        let request_timeout = config.image_build_timeout.max(120) + 60;
        let mut list = Vec::with_capacity(configured.len());
        for engine in &configured {
            let client = client_for(engine, request_timeout)?;
            list.push(Arc::new(Engine {
                url: engine.url.clone(),
                client,
                capacity: AtomicU32::new(engine.capacity.unwrap_or(CAPACITY_UNTIL_KNOWN).max(1)),
                capacity_configured: engine.capacity.is_some(),
                state: Mutex::new(EngineState::default()),
            }));
        }
        let engines = Engines { list };
        for engine in &engines.list {
            if let Err(e) = engine.negotiate().await {
                tracing::warn!(engine = %engine.url, "Docker engine not reachable at start: {e}");
            }
        }
        Ok(engines)
    }

    pub fn all(&self) -> &[Arc<Engine>] {
        &self.list
    }

    /// The engine a machine lives on (`Machine.host`); the only engine when there is one and
    /// the machine does not say.
    pub fn by_url(&self, url: Option<&str>) -> Option<&Arc<Engine>> {
        match url {
            Some(url) => self.list.iter().find(|e| e.url == url),
            None if self.list.len() == 1 => self.list.first(),
            None => None,
        }
    }

    /// Engines to try for a new container, best first: answering engines by free capacity
    /// (ties in configuration order), then, only when none answers, the ones that are out,
    /// soonest retry first. An out engine whose retry time has come is probed in the
    /// background, so placement itself never waits for a probe.
    pub fn placement_order(&self) -> Vec<Arc<Engine>> {
        let now = Instant::now();
        for engine in &self.list {
            let due = {
                let mut s = engine.state();
                let due = !s.probing && s.retry_at.is_some_and(|at| at <= now);
                if due {
                    s.probing = true;
                }
                due
            };
            if due {
                let engine = Arc::clone(engine);
                tokio::spawn(async move {
                    // The probe marks the engine up or pushes its retry time back.
                    let _ = engine.negotiate().await;
                    engine.state().probing = false;
                });
            }
        }
        let mut up: Vec<(usize, Arc<Engine>)> = self
            .list
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_up())
            .map(|(i, e)| (i, Arc::clone(e)))
            .collect();
        up.sort_by_key(|(i, e)| (std::cmp::Reverse(e.free()), *i));
        if !up.is_empty() {
            return up.into_iter().map(|(_, e)| e).collect();
        }
        let mut down: Vec<Arc<Engine>> = self.list.to_vec();
        down.sort_by_key(|e| e.state().retry_at);
        down
    }

    /// Makes sure the engine's API version was agreed before it is used for a machine it
    /// already holds (an engine that was down at start).
    pub async fn ready(&self, engine: &Engine) {
        if engine.needs_negotiation() {
            let _ = engine.negotiate().await;
        }
    }
}

/// The local engine: `DOCKER_HOST` when set, else the default socket.
fn local_engine_config() -> DockerEngineConfig {
    let mut engine = DockerEngineConfig::default();
    if let Ok(host) = std::env::var("DOCKER_HOST")
        && !host.is_empty()
    {
        engine.url = host;
        // Docker's own convention for TLS to a remote engine.
        if std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty() && v != "0")
            && let Ok(dir) = std::env::var("DOCKER_CERT_PATH")
        {
            let dir = Path::new(&dir);
            engine.tls_ca = dir.join("ca.pem");
            engine.tls_cert = dir.join("cert.pem");
            engine.tls_key = dir.join("key.pem");
        }
    }
    engine
}

/// A client for one engine. Makes no request.
fn client_for(engine: &DockerEngineConfig, timeout: u64) -> Result<Docker, DockerError> {
    let url = engine.url.trim();
    let config_error = |message: String| DockerError::Config {
        engine: engine.url.clone(),
        message,
    };
    let tls = !engine.tls_ca.as_os_str().is_empty();
    let result = if let Some(path) = url.strip_prefix("unix://") {
        if !Path::new(path).exists() {
            return Err(config_error(format!(
                "socket {path} not found: is the Docker engine running on this host?"
            )));
        }
        Docker::connect_with_unix(url, timeout, &MAX_API_VERSION)
    } else if url.starts_with('/') {
        if !Path::new(url).exists() {
            return Err(config_error(format!(
                "socket {url} not found: is the Docker engine running on this host?"
            )));
        }
        Docker::connect_with_unix(url, timeout, &MAX_API_VERSION)
    } else if url.starts_with("tcp://") || url.starts_with("https://") || url.starts_with("http://")
    {
        if tls {
            if url.starts_with("http://") {
                return Err(config_error(
                    "TLS files are given but the URL says http://; use tcp:// or https://".into(),
                ));
            }
            for (what, path) in [
                ("tls_ca", &engine.tls_ca),
                ("tls_cert", &engine.tls_cert),
                ("tls_key", &engine.tls_key),
            ] {
                if !path.is_file() {
                    return Err(config_error(format!(
                        "{what} {} is not a readable file",
                        path.display()
                    )));
                }
            }
            Docker::connect_with_ssl(
                url,
                &engine.tls_key,
                &engine.tls_cert,
                &engine.tls_ca,
                timeout,
                &MAX_API_VERSION,
            )
        } else {
            if url.starts_with("https://") {
                return Err(config_error(
                    "https:// needs tls_ca, tls_cert and tls_key".into(),
                ));
            }
            Docker::connect_with_http(url, timeout, &MAX_API_VERSION)
        }
    } else {
        return Err(config_error(
            "expected unix:///path/to/docker.sock, tcp://host:port (TLS when tls_* are given), \
             http://host:port or https://host:port"
                .into(),
        ));
    };
    result.map_err(|e| config_error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        let client = Docker::connect_with_http("http://127.0.0.1:9", 5, &MAX_API_VERSION)
            .expect("a client makes no request");
        Engine {
            url: "tcp://127.0.0.1:9".into(),
            client,
            capacity: AtomicU32::new(4),
            capacity_configured: true,
            state: Mutex::new(EngineState::default()),
        }
    }

    fn pause(engine: &Engine) -> Duration {
        let at = engine.state().retry_at.expect("out of placement");
        at.saturating_duration_since(Instant::now())
    }

    #[test]
    fn calls_failing_in_one_outage_count_once() {
        let engine = engine();
        for _ in 0..12 {
            engine.mark_down("connection refused");
        }
        assert!(!engine.is_up());
        assert_eq!(engine.state().failures, 1);
        assert!(pause(&engine) <= FIRST_RETRY_AFTER);
    }

    #[test]
    fn each_failed_try_doubles_the_pause_up_to_the_cap() {
        let engine = engine();
        let mut expected = FIRST_RETRY_AFTER;
        for _ in 0..10 {
            // The retry time has come and the try failed again.
            engine.state().retry_at = Some(Instant::now());
            engine.mark_down("connection refused");
            let got = pause(&engine);
            assert!(got <= expected && got + Duration::from_secs(1) >= expected);
            expected = (expected * 2).min(MAX_RETRY_AFTER);
        }
        assert!(pause(&engine) <= MAX_RETRY_AFTER);
        engine.mark_up();
        assert!(engine.is_up());
        assert_eq!(engine.state().failures, 0);
    }
}
