//! The `local` backend driven through the `Vmms` trait, as the worker drives it: the shared
//! jobs, the network switch, partial output, concurrent machines, and the host-side guards.
//!
//! Needs root (per-machine uids, network namespaces, and the checks that no process of a
//! machine's uid is left).

mod support;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::jobs::{self, Job, Limits};
use tango::config::Config;
use tango::host::procs;
use tango::model::{InputFile, Machine};
use tango::vmms::local::LocalVmms;
use tango::vmms::{RunOutcome, RunSpec, Vmms, VmmsError};

const MIB: u64 = 1024 * 1024;

fn require_root() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests need root: the local backend gives each machine its own uid and \
         network namespace (run `cargo test --test local_backend` as root)"
    );
}

/// A backend on a private work directory and a uid range of its own.
struct Backend {
    vmms: LocalVmms,
    config: Config,
    _work: tempfile::TempDir,
    scratch: tempfile::TempDir,
}

fn backend_with(adjust: impl FnOnce(&mut Config)) -> Backend {
    require_root();
    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let mut config = Config::default();
    config.vmms.name = "local".into();
    config.vmms.prefix = "ltest".into();
    config.local.work_dir = work.path().join("machines");
    config.local.autodriver = jobs::autodriver_binary();
    // Away from tests/autodriver.rs's range, and from other test processes'.
    config.local.uid_base = 2_120_000_000 + (std::process::id() % 100_000) * 100;
    config.local.uid_count = 100;
    adjust(&mut config);
    config.validate().expect("a valid test config");
    let vmms = LocalVmms::new(&config).expect("the local backend");
    Backend {
        vmms,
        config,
        _work: work,
        scratch: tempfile::tempdir().unwrap(),
    }
}

fn backend() -> Backend {
    backend_with(|_| {})
}

fn machine(id: u64) -> Machine {
    Machine {
        name: "autograding_image".into(),
        image: "autograding_image".into(),
        vmms: "local".into(),
        id: Some(id),
        owner: Some("test-manager".into()),
        ..Machine::default()
    }
}

fn next_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(1000);
    N.fetch_add(1, Ordering::Relaxed)
}

fn inputs_of(job: &Job) -> Vec<InputFile> {
    job.input_files()
        .into_iter()
        .map(|p| InputFile {
            dest_file: p.file_name().unwrap().to_string_lossy().into_owned(),
            local_file: p.to_string_lossy().into_owned(),
        })
        .collect()
}

fn spec(config: &Config, timeout: u64, disable_network: bool) -> RunSpec {
    RunSpec {
        job_id: 1,
        job_name: "test".into(),
        timeout,
        max_output: config.limits.max_output_file_size,
        ulimit_user_proc: config.limits.ulimit_user_proc,
        ulimit_file_size: config.limits.ulimit_file_size,
        disable_network,
        kill_after: tango::vmms::run::kill_after(timeout, config.timeouts.kill_margin_secs),
    }
}

/// A job's run through every step of the trait.
struct Ran {
    outcome: RunOutcome,
    output: Vec<u8>,
    uid: u32,
    elapsed: Duration,
}

impl Backend {
    async fn ready_machine(&self) -> Machine {
        let mut vm = machine(next_id());
        self.vmms.initialize_vm(&mut vm).await.expect("initialize");
        self.vmms
            .wait_vm(&vm, Duration::from_secs(5))
            .await
            .expect("wait");
        vm
    }

