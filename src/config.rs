//! Every Tango option, read from a TOML file, the environment and the command line, and
//! checked once at start.
//!
//! Python Tango kept its options in `config.py` as class attributes; here they live in TOML
//! sections with readable names (`docs/configuration.md` maps each Python name to its key).
//! The order of precedence, lowest first, is: the built-in defaults (Tango's own), the file
//! given by `--config`, the environment variables Tango's Docker deployments use
//! (`RESTFUL_KEY`, `DOCKER_DEPLOYMENT`, `DOCKER_REDIS_HOSTNAME`, `DOCKER_VOLUME_PATH`), then
//! `TANGO_<SECTION>_<KEY>` variables, then command-line flags. Unknown keys are errors, so
//! a typo never silently leaves a default in place.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::vmms::docker::settings::{DockerConfig, DockerEngineConfig};
pub use crate::vmms::ec2::settings::Ec2Config;
pub use crate::vmms::local::settings::LocalConfig;
pub use crate::vmms::ssh::settings::SshConfig;
pub use crate::vmms::tashi::settings::TashiConfig;

/// The whole configuration. Each field is one TOML section; a backend's own section is
/// declared beside its code (`src/vmms/<backend>/settings.rs`) and composed here.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub store: StoreConfig,
    pub vmms: VmmsConfig,
    pub timeouts: TimeoutConfig,
    pub limits: LimitsConfig,
    pub jobs: JobsConfig,
    pub callback: CallbackConfig,
    pub metrics: MetricsConfig,
    pub local: LocalConfig,
    pub docker: DockerConfig,
    pub ssh: SshConfig,
    pub ec2: Ec2Config,
    pub tashi: TashiConfig,
}

/// The REST server: where it listens, who may call it, and where uploads go.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Python Tango listened on every interface.
    pub bind: String,
    /// `PORT`.
    pub port: u16,
    /// `KEYS`: the API keys a client may put in the URL.
    pub keys: Vec<String>,
    /// `COURSELABS`: the directory holding one sub-directory per courselab.
    pub courselabs: PathBuf,
    /// `OUTPUT_FOLDER`: the sub-directory of a courselab where job outputs are written.
    pub output_folder: String,
    /// `MAX_INPUT_FILE_SIZE`, in bytes: the largest upload (and `/build` tarball) accepted.
    pub max_input_file_size: u64,
    /// When true, `poll` of an output that is not ready answers `statusId 0` instead of
    /// Python's `-1`, so Autolab's (otherwise broken) polling mode can work. Off: Python's
    /// behaviour.
    pub poll_not_ready_ok: bool,
    /// Seconds to let running jobs finish after SIGTERM before they are handed back.
    pub shutdown_grace_secs: u64,
    /// The keys that may call `/build` (which replaces an image for every course); empty:
    /// every key, as in Python Tango. Each must also be in `keys`.
    pub build_keys: Vec<String>,
}

/// How connections are served: the bounds that keep slow or idle clients from holding the
/// daemon (not Tango's: Tornado had none). See [`crate::http`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Seconds a client has to send a request's headers, counted from when the connection
    /// opens or the previous answer ends: also the idle keep-alive timeout.
    pub header_timeout_secs: u64,
    /// Most connections served at once; more wait in the listen backlog until one closes.
    /// 0: half the open-file limit (raised to its hard limit at start), less a reserve.
    pub max_connections: usize,
    /// The slowest a request body may arrive, on average over each window of
    /// `body_window_secs`; 0 for no bound. Far below any real network: a 1 GiB upload at any
    /// normal speed passes.
    pub body_min_bytes_per_sec: u64,
    /// The window over which the body rate is measured.
    pub body_window_secs: u64,
}

/// Logging: `LOGFILE`, `LOGLEVEL`, `LOG_TIMING`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `LOGFILE`: a file to append to; empty means standard error (journald under systemd).
    pub file: String,
    /// `LOGLEVEL`: error, warn, info, debug or trace. `RUST_LOG`, when set, wins.
    pub level: String,
    /// Write JSON lines instead of text.
    pub json: bool,
    /// `LOG_TIMING`: log how long each step of each job took, at info level.
    pub timing: bool,
}

