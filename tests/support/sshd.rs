//! A real sshd on loopback standing in for a VM, set up as `docs/backends.md` tells an
//! administrator to set up a VM image: a login user (Tango's `autolab`) who logs in with a
//! key only, the grading user `autograde`, and the autodriver installed set-user-ID root.
//!
//! Each [`Sshd`] is private to one test: its own port, host key, client key and login user
//! (`tvm<pid><n>`, with its home in the test's temporary directory, removed again when the
//! test ends), so tests running at once never share a home directory. The system's sshd is
//! never touched. This needs root (useradd, and sshd must run as root to log a user in); it
//! says so and fails when not root. `autograde` is created when missing and left in place
//! (other tests may be using it), as on a VM image.

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, unique};

/// The grading user the set-user-ID autodriver runs jobs as (its built-in choice).
pub const GRADING_USER: &str = "autograde";

/// A running sshd and the VM-like account behind it.
pub struct Sshd {
    pub port: u16,
    /// The login user (`ssh.user`).
    pub user: String,
    /// The login user's home: where `autolab/` and `output` appear.
    pub home: PathBuf,
    /// The private key that logs in (`ssh.key_path`).
    pub client_key: PathBuf,
    /// `<dir>/bin/autodriver` when [`Sshd::install_autodriver`] was called.
    pub autodriver: Option<PathBuf>,
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
        ensure_user(GRADING_USER, None);
        let user = login_name();
        let home = dir.path().join("home");
        fs::create_dir(&home).unwrap();
        ensure_user(&user, Some(&home));
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
            autodriver: None,
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
        let path = self.home.join(".ssh/authorized_keys");
        let mut keys = fs::read_to_string(&path).unwrap();
        keys.push_str(public_key.trim());
        keys.push('\n');
        fs::write(&path, keys).unwrap();
    }

    /// Installs `binary` as the VM's autodriver: `<dir>/bin/autodriver`, owned by root and
    /// set-user-ID, as on Tango's images. Returns its path (for `ssh.autodriver`).
    pub fn install_autodriver(&mut self, binary: &Path) -> PathBuf {
        let bin = self.dir.path().join("bin");
        fs::create_dir_all(&bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        let path = bin.join("autodriver");
        fs::copy(binary, &path).unwrap();
        chown(&path, Some(0), Some(0)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o4755)).unwrap();
        self.autodriver = Some(path.clone());
        path
    }

    /// The uid of the login user.
    pub fn uid(&self) -> u32 {
        self.uid
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
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

/// The path of a public key made from a private one (`ssh-keygen -y`).
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

/// Creates `name` unless it exists; `home` for a login user, none for the grading user.
fn ensure_user(name: &str, home: Option<&Path>) {
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
        let mut useradd = Command::new("useradd");
        match home {
            Some(home) => useradd
                .args(["--no-create-home", "--shell", "/bin/sh", "--home-dir"])
                .arg(home),
            None => useradd.args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ]),
        };
        let out = useradd.arg(name).output().expect("useradd");
        if out.status.success() {
            if home.is_some() {
                // "!" (useradd's default) is a locked account, which sshd refuses even for
                // a key; "*" is no password but not locked.
                let status = Command::new("usermod")
                    .args(["-p", "*", name])
                    .status()
                    .expect("usermod");
                assert!(status.success(), "usermod -p '*' {name}");
            }
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
