//! The Docker backend against the real engine, through the `Vmms` trait.
//!
//! Needs a running Docker engine on the local socket, and root (the test image is made with
//! debootstrap; see `scripts/build-test-image.sh`). Every test uses its own container-name
//! prefix and removes what it made when it ends, passing or not ([`support::docker::Cleanup`]).
//!
//! Two kinds of autodriver are used. The plumbing tests (how the autodriver is called, the
//! network, the host-side guard, the limits it sees) inject a small shell script in its
//! place that records what it saw and then behaves as the test asks; the job tests run the
//! real static autodriver on the example jobs in `shared/jobs`.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::docker::{
    Cleanup, config, docker, docker_ok, machine, plant_foreign_containers, test_image,
    unique_prefix,
};
use tango::config::{Config, DockerEngineConfig};
use tango::model::{InputFile, Machine};
use tango::vmms::OUTPUT_SLACK;
use tango::vmms::docker::DockerVmms;
use tango::vmms::{RunOutcome, RunSpec, Vmms, VmmsError};

const OWNER: &str = "manager-under-test";
const WAIT: Duration = Duration::from_secs(30);

/// A stand-in for the autodriver that unpacks the inputs from its standard input (as
/// `--stdin-inputs` does), prints how it was called and what it could see (its standard
/// output is the output), then does what the job's `mode` file says.
const FAKE_AUTODRIVER: &str = r#"#!/bin/sh
mkdir -p /tango/job && tar -x -f - -C /tango/job || exit 3
mode="$(cat /tango/job/mode 2>/dev/null)"
if [ "$mode" = huge ]; then
  head -c 50000000 /dev/zero | tr '\0' a
  exit 0
fi
{
  echo "args: $*"
  echo "interfaces: $(ls /sys/class/net | tr '\n' ' ')"
  grep -E '^(CapBnd|CapEff|NoNewPrivs)' /proc/self/status
  echo "uid: $(id -u)"
  echo "files:"
  ls -ln /tango/job
} 2>&1
case "$mode" in
  sleep) sleep 1000 ;;
  exit2) exit 2 ;;
  layout)
    stat -c 'layout: %n %u %g %a' /tango /tango/bin /tango/bin/autodriver
    grep ' /tango/bin ' /proc/mounts | sed 's/^/mount: /'
    cd /tango/job && stat -c 'input: %n %u %s' * | sort
    echo "handin: $(cat /tango/job/handin.c)"
    echo "injected: $(md5sum < /tango/bin/autodriver | cut -c1-32)"
    ;;
  plant)
    # Links where the output file and the log used to be, pointing at files the daemon must
    # never read: the output is only what the run printed.
    ln -s "$(cat /tango/job/target)" /tango/feedback
    rm -f /tango/output.log && ln -s "$(cat /tango/job/target)" /tango/output.log
    ;;
  tick)
    i=1
    while [ $i -le 200 ]; do echo "tick $i" >> /tango/output.log; i=$((i+1)); sleep 0.02; done
    # Then a link where the log was, by an atomic rename: a read after it sees the link.
    ln -s /etc/shadow /tango/link && mv -f /tango/link /tango/output.log
    sleep 1000
    ;;
esac
exit 0
"#;

/// A temporary directory holding the fake autodriver, alive as long as the test.
struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Fake {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("autodriver"), FAKE_AUTODRIVER).expect("write fake");
        Fake { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("autodriver")
    }
}

/// A backend with the fake autodriver.
async fn fake_backend(prefix: &str, fake: &Fake) -> DockerVmms {
    let mut config = config(prefix);
    config.docker.autodriver = fake.path();
    DockerVmms::new(&config)
        .await
        .expect("open the Docker backend")
}

async fn real_backend(config: &Config) -> DockerVmms {
    DockerVmms::new(config)
        .await
        .expect("open the Docker backend")
}

fn spec(timeout: u64) -> RunSpec {
    RunSpec {
        job_id: 1,
        job_name: "test".into(),
        timeout,
        max_output: 1_024_000,
        ulimit_user_proc: 100,
        ulimit_file_size: 100 * 1024 * 1024,
        disable_network: false,
        kill_after: tango::vmms::run::kill_after(timeout, 30),
    }
}

/// Creates a machine and waits for it.
async fn ready_machine(backend: &DockerVmms, id: u64, image: &str) -> Machine {
    let mut vm = machine(id, image, OWNER);
    backend.initialize_vm(&mut vm).await.expect("initialize_vm");
    backend.wait_vm(&vm, WAIT).await.expect("wait_vm");
    vm
}

/// Writes files into a temp dir and returns them as job inputs.
fn inputs(dir: &Path, files: &[(&str, &[u8])]) -> Vec<InputFile> {
    files
        .iter()
        .map(|(name, data)| {
            let path = dir.join(format!("local-{name}"));
            std::fs::write(&path, data).expect("write input");
            InputFile {
                local_file: path.display().to_string(),
                dest_file: name.to_string(),
            }
        })
        .collect()
}

/// Copies the machine's output out (cap 1 MB) and returns it as text.
async fn output_of(backend: &DockerVmms, vm: &Machine) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let dest = dir.path().join("out");
    backend
        .copy_out(vm, &dest, 1_000_000)
        .await
        .expect("copy_out");
    String::from_utf8_lossy(&std::fs::read(&dest).expect("read output")).into_owned()
}

fn container_of(vm: &Machine) -> &str {
    vm.instance
        .as_deref()
        .expect("initialize_vm records the container id")
}

fn inspect(container: &str, format: &str) -> String {
    docker_ok(&["inspect", "-f", format, container])
}

fn exists(container: &str) -> bool {
    docker(&["inspect", container]).status.success()
}