/// Where jobs, pools and counters are kept: `USE_REDIS`, `REDIS_HOSTNAME`, `REDIS_PORT`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `memory` (embedded, one process, lost on exit) or `redis` (durable, shared).
    pub backend: StoreBackend,
    /// `REDIS_HOSTNAME` (env `DOCKER_REDIS_HOSTNAME`).
    pub redis_host: String,
    /// `REDIS_PORT`.
    pub redis_port: u16,
    /// Redis database number.
    pub redis_db: i64,
    /// Optional Redis password (AUTH).
    pub redis_password: String,
    /// Prefix of every Redis key we write, so one Redis can serve several deployments and
    /// never touches Python Tango's pickled keys.
    pub namespace: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Memory,
    Redis,
}

/// The machine backend and its pools: `VMMS_NAME`, `PREFIX`, `REUSE_VMS`, `POOL_SIZE`, ...
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VmmsConfig {
    /// `VMMS_NAME`: `localDocker`, `distDocker`, `ec2SSH`, `tashiSSH`, or `local`.
    pub name: String,
    /// `PREFIX` (env `DOCKER_DEPLOYMENT`): the namespace of our machine names.
    pub prefix: String,
    /// `REUSE_VMS`: keep machines in per-image pools between jobs.
    pub reuse_vms: bool,
    /// `POOL_SIZE`: the pool made for an image on its first job.
    pub pool_size: u32,
    /// Most jobs one manager runs at once; 0 means no limit beyond the pools.
    pub max_concurrent_jobs: u32,
    /// `CREATEVM_SECS`: pause between creating machines of one pool (between batches when
    /// `create_parallel` is above 1).
    pub createvm_secs: f64,
    /// How many machines of one pool are made at once. 1 is Tango's one-at-a-time, kind to
    /// a cloud API's rate limits; a Docker engine makes containers faster several at once.
    pub create_parallel: u32,
    /// `DESTROY_SECS`: how long destroying a machine may take before we give up on it.
    pub destroy_secs: f64,
}

/// `INITIALIZEVM_TIMEOUT`, `WAITVM_TIMEOUT`, `COPYIN_TIMEOUT`, `RUNJOB_TIMEOUT`,
/// `COPYOUT_TIMEOUT`, in seconds. `run_job` is also the default for jobs that give none.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutConfig {
    pub initialize_vm: u64,
    pub wait_vm: u64,
    pub copy_in: u64,
    pub run_job: u64,
    pub copy_out: u64,
    /// Seconds past a job's timeout after which the host kills a run the autodriver has not
    /// ended (every backend: the container, the process, the SSH session).
    pub kill_margin_secs: u64,
}

/// What one job may use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// `MAX_OUTPUT_FILE_SIZE`, bytes: output kept per job (head and tail); a job's `max_kb`
    /// may lower it, never raise it.
    pub max_output_file_size: u64,
    /// `VM_ULIMIT_FILE_SIZE`, bytes: RLIMIT_FSIZE of the job.
    pub ulimit_file_size: u64,
    /// `VM_ULIMIT_USER_PROC`: RLIMIT_NPROC of the job.
    pub ulimit_user_proc: u64,
    /// `DOCKER_CORES_LIMIT`: CPUs per machine; absent means no limit.
    pub cores: Option<f64>,
    /// `DOCKER_MEMORY_LIMIT`, MiB per machine. Tango left it off; we default to 2048 so a
    /// memory hog cannot take the host down. Set to 0 for no limit.
    pub memory_mb: u64,
    /// Process limit of a container (pids cgroup), on by default; 0 means no limit.
    pub pids: u64,
}

