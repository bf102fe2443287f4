//! The SSH runner shared by the VM backends (`ec2SSH`, `tashiSSH`): everything Tango did to a
//! VM once it existed, over SSH.
//!
//! It drives the system `ssh` through the `openssh` crate, which keeps one multiplexed master
//! connection (`ControlMaster`) per VM: the steps of a job (wait, copy in, run, copy out) each
//! open a channel on it instead of a new TCP connection and key exchange, which is what made
//! Tango's per-step `ssh`/`scp` calls slow. Using the system client means the VM is reached
//! exactly as an administrator reaches it by hand (`ssh -i KEY autolab@HOST`): `ssh_config`,
//! `ProxyJump`, known hosts and certificates all work, and the crypto is the operating
//! system's, patched with it. `docs/backends.md` says why this over a pure-Rust client.
//!
//! What runs on the VM is Tango's, so an AMI or disk image made for Python Tango works
//! unchanged: the inputs go to a fresh `~/autolab/`, the autodriver runs as
//! `autodriver -u NPROC -f FSIZE -t TIMEOUT -o OSIZE autolab > output 2>&1` in the login
//! user's home, and `~/output` comes back. Files move through the SSH channel's standard
//! input and output (`cat`, `head -c`), so the VM needs only a POSIX shell and coreutils, not
//! an scp or sftp server.
//!
//! Every step has a deadline. Connecting is tried `ssh.retries` times, `ssh.interval` seconds
//! apart. Host keys: `StrictHostKeyChecking` and `UserKnownHostsFile` in `ssh.options` are
//! honoured; without them each VM's key is trusted on first use and remembered in a
//! known-hosts file private to that VM, forgotten when the VM is destroyed (cloud addresses
//! are reused, so one global file would soon refuse a new VM on an old address).

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder, Stdio};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub mod settings;

use super::{RunOutcome, RunSpec, VmmsError, run::output_cap, within};
use crate::config::Config;
use crate::model::InputFile;

/// The grading directory and output file, relative to the login user's home (Tango's names),
/// and the log the autodriver writes while make runs (its default `--output-log`, relative
/// to where it starts: the home directory too).
const GRADING_DIR: &str = "autolab";
const OUTPUT_FILE: &str = "output";
const LIVE_LOG: &str = "output.log";
/// Exit status of our partial-output reader for "the log is there but not readable".
const UNREADABLE: i32 = 77;

/// How long an idle master connection outlives its last use. A pool VM idle for longer
/// reconnects on its next job; a daemon killed with -9 leaves no master behind for longer.
const MASTER_IDLE_SECS: usize = 300;

/// Longest single TCP connect (`ConnectTimeout`); a step's own deadline may cut it shorter.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a VM is reached and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The private key to log in with; `None` leaves the choice to ssh (agent, config).
    pub key: Option<PathBuf>,
}

impl SshTarget {
    /// The identity of a master connection: a different key is a different login.
    fn cache_key(&self) -> String {
        format!(
            "{}@{}:{}#{}",
            self.user,
            self.host,
            self.port,
            self.key
                .as_deref()
                .map(|k| k.display().to_string())
                .unwrap_or_default()
        )
    }
}

impl fmt::Display for SshTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}:{}", self.user, self.host, self.port)
    }
}