// ---------------------------------------------------------------------------------------
// Lifecycle, layout and limits
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_is_made_ready_filled_and_removed() {
    let image = test_image();
    let prefix = unique_prefix("life");
    let _cleanup = Cleanup::new(&prefix);
    let fake = Fake::new();
    let backend = fake_backend(&prefix, &fake).await;
    assert_eq!(backend.name(), "localDocker");
    assert!(!backend.reusable(), "Docker containers are single-use");

    let vm = ready_machine(&backend, 1001, image).await;
    let container = container_of(&vm);
    assert_eq!(
        inspect(container, "{{.Name}}"),
        format!("/{prefix}-1001-tango-test_latest")
    );
    assert_eq!(
        backend.instance_name(&vm),
        format!("{prefix}-1001-tango-test_latest")
    );
    assert_eq!(vm.host.as_deref(), Some("unix:///var/run/docker.sock"));
    // Ready means made and not started: its main process is the run, so a container that
    // started has had its job.
    assert_eq!(inspect(container, "{{.State.Status}}"), "created");
    assert!(backend.exists_vm(&vm).await.unwrap());

    // copy_in only checks the files on this host: nothing reaches the container before the
    // run.
    let dir = tempfile::tempdir().unwrap();
    let files = inputs(
        dir.path(),
        &[
            ("Makefile", b"all:\n\techo hi\n"),
            ("handin.c", b"int main(void){}\n"),
            ("mode", b"layout"),
        ],
    );
    backend.copy_in(&vm, &files).await.expect("copy_in");
    assert_eq!(inspect(container, "{{.State.Status}}"), "created");
    // A missing input is a host-side (I/O) failure at copy in, as Tango reports it.
    let mut missing = files.clone();
    missing.push(InputFile {
        local_file: dir.path().join("nonexistent").display().to_string(),
        dest_file: "gone".into(),
    });
    let err = backend.copy_in(&vm, &missing).await.unwrap_err();
    assert!(matches!(err, VmmsError::Io(_)), "{err}");
    backend.copy_in(&vm, &files).await.expect("copy_in");

    // The run makes the layout (as the job sees it): /tango and the autodriver, on a tmpfs
    // of root's that allows running it, are root's and closed to the job; the inputs are the
    // job's. job_uid_base + id % job_uid_count = 200000 + 1001 % 50000.
    let uid = 201_001;
    assert_eq!(
        backend.run_job(&vm, &spec(10)).await.expect("run_job"),
        RunOutcome::Exited(0)
    );
    let out = output_of(&backend, &vm).await;
    for line in [
        "layout: /tango 0 0 755",
        "layout: /tango/bin 0 0 755",
        "layout: /tango/bin/autodriver 0 0 755",
        &format!("input: Makefile {uid} 14"),
        &format!("input: handin.c {uid} 17"),
        "handin: int main(void){}",
    ] {
        assert!(out.contains(line), "{line:?} in {out}");
    }
    let mount = out
        .lines()
        .find_map(|l| l.strip_prefix("mount: "))
        .unwrap_or_else(|| panic!("no mount line in {out}"));
    assert!(
        mount.starts_with("tmpfs /tango/bin tmpfs rw,nosuid,nodev"),
        "{mount}"
    );
    assert!(!mount.contains("noexec"), "{mount}");
    let injected = md5_hex(FAKE_AUTODRIVER.as_bytes());
    assert!(out.contains(&format!("injected: {injected}")), "{out}");
    // The run was the container's life: it has ended, and cannot take another job.
    assert_eq!(inspect(container, "{{.State.Status}}"), "exited");
    let err = backend.wait_vm(&vm, WAIT).await.unwrap_err();
    assert!(err.to_string().contains("can take no job"), "{err}");

    backend.destroy_vm(&vm).await.expect("destroy_vm");
    assert!(!exists(container), "the container is gone");
    assert!(!backend.exists_vm(&vm).await.unwrap());
    // Destroying what is gone is not an error.
    backend.destroy_vm(&vm).await.expect("destroy_vm again");
    backend.safe_destroy_vm(&vm).await.expect("safe_destroy_vm");
}

