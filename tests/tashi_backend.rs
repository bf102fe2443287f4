//! The `tashiSSH` backend against a stand-in Tashi client (`tests/fixtures/tashi-client`,
//! which records its calls and answers as `tashi-client` does) and a real sshd standing in
//! for the VM. Also the SSH runner's own behaviour (connection reuse, host keys, the output
//! cap, failures), which both VM backends share.
//!
//! Needs root (see `tests/support/sshd.rs`).

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::jobs;
use support::sshd::{self, Sshd};
use tango::config::Config;
use tango::model::{InputFile, Machine};
use tango::vmms::{self, Vmms, VmmsError};

/// One test's world: an sshd as the VM, the stand-in client in a private directory.
struct Rig {
    sshd: Sshd,
    /// Holds the client symlink, its state and its call log.
    tashi_dir: PathBuf,
    config: Config,
}

impl Rig {
    fn new() -> Rig {
        let sshd = Sshd::start();
        let tashi_dir = sshd.scratch();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tashi-client");
        std::os::unix::fs::symlink(&fixture, tashi_dir.join("tashi-client")).unwrap();
        let mut config = Config::default();
        config.vmms.name = "tashiSSH".into();
        config.vmms.prefix = format!("t{}", support::unique().replace('-', ""));
        config.vmms.destroy_secs = 5.0;
        config.ssh.user = sshd.user.clone();
        config.ssh.key_path = sshd.client_key.clone();
        config.ssh.port = sshd.port;
        config.ssh.retries = 2;
        config.ssh.interval = 0.2;
        config.tashi.client = tashi_dir.join("tashi-client").display().to_string();
        // Every instance is this test's sshd.
        config.tashi.host_template = "127.0.0.1".into();
        config.tashi.images = vec!["rhel.img".into()];
        config.timeouts.copy_in = 20;
        config.timeouts.copy_out = 20;
        Rig {
            sshd,
            tashi_dir,
            config,
        }
    }

    async fn backend(&self) -> Arc<dyn Vmms> {
        vmms::open(&self.config).await.expect("open tashiSSH")
    }