/// The queue: `JOB_RETRIES`, `DISPATCH_PERIOD`, `MAX_JOBID`, and what Tango lacked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// `JOB_RETRIES`: how often a job is retried on a fresh machine after a machine error.
    pub retries: u32,
    /// `DISPATCH_PERIOD`, seconds: the longest a manager sleeps between checks when it has
    /// no event to wake it (dispatch itself is event driven).
    pub dispatch_period: f64,
    /// Most jobs waiting in the queue; 0 means no cap. (`MAX_JOBID` capped Python's queue at
    /// 1000 by accident of its id scheme; our ids never wrap.)
    pub max_queued: u64,
    /// Dead (finished) jobs kept for `/jobs/KEY/1/`; the oldest are dropped beyond this.
    pub max_dead: u64,
    /// Seconds a manager's lease on its jobs lasts without renewal. When a manager dies, its
    /// jobs go back to the queue this long after its last heartbeat. Heartbeats come every
    /// third of it; see config.example.toml for the trade-off.
    pub lease_secs: u64,
    /// The duplicate guard: an addJob whose output file (courselab and `output_file`) a
    /// queued or running job writes already queues nothing and answers with that job's id.
    /// Python Tango ran such a resubmission twice.
    pub deduplicate: bool,
    /// The order jobs leave the queue: `fair` (round-robin across courselabs, FIFO within
    /// each) or `fifo` (Tango's order: one queue, oldest first).
    pub scheduling: Scheduling,
    /// Fair share: jobs a courselab (by name, as Autolab sends it) gets per turn; 1 for any
    /// courselab not listed.
    pub weights: BTreeMap<String, u32>,
    /// Most jobs of one courselab held by managers at once (waiting for a machine or
    /// running), across every manager of the store, so one course cannot hold every
    /// machine; 0: no cap.
    pub max_running_per_courselab: u64,
}

/// The order in which queued jobs are dispatched.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scheduling {
    /// Round-robin across the courselabs that have jobs waiting, FIFO within each: one
    /// course's burst does not hold every other course's jobs behind it.
    #[default]
    Fair,
    /// Tango's order: the oldest job first, whatever its courselab.
    Fifo,
}

/// Notifying Autolab when a job ends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CallbackConfig {
    /// Verify TLS certificates of the callback URL. Tango did not (`verify=False`).
    pub verify_tls: bool,
    /// Seconds one attempt may take.
    pub timeout_secs: u64,
    /// Attempts in all (Tango: urllib3 `Retry(total=10)`).
    pub attempts: u32,
    /// First back-off, seconds; it doubles each attempt, with jitter, up to `max_backoff_secs`.
    pub backoff_secs: f64,
    pub max_backoff_secs: f64,
    /// Failed callbacks (attempts used up) kept in the store for a replay; beyond this the
    /// oldest are dropped, with a warning. 0: no cap.
    pub max_failed_kept: u64,
    /// Seconds between tries of the oldest failed callback of each host, which, when it
    /// gets through, sends the rest of that host's. 0: only when a callback to that host
    /// succeeds again, or on `tango callbacks --replay`.
    pub retry_failed_secs: u64,
}

/// Prometheus metrics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// The route they are served at.
    pub path: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: "0.0.0.0".into(),
            port: 3000,
            keys: vec!["test".into()],
            courselabs: PathBuf::from("courselabs"),
            output_folder: "output".into(),
            max_input_file_size: 10 * 1024 * 1024 * 1024,
            poll_not_ready_ok: false,
            shutdown_grace_secs: 30,
            build_keys: Vec::new(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_timeout_secs: 30,
            max_connections: 0,
            body_min_bytes_per_sec: 1024,
            body_window_secs: 30,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            file: String::new(),
            level: "debug".into(),
            json: false,
            timing: false,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Memory,
            redis_host: "127.0.0.1".into(),
            redis_port: 6379,
            redis_db: 0,
            redis_password: String::new(),
            namespace: "tango".into(),
        }
    }
}