    fn dest(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    /// Runs `job` on a fresh machine, copies the output out, destroys the machine, and
    /// checks that nothing of its uid is left.
    async fn run(&self, job: &Job, spec: &RunSpec) -> Ran {
        let vm = self.ready_machine().await;
        let uid = self.vmms.machine_uid(&vm).unwrap().expect("a uid (root)");
        self.vmms
            .copy_in(&vm, &inputs_of(job))
            .await
            .expect("copy in");
        let started = Instant::now();
        let outcome = self.vmms.run_job(&vm, spec).await.expect("run");
        let elapsed = started.elapsed();
        let dest = self.dest(&format!("{}-{}.out", job.name, vm.id.unwrap()));
        self.vmms
            .copy_out(&vm, &dest, spec.max_output)
            .await
            .expect("copy out");
        self.vmms.destroy_vm(&vm).await.expect("destroy");
        assert!(!self.vmms.exists_vm(&vm).await.unwrap());
        assert_no_process_of(uid);
        Ran {
            outcome,
            output: std::fs::read(dest).unwrap(),
            uid,
            elapsed,
        }
    }

    /// Runs a shared job and checks it against its `expect` file.
    async fn run_shared(&self, name: &str, spec: &RunSpec) -> Ran {
        let job = jobs::job(name);
        let ran = self.run(&job, spec).await;
        let RunOutcome::Exited(code) = ran.outcome else {
            panic!("{name}: the host guard killed the autodriver");
        };
        assert!(
            job.expect.allows_autodriver_exit(code),
            "{name}: autodriver exit {code}; output:\n{}",
            String::from_utf8_lossy(&ran.output)
        );
        let limits = Limits {
            osize: spec.max_output,
            fsize: spec.ulimit_file_size,
            network_disabled: spec.disable_network,
        };
        if let Err(e) = job.expect.check_output(&ran.output, &limits) {
            panic!("{name}: {e}");
        }
        ran
    }
}

fn assert_no_process_of(uid: u32) {
    let left = procs::live_processes_of(uid).unwrap();
    assert!(
        left.is_empty(),
        "processes of uid {uid} were left: {left:?}"
    );
}

// ---- the shared jobs ----

#[test]
fn every_shared_job_is_tested() {
    let names: Vec<String> = jobs::all_jobs().into_iter().map(|j| j.name).collect();
    let tested = [
        "bigfile", "binary", "files", "flood", "forever", "forkbomb", "hello", "memhog", "network",
        "nonzero", "partial", "score",
    ];
    assert_eq!(
        names, tested,
        "a shared job has no test in tests/local_backend.rs"
    );
}

#[tokio::test]
async fn hello() {
    let b = backend();
    let ran = b.run_shared("hello", &spec(&b.config, 20, false)).await;
    assert_eq!(ran.outcome, RunOutcome::Exited(0));
}

#[tokio::test]
async fn score() {
    let b = backend();
    b.run_shared("score", &spec(&b.config, 20, false)).await;
}

#[tokio::test]
async fn nonzero() {
    let b = backend();
    let ran = b.run_shared("nonzero", &spec(&b.config, 20, false)).await;
    assert_eq!(
        ran.outcome,
        RunOutcome::Exited(0),
        "a failed make is a normal end"
    );
}

#[tokio::test]
async fn binary() {
    let b = backend();
    let ran = b.run_shared("binary", &spec(&b.config, 20, false)).await;
    assert!(jobs::contains(&ran.output, b"\xff\xfe"));
}

#[tokio::test]
async fn files() {
    let b = backend();
    b.run_shared("files", &spec(&b.config, 20, false)).await;
}

#[tokio::test]
async fn flood() {
    let b = backend();
    let mut s = spec(&b.config, 60, false);
    s.max_output = 100 * 1024;
    let ran = b.run_shared("flood", &s).await;
    assert!(ran.output.ends_with(b"last line of the flood\n"));
}

#[tokio::test]
async fn bigfile() {
    let b = backend();
    b.run_shared("bigfile", &spec(&b.config, 60, false)).await;
}

#[tokio::test]
async fn forever() {
    let b = backend();
    let ran = b.run_shared("forever", &spec(&b.config, 3, false)).await;
    assert_eq!(ran.outcome, RunOutcome::Exited(2));
    assert!(ran.elapsed >= Duration::from_secs(3));
    assert!(ran.elapsed < Duration::from_secs(30), "{:?}", ran.elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forkbomb() {
    let b = backend();
    // The daemon's runtime must keep answering while the bomb goes off.
    let ticker = tokio::spawn(async {
        let mut ticks = 0u32;
        let mut worst = Duration::ZERO;
        loop {
            let at = Instant::now();
            tokio::time::sleep(Duration::from_millis(100)).await;
            worst = worst.max(at.elapsed());
            ticks += 1;
            if ticks.is_multiple_of(10) {
                let status = tokio::process::Command::new("true").status().await;
                assert!(
                    status.is_ok_and(|s| s.success()),
                    "could not start a process"
                );
            }
            if ticks >= 60 {
                return worst;
            }
        }
    });
    let ran = b.run_shared("forkbomb", &spec(&b.config, 10, false)).await;
    let worst = ticker.await.expect("the runtime kept ticking");
    assert!(
        worst < Duration::from_secs(5),
        "the runtime stalled {worst:?}"
    );
    assert!(ran.elapsed < Duration::from_secs(40), "{:?}", ran.elapsed);
}

#[tokio::test]
async fn memhog() {
    let b = backend_with(|c| c.limits.memory_mb = 256);
    b.run_shared("memhog", &spec(&b.config, 60, false)).await;
}

#[tokio::test]
async fn network_disabled_leaves_only_loopback() {
    let b = backend();
    let ran = b.run_shared("network", &spec(&b.config, 20, true)).await;
    let text = String::from_utf8_lossy(&ran.output);
    assert!(text.contains("interfaces: lo \n"), "{text}");
}

#[tokio::test]
async fn network_enabled_sees_the_hosts_interfaces() {
    let b = backend();
    let ran = b.run_shared("network", &spec(&b.config, 20, false)).await;
    let host: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let text = String::from_utf8_lossy(&ran.output);
    for name in host {
        assert!(text.contains(&name), "{name} missing from {text}");
    }
}

#[tokio::test]
async fn loopback_works_without_network() {
    let b = backend();
    let dir = tempfile::tempdir().unwrap();
    let makefile = dir.path().join("Makefile");
    // A job that talks to itself over 127.0.0.1 (tests of network code do).
    std::fs::write(
        &makefile,
        "all:\n\t@python3 -c 'import socket; s=socket.socket(); s.bind((\"127.0.0.1\", 0)); \
         s.listen(); c=socket.create_connection(s.getsockname()); print(\"loopback ok\")'\n",
    )
    .unwrap();
    let vm = b.ready_machine().await;
    b.vmms
        .copy_in(
            &vm,
            &[InputFile {
                local_file: makefile.to_string_lossy().into_owned(),
                dest_file: "Makefile".into(),
            }],
        )
        .await
        .unwrap();
    let outcome = b
        .vmms
        .run_job(&vm, &spec(&b.config, 20, true))
        .await
        .unwrap();
    let dest = b.dest("loopback.out");
    b.vmms.copy_out(&vm, &dest, 1 << 20).await.unwrap();
    b.vmms.destroy_vm(&vm).await.unwrap();
    let text = String::from_utf8_lossy(&std::fs::read(dest).unwrap()).into_owned();
    assert_eq!(outcome, RunOutcome::Exited(0), "{text}");
    assert!(text.contains("loopback ok"), "{text}");
}

#[tokio::test]
async fn partial() {
    let b = backend();
    let job = jobs::job("partial");
    let vm = b.ready_machine().await;
    b.vmms.copy_in(&vm, &inputs_of(&job)).await.unwrap();
    let s = spec(&b.config, 60, false);
    let run = b.vmms.run_job(&vm, &s);
    let watch = async {
        let deadline = Instant::now() + Duration::from_secs(15);
        for want in &job.expect.partial_output_contains_while_running {
            loop {
                let partial = b.vmms.get_partial_output(&vm, 1 << 20).await.unwrap();
                if jobs::contains(&partial, want.as_bytes()) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "partial output never showed {want:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        // Bounded by the caller's limit.
        let small = b.vmms.get_partial_output(&vm, 4).await.unwrap();
        assert_eq!(small, b"tick");
        Instant::now()
    };
    let (outcome, seen_at) = tokio::join!(run, watch);
    let done_at = Instant::now();
    assert!(
        done_at.duration_since(seen_at) > Duration::from_secs(2),
        "the partial output was read only as the job ended"
    );
    assert_eq!(outcome.unwrap(), RunOutcome::Exited(0));
    let dest = b.dest("partial.out");
    b.vmms.copy_out(&vm, &dest, s.max_output).await.unwrap();
    b.vmms.destroy_vm(&vm).await.unwrap();
    let output = std::fs::read(dest).unwrap();
    job.expect
        .check_output(&output, &Limits::default())
        .unwrap_or_else(|e| panic!("partial: {e}"));
}

// ---- machines ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_machines_do_not_kill_each_others_jobs() {
    let b = backend();
    let (slow, fast) = (jobs::job("partial"), jobs::job("forever"));
    let (slow_spec, fast_spec) = (spec(&b.config, 60, false), spec(&b.config, 3, false));
    let (a, c) = tokio::join!(b.run(&slow, &slow_spec), b.run(&fast, &fast_spec));
    assert_ne!(a.uid, c.uid, "two machines shared a uid");
    assert_eq!(c.outcome, RunOutcome::Exited(2));
    assert_eq!(a.outcome, RunOutcome::Exited(0));
    assert!(
        jobs::contains(&a.output, b"tick 20"),
        "the slow job was cut short: {}",
        String::from_utf8_lossy(&a.output)
    );
}

#[tokio::test]
async fn get_vms_lists_our_machines_with_their_owner() {
    let b = backend();
    let one = b.ready_machine().await;
    let two = b.ready_machine().await;
    // Someone else's directory in the work dir is not ours.
    std::fs::create_dir(b.vmms.work_dir().join("other-1-x")).unwrap();
    let listed = b.vmms.get_vms().await.unwrap();
    let ids: Vec<_> = listed.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![one.id, two.id]);
    assert!(
        listed
            .iter()
            .all(|m| m.owner.as_deref() == Some("test-manager"))
    );
    assert!(listed.iter().all(|m| m.instance.is_some()));
    b.vmms.destroy_vm(&one).await.unwrap();
    let listed = b.vmms.get_vms().await.unwrap();
    assert_eq!(listed.len(), 1);
    b.vmms.destroy_vm(&two).await.unwrap();
    // Destroying twice is fine.
    b.vmms.destroy_vm(&two).await.unwrap();
    assert!(b.vmms.get_vms().await.unwrap().is_empty());
    assert_eq!(
        b.vmms.get_images().await.unwrap(),
        vec!["autograding_image".to_string()]
    );
}

#[tokio::test]
async fn a_name_held_by_another_managers_machine_is_name_taken_and_left_alone() {
    let b = backend();
    // Another manager on this work directory, numbering alike, made the machine first.
    let mut theirs = Machine {
        owner: Some("other-manager".into()),
        ..machine(next_id())
    };
    b.vmms.initialize_vm(&mut theirs).await.unwrap();
    let mut ours = Machine {
        id: theirs.id,
        ..machine(0)
    };
    let taken = b.vmms.initialize_vm(&mut ours).await;
    assert!(
        matches!(&taken, Err(VmmsError::NameTaken(name)) if *name == b.vmms.instance_name(&ours)),
        "{taken:?}"
    );
    // Our cleanup of the machine we failed to make does not remove theirs.
    b.vmms.destroy_vm(&ours).await.unwrap();
    assert!(b.vmms.exists_vm(&theirs).await.unwrap());
    let listed = b.vmms.get_vms().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].owner.as_deref(), Some("other-manager"));
    // Its owner (or a sweep acting for a gone one) still can.
    b.vmms.destroy_vm(&theirs).await.unwrap();
    assert!(!b.vmms.exists_vm(&theirs).await.unwrap());
}

#[tokio::test]
async fn a_missing_machine_is_not_found() {
    let b = backend();
    let vm = machine(next_id());
    assert!(matches!(
        b.vmms.wait_vm(&vm, Duration::from_secs(1)).await,
        Err(VmmsError::NotFound(_))
    ));
    assert!(matches!(
        b.vmms.copy_in(&vm, &[]).await,
        Err(VmmsError::NotFound(_))
    ));
    assert!(!b.vmms.exists_vm(&vm).await.unwrap());
}

#[tokio::test]
async fn a_machine_is_reused_for_a_second_job_with_fresh_files() {
    let b = backend();
    let vm = b.ready_machine().await;
    for name in ["hello", "score"] {
        let job = jobs::job(name);
        b.vmms.copy_in(&vm, &inputs_of(&job)).await.unwrap();
        let s = spec(&b.config, 20, false);
        assert_eq!(
            b.vmms.run_job(&vm, &s).await.unwrap(),
            RunOutcome::Exited(0)
        );
        let dest = b.dest(&format!("reuse-{name}.out"));
        b.vmms.copy_out(&vm, &dest, s.max_output).await.unwrap();
        let output = std::fs::read(&dest).unwrap();
        job.expect
            .check_output(&output, &Limits::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if name == "score" {
            assert!(
                !jobs::contains(&output, b"greet.sh"),
                "hello's files were left"
            );
        }
    }
    b.vmms.destroy_vm(&vm).await.unwrap();
}

// ---- files in and out ----

#[tokio::test]
async fn copy_in_refuses_names_that_leave_the_directory() {
    let b = backend();
    let vm = b.ready_machine().await;
    let src = b.dest("input");
    std::fs::write(&src, b"x").unwrap();
    for dest in ["../escape", "a/b", "", "..", "/etc/cron.d/x"] {
        let input = InputFile {
            local_file: src.to_string_lossy().into_owned(),
            dest_file: dest.into(),
        };
        assert!(
            b.vmms.copy_in(&vm, &[input]).await.is_err(),
            "{dest:?} was accepted"
        );
    }
    assert!(!b.vmms.work_dir().join("escape").exists());
    b.vmms.destroy_vm(&vm).await.unwrap();
}

/// The machine's output file, as the backend keeps it.
fn output_path(b: &Backend, vm: &Machine) -> PathBuf {
    b.vmms.machine_dir(vm).unwrap().join("output")
}

#[tokio::test]
async fn copy_out_does_not_follow_links() {
    let b = backend();
    let vm = b.ready_machine().await;
    let secret = b.dest("secret");
    std::fs::write(&secret, b"secret").unwrap();

    // A link in place of the machine's output is not read through.
    symlink(&secret, output_path(&b, &vm)).unwrap();
    let dest = b.dest("out");
    assert!(b.vmms.copy_out(&vm, &dest, 1000).await.is_err());
    assert!(!dest.exists());

    // A link at the destination is replaced, not written through.
    std::fs::remove_file(output_path(&b, &vm)).unwrap();
    std::fs::write(
        output_path(&b, &vm),
        b"Autodriver: Job exited with status 0\n",
    )
    .unwrap();
    let victim = b.dest("victim");
    std::fs::write(&victim, b"precious").unwrap();
    symlink(&victim, &dest).unwrap();
    b.vmms.copy_out(&vm, &dest, 1000).await.unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(
        !std::fs::symlink_metadata(&dest)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        b"Autodriver: Job exited with status 0\n"
    );
    b.vmms.destroy_vm(&vm).await.unwrap();
}

#[tokio::test]
async fn copy_out_caps_an_oversized_output_keeping_its_last_line() {
    let b = backend();
    let vm = b.ready_machine().await;
    let mut big = b"Autodriver: Job exited with status 0\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 5 * MIB as usize));
    big.extend_from_slice(b"\n{\"scores\": {\"q\": 1}}\n");
    std::fs::write(output_path(&b, &vm), &big).unwrap();
    let dest = b.dest("capped");
    b.vmms.copy_out(&vm, &dest, 1000).await.unwrap();
    let got = std::fs::read(&dest).unwrap();
    assert!(got.len() as u64 <= 1000 + 4096 + 64, "{} bytes", got.len());
    assert!(got.starts_with(b"Autodriver: Job exited with status 0\n"));
    assert!(got.ends_with(b"\n{\"scores\": {\"q\": 1}}\n"));
    b.vmms.destroy_vm(&vm).await.unwrap();
}

// ---- guards ----

#[tokio::test]
async fn an_autodriver_that_overruns_is_killed_from_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("autodriver");
    // Ignores its arguments and never ends.
    std::fs::write(&fake, "#!/bin/sh\nexec sleep 1000\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let b = backend_with(|c| {
        c.local.autodriver = fake.clone();
        c.timeouts.kill_margin_secs = 1;
    });
    let vmms = LocalVmms::new(&b.config).unwrap();
    let mut vm = machine(next_id());
    vmms.initialize_vm(&mut vm).await.unwrap();
    let started = Instant::now();
    let outcome = vmms.run_job(&vm, &spec(&b.config, 1, false)).await.unwrap();
    assert_eq!(outcome, RunOutcome::Killed);
    assert!(started.elapsed() < Duration::from_secs(20));
    vmms.destroy_vm(&vm).await.unwrap();
}

#[tokio::test]
async fn a_missing_autodriver_is_reported_at_start() {
    let b = backend();
    let mut config = b.config.clone();
    config.local.autodriver = Path::new("/nonexistent/autodriver").into();
    let err = LocalVmms::new(&config).err().expect("an error");
    assert!(err.to_string().contains("local.autodriver"), "{err}");
}

#[tokio::test]
async fn open_makes_the_local_backend() {
    let b = backend();
    let vmms = tango::vmms::open(&b.config).await.unwrap();
    assert_eq!(vmms.name(), "local");
    let vm = machine(7);
    assert_eq!(vmms.instance_name(&vm), "ltest-7-autograding_image");
}