/// Runs Tango's steps on VMs over SSH. One per backend; shared by every job it runs.
pub struct SshRunner {
    /// `ssh.user`, `ssh.port`, `ssh.key_path` (empty: none), `ssh.retries`, `ssh.interval`.
    user: String,
    port: u16,
    default_key: Option<PathBuf>,
    attempts: u32,
    interval: Duration,
    /// The autodriver command on the VM, each word shell-quoted (`ssh.autodriver`).
    autodriver: String,
    copy_in_timeout: Duration,
    copy_out_timeout: Duration,
    /// Private directory (mode 0700) for control sockets, the generated ssh config and the
    /// per-VM known-hosts files.
    private_dir: tempfile::TempDir,
    /// `-F` file holding `ssh.options`, when there are any.
    config_file: Option<PathBuf>,
    known_hosts: KnownHosts,
    /// True when `ssh.options` names its own `UserKnownHostsFile`.
    own_known_hosts_file: bool,
    /// Open master connections, by [`SshTarget::cache_key`].
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

impl SshRunner {
    pub fn new(config: &Config) -> Result<Self, VmmsError> {
        let ssh = &config.ssh;
        let private_dir = tempfile::Builder::new()
            .prefix("tango-ssh-")
            .tempdir()
            .map_err(|e| VmmsError::Io(format!("cannot make a directory for ssh: {e}")))?;
        let options = SshOptions::parse(&ssh.options)?;
        let config_file = if options.passed.is_empty() {
            None
        } else {
            let path = private_dir.path().join("ssh_config");
            let mut text = String::from(
                "# Written by tango from ssh.options; the first value of a keyword wins.\n",
            );
            for line in &options.passed {
                text.push_str(line);
                text.push('\n');
            }
            // -F replaces the user's and the system's files; read them after ours so that
            // everything ssh.options does not set still comes from them.
            text.push_str("Include ~/.ssh/config\nInclude /etc/ssh/ssh_config\n");
            std::fs::write(&path, text)
                .map_err(|e| VmmsError::Io(format!("cannot write {}: {e}", path.display())))?;
            Some(path)
        };
        let autodriver = ssh
            .autodriver
            .split_whitespace()
            .map(shell_quote)
            .collect::<Vec<_>>()
            .join(" ");
        if autodriver.is_empty() {
            return Err(VmmsError::Backend(
                "ssh.autodriver is empty: it must name the autodriver on the VM".into(),
            ));
        }
        Ok(SshRunner {
            user: ssh.user.clone(),
            port: ssh.port,
            default_key: (!ssh.key_path.as_os_str().is_empty()).then(|| ssh.key_path.clone()),
            attempts: ssh.retries.max(1),
            interval: Duration::from_secs_f64(ssh.interval),
            autodriver,
            copy_in_timeout: Duration::from_secs(config.timeouts.copy_in),
            copy_out_timeout: Duration::from_secs(config.timeouts.copy_out),
            private_dir,
            config_file,
            known_hosts: options.known_hosts,
            own_known_hosts_file: options.known_hosts_file,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// A private directory (mode 0700) that lives as long as the runner: for files that
    /// must not outlive it, such as per-job private keys.
    pub fn private_dir(&self) -> &Path {
        self.private_dir.path()
    }

    /// The target for a VM at `host`, logging in with `key` (or `ssh.key_path`).
    pub fn target(&self, host: &str, key: Option<PathBuf>) -> SshTarget {
        SshTarget {
            host: host.to_string(),
            port: self.port,
            user: self.user.clone(),
            key: key.or_else(|| self.default_key.clone()),
        }
    }

    /// `waitVM`: waits until the VM answers over SSH (a login and `true` succeed), at most
    /// `max`. Tango pinged first; SSH answering is what matters, so we only try that.
    pub async fn wait_ready(&self, target: &SshTarget, max: Duration) -> Result<(), VmmsError> {
        let deadline = Instant::now() + max;
        let mut last_error = String::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                tracing::info!(%target, error = %last_error, "VM did not answer over SSH in time");
                return Err(VmmsError::Timeout {
                    step: "wait_vm",
                    secs: max.as_secs(),
                });
            }
            let attempt = async {
                let session = self.session(target, 1).await?;
                let status = session
                    .command("true")
                    .status()
                    .await
                    .map_err(|e| ssh_error(target, "running true", &e))?;
                if status.success() {
                    Ok(())
                } else {
                    Err(VmmsError::Backend(format!(
                        "{target}: `true` exited with {status}"
                    )))
                }
            };
            match tokio::time::timeout(remaining, attempt).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => continue,
            }
            tracing::debug!(%target, error = %last_error, "VM not answering over SSH yet");
            let pause = self
                .interval
                .max(Duration::from_millis(100))
                .min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
    }

    /// `copyIn`: a fresh `~/autolab` (and no `~/output` or `~/output.log` left from an
    /// earlier job on a reused VM), then each input file streamed into it.
    pub async fn copy_in(&self, target: &SshTarget, inputs: &[InputFile]) -> Result<(), VmmsError> {
        for input in inputs {
            check_dest_name(&input.dest_file)?;
        }
        let steps = async {
            let session = self.session(target, self.attempts).await?;
            self.run_checked(
                &session,
                target,
                &format!("rm -rf {GRADING_DIR} {OUTPUT_FILE} {LIVE_LOG} && mkdir {GRADING_DIR}"),
                "making a fresh grading directory",
            )
            .await?;
            for input in inputs {
                self.send_file(&session, target, input).await?;
            }
            Ok(())
        };
        within(self.copy_in_timeout, "copy_in", steps).await
    }

    /// `runJob`: runs the autodriver on `~/autolab` with Tango's flags, its output going to
    /// `~/output` on the VM. The autodriver enforces the job's timeout itself; if it has not
    /// returned by [`RunSpec::kill_after`] (the timeout plus `timeouts.kill_margin_secs`), the
    /// session is dropped and the job reported [`RunOutcome::Killed`].
    pub async fn run_job(
        &self,
        target: &SshTarget,
        spec: &RunSpec,
    ) -> Result<RunOutcome, VmmsError> {
        if spec.disable_network {
            // An SSH VM needs its network for SSH; cutting the job off is the image's job
            // (docs/backends.md). Say so rather than pretend.
            tracing::warn!(
                job = spec.job_id,
                %target,
                "disable_network is not enforced on VM backends"
            );
        }
        let command = format!(
            "{} {} {GRADING_DIR} > {OUTPUT_FILE} 2>&1",
            self.autodriver,
            spec.autodriver_limits().join(" "),
        );
        let guard = spec.kill_after;
        let run = async {
            let session = self.session(target, self.attempts).await?;
            let status = session
                .shell(&command)
                .status()
                .await
                .map_err(|e| match e {
                    openssh::Error::Remote(ref io) if io.kind() == std::io::ErrorKind::NotFound => {
                        VmmsError::Backend(format!(
                            "{target}: the autodriver was not found on the VM (ssh.autodriver = {})",
                            self.autodriver
                        ))
                    }
                    other => ssh_error(target, "running the autodriver", &other),
                })?;
            match status.code() {
                Some(code) => Ok(RunOutcome::Exited(code)),
                None => Err(VmmsError::Backend(format!(
                    "{target}: the ssh client running the autodriver was killed ({status})"
                ))),
            }
        };
        match tokio::time::timeout(guard, run).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(job = spec.job_id, %target, "autodriver overran its timeout; giving up on it");
                Ok(RunOutcome::Killed)
            }
        }
    }