impl Default for VmmsConfig {
    fn default() -> Self {
        VmmsConfig {
            name: "localDocker".into(),
            prefix: "local".into(),
            reuse_vms: true,
            pool_size: 2,
            max_concurrent_jobs: 0,
            createvm_secs: 1.0,
            create_parallel: 1,
            destroy_secs: 5.0,
        }
    }
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            initialize_vm: 180,
            wait_vm: 60,
            copy_in: 30,
            run_job: 60,
            copy_out: 30,
            kill_margin_secs: 30,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_output_file_size: 1000 * 1024,
            ulimit_file_size: 100 * 1024 * 1024,
            ulimit_user_proc: 100,
            cores: None,
            memory_mb: 2048,
            pids: 1024,
        }
    }
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            retries: 2,
            dispatch_period: 0.2,
            max_queued: 0,
            max_dead: 1000,
            lease_secs: 15,
            deduplicate: true,
            scheduling: Scheduling::Fair,
            weights: BTreeMap::new(),
            max_running_per_courselab: 0,
        }
    }
}

impl Default for CallbackConfig {
    fn default() -> Self {
        CallbackConfig {
            verify_tls: false,
            timeout_secs: 30,
            attempts: 10,
            backoff_secs: 1.0,
            max_backoff_secs: 120.0,
            max_failed_kept: 10_000,
            retry_failed_secs: 300,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            path: "/metrics".into(),
        }
    }
}

// `Config` has only sections, each with its own Default; derive would do the same.
#[allow(clippy::derivable_impls)]
impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            http: HttpConfig::default(),
            log: LogConfig::default(),
            store: StoreConfig::default(),
            vmms: VmmsConfig::default(),
            timeouts: TimeoutConfig::default(),
            limits: LimitsConfig::default(),
            jobs: JobsConfig::default(),
            callback: CallbackConfig::default(),
            metrics: MetricsConfig::default(),
            local: LocalConfig::default(),
            docker: DockerConfig::default(),
            ssh: SshConfig::default(),
            ec2: Ec2Config::default(),
            tashi: TashiConfig::default(),
        }
    }
}

/// Why a configuration was refused. Its `Display` is one line naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}{location}: {key}: {message}")]
    Parse {
        /// The file name or the environment variable the bad value came from.
        origin: String,
        /// `:LINE` within the file, or empty.
        location: String,
        /// The dotted key, e.g. `server.port`.
        key: String,
        message: String,
    },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

/// Overrides from the command line; `None` leaves the value alone.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub port: Option<u16>,
    pub bind: Option<String>,
    pub store: Option<StoreBackend>,
    pub vmms: Option<String>,
    pub log_level: Option<String>,
    pub courselabs: Option<PathBuf>,
}

