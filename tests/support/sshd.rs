//! A real sshd on loopback standing in for a VM, set up as `docs/backends.md` tells an
//! administrator to set up a VM image: a login user (Tango's `autolab`) who logs in with a
//! key only, and the autodriver, owned by root, which the login user may run as root through
//! `sudo -n` (and nothing else); the autodriver then runs the job as an unprivileged user.
//!
//! Each [`Sshd`] is private to one test: its own port, host key, client key, login user
//! (`tvm<pid>x<n>`, its home in the test's temporary directory) and sudoers rule, all removed
//! when the test ends, so tests running at once never share a home directory. Many "VMs"
//! share this host, so the autodriver is told a grading uid of the test's own (`--uid`,
//! `--gid`): the autodriver kills every process and removes every file of the job's uid, and
//! two tests must not share one. On a real VM, one job at a time, the default (`autograde`)
//! is what to use. The system's sshd is never touched.
//!
//! This needs root (useradd, a sudoers rule, and sshd must run as root to log a user in) and
//! the Debian packages openssh-server and sudo; it says so and fails when they are missing.

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, unique};

/// A running sshd and the VM-like account behind it.
pub struct Sshd {
    pub port: u16,
    /// The login user (`ssh.user`).
    pub user: String,
    /// The login user's home: where `autolab/` and `output` appear.
    pub home: PathBuf,
    /// The private key that logs in (`ssh.key_path`).
    pub client_key: PathBuf,
    /// The sudoers rule made by [`Sshd::install_autodriver`], removed on drop.
    sudoers: Option<PathBuf>,
    /// The `authorized_keys` options every key gets (a forced command after
    /// [`Sshd::break_copy_in`]), empty before.
    key_options: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    uid: u32,
}