    /// `copyOut`: `~/output` to `dest` on this host, at most [`output_cap`]`(max_output)`
    /// bytes (cut on the VM with `head -c`, and again here in case the VM does not). `dest` is
    /// opened without following a symbolic link.
    pub async fn copy_out(
        &self,
        target: &SshTarget,
        dest: &Path,
        max_output: u64,
    ) -> Result<(), VmmsError> {
        let cap = output_cap(max_output);
        let steps = async {
            let session = self.session(target, self.attempts).await?;
            let mut child = session
                .shell(format!("head -c {cap} {OUTPUT_FILE}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .await
                .map_err(|e| ssh_error(target, "reading the output", &e))?;
            let stdout = child.stdout().take().ok_or_else(|| {
                VmmsError::Backend(format!("{target}: no pipe from the output reader"))
            })?;
            let file = open_output(dest)?;
            let mut file = tokio::fs::File::from_std(file);
            let mut capped = stdout.take(cap);
            tokio::io::copy(&mut capped, &mut file).await.map_err(|e| {
                VmmsError::Io(format!("copying the output to {}: {e}", dest.display()))
            })?;
            file.flush().await?;
            drop(capped);
            let status = child
                .wait()
                .await
                .map_err(|e| ssh_error(target, "reading the output", &e))?;
            if !status.success() {
                return Err(VmmsError::Backend(format!(
                    "{target}: the VM has no output file (head exited with {status})"
                )));
            }
            Ok(())
        };
        within(self.copy_out_timeout, "copy_out", steps).await
    }

    /// `getPartialOutput`: the first `max_bytes` of what the job has printed so far: the
    /// autodriver's live log `~/output.log` (Tango read the same log), else `~/output`;
    /// nothing if neither exists yet. A log the login user may not read (an autodriver run
    /// as root through sudo keeps it private) is [`VmmsError::Unsupported`]: see
    /// docs/backends.md.
    pub async fn partial_output(
        &self,
        target: &SshTarget,
        max_bytes: u64,
    ) -> Result<Vec<u8>, VmmsError> {
        let steps = async {
            let session = self.session(target, self.attempts).await?;
            let output = session
                .shell(format!(
                    "for f in {LIVE_LOG} {OUTPUT_FILE}; do \
                     if test -e $f; then test -r $f || exit {UNREADABLE}; \
                     exec head -c {max_bytes} $f; fi; done"
                ))
                .output()
                .await
                .map_err(|e| ssh_error(target, "reading the partial output", &e))?;
            if output.status.code() == Some(UNREADABLE) {
                return Err(VmmsError::Unsupported(format!(
                    "{target}: the autodriver's live log ~/{LIVE_LOG} is not readable by the \
                     login user (an autodriver run as root keeps it private), so partial \
                     output is not available on this VM"
                )));
            }
            if !output.status.success() {
                return Err(VmmsError::Backend(format!(
                    "{target}: reading the partial output failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                )));
            }
            let mut bytes = output.stdout;
            bytes.truncate(usize::try_from(max_bytes).unwrap_or(usize::MAX));
            Ok(bytes)
        };
        within(self.copy_out_timeout, "get_partial_output", steps).await
    }

    /// Closes the VM's master connection and forgets its host key: call when the VM is gone.
    pub async fn forget(&self, target: &SshTarget) {
        let session = self
            .sessions
            .lock()
            .map(|mut sessions| sessions.remove(&target.cache_key()))
            .unwrap_or(None);
        if let Some(session) = session {
            match Arc::try_unwrap(session) {
                Ok(session) => {
                    if let Err(e) = session.close().await {
                        tracing::debug!(%target, error = %e, "closing the ssh master failed");
                    }
                }
                // Still used by a step that is running: it closes when that step drops it.
                Err(shared) => drop(shared),
            }
        }
        let _ = std::fs::remove_file(self.known_hosts_path(target));
    }

    /// The open master connection to `target`, or a new one (tried `attempts` times).
    async fn session(&self, target: &SshTarget, attempts: u32) -> Result<Arc<Session>, VmmsError> {
        let key = target.cache_key();
        let cached = self
            .sessions
            .lock()
            .ok()
            .and_then(|sessions| sessions.get(&key).cloned());
        if let Some(session) = cached {
            if session.check().await.is_ok() {
                return Ok(session);
            }
            tracing::debug!(%target, "ssh master connection lost; reconnecting");
            if let Ok(mut sessions) = self.sessions.lock() {
                sessions.remove(&key);
            }
        }
        let builder = self.builder(target);
        let mut last_error = String::new();
        for attempt in 1..=attempts {
            match builder.connect(&target.host).await {
                Ok(session) => {
                    let session = Arc::new(session);
                    if let Ok(mut sessions) = self.sessions.lock() {
                        sessions.insert(key, session.clone());
                    }
                    return Ok(session);
                }
                Err(e) => {
                    last_error = error_chain(&e);
                    tracing::debug!(%target, attempt, error = %last_error, "ssh connect failed");
                    if attempt < attempts {
                        tokio::time::sleep(self.interval).await;
                    }
                }
            }
        }
        Err(VmmsError::Backend(format!(
            "cannot reach {target} over SSH ({attempts} attempt{}): {last_error}",
            if attempts == 1 { "" } else { "s" }
        )))
    }

    fn builder(&self, target: &SshTarget) -> SessionBuilder {
        let mut builder = SessionBuilder::default();
        builder
            .user(target.user.clone())
            .port(target.port)
            .connect_timeout(CONNECT_TIMEOUT)
            .server_alive_interval(Duration::from_secs(15))
            .control_directory(self.private_dir.path())
            .known_hosts_check(self.known_hosts.clone());
        if let Some(idle) = std::num::NonZeroUsize::new(MASTER_IDLE_SECS) {
            builder.control_persist(ControlPersist::IdleFor(idle));
        }
        if let Some(key) = &target.key {
            builder.keyfile(key);
        }
        if let Some(file) = &self.config_file {
            builder.config_file(file);
        }
        if !self.own_known_hosts_file {
            builder.user_known_hosts_file(self.known_hosts_path(target));
        }
        builder
    }

    /// The private known-hosts file of one VM.
    fn known_hosts_path(&self, target: &SshTarget) -> PathBuf {
        let name: String = format!("{}_{}", target.host, target.port)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.private_dir.path().join(format!("known_hosts-{name}"))
    }

    /// Runs a shell command; an exit status other than 0 is an error naming `what`.
    async fn run_checked(
        &self,
        session: &Session,
        target: &SshTarget,
        command: &str,
        what: &str,
    ) -> Result<(), VmmsError> {
        let output = session
            .shell(command)
            .output()
            .await
            .map_err(|e| ssh_error(target, what, &e))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(VmmsError::Backend(format!(
                "{target}: {what} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }

    /// Streams one input file into `~/autolab/<dest_file>`.
    async fn send_file(
        &self,
        session: &Session,
        target: &SshTarget,
        input: &InputFile,
    ) -> Result<(), VmmsError> {
        let mut source = tokio::fs::File::open(&input.local_file)
            .await
            .map_err(|e| VmmsError::Io(format!("cannot read input {}: {e}", input.local_file)))?;
        let what = format!("copying {} in", input.dest_file);
        let mut child = session
            .shell(format!(
                "cat > {GRADING_DIR}/{}",
                shell_quote(&input.dest_file)
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .await
            .map_err(|e| ssh_error(target, &what, &e))?;
        let mut stdin = child
            .stdin()
            .take()
            .ok_or_else(|| VmmsError::Backend(format!("{target}: no pipe for {what}")))?;
        let sent = tokio::io::copy(&mut source, &mut stdin).await;
        // Closing stdin is what tells `cat` the file is complete.
        let closed = stdin.shutdown().await;
        drop(stdin);
        let output = child
            .wait_with_output()
            .await
            .map_err(|e| ssh_error(target, &what, &e))?;
        if !output.status.success() {
            return Err(VmmsError::Backend(format!(
                "{target}: {what} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        sent.map_err(|e| VmmsError::Backend(format!("{target}: {what}: {e}")))?;
        closed.map_err(|e| VmmsError::Backend(format!("{target}: {what}: {e}")))?;
        Ok(())
    }
}

impl Drop for SshRunner {
    fn drop(&mut self) {
        // Close the masters while their control sockets exist: the private directory goes
        // with the fields, and a master it loses only exits when idle.
        let sessions = self
            .sessions
            .get_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        drop(sessions);
    }
}

/// `ssh.options`, split into what the builder sets itself and what goes in the `-F` file.
struct SshOptions {
    known_hosts: KnownHosts,
    known_hosts_file: bool,
    passed: Vec<String>,
}

impl SshOptions {
    fn parse(options: &[String]) -> Result<Self, VmmsError> {
        let mut parsed = SshOptions {
            known_hosts: KnownHosts::Add,
            known_hosts_file: false,
            passed: Vec::new(),
        };
        for option in options {
            let bad = |why: &str| VmmsError::Backend(format!("ssh.options: {option:?} {why}"));
            if option.contains(['\n', '\r', '\0']) {
                return Err(bad("must be one line"));
            }
            let (key, value) = option
                .split_once('=')
                .or_else(|| option.trim().split_once(char::is_whitespace))
                .ok_or_else(|| bad("is not Key=Value"))?;
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() || value.is_empty() {
                return Err(bad("is not Key=Value"));
            }
            if key.eq_ignore_ascii_case("StrictHostKeyChecking") {
                // The crate passes this one on the command line, which beats any file.
                parsed.known_hosts = match value.to_ascii_lowercase().as_str() {
                    "yes" | "ask" => KnownHosts::Strict,
                    "accept-new" => KnownHosts::Add,
                    "no" | "off" => KnownHosts::Accept,
                    _ => return Err(bad("expects yes, accept-new or no")),
                };
                continue;
            }
            if key.eq_ignore_ascii_case("UserKnownHostsFile") {
                parsed.known_hosts_file = true;
            }
            parsed.passed.push(format!("{key}={value}"));
        }
        Ok(parsed)
    }
}

/// A destination name must be one plain file name inside the grading directory.
fn check_dest_name(name: &str) -> Result<(), VmmsError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0', '\n']) {
        return Err(VmmsError::Io(format!(
            "input file name {name:?} is not a plain file name"
        )));
    }
    Ok(())
}

/// Opens (creating or truncating) the host-side output file, refusing a symbolic link.
fn open_output(dest: &Path) -> Result<std::fs::File, VmmsError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dest)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                VmmsError::Io(format!(
                    "refusing to write the output through a symbolic link: {}",
                    dest.display()
                ))
            } else {
                VmmsError::Io(format!("cannot write the output {}: {e}", dest.display()))
            }
        })
}

/// Single-quotes a word for a POSIX shell unless it is plainly safe.
pub fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn ssh_error(target: &SshTarget, what: &str, e: &openssh::Error) -> VmmsError {
    VmmsError::Backend(format!("{target}: {what}: {}", error_chain(e)))
}

/// An error and its causes on one line (openssh puts ssh's own message in the source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let line = cause
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if !line.is_empty() && !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// Writes `bytes` to a new file at `path` with mode 0600, replacing what was there (never
/// through a link). Used for per-job private keys.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), VmmsError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(VmmsError::Io(format!(
                "cannot replace {}: {e}",
                path.display()
            )));
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| VmmsError::Io(format!("cannot write {}: {e}", path.display())))?;
    file.write_all(bytes)
        .map_err(|e| VmmsError::Io(format!("cannot write {}: {e}", path.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_plain_words_and_quotes_the_rest() {
        assert_eq!(shell_quote("autodriver"), "autodriver");
        assert_eq!(
            shell_quote("/usr/local/bin/autodriver"),
            "/usr/local/bin/autodriver"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(reboot)"), "'$(reboot)'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn options_split_host_key_checking_from_the_rest() {
        let parsed = SshOptions::parse(&[
            "StrictHostKeyChecking=no".into(),
            "UserKnownHostsFile /etc/tango/known_hosts".into(),
            "ProxyJump=bastion.example.edu".into(),
        ])
        .unwrap();
        assert!(matches!(parsed.known_hosts, KnownHosts::Accept));
        assert!(parsed.known_hosts_file);
        assert_eq!(
            parsed.passed,
            vec![
                "UserKnownHostsFile=/etc/tango/known_hosts".to_string(),
                "ProxyJump=bastion.example.edu".to_string()
            ]
        );
        let defaults = SshOptions::parse(&[]).unwrap();
        assert!(matches!(defaults.known_hosts, KnownHosts::Add));
        assert!(!defaults.known_hosts_file);
    }

    #[test]
    fn options_are_checked() {
        for bad in [
            "NoValue",
            "StrictHostKeyChecking=maybe",
            "A=b\nHost *",
            "=x",
        ] {
            let err = SshOptions::parse(&[bad.to_string()]).err();
            assert!(err.is_some(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn destination_names_must_be_plain() {
        for bad in ["", ".", "..", "a/b", "../x", "x\0y"] {
            assert!(check_dest_name(bad).is_err(), "{bad:?}");
        }
        for good in ["Makefile", "hello.c", "autograde.tar", "..hidden", "a b"] {
            assert!(check_dest_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn output_is_never_written_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"precious").unwrap();
        let link = dir.path().join("output.txt");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = open_output(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    }
}