impl Config {
    /// Loads the configuration: defaults, then `path` (if any), then the environment, then
    /// `overrides`; then validates it.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::load_from(path, &env, overrides)
    }

    /// [`Config::load`] with an explicit environment, for tests.
    pub fn load_from(
        path: Option<&Path>,
        env: &BTreeMap<String, String>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Self::parse(&text, &path.display().to_string())?
            }
            None => Config::default(),
        };
        config.apply_env(env)?;
        config.apply_overrides(overrides);
        config.adopt_moved_keys();
        config.validate()?;
        Ok(config)
    }

    /// Keys that moved: their value goes where it is read now (see [`Config::notices`]).
    fn adopt_moved_keys(&mut self) {
        if let Some(margin) = self.docker.kill_margin_secs {
            self.timeouts.kill_margin_secs = margin;
        }
    }

    /// What an admin should hear about this configuration at start (keys that moved).
    pub fn notices(&self) -> Vec<String> {
        let mut notices = Vec::new();
        if self.docker.kill_margin_secs.is_some() {
            notices.push(
                "docker.kill_margin_secs is now timeouts.kill_margin_secs (it applies to every \
                 backend); its value was used"
                    .to_string(),
            );
        }
        notices.extend(self.security_warnings());
        notices
    }

    /// What an operator must hear about an unsafe but allowed setup, at start and in
    /// `/info` (an extension there): the default key served beyond this host.
    pub fn security_warnings(&self) -> Vec<String> {
        let loopback = match self.server.bind.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => self.server.bind == "localhost",
        };
        if !loopback && self.server.keys.iter().any(|k| k == "test") {
            return vec![format!(
                "server.keys holds the default key \"test\" and server.bind = {:?} is reachable \
                 from other hosts: anyone who can reach port {} can run jobs and read outputs; set \
                 your own key",
                self.server.bind, self.server.port
            )];
        }
        Vec::new()
    }

    /// Parses TOML text. `origin` names it in errors (a file name).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let deserializer =
            toml::Deserializer::parse(text).map_err(|e| toml_error(origin, text, "", e))?;
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            toml_error(origin, text, &key, e.into_inner())
        })
    }

    /// Applies Tango's deployment variables, then `TANGO_<SECTION>_<KEY>` ones.
    fn apply_env(&mut self, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        if let Some(key) = env.get("RESTFUL_KEY") {
            self.server.keys = vec![key.clone()];
        }
        if let Some(prefix) = env.get("DOCKER_DEPLOYMENT") {
            self.vmms.prefix = prefix.to_lowercase();
        }
        if let Some(host) = env.get("DOCKER_REDIS_HOSTNAME") {
            self.store.redis_host = host.to_lowercase();
        }
        if let Some(path) = env.get("DOCKER_VOLUME_PATH") {
            self.docker.volume_path = path.clone();
        }

        // Rebuild through TOML so that every override is type checked like the file is.
        let sections = section_names();
        let mut table = toml::Table::try_from(&*self).map_err(|e| ConfigError::Invalid {
            key: "(all)".into(),
            message: e.to_string(),
        })?;
        let mut touched = false;
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("TANGO_") else {
                continue;
            };
            let rest = rest.to_lowercase();
            // Section names have no underscore, so the first one splits section from key.
            let Some((section, key)) = rest.split_once('_') else {
                continue;
            };
            // TANGO_URL, TANGO_KEY and other client variables name no section: not ours.
            if !sections.iter().any(|s| s == section) {
                continue;
            }
            let parsed = parse_env_value(value);
            let Some(toml::Value::Table(section_table)) = table.get_mut(section) else {
                continue;
            };
            section_table.insert(key.to_string(), parsed);
            touched = true;
            // Check each variable alone so the error names the variable that is wrong.
            let candidate = table.clone();
            if let Err(e) = candidate.try_into::<Config>() {
                return Err(ConfigError::Parse {
                    origin: name.clone(),
                    location: String::new(),
                    key: format!("{section}.{key}"),
                    message: clean_message(&e.to_string()),
                });
            }
        }
        if touched {
            *self = table
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    key: "(environment)".into(),
                    message: clean_message(&e.to_string()),
                })?;
        }
        Ok(())
    }

    fn apply_overrides(&mut self, o: &Overrides) {
        if let Some(port) = o.port {
            self.server.port = port;
        }
        if let Some(bind) = &o.bind {
            self.server.bind = bind.clone();
        }
        if let Some(store) = o.store {
            self.store.backend = store;
        }
        if let Some(vmms) = &o.vmms {
            self.vmms.name = vmms.clone();
        }
        if let Some(level) = &o.log_level {
            self.log.level = level.clone();
        }
        if let Some(dir) = &o.courselabs {
            self.server.courselabs = dir.clone();
        }
    }

    /// Checks what types alone cannot. The first problem found is reported, sections in
    /// the order of the file; each backend's own section is checked by its own code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let checks = [
            self.server.validate(),
            self.vmms.validate(),
            parse_level(&self.log.level).map_err(|message| ("log.level".into(), message)),
            self.check_seconds(),
            self.limits.validate(),
            self.check_positive(),
            self.jobs.validate(),
            self.callback.validate(),
            self.metrics.validate(),
            self.local.validate(),
            self.docker.validate(),
            self.ssh.validate(),
            self.ec2.validate(),
        ];
        match checks.into_iter().find_map(Result::err) {
            Some((key, message)) => Err(ConfigError::Invalid { key, message }),
            None => Ok(()),
        }
    }

    /// Durations given in (possibly fractional) seconds are numbers of seconds.
    fn check_seconds(&self) -> Check {
        for (key, value) in [
            ("jobs.dispatch_period", self.jobs.dispatch_period),
            ("vmms.createvm_secs", self.vmms.createvm_secs),
            ("vmms.destroy_secs", self.vmms.destroy_secs),
            ("callback.backoff_secs", self.callback.backoff_secs),
            ("callback.max_backoff_secs", self.callback.max_backoff_secs),
        ] {
            if !value.is_finite() || value < 0.0 {
                return invalid(
                    key,
                    format!("must be a non-negative number of seconds, got {value}"),
                );
            }
        }
        Ok(())
    }

    /// Timeouts and sizes where 0 would stop everything.
    fn check_positive(&self) -> Check {
        for (key, value) in [
            ("timeouts.initialize_vm", self.timeouts.initialize_vm),
            ("timeouts.wait_vm", self.timeouts.wait_vm),
            ("timeouts.copy_in", self.timeouts.copy_in),
            ("timeouts.run_job", self.timeouts.run_job),
            ("timeouts.copy_out", self.timeouts.copy_out),
            (
                "limits.max_output_file_size",
                self.limits.max_output_file_size,
            ),
            ("jobs.lease_secs", self.jobs.lease_secs),
            ("callback.timeout_secs", self.callback.timeout_secs),
            ("http.header_timeout_secs", self.http.header_timeout_secs),
            ("http.body_window_secs", self.http.body_window_secs),
        ] {
            if value == 0 {
                return invalid(key, "must be greater than 0".into());
            }
        }
        Ok(())
    }

    /// The per-job output cap: the job's `max_kb` when given and smaller than the maximum.
    pub fn max_output(&self, max_kb: Option<u64>) -> u64 {
        let max = self.limits.max_output_file_size;
        match max_kb {
            Some(kb) if kb > 0 => kb.saturating_mul(1024).min(max),
            _ => max,
        }
    }
}