    /// The client's invocations so far, each as its argv.
    fn calls(&self) -> Vec<Vec<String>> {
        fs::read_to_string(self.tashi_dir.join("tashi-calls.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Files the job sends, written into a scratch directory.
    fn inputs(&self, files: &[(&str, &[u8])]) -> Vec<InputFile> {
        let dir = self.sshd.scratch();
        files
            .iter()
            .enumerate()
            .map(|(i, (name, bytes))| {
                let local = dir.join(format!("input-{i}"));
                fs::write(&local, bytes).unwrap();
                InputFile {
                    local_file: local.display().to_string(),
                    dest_file: name.to_string(),
                }
            })
            .collect()
    }

    /// Connections sshd accepted so far.
    fn logins(&self) -> usize {
        self.sshd.log().matches("Accepted publickey").count()
    }
}

fn machine(id: u64) -> Machine {
    Machine {
        name: "rhel".into(),
        image: "rhel.img".into(),
        vmms: "tashiSSH".into(),
        cores: Some(2.0),
        memory: Some(2048),
        id: Some(id),
        owner: Some("manager-a".into()),
        ..Machine::default()
    }
}

#[tokio::test]
async fn a_vm_is_created_used_and_destroyed_through_the_client() {
    let rig = Rig::new();
    let backend = rig.backend().await;
    assert_eq!(backend.name(), "tashiSSH");
    assert_eq!(
        backend.get_images().await.unwrap(),
        vec!["rhel.img".to_string()]
    );

    let mut vm = machine(1000);
    let name = format!("{}-1000-rhel", rig.config.vmms.prefix);
    assert_eq!(backend.instance_name(&vm), name);
    backend.initialize_vm(&mut vm).await.unwrap();
    assert_eq!(vm.instance.as_deref(), Some(name.as_str()));
    assert_eq!(vm.host.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        rig.calls()[0],
        [
            "createVm", "--name", &name, "--cores", "2", "--memory", "2048", "--disks", "rhel.img"
        ]
    );

    let listed = backend.get_vms().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, Some(1000));
    assert_eq!(listed[0].name, "rhel");
    assert_eq!(listed[0].image, "rhel.img");
    assert_eq!(listed[0].instance.as_deref(), Some(name.as_str()));
    assert!(backend.exists_vm(&vm).await.unwrap());

    backend.wait_vm(&vm, Duration::from_secs(20)).await.unwrap();
    // A leftover from an earlier job on this VM must not survive copy-in.
    fs::create_dir_all(rig.sshd.home.join("autolab")).unwrap();
    fs::write(rig.sshd.home.join("autolab/stale.c"), b"old").unwrap();
    fs::write(rig.sshd.home.join("output"), b"old output").unwrap();
    for leftover in ["autolab", "autolab/stale.c", "output"] {
        let uid = rig.sshd.uid();
        std::os::unix::fs::chown(rig.sshd.home.join(leftover), Some(uid), None).unwrap();
    }
    let binary: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let inputs = rig.inputs(&[
        ("Makefile", b"autograde:\n\techo hi\n"),
        ("it's data.bin", &binary),
    ]);
    backend.copy_in(&vm, &inputs).await.unwrap();
    let autolab = rig.sshd.home.join("autolab");
    assert_eq!(
        fs::read(autolab.join("Makefile")).unwrap(),
        b"autograde:\n\techo hi\n"
    );
    assert_eq!(fs::read(autolab.join("it's data.bin")).unwrap(), binary);
    assert!(!autolab.join("stale.c").exists());
    assert!(!rig.sshd.home.join("output").exists());
    // Written by the login user, as on a VM.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(autolab.join("Makefile")).unwrap().uid(),
        rig.sshd.uid()
    );

    backend.safe_destroy_vm(&vm).await.unwrap();
    let calls = rig.calls();
    assert!(
        calls.contains(&vec![
            "destroyVm".to_string(),
            "--instance".into(),
            name.clone()
        ]),
        "{calls:?}"
    );
    assert!(backend.get_vms().await.unwrap().is_empty());
    assert!(!backend.exists_vm(&vm).await.unwrap());
    // A machine that is already gone is destroyed without calling destroyVm again.
    let before = rig.calls().len();
    backend.safe_destroy_vm(&vm).await.unwrap();
    assert!(
        !rig.calls()[before..].iter().any(|c| c[0] == "destroyVm"),
        "{:?}",
        rig.calls()
    );
}

#[tokio::test]
async fn the_steps_of_a_job_share_one_ssh_connection() {
    let rig = Rig::new();
    let backend = rig.backend().await;
    let mut vm = machine(1001);
    backend.initialize_vm(&mut vm).await.unwrap();
    backend.wait_vm(&vm, Duration::from_secs(20)).await.unwrap();
    let inputs = rig.inputs(&[("a", b"1"), ("b", b"2"), ("c", b"3")]);
    backend.copy_in(&vm, &inputs).await.unwrap();
    fs::write(rig.sshd.home.join("output"), b"done\n").unwrap();
    let out = rig.sshd.scratch().join("out");
    backend.copy_out(&vm, &out, 1000).await.unwrap();
    assert_eq!(fs::read(&out).unwrap(), b"done\n");
    assert_eq!(
        backend.get_partial_output(&vm, 100).await.unwrap(),
        b"done\n"
    );
    // wait, mkdir, three files, copy out, partial output: one login.
    assert_eq!(rig.logins(), 1, "{}", rig.sshd.log());
    backend.destroy_vm(&vm).await.unwrap();
}

#[tokio::test]
async fn copy_out_caps_the_output_and_never_follows_a_link() {
    let rig = Rig::new();
    let backend = rig.backend().await;
    let mut vm = machine(1002);
    backend.initialize_vm(&mut vm).await.unwrap();
    backend.wait_vm(&vm, Duration::from_secs(20)).await.unwrap();

    // Nothing written yet: no partial output, and copy-out says there is no output.
    assert!(
        backend
            .get_partial_output(&vm, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let out = rig.sshd.scratch().join("out");
    let err = backend.copy_out(&vm, &out, 1000).await.unwrap_err();
    assert!(err.to_string().contains("no output file"), "{err}");

    let big: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    fs::write(rig.sshd.home.join("output"), &big).unwrap();
    backend.copy_out(&vm, &out, 10_000).await.unwrap();
    let got = fs::read(&out).unwrap();
    assert_eq!(
        got.len() as u64,
        10_000 + tango::vmms::OUTPUT_SLACK,
        "cut to the cap plus the slack"
    );
    assert_eq!(got[..], big[..got.len()]);
    assert_eq!(
        backend.get_partial_output(&vm, 100).await.unwrap(),
        &big[..100]
    );

    // The destination is a link to a file we must not overwrite.
    let precious = rig.sshd.scratch().join("precious");
    fs::write(&precious, b"keep me").unwrap();
    let link = rig.sshd.scratch().join("output-link");
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    let err = backend.copy_out(&vm, &link, 10_000).await.unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(fs::read(&precious).unwrap(), b"keep me");
    backend.destroy_vm(&vm).await.unwrap();
}

#[tokio::test]
async fn an_ssh_failure_in_copy_in_is_a_clear_error_and_a_new_connection_recovers() {
    let mut rig = Rig::new();
    let backend = rig.backend().await;
    let mut vm = machine(1003);
    backend.initialize_vm(&mut vm).await.unwrap();
    backend.wait_vm(&vm, Duration::from_secs(20)).await.unwrap();
    let inputs = rig.inputs(&[("Makefile", b"all:\n")]);

    // The VM's sshd dies: the open master connection is gone with it.
    rig.sshd.stop();
    let started = Instant::now();
    let err = backend.copy_in(&vm, &inputs).await.unwrap_err();
    assert!(matches!(err, VmmsError::Backend(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("cannot reach"), "{message}");
    assert!(message.contains("2 attempts"), "{message}");
    assert!(
        message.contains(&format!("127.0.0.1:{}", rig.sshd.port)),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "gave up in {:?}",
        started.elapsed()
    );

    // It comes back: the next step connects afresh.
    rig.sshd.restart();
    backend.copy_in(&vm, &inputs).await.unwrap();
    assert!(rig.sshd.home.join("autolab/Makefile").exists());
    backend.destroy_vm(&vm).await.unwrap();
}

#[tokio::test]
async fn wait_vm_gives_up_at_its_deadline_when_ssh_never_answers() {
    let mut rig = Rig::new();
    rig.sshd.stop();
    let backend = rig.backend().await;
    let mut vm = machine(1004);
    backend.initialize_vm(&mut vm).await.unwrap();
    let started = Instant::now();
    let err = backend
        .wait_vm(&vm, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VmmsError::Timeout {
                step: "wait_vm",
                secs: 2
            }
        ),
        "{err:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    backend.safe_destroy_vm(&vm).await.unwrap();
}

#[tokio::test]
async fn host_keys_are_checked_when_the_configuration_asks() {
    let mut rig = Rig::new();
    let known = rig.sshd.scratch().join("known_hosts");
    fs::write(&known, format!("{}\n", rig.sshd.known_hosts_line())).unwrap();
    rig.config.ssh.options = vec![
        "StrictHostKeyChecking=yes".into(),
        format!("UserKnownHostsFile={}", known.display()),
    ];
    let backend = rig.backend().await;
    let mut vm = machine(1005);
    backend.initialize_vm(&mut vm).await.unwrap();
    backend.wait_vm(&vm, Duration::from_secs(20)).await.unwrap();
    backend.destroy_vm(&vm).await.unwrap();

    // Another key on file for this address: refused, and the error says why.
    let other = rig.sshd.scratch().join("other");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(status.success());
    let other_key = fs::read_to_string(other.with_extension("pub")).unwrap();
    fs::write(
        &known,
        format!("[127.0.0.1]:{} {}\n", rig.sshd.port, other_key.trim()),
    )
    .unwrap();
    let backend = rig.backend().await;
    let mut vm = machine(1006);
    backend.initialize_vm(&mut vm).await.unwrap();
    let inputs = rig.inputs(&[("Makefile", b"all:\n")]);
    let err = backend.copy_in(&vm, &inputs).await.unwrap_err().to_string();
    assert!(
        err.contains("Host key verification failed")
            || err.contains("HOST IDENTIFICATION HAS CHANGED"),
        "{err}"
    );
    backend.destroy_vm(&vm).await.unwrap();
}

#[tokio::test]
async fn a_refusal_by_tashi_is_reported_with_its_message() {
    let rig = Rig::new();
    fs::write(
        rig.tashi_dir.join("fail-createVm"),
        "no capacity left on any host",
    )
    .unwrap();
    let backend = rig.backend().await;
    let mut vm = machine(1007);
    let err = backend
        .initialize_vm(&mut vm)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("createVm"), "{err}");
    assert!(err.contains("no capacity left on any host"), "{err}");
    assert!(vm.instance.is_none());

    // Destroying an instance Tashi does not know is an error too (safe_destroy skips it).
    fs::remove_file(rig.tashi_dir.join("fail-createVm")).unwrap();
    let err = backend.destroy_vm(&vm).await.unwrap_err().to_string();
    assert!(err.contains("Unknown instance"), "{err}");
    backend.safe_destroy_vm(&vm).await.unwrap();
}

#[tokio::test]
async fn a_missing_input_file_is_an_io_error() {
    let rig = Rig::new();
    let backend = rig.backend().await;
    let mut vm = machine(1008);
    backend.initialize_vm(&mut vm).await.unwrap();
    let inputs = vec![InputFile {
        local_file: rig.sshd.scratch().join("absent").display().to_string(),
        dest_file: "Makefile".into(),
    }];
    let err = backend.copy_in(&vm, &inputs).await.unwrap_err();
    assert!(matches!(err, VmmsError::Io(_)), "{err:?}");
    // And a destination that is not a plain name never reaches the VM.
    let inputs = rig.inputs(&[("../escape", b"x")]);
    let err = backend.copy_in(&vm, &inputs).await.unwrap_err();
    assert!(err.to_string().contains("not a plain file name"), "{err}");
    backend.destroy_vm(&vm).await.unwrap();
}

/// Tango's example jobs, one after another on one VM (as a pool reuses it), through the
/// autodriver installed on the "VM" as docs/backends.md says (run through sudo).
#[tokio::test]
async fn the_example_jobs_run_on_a_tashi_vm() {
    let mut rig = Rig::new();
    let autodriver = rig.sshd.install_autodriver(&jobs::autodriver_binary());
    rig.config.ssh.autodriver = autodriver;
    let backend = rig.backend().await;
    let mut vm = machine(1009);
    backend.initialize_vm(&mut vm).await.unwrap();
    backend.wait_vm(&vm, Duration::from_secs(20)).await.unwrap();
    let scratch = rig.sshd.scratch();
    for (name, timeout) in [("hello", 60), ("score", 60), ("forever", 3), ("flood", 60)] {
        let job = jobs::job(name);
        let run = sshd::run_example_job(backend.as_ref(), &vm, &job, timeout, &scratch).await;
        assert!(run.output.len() as u64 <= run.limits.osize + 4096, "{name}");
    }
    backend.safe_destroy_vm(&vm).await.unwrap();
}

/// While a job runs, getPartialOutput either returns what it has printed so far or, with an
/// autodriver run as root through sudo (whose live log only root may read), says plainly
/// that partial output is not available here; it never fails in another way, never blocks
/// the job, and the job's final output is whole.
#[tokio::test]
async fn partial_output_while_the_job_runs_is_its_log_or_a_clear_refusal() {
    let mut rig = Rig::new();
    let autodriver = rig.sshd.install_autodriver(&jobs::autodriver_binary());
    rig.config.ssh.autodriver = autodriver;
    let backend = rig.backend().await;
    let mut vm = machine(1010);
    backend.initialize_vm(&mut vm).await.unwrap();
    backend.wait_vm(&vm, Duration::from_secs(20)).await.unwrap();
    let job = jobs::job("partial");
    let scratch = rig.sshd.scratch();
    let running = {
        let backend = backend.clone();
        let vm = vm.clone();
        let job = job.clone();
        tokio::spawn(async move {
            sshd::run_example_job(backend.as_ref(), &vm, &job, 60, &scratch).await;
        })
    };
    // Wait until the autodriver has made its log.
    let log = rig.sshd.home.join("output.log");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !log.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(log.exists(), "the autodriver made no live log");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!running.is_finished(), "the job ended too soon");
    match backend.get_partial_output(&vm, 100_000).await {
        Ok(seen) => {
            for want in &job.expect.partial_output_contains_while_running {
                assert!(
                    jobs::contains(&seen, want.as_bytes()),
                    "partial output lacks {want:?}: {}",
                    String::from_utf8_lossy(&seen)
                );
            }
        }
        Err(VmmsError::Unsupported(message)) => {
            assert!(message.contains("output.log"), "{message}");
            // Only when the log really is private to root.
            use std::os::unix::fs::MetadataExt;
            let meta = fs::metadata(&log).unwrap();
            assert!(meta.uid() == 0 && meta.mode() & 0o044 == 0, "{meta:?}");
        }
        Err(other) => panic!("partial output failed: {other}"),
    }
    running.await.unwrap();
    backend.safe_destroy_vm(&vm).await.unwrap();
}