/// The MD5 of some bytes, as `md5sum` prints it.
fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_confinement_are_on_the_container() {
    let image = test_image();
    let prefix = unique_prefix("limits");
    let _cleanup = Cleanup::new(&prefix);
    let fake = Fake::new();
    let backend = fake_backend(&prefix, &fake).await;

    // Config defaults: 256 MiB (set by the test config), pids 256, no CPU limit.
    let vm = ready_machine(&backend, 7, image).await;
    let c = container_of(&vm);
    assert_eq!(
        inspect(c, "{{.HostConfig.Memory}}"),
        (256u64 << 20).to_string()
    );
    assert_eq!(
        inspect(c, "{{.HostConfig.MemorySwap}}"),
        (256u64 << 20).to_string()
    );
    assert_eq!(inspect(c, "{{.HostConfig.PidsLimit}}"), "256");
    assert_eq!(inspect(c, "{{.HostConfig.NanoCpus}}"), "0");
    assert_eq!(inspect(c, "{{.HostConfig.CapDrop}}"), "[ALL]");
    assert_eq!(
        inspect(c, "{{.HostConfig.CapAdd}}"),
        "[CHOWN DAC_OVERRIDE FOWNER SETUID SETGID KILL]"
    );
    assert_eq!(
        inspect(c, "{{.HostConfig.SecurityOpt}}"),
        "[no-new-privileges]"
    );
    assert_eq!(inspect(c, "{{.HostConfig.Privileged}}"), "false");
    assert_eq!(inspect(c, "{{.HostConfig.Binds}}"), "[]");
    assert_eq!(inspect(c, "{{len .Mounts}}"), "0", "no host path is shared");
    assert_eq!(inspect(c, "{{.HostConfig.Init}}"), "true");
    assert_eq!(inspect(c, "{{.Config.User}}"), "0");
    let labels = inspect(c, "{{json .Config.Labels}}");
    for expected in [
        format!("\"tango.prefix\":\"{prefix}\""),
        format!("\"tango.owner\":\"{OWNER}\""),
        "\"tango.vm_id\":\"7\"".to_string(),
        "\"tango.image\":\"tango-test:latest\"".to_string(),
        "\"tango.uid\":\"200007\"".to_string(),
    ] {
        assert!(labels.contains(&expected), "{expected} in {labels}");
    }

    // A machine's own cores and memory (from /prealloc) win over the defaults.
    let mut sized = machine(8, image, OWNER);
    sized.cores = Some(1.5);
    sized.memory = Some(300);
    backend
        .initialize_vm(&mut sized)
        .await
        .expect("initialize_vm");
    let c = container_of(&sized);
    assert_eq!(inspect(c, "{{.HostConfig.NanoCpus}}"), "1500000000");
    assert_eq!(
        inspect(c, "{{.HostConfig.Memory}}"),
        (300u64 << 20).to_string()
    );

    // Limits off when configured off.
    let mut config = config(&prefix);
    config.docker.autodriver = fake.path();
    config.limits.memory_mb = 0;
    config.limits.pids = 0;
    let unlimited = real_backend(&config).await;
    let mut free = machine(9, image, OWNER);
    unlimited
        .initialize_vm(&mut free)
        .await
        .expect("initialize_vm");
    let c = container_of(&free);
    assert_eq!(inspect(c, "{{.HostConfig.Memory}}"), "0");
    assert!(
        ["0", "<nil>"].contains(&inspect(c, "{{.HostConfig.PidsLimit}}").as_str()),
        "no pids limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autodriver_runs_as_tango_runs_it_with_a_uid_of_its_own() {
    let image = test_image();
    let prefix = unique_prefix("run");
    let _cleanup = Cleanup::new(&prefix);
    let fake = Fake::new();
    let backend = fake_backend(&prefix, &fake).await;
    let vm = ready_machine(&backend, 52_345, image).await;
    let dir = tempfile::tempdir().unwrap();
    backend
        .copy_in(&vm, &inputs(dir.path(), &[("Makefile", b"x")]))
        .await
        .unwrap();

    let mut spec = spec(7);
    spec.max_output = 4321;
    spec.ulimit_user_proc = 55;
    spec.ulimit_file_size = 6789;
    let outcome = backend.run_job(&vm, &spec).await.expect("run_job");
    assert_eq!(outcome, RunOutcome::Exited(0));
    let out = output_of(&backend, &vm).await;
    let uid = 200_000 + 52_345 % 50_000;
    assert!(
        out.contains(&format!(
            "args: --uid {uid} --gid {uid} --stdin-inputs --output-log /tango/output.log \
             /tango/job -u 55 -f 6789 -t 7 -o 4321"
        )),
        "{out}"
    );
    // Root in the container holds only the capabilities the autodriver needs:
    // CHOWN(0) DAC_OVERRIDE(1) FOWNER(3) KILL(5) SETGID(6) SETUID(7) = 0xeb.
    assert!(out.contains("CapBnd:\t00000000000000eb"), "{out}");
    assert!(out.contains("CapEff:\t00000000000000eb"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(
        out.contains("uid: 0"),
        "the autodriver starts as root: {out}"
    );
    // With network (the default), the container has more than lo.
    let interfaces = out
        .lines()
        .find_map(|l| l.strip_prefix("interfaces: "))
        .unwrap_or_default();
    assert!(interfaces.contains("eth"), "{out}");
}

/// The interfaces the fake autodriver saw.
fn interfaces(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("interfaces: "))
        .unwrap_or_else(|| panic!("no interfaces line in {out}"))
        .trim()
        .to_string()
}

/// Makes a machine, runs the fake autodriver in it, destroys it; returns what it printed
/// and the network mode its container had.
async fn run_once(
    backend: &DockerVmms,
    id: u64,
    image: &str,
    disable_network: bool,
) -> (String, String) {
    let vm = ready_machine(backend, id, image).await;
    let mode = inspect(container_of(&vm), "{{.HostConfig.NetworkMode}}");
    let mut spec = spec(10);
    spec.disable_network = disable_network;
    assert_eq!(
        backend.run_job(&vm, &spec).await.unwrap(),
        RunOutcome::Exited(0)
    );
    let out = output_of(backend, &vm).await;
    backend.destroy_vm(&vm).await.unwrap();
    (out, mode)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_network_leaves_only_lo_in_a_reused_namespace() {
    let image = test_image();
    let prefix = unique_prefix("net");
    let _cleanup = Cleanup::new(&prefix);
    let fake = Fake::new();
    let backend = fake_backend(&prefix, &fake).await;
    // One machine at a time: each takes the one network holder the last one freed, whatever
    // the last job wanted, so each switch is seen by a job.
    let mut modes = Vec::new();
    for (id, disable) in [(11, true), (12, false), (13, true), (14, true), (15, false)] {
        let (out, mode) = run_once(&backend, id, image, disable).await;
        let seen = interfaces(&out);
        if disable {
            assert_eq!(seen, "lo", "job {id}: {out}");
        } else {
            assert!(
                seen.contains("eth") && seen.contains("lo"),
                "job {id}: {out}"
            );
        }
        modes.push(mode);
    }
    assert!(modes[0].starts_with("container:"), "{modes:?}");
    assert!(
        modes.iter().all(|m| *m == modes[0]),
        "every machine joined the same holder: {modes:?}"
    );
    backend.shutdown().await;
    assert!(
        docker_ok(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=tango.prefix={prefix}")
        ])
        .is_empty(),
        "no holder left after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_of_its_own_network_when_namespaces_are_not_reused() {
    let image = test_image();
    let prefix = unique_prefix("ownnet");
    let _cleanup = Cleanup::new(&prefix);
    let fake = Fake::new();
    let mut config = config(&prefix);
    config.docker.autodriver = fake.path();
    config.docker.reuse_network = false;
    let backend = real_backend(&config).await;
    let (out, mode) = run_once(&backend, 21, image, true).await;
    assert_eq!(interfaces(&out), "lo", "{out}");
    assert_eq!(mode, "bridge");
    let (out, mode) = run_once(&backend, 22, image, false).await;
    assert!(interfaces(&out).contains("eth"), "{out}");
    assert_eq!(mode, "bridge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_job_starts_outlives_it_in_a_reused_namespace() {
    // A job leaves a process listening on a port, detached from everything it can detach
    // from; the next job in the same network namespace finds the port free: the first
    // job's container took all its processes with it.
    let prefix = unique_prefix("leftover");
    let _cleanup = Cleanup::new(&prefix);
    let mut config = config(&prefix);
    config.limits.memory_mb = 256;
    let backend = real_backend(&config).await;
    let job = |script: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Makefile"), script).unwrap();
        dir
    };
    let first = job(concat!(
        "autograde:\n",
        "\t@setsid perl -MIO::Socket::INET -e '$$s = IO::Socket::INET->new(LocalAddr => ",
        "\"127.0.0.1\", LocalPort => 7777, Listen => 5, ReuseAddr => 1) or die; ",
        "1 while $$s->accept' </dev/null >/dev/null 2>&1 &\n",
        "\t@sleep 0.5; bash -c 'echo > /dev/tcp/127.0.0.1/7777' 2>/dev/null ",
        "&& echo first-listening || echo first-not-listening\n",
    ));
    let second = job(concat!(
        "autograde:\n",
        "\t@bash -c 'echo > /dev/tcp/127.0.0.1/7777' 2>/dev/null ",
        "&& echo second-found-it || echo second-port-free\n",
    ));
    let mut modes = Vec::new();
    let mut outputs = Vec::new();
    for (id, dir) in [(31, &first), (32, &second)] {
        let vm = ready_machine(&backend, id, test_image()).await;
        modes.push(inspect(container_of(&vm), "{{.HostConfig.NetworkMode}}"));
        let files = vec![InputFile {
            local_file: dir.path().join("Makefile").display().to_string(),
            dest_file: "Makefile".into(),
        }];
        backend.copy_in(&vm, &files).await.unwrap();
        assert_eq!(
            backend.run_job(&vm, &spec(20)).await.unwrap(),
            RunOutcome::Exited(0)
        );
        outputs.push(output_of(&backend, &vm).await);
        backend.destroy_vm(&vm).await.unwrap();
    }
    assert_eq!(modes[0], modes[1], "both jobs in one holder's namespace");
    assert!(outputs[0].contains("first-listening"), "{}", outputs[0]);
    assert!(outputs[1].contains("second-port-free"), "{}", outputs[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autodrivers_status_is_returned() {
    let image = test_image();
    let prefix = unique_prefix("status");
    let _cleanup = Cleanup::new(&prefix);
    let fake = Fake::new();
    let backend = fake_backend(&prefix, &fake).await;
    let vm = ready_machine(&backend, 12, image).await;
    let dir = tempfile::tempdir().unwrap();
    backend
        .copy_in(&vm, &inputs(dir.path(), &[("mode", b"exit2")]))
        .await
        .unwrap();
    assert_eq!(
        backend.run_job(&vm, &spec(10)).await.unwrap(),
        RunOutcome::Exited(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_guard_kills_a_job_that_outlives_its_timeout() {
    let image = test_image();
    let prefix = unique_prefix("guard");
    let _cleanup = Cleanup::new(&prefix);
    let fake = Fake::new();
    let mut config = config(&prefix);
    config.docker.autodriver = fake.path();
    let backend = real_backend(&config).await;
    let vm = ready_machine(&backend, 13, image).await;
    let dir = tempfile::tempdir().unwrap();
    backend
        .copy_in(&vm, &inputs(dir.path(), &[("mode", b"sleep")]))
        .await
        .unwrap();
    // A timeout of 1 s and a margin of 1 s: killed 2 s after the inputs are in.
    let mut spec = spec(1);
    spec.kill_after = tango::vmms::run::kill_after(1, 1);
    let started = Instant::now();
    let outcome = backend.run_job(&vm, &spec).await.expect("run_job");
    assert_eq!(outcome, RunOutcome::Killed);
    assert_eq!(outcome.status(), -1);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before timeout + margin"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the guard fired"
    );
    assert_eq!(inspect(container_of(&vm), "{{.State.Running}}"), "false");
}

// ---------------------------------------------------------------------------------------
// Output: caps and links
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_is_what_the_run_printed_and_no_file_in_the_container_is_read() {
    let image = test_image();
    let prefix = unique_prefix("symlink");
    let _cleanup = Cleanup::new(&prefix);
    let fake = Fake::new();
    let backend = fake_backend(&prefix, &fake).await;
    let vm = ready_machine(&backend, 14, image).await;

    // A host file the attack points at: it must stay as it is, and its content must not
    // come back as the output.
    let host = tempfile::tempdir().unwrap();
    let canary = host.path().join("canary");
    std::fs::write(&canary, b"host secret").unwrap();
    let dest = host.path().join("output");

    // Before any run there is no output to copy out: an error, and nothing is written.
    let err = backend.copy_out(&vm, &dest, 1_000_000).await.unwrap_err();
    assert!(err.to_string().contains("did not finish"), "{err}");
    assert!(!dest.exists());

    // The run plants links (as root, the most a job could hope for) where the output file
    // and the log used to be, pointing at the canary's path and at /etc/shadow: none is
    // read, the output is what the run printed.
    let dir = tempfile::tempdir().unwrap();
    for target in [canary.display().to_string(), "/etc/shadow".to_string()] {
        let vm = ready_machine(&backend, 140, image).await;
        let files = inputs(
            dir.path(),
            &[("mode", b"plant"), ("target", target.as_bytes())],
        );
        backend.copy_in(&vm, &files).await.unwrap();
        assert_eq!(
            backend.run_job(&vm, &spec(10)).await.expect("run_job"),
            RunOutcome::Exited(0)
        );
        backend
            .copy_out(&vm, &dest, 1_000_000)
            .await
            .expect("copy_out");
        let out = String::from_utf8_lossy(&std::fs::read(&dest).unwrap()).into_owned();
        assert!(out.starts_with("args: "), "{target}: {out}");
        assert!(
            !out.contains("host secret") && !out.contains("root:"),
            "{out}"
        );
        backend.destroy_vm(&vm).await.unwrap();
    }
    assert_eq!(
        backend.run_job(&vm, &spec(10)).await.expect("run_job"),
        RunOutcome::Exited(0)
    );

    // A link on the host side, where the output goes: never written through.
    let link = host.path().join("link-to-canary");
    std::os::unix::fs::symlink(&canary, &link).unwrap();
    let err = backend.copy_out(&vm, &link, 1_000_000).await.unwrap_err();
    assert!(matches!(err, VmmsError::Io(_)), "{err}");
    assert_eq!(std::fs::read(&canary).unwrap(), b"host secret");
    let entries: Vec<_> = std::fs::read_dir(host.path()).unwrap().collect();
    assert_eq!(
        entries.len(),
        3,
        "only canary, link and output exist on the host side"
    );

    // Destroying the machine drops what it staged.
    backend.destroy_vm(&vm).await.expect("destroy_vm");
    assert!(backend.copy_out(&vm, &dest, 1_000_000).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_output_is_cut_to_the_cap() {
    let image = test_image();
    let prefix = unique_prefix("huge");
    let _cleanup = Cleanup::new(&prefix);
    let fake = Fake::new();
    let backend = fake_backend(&prefix, &fake).await;
    let vm = ready_machine(&backend, 15, image).await;
    let dir = tempfile::tempdir().unwrap();
    backend
        .copy_in(&vm, &inputs(dir.path(), &[("mode", b"huge")]))
        .await
        .unwrap();
    // The stand-in prints 50 MB, far past the limit the real autodriver would keep.
    let max = 10_000;
    let mut spec = spec(60);
    spec.max_output = max;
    let started = Instant::now();
    assert_eq!(
        backend.run_job(&vm, &spec).await.expect("run_job"),
        RunOutcome::Exited(0)
    );
    let host = tempfile::tempdir().unwrap();
    let dest = host.path().join("output");
    backend.copy_out(&vm, &dest, max).await.expect("copy_out");
    let data = std::fs::read(&dest).unwrap();
    assert_eq!(
        data.len() as u64,
        max + OUTPUT_SLACK,
        "cut at the cap plus slack"
    );
    assert!(data.iter().all(|b| *b == b'a'));
    assert_eq!(std::fs::read_dir(host.path()).unwrap().count(), 1);
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cannot_read_the_runs_input_or_write_to_its_output() {
    // make's standard input is /dev/null (end of file at once), and the autodriver's own
    // standard streams, which carry the inputs and the output, are out of the job's reach:
    // only what make prints reaches the output.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Makefile"),
        "autograde:\n\
         \t@echo \"stdin gave $$(cat | wc -c) bytes from $$(readlink /proc/self/fd/0)\"\n\
         \t@read -r _ _ _ driver _ < /proc/$$PPID/stat; echo \"driver $$driver\"; \\\n\
         \t  (echo INJECTED > /proc/$$driver/fd/1) 2>/dev/null || echo \"no write to its stdout\"; \\\n\
         \t  (cat /proc/$$driver/fd/0 > /dev/null) 2>/dev/null || echo \"no read of its stdin\"\n",
    )
    .unwrap();
    let job = support::jobs::Job {
        name: "streams".into(),
        dir: dir.path().to_path_buf(),
        expect: support::jobs::Expect::parse(
            "status: success\noutput_contains: stdin gave 0 bytes from /dev/null\n\
             output_contains: no write to its stdout\noutput_contains: no read of its stdin\n",
        ),
    };
    let run = run_job_folder(job, 20, false).await;
    assert_eq!(run.outcome, RunOutcome::Exited(0));
    assert!(
        !support::jobs::contains(&run.output, b"INJECTED"),
        "{}",
        String::from_utf8_lossy(&run.output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_output_is_read_while_it_grows_and_bounded() {
    let image = test_image();
    let prefix = unique_prefix("partial");
    let _cleanup = Cleanup::new(&prefix);
    let fake = Fake::new();
    let backend = Arc::new(fake_backend(&prefix, &fake).await);
    let vm = ready_machine(&backend, 16, image).await;
    // Nothing written yet: empty, not an error.
    assert_eq!(backend.get_partial_output(&vm, 1000).await.unwrap(), b"");

    // The run writes a line every 20 ms, then puts a link to /etc/shadow in the log's place.
    let dir = tempfile::tempdir().unwrap();
    backend
        .copy_in(&vm, &inputs(dir.path(), &[("mode", b"tick")]))
        .await
        .unwrap();
    let run = {
        let (backend, vm) = (backend.clone(), vm.clone());
        tokio::spawn(async move { backend.run_job(&vm, &spec(60)).await })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut refused = None;
    while Instant::now() < deadline {
        match backend.get_partial_output(&vm, 1_000_000).await {
            Ok(part) => {
                let text = String::from_utf8_lossy(&part).into_owned();
                assert!(!text.contains("root:"), "never the link's target: {text}");
                if !part.is_empty() {
                    seen.push(part.len());
                }
                if seen.len() == 3 {
                    // Bounded: the first 13 bytes (the link comes seconds later).
                    let head = backend.get_partial_output(&vm, 13).await.unwrap();
                    assert_eq!(head, b"tick 1\ntick 2");
                }
            }
            // A link there is refused like any output.
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.len() >= 3,
        "partial output seen while written: {seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "it grows: {seen:?}");
    let refused = refused.expect("the link was refused");
    assert!(
        refused.to_string().contains("not a regular file"),
        "{refused}"
    );

    backend.destroy_vm(&vm).await.unwrap();
    let _ = run.await;
    assert!(matches!(
        backend.get_partial_output(&vm, 1000).await,
        Err(VmmsError::NotFound(_))
    ));
}

// ---------------------------------------------------------------------------------------
// Images and /build
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_listed_by_tango_name_and_full_reference() {
    let image = test_image();
    let prefix = unique_prefix("images");
    let mut cleanup = Cleanup::new(&prefix);
    let fake = Fake::new();
    let backend = fake_backend(&prefix, &fake).await;
    let repo = format!("reg.example.edu:5000/course{prefix}/gcc{prefix}");
    let tagged = format!("{repo}:12");
    docker_ok(&["tag", image, &tagged]);
    cleanup.image(&tagged);

    let images = backend.get_images().await.expect("get_images");
    for name in [
        "tango-test",
        "tango-test:latest",
        "autograding_image",
        &format!("gcc{prefix}"),
        &repo,
        &tagged,
    ] {
        assert!(images.iter().any(|i| i == name), "{name} in {images:?}");
    }
    assert!(!images.iter().any(|i| i.contains("<none>")));

    // A job naming the short name gets the tag it stands for.
    let mut vm = machine(17, &format!("gcc{prefix}"), OWNER);
    backend
        .initialize_vm(&mut vm)
        .await
        .expect("short name resolves");
    assert_eq!(inspect(container_of(&vm), "{{.Config.Image}}"), tagged);

    // An image no engine has is an error that names it, not a pull.
    let mut missing = machine(18, &format!("nosuchimage{prefix}"), OWNER);
    let err = backend.initialize_vm(&mut missing).await.unwrap_err();
    assert!(err.to_string().contains("nosuchimage"), "{err}");
}

/// `docker save` of the test image under a throwaway tag (removed again), as an instructor
/// would upload it.
fn saved_tarball(dir: &Path, cleanup: &mut Cleanup, tag: &str) -> PathBuf {
    docker_ok(&["tag", test_image(), tag]);
    cleanup.image(tag);
    let path = dir.join("image.tar");
    docker_ok(&["save", "-o", path.to_str().unwrap(), tag]);
    docker_ok(&["rmi", "--no-prune", tag]);
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_loads_a_docker_save_tarball_as_name_latest() {
    let image = test_image();
    let prefix = unique_prefix("build");
    let mut cleanup = Cleanup::new(&prefix);
    let fake = Fake::new();
    let backend = fake_backend(&prefix, &fake).await;
    let dir = tempfile::tempdir().unwrap();
    let carried = format!("uploaded{prefix}:v9");
    let tarball = saved_tarball(dir.path(), &mut cleanup, &carried);
    let original = inspect(image, "{{.Id}}");

    let name = format!("built{prefix}");
    cleanup.image(&format!("{name}:latest"));
    backend
        .build_image(&name, &tarball)
        .await
        .expect("build_image");
    assert_eq!(inspect(&format!("{name}:latest"), "{{.Id}}"), original);
    assert!(
        !docker(&["image", "inspect", &carried]).status.success(),
        "the tag the tarball carried is not left behind"
    );
    assert_eq!(
        inspect(image, "{{.Id}}"),
        original,
        "other names are untouched"
    );
    let images = backend.get_images().await.unwrap();
    assert!(images.contains(&name), "{name} in {images:?}");

    // A job can use it.
    let vm = ready_machine(&backend, 19, &name).await;
    assert_eq!(
        backend.run_job(&vm, &spec(10)).await.unwrap(),
        RunOutcome::Exited(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_keeps_what_existing_names_mean() {
    let image = test_image();
    let prefix = unique_prefix("keep");
    let mut cleanup = Cleanup::new(&prefix);
    let fake = Fake::new();
    let backend = fake_backend(&prefix, &fake).await;
    let dir = tempfile::tempdir().unwrap();
    // A different image, and a tarball of it that carries a tag already naming the test
    // image here: loading must not move that tag.
    let empty = dir.path().join("empty.tar");
    std::process::Command::new("tar")
        .args(["cf", empty.to_str().unwrap(), "-T", "/dev/null"])
        .status()
        .unwrap();
    let other = format!("other{prefix}:1");
    docker_ok(&["import", empty.to_str().unwrap(), &other]);
    cleanup.image(&other);
    let shared_tag = format!("shared{prefix}:latest");
    docker_ok(&["tag", &other, &shared_tag]);
    let tarball = dir.path().join("other.tar");
    docker_ok(&["save", "-o", tarball.to_str().unwrap(), &shared_tag]);
    docker_ok(&["tag", image, &shared_tag]);
    cleanup.image(&shared_tag);

    let name = format!("fresh{prefix}");
    cleanup.image(&format!("{name}:latest"));
    backend
        .build_image(&name, &tarball)
        .await
        .expect("build_image");
    assert_eq!(
        inspect(&format!("{name}:latest"), "{{.Id}}"),
        inspect(&other, "{{.Id}}")
    );
    assert_eq!(
        inspect(&shared_tag, "{{.Id}}"),
        inspect(image, "{{.Id}}"),
        "the existing tag still names what it named"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_refuses_what_is_not_one_saved_image() {
    let image = test_image();
    let prefix = unique_prefix("badbuild");
    let mut cleanup = Cleanup::new(&prefix);
    let fake = Fake::new();
    let backend = fake_backend(&prefix, &fake).await;
    let dir = tempfile::tempdir().unwrap();
    let name = format!("never{prefix}");
    cleanup.image(&format!("{name}:latest"));

    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, vec![b'j'; 10_000]).unwrap();
    let err = backend.build_image(&name, &junk).await.unwrap_err();
    assert!(err.to_string().contains("image build failed"), "{err}");

    let empty = dir.path().join("empty.tar");
    std::process::Command::new("tar")
        .args(["cf", empty.to_str().unwrap(), "-T", "/dev/null"])
        .status()
        .unwrap();
    let other = format!("two{prefix}:1");
    docker_ok(&["import", empty.to_str().unwrap(), &other]);
    cleanup.image(&other);
    let two = dir.path().join("two.tar");
    docker_ok(&["save", "-o", two.to_str().unwrap(), image, &other]);
    let err = backend.build_image(&name, &two).await.unwrap_err();
    assert!(err.to_string().contains("exactly one"), "{err}");

    let err = backend.build_image("Bad:Name", &two).await.unwrap_err();
    assert!(err.to_string().contains("not a valid image name"), "{err}");
    assert!(
        !docker(&["image", "inspect", &format!("{name}:latest")])
            .status
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_is_refused_by_a_backend_that_is_not_docker() {
    let mut config = Config::default();
    config.vmms.name = "local".into();
    let local = tango::vmms::open(&config).await.expect("local backend");
    let err = local
        .build_image("x", Path::new("/nonexistent.tar"))
        .await
        .unwrap_err();
    assert!(matches!(err, VmmsError::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("cannot build images"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Our containers and nobody else's
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_are_listed_with_their_owner_and_foreign_containers_never() {
    let image = test_image();
    let prefix = unique_prefix("vms");
    let mut cleanup = Cleanup::new(&prefix);
    let fake = Fake::new();

    // Containers that are not ours: no label; our label but another name; another prefix.
    let [no_label, wrong_name, other_prefix] =
        plant_foreign_containers(&prefix, image, &mut cleanup);

    // A previous run's manager left two machines, and the network holders they joined.
    let previous = fake_backend(&prefix, &fake).await;
    let mut made = Vec::new();
    for id in [1001, 1002] {
        let mut vm = machine(id, image, "manager-that-died");
        previous.initialize_vm(&mut vm).await.unwrap();
        made.push(vm);
    }
    drop(previous);

    // The new manager's backend sees exactly those, with their owner; a machine of its own
    // is listed, and the holder that machine uses is not (it is in use, by us).
    let backend = fake_backend(&prefix, &fake).await;
    let mine = ready_machine(&backend, 1003, image).await;
    let listed = backend.get_vms().await.expect("get_vms");
    let (mut holders, mut machines): (Vec<_>, Vec<_>) =
        listed.into_iter().partition(|m| m.name == "netns");
    machines.sort_by_key(|m| m.id);
    assert_eq!(machines.len(), 3, "{machines:?}");
    for (found, vm) in machines.iter().zip(made.iter().chain([&mine])) {
        assert_eq!(found.id, vm.id);
        assert_eq!(found.instance, vm.instance);
        assert_eq!(found.host, vm.host);
        assert_eq!(found.image, "tango-test:latest");
        assert_eq!(found.name, "tango-test:latest");
        assert_eq!(found.vmms, "localDocker");
        assert_eq!(found.owner, vm.owner);
    }
    assert_eq!(
        holders.len(),
        2,
        "the dead manager's two holders: {holders:?}"
    );
    for holder in &holders {
        assert_eq!(holder.owner.as_deref(), Some("manager-that-died"));
        assert_eq!(holder.id, None);
    }

    // Restart cleanup as the manager does it: destroy what no live manager owns.
    let alive = [OWNER];
    machines.append(&mut holders);
    for vm in &machines {
        if !alive.contains(&vm.owner.as_deref().unwrap_or("")) {
            backend.safe_destroy_vm(vm).await.expect("destroy leftover");
        }
    }
    let left = backend.get_vms().await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].id, mine.id);
    for vm in &made {
        assert!(!exists(container_of(vm)));
    }
    for c in [&no_label, &wrong_name, &other_prefix] {
        assert!(exists(c), "{c} was left alone");
    }
    // Our own machine still runs a job in its holder's namespace.
    assert_eq!(
        backend.run_job(&mine, &spec(10)).await.unwrap(),
        RunOutcome::Exited(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_taken_by_our_own_leftover_is_reclaimed_and_anyone_elses_is_not() {
    let image = test_image();
    let prefix = unique_prefix("conflict");
    let _cleanup = Cleanup::new(&prefix);
    let fake = Fake::new();
    let backend = fake_backend(&prefix, &fake).await;
    let mut first = machine(20, image, OWNER);
    backend.initialize_vm(&mut first).await.unwrap();
    // The same machine again (a retry after a timed-out create): the leftover goes.
    let mut again = machine(20, image, OWNER);
    backend
        .initialize_vm(&mut again)
        .await
        .expect("retry reclaims the name");
    assert_ne!(first.instance, again.instance);
    assert!(!exists(container_of(&first)));
    // Another manager's container of that name is not ours to remove: the create says the
    // name is taken (the caller takes another id), and a destroy by name leaves it.
    let mut other = machine(20, image, "another-manager");
    let err = backend.initialize_vm(&mut other).await.unwrap_err();
    assert!(
        matches!(&err, VmmsError::NameTaken(name) if *name == backend.instance_name(&other)),
        "{err}"
    );
    backend.destroy_vm(&other).await.unwrap();
    assert!(exists(container_of(&again)));
}

/// Another manager's container of the name goes while we create ours (its job ended): the
/// create either makes ours or says the name is taken (the caller takes another id), never
/// fails the job on the holder's vanishing between the conflict and the look at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_freed_by_another_manager_mid_create_is_made_or_taken_never_an_error() {
    let image = test_image();
    let prefix = unique_prefix("freed");
    let _cleanup = Cleanup::new(&prefix);
    let fake = Fake::new();
    let backend = fake_backend(&prefix, &fake).await;
    let (mut made, mut taken) = (0, 0);
    for round in 0..40u64 {
        let mut holder = machine(40, image, "another-manager");
        backend.initialize_vm(&mut holder).await.unwrap();
        let mut mine = machine(40, image, OWNER);
        // The removal and our create race, the create started a little later each round,
        // across the time a removal takes.
        let (removed, created) = tokio::join!(backend.destroy_vm(&holder), async {
            tokio::time::sleep(Duration::from_millis(round % 20)).await;
            backend.initialize_vm(&mut mine).await
        });
        removed.unwrap();
        match created {
            Ok(()) => {
                made += 1;
                backend.destroy_vm(&mine).await.unwrap();
            }
            Err(VmmsError::NameTaken(_)) => taken += 1,
            Err(e) => panic!("round {round}: the create failed: {e}"),
        }
        // Whatever happened, the name is free for the next round.
        let _ = backend.destroy_vm(&holder).await;
    }
    eprintln!("made {made}, name taken {taken}");
}

// ---------------------------------------------------------------------------------------
// Engines
// ---------------------------------------------------------------------------------------

fn engine(url: &str, capacity: u32) -> DockerEngineConfig {
    DockerEngineConfig {
        url: url.to_string(),
        capacity: Some(capacity),
        ..DockerEngineConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_does_not_answer_is_taken_out_and_the_other_used() {
    let image = test_image();
    let prefix = unique_prefix("engines");
    let _cleanup = Cleanup::new(&prefix);
    let fake = Fake::new();
    let dead = format!("tcp://127.0.0.1:{}", support::free_port());
    let mut config = config(&prefix);
    config.docker.autodriver = fake.path();
    // The dead engine has far more room: only its silence keeps jobs off it.
    config.docker.engines = vec![engine(&dead, 100), engine("unix:///var/run/docker.sock", 2)];
    let backend = real_backend(&config).await;
    let standing: Vec<(String, bool)> = backend
        .engines()
        .iter()
        .map(|e| (e.url.clone(), e.is_up()))
        .collect();
    assert_eq!(
        standing,
        vec![
            (dead.clone(), false),
            ("unix:///var/run/docker.sock".to_string(), true)
        ]
    );
    for id in [21, 22, 23] {
        let vm = ready_machine(&backend, id, image).await;
        assert_eq!(vm.host.as_deref(), Some("unix:///var/run/docker.sock"));
    }
    // Listing works with one engine silent.
    assert_eq!(backend.get_vms().await.unwrap().len(), 3);
    assert!(!backend.get_images().await.unwrap().is_empty());

    // With only the silent engine, the error names it.
    let mut config = config.clone();
    config.docker.engines = vec![engine(&dead, 4)];
    let lonely = real_backend(&config).await;
    let mut vm = machine(24, image, OWNER);
    let err = lonely.initialize_vm(&mut vm).await.unwrap_err();
    assert!(err.to_string().contains(&dead), "{err}");
    assert!(err.to_string().contains("not answering"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_goes_to_the_engine_with_most_free_capacity() {
    let image = test_image();
    let prefix = unique_prefix("place");
    let _cleanup = Cleanup::new(&prefix);
    let fake = Fake::new();
    let mut config = config(&prefix);
    config.docker.autodriver = fake.path();
    // One engine under two names, so placement can be watched.
    let a = "unix:///var/run/docker.sock";
    let b = "/var/run/docker.sock";
    config.docker.engines = vec![engine(a, 2), engine(b, 3)];
    let backend = real_backend(&config).await;
    let mut hosts = Vec::new();
    let mut vms = Vec::new();
    for id in 30..34 {
        let mut vm = machine(id, image, OWNER);
        backend.initialize_vm(&mut vm).await.unwrap();
        hosts.push(vm.host.clone().unwrap());
        vms.push(vm);
    }
    // Free (a, b): (2,3) → b; (2,2) → a (first on ties); (1,2) → b; (1,1) → a.
    assert_eq!(hosts, vec![b, a, b, a]);
    // Destroying frees room: (1,2) after removing one of a's → b... unless a has more.
    backend.destroy_vm(&vms[1]).await.unwrap();
    backend.destroy_vm(&vms[3]).await.unwrap();
    let mut vm = machine(34, image, OWNER);
    backend.initialize_vm(&mut vm).await.unwrap();
    assert_eq!(vm.host.as_deref(), Some(a), "a has 2 free, b has 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_configuration_that_cannot_work_is_refused_at_open() {
    let prefix = unique_prefix("badengine");
    let fake = Fake::new();
    let mut config = config(&prefix);
    config.docker.autodriver = fake.path();

    config.docker.engines = vec![DockerEngineConfig {
        url: "tcp://grader.example.edu:2376".into(),
        capacity: Some(1),
        tls_ca: "/nonexistent/ca.pem".into(),
        tls_cert: "/nonexistent/cert.pem".into(),
        tls_key: "/nonexistent/key.pem".into(),
    }];
    let err = DockerVmms::new(&config).await.err().expect("refused");
    assert!(err.to_string().contains("tls_ca"), "{err}");

    config.docker.engines = vec![engine("ftp://nowhere", 1)];
    let err = DockerVmms::new(&config).await.err().expect("refused");
    assert!(err.to_string().contains("ftp://nowhere"), "{err}");

    config.docker.engines = vec![engine("unix:///nonexistent/docker.sock", 1)];
    let err = DockerVmms::new(&config).await.err().expect("refused");
    assert!(err.to_string().contains("not found"), "{err}");

    config.docker.engines = Vec::new();
    config.docker.autodriver = "/nonexistent/autodriver".into();
    let err = DockerVmms::new(&config).await.err().expect("refused");
    assert!(err.to_string().contains("build-autodriver.sh"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_opens_docker_for_both_tango_names() {
    let prefix = unique_prefix("open");
    let fake = Fake::new();
    for name in ["localDocker", "distDocker"] {
        let mut config = config(&prefix);
        config.docker.autodriver = fake.path();
        config.vmms.name = name.into();
        let backend: Arc<dyn Vmms> = tango::vmms::open(&config).await.expect("open");
        assert_eq!(backend.name(), name);
        assert!(!backend.reusable());
    }
}

// ---------------------------------------------------------------------------------------
// The example jobs, with the real autodriver
// ---------------------------------------------------------------------------------------

/// What one example job did on the backend.
struct JobRun {
    outcome: RunOutcome,
    output: Vec<u8>,
    /// Partial outputs read while `run_job` had not returned.
    partials: Vec<Vec<u8>>,
}

/// Runs an example job from `shared/jobs` on a fresh machine, as the worker would: create,
/// wait, copy in, run (reading partial output meanwhile when the job expects it), copy out,
/// destroy. Then checks the run against the job's `expect` file.
async fn run_example(name: &str, timeout: u64, disable_network: bool) -> JobRun {
    run_job_folder(support::jobs::job(name), timeout, disable_network).await
}

/// [`run_example`] for any job folder with its expectations.
async fn run_job_folder(job: support::jobs::Job, timeout: u64, disable_network: bool) -> JobRun {
    let name = job.name.as_str();
    let image = test_image();
    let prefix = unique_prefix(name);
    let _cleanup = Cleanup::new(&prefix);
    let config = config(&prefix);
    let backend = real_backend(&config).await;
    let vm = ready_machine(&backend, 4000, image).await;
    let files: Vec<InputFile> = job
        .input_files()
        .iter()
        .map(|p| InputFile {
            local_file: p.display().to_string(),
            dest_file: p.file_name().unwrap().to_string_lossy().into_owned(),
        })
        .collect();
    backend.copy_in(&vm, &files).await.expect("copy_in");

    let spec = RunSpec {
        job_id: 4000,
        job_name: name.to_string(),
        timeout,
        max_output: config.limits.max_output_file_size,
        ulimit_user_proc: config.limits.ulimit_user_proc,
        ulimit_file_size: config.limits.ulimit_file_size,
        disable_network,
        kill_after: tango::vmms::run::kill_after(timeout, config.timeouts.kill_margin_secs),
    };
    let watch_partial = !job.expect.partial_output_contains_while_running.is_empty();
    let run = backend.run_job(&vm, &spec);
    tokio::pin!(run);
    let mut partials = Vec::new();
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break outcome.expect("run_job"),
            _ = tokio::time::sleep(Duration::from_millis(500)), if watch_partial => {
                let part = backend
                    .get_partial_output(&vm, spec.max_output)
                    .await
                    .expect("get_partial_output while running");
                partials.push(part);
            }
        }
    };

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("output");
    backend
        .copy_out(&vm, &dest, spec.max_output)
        .await
        .expect("copy_out");
    let output = std::fs::read(&dest).unwrap();
    backend.safe_destroy_vm(&vm).await.expect("safe_destroy_vm");

    // The checks every example's expect file asks for.
    let code = outcome.status();
    assert!(
        job.expect.allows_autodriver_exit(code),
        "{name}: autodriver exit {code} is not what expect says ({:?}); output:\n{}",
        job.expect.status,
        String::from_utf8_lossy(&output)
    );
    let limits = support::jobs::Limits {
        osize: spec.max_output,
        fsize: spec.ulimit_file_size,
        network_disabled: disable_network,
    };
    if let Err(e) = job.expect.check_output(&output, &limits) {
        panic!("{name}: {e}");
    }
    for want in &job.expect.partial_output_contains_while_running {
        assert!(
            partials
                .iter()
                .any(|p| support::jobs::contains(p, want.as_bytes())),
            "{name}: no partial output read while running contained {want:?}: {partials:?}"
        );
    }
    JobRun {
        outcome,
        output,
        partials,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_hello() {
    let run = run_example("hello", 60, false).await;
    assert_eq!(run.outcome, RunOutcome::Exited(0));
    let text = String::from_utf8_lossy(&run.output);
    // The autodriver injected into a stock image ran make in the grading directory.
    assert!(text.contains("Makefile"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_score() {
    run_example("score", 60, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_nonzero() {
    run_example("nonzero", 60, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_forever_times_out() {
    let run = run_example("forever", 3, false).await;
    assert_eq!(
        run.outcome,
        RunOutcome::Exited(2),
        "the autodriver's own timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_flood_is_cut_to_the_limit() {
    run_example("flood", 60, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_bigfile_is_stopped_by_the_file_size_limit() {
    run_example("bigfile", 60, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_binary_output_survives() {
    let run = run_example("binary", 60, false).await;
    assert!(support::jobs::contains(&run.output, b"\xff\xfe"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_files_of_several_kinds() {
    run_example("files", 60, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_network_shows_only_lo_when_disabled() {
    run_example("network", 60, true).await;
    let open = run_example("network", 60, false).await;
    let text = String::from_utf8_lossy(&open.output);
    assert!(
        text.contains("eth0"),
        "with network the job sees eth0: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_partial_output_is_readable_while_it_runs() {
    let run = run_example("partial", 60, false).await;
    assert!(
        run.partials.len() >= 3,
        "read several times: {}",
        run.partials.len()
    );
    // Some reads happened well before the end, and each was a prefix of the log.
    assert!(
        run.partials
            .iter()
            .any(|p| !p.is_empty() && !support::jobs::contains(p, b"tick 20")),
        "read while running"
    );
    for p in &run.partials {
        assert!(p.starts_with(b"tick 1\n") || p.is_empty(), "{p:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_memhog_is_stopped_by_the_memory_limit() {
    // memhog's `expect` requires "memory limit held": its `tail -n 1` buffers a 4 GB line,
    // which only the container's memory limit stops.
    run_example("memhog", 60, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_eats_memory_is_killed_by_the_memory_limit() {
    // As memhog, but requires the kill to be the cgroup's (exit 137), not a refused
    // allocation.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Makefile"),
        "autograde:\n\t@echo \"eating memory\"\n\t@head -c 2000000000 /dev/zero | tail -n 1 > /dev/null; echo \"tail exit $$?\"\n",
    )
    .unwrap();
    let job = support::jobs::Job {
        name: "realhog".into(),
        dir: dir.path().to_path_buf(),
        // 137: killed by SIGKILL, which is what the cgroup's OOM killer sends.
        expect: support::jobs::Expect::parse(
            "status: success\noutput_contains: eating memory\noutput_contains: tail exit 137\n",
        ),
    };
    run_job_folder(job, 60, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_forkbomb_is_contained_and_others_run_on() {
    let bomb = tokio::spawn(run_example("forkbomb", 10, false));
    // Another job runs meanwhile, on its own machine and uid, and is not starved.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let neighbour = run_example("hello", 60, false).await;
    assert_eq!(neighbour.outcome, RunOutcome::Exited(0));
    let run = bomb.await.expect("the forkbomb test task");
    assert!(matches!(run.outcome, RunOutcome::Exited(0 | 2)));
    // And the engine still answers.
    docker_ok(&["info", "--format", "{{.ServerVersion}}"]);
}