/// A section's check: the key and what is wrong with it.
type Check = Result<(), (String, String)>;

fn invalid(key: &str, message: String) -> Check {
    Err((key.to_string(), message))
}

impl JobsConfig {
    fn validate(&self) -> Check {
        match self.weights.iter().find(|(_, weight)| **weight == 0) {
            Some((courselab, _)) => invalid(
                "jobs.weights",
                format!("the weight of {courselab:?} must be at least 1"),
            ),
            None => Ok(()),
        }
    }
}

impl ServerConfig {
    fn validate(&self) -> Check {
        if self.keys.is_empty() || self.keys.iter().any(|k| k.is_empty()) {
            return invalid("server.keys", "needs at least one non-empty key".into());
        }
        if let Some(bad) = self.keys.iter().find(|k| k.contains('/')) {
            return invalid("server.keys", format!("a key cannot contain '/': {bad:?}"));
        }
        if let Some(bad) = self.build_keys.iter().find(|k| !self.keys.contains(k)) {
            return invalid(
                "server.build_keys",
                format!("{bad:?} is not one of server.keys"),
            );
        }
        if self.output_folder.is_empty()
            || self.output_folder.contains('/')
            || self.output_folder == "."
            || self.output_folder == ".."
        {
            return invalid(
                "server.output_folder",
                format!(
                    "must be a plain directory name, got {:?}",
                    self.output_folder
                ),
            );
        }
        if self.courselabs.as_os_str().is_empty() {
            return invalid("server.courselabs", "must not be empty".into());
        }
        Ok(())
    }
}