impl Sshd {
    /// Starts an sshd for a fresh login user.
    pub fn start() -> Sshd {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("tango-sshd-")
            .tempdir()
            .expect("temp dir");
        // The login user must reach its home below this directory.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let user = login_name();
        let home = dir.path().join("home");
        fs::create_dir(&home).unwrap();
        ensure_user(&user, &home);
        let uid = id_of(&user, "-u");
        let gid = id_of(&user, "-g");
        chown(&home, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).unwrap();

        let host_key = dir.path().join("host_ed25519");
        let client_key = dir.path().join("client_ed25519");
        keygen(&host_key);
        keygen(&client_key);
        let ssh_dir = home.join(".ssh");
        fs::create_dir(&ssh_dir).unwrap();
        let public = fs::read_to_string(client_key.with_extension("pub")).unwrap();
        fs::write(ssh_dir.join("authorized_keys"), public).unwrap();
        for path in [&ssh_dir, &ssh_dir.join("authorized_keys")] {
            chown(path, Some(uid), Some(gid)).unwrap();
        }
        fs::set_permissions(&ssh_dir, fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(
            ssh_dir.join("authorized_keys"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();

        // sshd insists on its privilege-separation directory.
        fs::create_dir_all("/run/sshd").unwrap();
        let port = free_port();
        let config = dir.path().join("sshd_config");
        fs::write(
            &config,
            format!(
                "Port {port}\n\
                 ListenAddress 127.0.0.1\n\
                 HostKey {host_key}\n\
                 PidFile {pid}\n\
                 AuthorizedKeysFile .ssh/authorized_keys\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 PermitRootLogin no\n\
                 AllowUsers {user}\n\
                 StrictModes yes\n\
                 MaxSessions 64\n\
                 MaxStartups 64\n\
                 LogLevel VERBOSE\n",
                host_key = host_key.display(),
                pid = dir.path().join("sshd.pid").display(),
            ),
        )
        .unwrap();
        let mut sshd = Sshd {
            port,
            user,
            home,
            client_key,
            sudoers: None,
            key_options: String::new(),
            dir,
            child: None,
            uid,
        };
        sshd.spawn();
        sshd
    }

    fn spawn(&mut self) {
        let log = fs::File::create(self.dir.path().join("sshd.log")).unwrap();
        let mut command = Command::new("/usr/sbin/sshd");
        command
            .args(["-D", "-e", "-f"])
            .arg(self.dir.path().join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // Dies with the test thread that started it, even if the test is killed.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .expect("/usr/sbin/sshd is needed (Debian package openssh-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("sshd exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops sshd and every connection it has open, as when a VM dies (the account stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // sshd gives each connection its own session, so its process group is not
            // enough: end every descendant, then sshd.
            for pid in descendants(child.id()) {
                // SAFETY: signals a process this sshd started.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts sshd again on the same port, after [`Sshd::stop`].
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// What sshd logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// A `known_hosts` line for this sshd's host key.
    pub fn known_hosts_line(&self) -> String {
        let key = fs::read_to_string(self.dir.path().join("host_ed25519.pub")).unwrap();
        format!("[127.0.0.1]:{} {}", self.port, key.trim())
    }

    /// A directory private to this test (removed with it).
    pub fn scratch(&self) -> PathBuf {
        let path = self.dir.path().join(format!("scratch-{}", unique()));
        fs::create_dir(&path).unwrap();
        path
    }

    /// Lets `public_key` (an OpenSSH public key line) log in too, as cloud-init does with
    /// an instance's key pair.
    pub fn authorize(&self, public_key: &str) {
        append_key(&self.home, &self.key_options, public_key);
    }

    /// Authorizes every private key (`*.pem`) that appears in `dir` from now on, as
    /// cloud-init gives an instance the public half of the key pair it was launched with:
    /// for per-job key pairs made while a daemon runs. Stops when the watcher is dropped.
    pub fn authorize_keys_appearing_in(&self, dir: &Path) -> KeyWatcher {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let (home, options, dir) = (
            self.home.clone(),
            self.key_options.clone(),
            dir.to_path_buf(),
        );
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = std::collections::HashSet::new();
            while !stopped.load(Ordering::Relaxed) {
                for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let path = entry.path();
                    if path.extension().is_some_and(|e| e == "pem") && seen.insert(path.clone()) {
                        // The key may be half written: read it again next round.
                        match try_public_key_of(&path) {
                            Some(public) => append_key(&home, &options, &public),
                            None => {
                                seen.remove(&path);
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        KeyWatcher {
            stop,
            thread: Some(thread),
        }
    }

    /// Makes the next `times` copy-ins (Tango's `rm -rf autolab … && mkdir autolab`, the first
    /// command of a copy-in) lose their SSH connection, as when a VM's network or sshd dies
    /// under a job: every key gets a forced command that, for that command while failures
    /// remain, kills the sshd process serving the connection. Other commands run as usual.
    pub fn break_copy_in(&mut self, times: u32) {
        let counter = self.dir.path().join("copy-in-failures");
        fs::write(&counter, format!("{times}\n")).unwrap();
        chown(&counter, Some(self.uid), None).unwrap();
        let gate = self.dir.path().join("gate.sh");
        fs::write(
            &gate,
            format!(
                r#"#!/bin/sh
# Forced command (authorized_keys command=): a copy-in loses its connection while the
# counter is above zero; everything else runs as sshd would run it.
counter={counter}
case "$SSH_ORIGINAL_COMMAND" in
  *"mkdir autolab"*)
    n=$(cat "$counter" 2>/dev/null || echo 0)
    if [ "$n" -gt 0 ]; then
      echo $((n - 1)) > "$counter"
      pid=$$
      while [ "$pid" -gt 1 ]; do
        case "$(cat /proc/$pid/comm)" in
          sshd*) kill -9 "$pid"; exit 255;;
        esac
        pid=$(cut -d' ' -f4 /proc/$pid/stat)
      done
      exit 255
    fi;;
esac
exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
"#,
                counter = counter.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&gate, fs::Permissions::from_mode(0o755)).unwrap();
        self.key_options = format!("command=\"{}\" ", gate.display());
        // Every key logs in through the gate from now on.
        let path = self.home.join(".ssh/authorized_keys");
        let keys = fs::read_to_string(&path).unwrap();
        let gated: String = keys
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("{}{}\n", self.key_options, l))
            .collect();
        fs::write(&path, gated).unwrap();
    }

    /// Copy-in failures still to come (see [`Sshd::break_copy_in`]).
    pub fn copy_in_failures_left(&self) -> u32 {
        fs::read_to_string(self.dir.path().join("copy-in-failures"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Installs `binary` as the VM's autodriver (`<dir>/bin/autodriver`, owned by root) and
    /// lets the login user run it, and only it, as root without a password. Returns the
    /// command for `ssh.autodriver`: `sudo -n <path> --uid U --gid U`, with a grading uid no
    /// other test uses.
    pub fn install_autodriver(&mut self, binary: &Path) -> String {
        assert!(
            Path::new("/usr/bin/sudo").exists(),
            "sudo is needed for the VM tests (Debian package sudo; scripts/test.sh installs it)"
        );
        let bin = self.dir.path().join("bin");
        fs::create_dir_all(&bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        let path = bin.join("autodriver");
        fs::copy(binary, &path).unwrap();
        chown(&path, Some(0), Some(0)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        // sudo ignores files in sudoers.d whose names hold a dot.
        let rule = PathBuf::from(format!("/etc/sudoers.d/tango-test-{}", self.user));
        fs::write(
            &rule,
            format!("{} ALL=(root) NOPASSWD: {}\n", self.user, path.display()),
        )
        .unwrap();
        fs::set_permissions(&rule, fs::Permissions::from_mode(0o440)).unwrap();
        let check = Command::new("visudo")
            .args(["-c", "-q", "-f"])
            .arg(&rule)
            .status()
            .expect("visudo");
        assert!(
            check.success(),
            "the sudoers rule {} is invalid",
            rule.display()
        );
        self.sudoers = Some(rule);
        let uid = grading_uid();
        format!("sudo -n {} --uid {uid} --gid {uid}", path.display())
    }

    /// The uid of the login user.
    pub fn uid(&self) -> u32 {
        self.uid
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
        if let Some(rule) = self.sudoers.take() {
            let _ = fs::remove_file(rule);
        }
        // The login user's processes end with their connections; give them a moment.
        for _ in 0..50 {
            let status = Command::new("userdel")
                .arg(&self.user)
                .stderr(Stdio::null())
                .status();
            if matches!(status, Ok(s) if s.success() || s.code() == Some(6)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Watches a directory for private keys (see [`Sshd::authorize_keys_appearing_in`]).
pub struct KeyWatcher {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for KeyWatcher {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Appends one key line, with `options`, to the login user's `authorized_keys`.
fn append_key(home: &Path, options: &str, public_key: &str) {
    let path = home.join(".ssh/authorized_keys");
    let mut keys = fs::read_to_string(&path).unwrap();
    keys.push_str(options);
    keys.push_str(public_key.trim());
    keys.push('\n');
    fs::write(&path, keys).unwrap();
}

/// Every process below `root`, from /proc.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold spaces, so read after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// The public key of a private one, or `None` when ssh-keygen cannot read it (yet).
fn try_public_key_of(private_key: &Path) -> Option<String> {
    let out = Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(private_key)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()
}

/// The public key made from a private one (`ssh-keygen -y`).
pub fn public_key_of(private_key: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(private_key)
        .output()
        .expect("ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen -y: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn require_root() {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the VM backend tests need root: they add a login user (useradd) and run sshd as \
         root on a loopback port, as a VM would"
    );
}

fn login_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "tvm{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A grading uid (and gid) no other test uses, in or out of this process: not in
/// /etc/passwd, above every real id, and apart from the range tests/autodriver.rs uses.
fn grading_uid() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    2_000_000_000 + (std::process::id() % 100_000) * 100 + N.fetch_add(1, Ordering::Relaxed) % 100
}

/// Creates the login user `name` with its home at `home`, unless it exists.
fn ensure_user(name: &str, home: &Path) {
    for _ in 0..100 {
        if Command::new("id")
            .arg(name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return;
        }
        let out = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/bin/sh", "--home-dir"])
            .arg(home)
            // "!" (useradd's default) is a locked account, which sshd refuses even for a
            // key; "*" is no password but not locked.
            .args(["--password", "*"])
            .arg(name)
            .output()
            .expect("useradd");
        if out.status.success() {
            return;
        }
        // Another test holds the password-file lock, or made the same user first.
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("useradd {name} kept failing");
}

fn id_of(user: &str, flag: &str) -> u32 {
    let out = Command::new("id").args([flag, user]).output().expect("id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("numeric id")
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "tango-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (Debian package openssh-client)");
    assert!(status.success(), "ssh-keygen failed");
}

/// What running one example job on a VM gave.
pub struct JobRun {
    pub outcome: tango::vmms::RunOutcome,
    pub output: Vec<u8>,
    pub limits: super::jobs::Limits,
}

/// Runs an example job on `vm` the way the worker does (copy in, run, copy out) and checks
/// the result against the job's `expect` file. `timeout` is the job's timeout in seconds.
pub async fn run_example_job(
    backend: &dyn tango::vmms::Vmms,
    vm: &tango::model::Machine,
    job: &super::jobs::Job,
    timeout: u64,
    scratch: &Path,
) -> JobRun {
    use tango::vmms::{RunOutcome, RunSpec};
    let inputs: Vec<tango::model::InputFile> = job
        .input_files()
        .iter()
        .map(|path| tango::model::InputFile {
            local_file: path.display().to_string(),
            dest_file: path.file_name().unwrap().to_string_lossy().into_owned(),
        })
        .collect();
    backend
        .copy_in(vm, &inputs)
        .await
        .unwrap_or_else(|e| panic!("{}: copy in: {e}", job.name));
    let spec = RunSpec {
        job_id: 1,
        job_name: job.name.clone(),
        timeout,
        max_output: 1_024_000,
        ulimit_user_proc: 100,
        ulimit_file_size: 104_857_600,
        disable_network: false,
        kill_after: tango::vmms::run::kill_after(timeout, 30),
    };
    let outcome = backend
        .run_job(vm, &spec)
        .await
        .unwrap_or_else(|e| panic!("{}: run: {e}", job.name));
    let dest = scratch.join(format!("{}.out", job.name));
    backend
        .copy_out(vm, &dest, spec.max_output)
        .await
        .unwrap_or_else(|e| panic!("{}: copy out: {e}", job.name));
    let output = fs::read(&dest).unwrap();
    let limits = super::jobs::Limits {
        osize: spec.max_output,
        fsize: spec.ulimit_file_size,
        network_disabled: false,
    };
    let code = match outcome {
        RunOutcome::Exited(code) => code,
        RunOutcome::Killed => panic!("{}: the autodriver overran its own timeout", job.name),
    };
    assert!(
        job.expect.allows_autodriver_exit(code),
        "{}: autodriver exited {code}; output:\n{}",
        job.name,
        String::from_utf8_lossy(&output[..output.len().min(2000)])
    );
    if let Err(e) = job.expect.check_output(&output, &limits) {
        panic!("{}: {e}", job.name);
    }
    JobRun {
        outcome,
        output,
        limits,
    }
}