impl VmmsConfig {
    fn validate(&self) -> Check {
        if self.prefix.is_empty()
            || !self
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return invalid(
                "vmms.prefix",
                format!(
                    "must be letters, digits, '_' or '.' (it starts every machine name), got {:?}",
                    self.prefix
                ),
            );
        }
        if self.create_parallel == 0 {
            return invalid("vmms.create_parallel", "must be at least 1".into());
        }
        Ok(())
    }
}

impl LimitsConfig {
    fn validate(&self) -> Check {
        if let Some(cores) = self.cores
            && (!cores.is_finite() || cores <= 0.0)
        {
            return invalid(
                "limits.cores",
                format!("must be a positive number, got {cores}"),
            );
        }
        Ok(())
    }
}

impl CallbackConfig {
    fn validate(&self) -> Check {
        if self.attempts == 0 {
            return invalid("callback.attempts", "must be at least 1".into());
        }
        Ok(())
    }
}

impl MetricsConfig {
    fn validate(&self) -> Check {
        if !self.path.starts_with('/') {
            return invalid(
                "metrics.path",
                format!("must start with '/', got {:?}", self.path),
            );
        }
        if ["/healthz", "/readyz"].contains(&self.path.as_str()) {
            return invalid(
                "metrics.path",
                format!("{:?} is the health check's route", self.path),
            );
        }
        Ok(())
    }
}

/// Checks a log level name; returns a message naming the good ones.
pub fn parse_level(level: &str) -> Result<(), String> {
    match level.to_ascii_lowercase().as_str() {
        "error" | "warn" | "warning" | "info" | "debug" | "trace" | "critical" => Ok(()),
        other => Err(format!(
            "unknown level {other:?}; expected error, warn, info, debug or trace"
        )),
    }
}

/// The TOML section names, from the defaults, so a new section needs no list to update.
fn section_names() -> Vec<String> {
    match toml::Table::try_from(Config::default()) {
        Ok(table) => table.keys().cloned().collect(),
        Err(_) => Vec::new(),
    }
}

/// Reads an environment value as a TOML value (`3001`, `true`, `["a","b"]`), else a string.
fn parse_env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn toml_error(origin: &str, text: &str, key: &str, e: toml::de::Error) -> ConfigError {
    let location = match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(":{line}")
        }
        None => String::new(),
    };
    let key = if key.is_empty() || key == "." {
        unknown_key(e.message()).unwrap_or_else(|| "(file)".to_string())
    } else {
        key.to_string()
    };
    ConfigError::Parse {
        origin: origin.to_string(),
        location,
        key,
        message: clean_message(e.message()),
    }
}

/// toml names an unknown field only in its message: "unknown field `x`, expected ...".
fn unknown_key(message: &str) -> Option<String> {
    let start = message.find("unknown field `")? + "unknown field `".len();
    let end = message[start..].find('`')? + start;
    Some(message[start..end].to_string())
}

/// Keeps error messages to one line.
fn clean_message(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl fmt::Display for StoreBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreBackend::Memory => "memory",
            StoreBackend::Redis => "redis",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_tangos() {
        let c = Config::default();
        assert_eq!(c.server.port, 3000);
        assert_eq!(c.server.keys, vec!["test".to_string()]);
        assert_eq!(c.vmms.prefix, "local");
        assert_eq!(c.vmms.name, "localDocker");
        assert_eq!(c.vmms.pool_size, 2);
        assert!(c.vmms.reuse_vms);
        assert_eq!(c.timeouts.initialize_vm, 180);
        assert_eq!(c.timeouts.wait_vm, 60);
        assert_eq!(c.timeouts.copy_in, 30);
        assert_eq!(c.timeouts.run_job, 60);
        assert_eq!(c.timeouts.copy_out, 30);
        assert_eq!(c.limits.max_output_file_size, 1_024_000);
        assert_eq!(c.limits.ulimit_file_size, 104_857_600);
        assert_eq!(c.limits.ulimit_user_proc, 100);
        assert_eq!(c.server.max_input_file_size, 10_737_418_240);
        assert_eq!(c.jobs.retries, 2);
        assert_eq!(c.ssh.retries, 5);
        assert_eq!(c.ssh.interval, 0.5);
        assert_eq!(c.store.redis_port, 6379);
        assert_eq!(c.store.redis_host, "127.0.0.1");
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let text = include_str!("../config.example.toml");
        let parsed = Config::parse(text, "config.example.toml").expect("example parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn unknown_key_is_refused_with_its_name_and_line() {
        let text = "[server]\nport = 3001\nprot = 4\n";
        let err = Config::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("prot"), "{err}");
        assert!(err.contains("t.toml:3"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn wrong_type_names_the_dotted_key() {
        let text = "[server]\nport = \"three thousand\"\n";
        let err = Config::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("server.port"), "{err}");
        assert!(err.contains("t.toml:2"), "{err}");
    }

    #[test]
    fn unknown_section_is_refused() {
        let err = Config::parse("[sever]\nport = 1\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sever"), "{err}");
    }

    #[test]
    fn tango_deployment_variables_apply() {
        let e = env(&[
            ("RESTFUL_KEY", "s3cret"),
            ("DOCKER_DEPLOYMENT", "Prod"),
            ("DOCKER_REDIS_HOSTNAME", "Redis"),
        ]);
        let c = Config::load_from(None, &e, &Overrides::default()).unwrap();
        assert_eq!(c.server.keys, vec!["s3cret".to_string()]);
        assert_eq!(c.vmms.prefix, "prod");
        assert_eq!(c.store.redis_host, "redis");
    }

    #[test]
    fn tango_prefixed_variables_override_and_are_checked() {
        let e = env(&[
            ("TANGO_SERVER_PORT", "3100"),
            ("TANGO_STORE_BACKEND", "redis"),
            ("TANGO_SERVER_KEYS", "[\"a\", \"b\"]"),
            ("TANGO_URL", "http://elsewhere:3000"),
        ]);
        let c = Config::load_from(None, &e, &Overrides::default()).unwrap();
        assert_eq!(c.server.port, 3100);
        assert_eq!(c.store.backend, StoreBackend::Redis);
        assert_eq!(c.server.keys, vec!["a".to_string(), "b".to_string()]);

        let bad = env(&[("TANGO_SERVER_PORT", "lots")]);
        let err = Config::load_from(None, &bad, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("TANGO_SERVER_PORT"), "{err}");
        assert!(err.contains("server.port"), "{err}");

        let unknown = env(&[("TANGO_SERVER_PROT", "1")]);
        let err = Config::load_from(None, &unknown, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn flags_win_over_environment() {
        let e = env(&[("TANGO_SERVER_PORT", "3100")]);
        let o = Overrides {
            port: Some(4000),
            ..Overrides::default()
        };
        assert_eq!(Config::load_from(None, &e, &o).unwrap().server.port, 4000);
    }

    #[test]
    fn validation_names_the_key() {
        let err = Config::parse("[vmms]\nprefix = \"a-b\"\n", "t")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("vmms.prefix:"), "{err}");
        let err = Config::parse("[server]\nkeys = []\n", "t")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("server.keys:"), "{err}");
    }

    #[test]
    fn job_uids_stay_clear_of_root() {
        let err = Config::parse("[docker]\njob_uid_base = 0\n", "t")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("docker.job_uid_base:"), "{err}");
        let named = Config::parse("[docker]\njob_uid_base = 0\njob_uid_count = 0\n", "t");
        assert!(
            named.unwrap().validate().is_ok(),
            "a named user needs no range"
        );
    }

    #[test]
    fn max_output_honours_max_kb_but_never_exceeds_the_maximum() {
        let c = Config::default();
        assert_eq!(c.max_output(None), 1_024_000);
        assert_eq!(c.max_output(Some(0)), 1_024_000);
        assert_eq!(c.max_output(Some(10)), 10_240);
        assert_eq!(c.max_output(Some(1_000_000)), 1_024_000);
        assert_eq!(c.max_output(Some(u64::MAX)), 1_024_000);
    }
}
