//! The whole daemon (a real `tango serve` process) on the VM backends: jobs go in over REST
//! as Autolab sends them, run on "VMs" reached over SSH, and come out as output files.
//!
//! - `ec2SSH`: moto's EC2 emulator makes and terminates the instances; the SSH steps go to a
//!   real sshd on loopback through `ec2.ssh_address = "bastion"` (moto's addresses are not
//!   ours and are never connected to). What was created is checked in moto, and that all of
//!   it was terminated or deleted afterwards.
//! - `tashiSSH`: the stand-in Tashi client (`tests/fixtures/tashi-client`) records the calls;
//!   every instance's host name is the same loopback sshd.
//!
//! Every "VM" is the one sshd of the test, so jobs are sent one at a time. Needs root (see
//! `tests/support/sshd.rs`) and, for EC2, `moto_server`.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::daemon::{Daemon, DaemonOptions, JobOptions};
use support::jobs::{self, Limits, Status};
use support::sshd::Sshd;

const WAIT: Duration = Duration::from_secs(180);

/// The shared jobs the VM backends must run, with the timeout each is sent with.
const JOBS: [(&str, u64); 4] = [("hello", 30), ("score", 30), ("forever", 3), ("flood", 60)];

/// The line before the autodriver's output in an output file.
const OUTPUT_MARK: &str = "Here is the output from the autograder:\n---\n";

/// A TOML basic string.
fn toml_str(text: &str) -> String {
    format!("{text:?}")
}

fn path_str(path: &Path) -> String {
    toml_str(&path.display().to_string())
}

/// The `[ssh]` section that logs in to `sshd` and runs the autodriver installed there.
fn ssh_section(sshd: &Sshd, autodriver: &str) -> String {
    format!(
        "[ssh]\nuser = {}\nkey_path = {}\nport = {}\nretries = 2\ninterval = 0.2\nautodriver = {}\n",
        toml_str(&sshd.user),
        path_str(&sshd.client_key),
        sshd.port,
        toml_str(autodriver),
    )
}

/// A daemon with the given backend sections; everything else as in production but shorter
/// timeouts, so a failure shows within the test's patience.
async fn start_daemon(sections: &str) -> Daemon {
    let config = format!(
        "{sections}\n[timeouts]\ninitialize_vm = 30\nwait_vm = 30\ncopy_in = 20\ncopy_out = 30\n\n\
         [jobs]\nretries = 2\n"
    );
    let mut options = DaemonOptions::local();
    options.config = config;
    Daemon::start(options).await
}

/// One job's output file, split into Tango's header and the autodriver's output.
struct Finished {
    id: u64,
    header: String,
    body: Vec<u8>,
    /// The job as the dead list shows it.
    dead: Value,
}

/// Sends job `name` (its files uploaded to `courselab`) and waits for its output and its
/// place in the dead list.
async fn run_job(daemon: &Daemon, courselab: &str, name: &str, options: &JobOptions) -> Finished {
    let job = jobs::job(name);
    let id = daemon.submit_job(courselab, &job, options).await;
    let output = daemon
        .wait_output(courselab, &options.output_file, WAIT)
        .await;
    let dead = daemon.wait_dead(id, WAIT).await;
    let text = String::from_utf8_lossy(&output);
    let split = text
        .find(OUTPUT_MARK)
        .map(|at| at + OUTPUT_MARK.len())
        .unwrap_or_else(|| panic!("{name}: no {OUTPUT_MARK:?} in the output file:\n{text}"));
    Finished {
        id,
        header: text[..split].to_string(),
        body: output[split..].to_vec(),
        dead,
    }
}

fn job_options(name: &str, timeout: u64) -> JobOptions {
    JobOptions {
        output_file: format!("user@x.edu_{name}_autograde.txt"),
        job_name: format!("course_{name}_user@x.edu"),
        timeout,
        ..JobOptions::default()
    }
}

fn trace_of(dead: &Value) -> Vec<String> {
    dead["trace"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .filter_map(|l| l.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs hello, score, forever and flood one after another and checks each against its
/// `expect` file and Tango's header. Returns the finished jobs.
async fn run_the_shared_jobs(daemon: &Daemon, courselab: &str) -> Vec<Finished> {
    let limits = Limits {
        osize: 1_024_000,
        fsize: 104_857_600,
        network_disabled: false,
    };
    let mut finished = Vec::new();
    for (name, timeout) in JOBS {
        let job = jobs::job(name);
        let options = job_options(name, timeout);
        let done = run_job(daemon, courselab, name, &options).await;
        let header = &done.header;
        assert!(
            header.starts_with("Autograder [")
                && header.contains(&format!(
                    "]: Received job {}:{}\n",
                    options.job_name, done.id
                )),
            "{name}: {header}"
        );
        let message = match job.expect.status() {
            Status::Success => "Success: Autodriver returned normally".to_string(),
            Status::Timeout => format!("Error: Job timed out after {timeout} seconds"),
            other => panic!("{name}: no header message known for {other:?}"),
        };
        assert!(
            header.contains(&format!("]: {message}\n")),
            "{name}: {header}\nlog:\n{}",
            support::daemon::tail(&daemon.log_text(), 40)
        );
        if let Err(e) = job.expect.check_output(&done.body, &limits) {
            panic!("{name}: {e}\nheader:\n{header}");
        }
        let trace = trace_of(&done.dead);
        assert!(
            trace
                .last()
                .is_some_and(|l| l.ends_with(&format!("|{message}"))),
            "{name}: {trace:?}"
        );
        assert_eq!(done.dead["retries"], 0, "{name}: {trace:?}");
        finished.push(done);
    }
    finished
}

/// Polls `check` until it holds, at most `limit`; panics with `what` otherwise.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[cfg(feature = "ec2")]
mod ec2 {
    use super::*;
    use aws_sdk_ec2::types::{Filter, Instance, InstanceStateName};
    use support::moto::{self, Moto};
    use support::sshd;

    /// The key pair the configuration names; its private half is the sshd's client key.
    const KEY_NAME: &str = "tango-e2e-key";
    const GROUP: &str = "tango-e2e-sg";
    /// The access key id of the daemon's own configuration.
    const CONFIG_KEY_ID: &str = "AKIDTANGOE2ECONFIG";

    /// moto, the sshd standing in for every instance, and a daemon on `ec2SSH`.
    struct Rig {
        moto: Moto,
        sshd: Sshd,
        ec2: aws_sdk_ec2::Client,
        prefix: String,
        /// Where per-job private keys go (`ec2.dynamic_security_key_path`).
        key_dir: PathBuf,
        daemon: Option<Daemon>,
    }

    impl Rig {
        /// Everything but the daemon, which [`Rig::start`] starts (so a test can change the
        /// sshd first).
        async fn new() -> Rig {
            let moto = Moto::start();
            let sshd = Sshd::start();
            let ec2 = moto.client("AKIDE2ECHECKER").await;
            let public = sshd::public_key_of(&sshd.client_key);
            ec2.import_key_pair()
                .key_name(KEY_NAME)
                .public_key_material(aws_sdk_ec2::primitives::Blob::new(public.into_bytes()))
                .send()
                .await
                .expect("import the configured key pair");
            let key_dir = sshd.scratch();
            Rig {
                moto,
                sshd,
                ec2,
                prefix: format!("e{}", support::unique().replace('-', "")),
                key_dir,
                daemon: None,
            }
        }

        /// Starts the daemon; `reuse_vms` as given.
        async fn start(&mut self, reuse_vms: bool) -> &Daemon {
            let autodriver = self.sshd.install_autodriver(&jobs::autodriver_binary());
            let default_ami = self
                .ec2
                .describe_images()
                .owners("amazon")
                .send()
                .await
                .expect("DescribeImages")
                .images()
                .iter()
                .find_map(|i| i.image_id().map(str::to_string))
                .expect("moto has stock AMIs");
            let sections = format!(
                "[vmms]\nname = \"ec2SSH\"\nprefix = {prefix}\nreuse_vms = {reuse_vms}\n\
                 pool_size = 1\ndestroy_secs = 5.0\n\n{ssh}\n\
                 [ec2]\nregion = {region}\nendpoint_url = {endpoint}\n\
                 access_key_id = {key_id}\nsecret_access_key = \"config-secret\"\n\
                 default_ami = {ami}\ndefault_instance_type = \"t3.small\"\n\
                 default_security_group = {group}\nsecurity_key_name = {key}\n\
                 dynamic_security_key_path = {key_dir}\n\
                 ssh_address = \"bastion\"\nbastion_host = \"127.0.0.1\"\n\
                 images = [\"autograding_image\"]\n",
                prefix = toml_str(&self.prefix),
                ssh = ssh_section(&self.sshd, &autodriver),
                region = toml_str(moto::REGION),
                endpoint = toml_str(&self.moto.endpoint),
                key_id = toml_str(CONFIG_KEY_ID),
                ami = toml_str(&default_ami),
                group = toml_str(GROUP),
                key = toml_str(KEY_NAME),
                key_dir = path_str(&self.key_dir),
            );
            self.daemon = Some(start_daemon(&sections).await);
            self.daemon()
        }

        fn daemon(&self) -> &Daemon {
            self.daemon.as_ref().expect("started")
        }

        /// Every instance moto holds whose Name has our prefix.
        async fn instances(&self) -> Vec<Instance> {
            let out = self
                .ec2
                .describe_instances()
                .filters(
                    Filter::builder()
                        .name("tag:Name")
                        .values(format!("{}-*", self.prefix))
                        .build(),
                )
                .send()
                .await
                .expect("DescribeInstances");
            out.reservations()
                .iter()
                .flat_map(|r| r.instances().iter().cloned())
                .collect()
        }

        async fn key_pairs(&self) -> Vec<String> {
            self.ec2
                .describe_key_pairs()
                .send()
                .await
                .expect("DescribeKeyPairs")
                .key_pairs()
                .iter()
                .filter_map(|k| k.key_name().map(str::to_string))
                .collect()
        }

        /// Waits until every instance of ours is terminated (or shutting down).
        async fn all_terminated(&self) {
            eventually(
                Duration::from_secs(30),
                "instances left running",
                || async {
                    let alive: Vec<String> = self
                        .instances()
                        .await
                        .iter()
                        .filter(|i| !gone(i))
                        .map(|i| format!("{:?} {:?}", i.instance_id(), i.state()))
                        .collect();
                    if alive.is_empty() {
                        Ok(())
                    } else {
                        Err(format!("{alive:?}"))
                    }
                },
            )
            .await;
        }
    }

    fn tag_of<'a>(instance: &'a Instance, key: &str) -> Option<&'a str> {
        instance
            .tags()
            .iter()
            .find(|t| t.key() == Some(key))
            .and_then(|t| t.value())
    }

    fn gone(instance: &Instance) -> bool {
        matches!(
            instance.state().and_then(|s| s.name()),
            Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
        )
    }

    /// Each job on an instance of its own (`reuse_vms = false`), launched with the configured
    /// key pair and credentials, and terminated after its job.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_shared_jobs_run_through_the_daemon_on_ec2() {
        let mut rig = Rig::new().await;
        rig.start(false).await;
        let finished = run_the_shared_jobs(rig.daemon(), "course-ec2").await;
        rig.all_terminated().await;

        // One instance per job, named and tagged for it, as the configuration says.
        let instances = rig.instances().await;
        let mut names: Vec<String> = instances
            .iter()
            .filter_map(|i| tag_of(i, "Name").map(str::to_string))
            .collect();
        names.sort();
        let mut wanted: Vec<String> = finished
            .iter()
            .map(|f| format!("{}-{}-autograding_image", rig.prefix, f.id))
            .collect();
        wanted.sort();
        assert_eq!(names, wanted);
        for instance in &instances {
            assert_eq!(instance.key_name(), Some(KEY_NAME));
            assert_eq!(
                instance.instance_type().map(|t| t.as_str()),
                Some("t3.small")
            );
            assert!(tag_of(instance, "tango:owner").is_some(), "{instance:?}");
        }
        for done in &finished {
            let trace = trace_of(&done.dead);
            assert!(
                trace.iter().any(|l| l.contains("new VM")),
                "a one-off VM per job: {trace:?}"
            );
        }
        // All with the configuration's credentials; the configured key pair is kept.
        let signers = rig.moto.signers_of("RunInstances");
        assert_eq!(signers.len(), JOBS.len(), "{signers:?}");
        assert!(signers.iter().all(|k| k == CONFIG_KEY_ID), "{signers:?}");
        assert!(
            rig.moto
                .signers_of("TerminateInstances")
                .iter()
                .all(|k| k == CONFIG_KEY_ID)
        );
        assert!(rig.moto.signers_of("CreateKeyPair").is_empty());
        assert!(rig.key_pairs().await.contains(&KEY_NAME.to_string()));
    }

    /// A pool (`reuse_vms`, one VM) serves jobs one after another; at shutdown its instance
    /// is terminated.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pool_instance_serves_jobs_and_is_terminated_at_shutdown() {
        let mut rig = Rig::new().await;
        rig.start(true).await;
        for name in ["hello", "score"] {
            let done = run_job(rig.daemon(), "course-pool", name, &job_options(name, 30)).await;
            assert!(
                done.header
                    .contains("]: Success: Autodriver returned normally\n"),
                "{name}: {}",
                done.header
            );
            let trace = trace_of(&done.dead);
            assert!(
                trace.iter().any(|l| l.contains("existing VM")),
                "{name}: {trace:?}"
            );
        }
        let instances = rig.instances().await;
        assert_eq!(instances.len(), 1, "one pool VM served both: {instances:?}");
        assert!(!gone(&instances[0]));
        let status = rig.daemon().terminate(Duration::from_secs(60));
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
        rig.all_terminated().await;
    }

    /// A job that brings `accessKeyId`/`accessKey` runs in that account: its instance and a
    /// key pair of its own are made (and terminated, deleted) with those credentials.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_with_its_own_credentials_uses_them_and_its_own_key_pair() {
        let mut rig = Rig::new().await;
        rig.start(true).await;
        // The instance would get its key pair's public half from EC2; our sshd gets it so.
        let _watcher = rig.sshd.authorize_keys_appearing_in(&rig.key_dir);
        let job_key_id = format!("AKIDJOB{}", support::unique().replace('-', ""));
        let options = JobOptions {
            extra: json!({"accessKeyId": job_key_id, "accessKey": "job-secret"}),
            ..job_options("hello", 30)
        };
        let done = run_job(rig.daemon(), "course-keys", "hello", &options).await;
        assert!(
            done.header
                .contains("]: Success: Autodriver returned normally\n"),
            "{}\nlog:\n{}",
            done.header,
            support::daemon::tail(&rig.daemon().log_text(), 40)
        );
        jobs::job("hello")
            .expect
            .check_output(
                &done.body,
                &Limits {
                    osize: 1_024_000,
                    fsize: 104_857_600,
                    network_disabled: false,
                },
            )
            .unwrap();
        assert!(
            !done.dead.to_string().contains("job-secret"),
            "the secret is never shown"
        );
        rig.all_terminated().await;

        let key_name = format!("{}-{}-autograding_image", rig.prefix, done.id);
        let instances = rig.instances().await;
        assert_eq!(instances.len(), 1, "{instances:?}");
        assert_eq!(instances[0].key_name(), Some(key_name.as_str()));
        // The key pair and its private key go after the instance is terminated, which is
        // all `all_terminated` waits for.
        eventually(
            Duration::from_secs(30),
            "the per-job key pair is deleted",
            || async {
                let left: Vec<_> = std::fs::read_dir(&rig.key_dir)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path())
                    .collect();
                if rig.key_pairs().await.contains(&key_name) {
                    Err(format!("{key_name} is still listed"))
                } else if !left.is_empty() {
                    Err(format!("private keys left behind: {left:?}"))
                } else {
                    Ok(())
                }
            },
        )
        .await;
        // Made, used and cleaned up with the job's credentials, never the configuration's.
        for action in [
            "RunInstances",
            "CreateKeyPair",
            "TerminateInstances",
            "DeleteKeyPair",
        ] {
            let signers = rig.moto.signers_of(action);
            assert!(!signers.is_empty(), "no {action}");
            assert!(
                signers.iter().all(|k| *k == job_key_id),
                "{action} signed by {signers:?}"
            );
        }
        assert!(rig.key_pairs().await.contains(&KEY_NAME.to_string()));
    }

    /// The first copy-in loses its SSH connection: the job is retried on a fresh instance and
    /// succeeds; both instances are terminated.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ssh_failure_in_copy_in_is_retried_on_a_fresh_instance() {
        let mut rig = Rig::new().await;
        rig.sshd.break_copy_in(1);
        rig.start(false).await;
        let options = job_options("hello", 30);
        let done = run_job(rig.daemon(), "course-retry", "hello", &options).await;
        assert_eq!(rig.sshd.copy_in_failures_left(), 0, "the failure happened");
        assert!(
            done.header
                .contains("]: Success: Autodriver returned normally\n"),
            "{}",
            done.header
        );
        let trace = trace_of(&done.dead);
        let label = format!("{}:{}", options.job_name, done.id);
        // The connection was lost (what the openssh crate reports when ssh exits 255), not
        // a command that failed on a healthy connection.
        assert!(
            trace.iter().any(|l| l.contains(&format!(
                "|Job {label} failed: Internal error: copyIn failed: "
            )) && l.contains("the remote process has terminated")),
            "{trace:?}"
        );
        assert!(
            trace
                .iter()
                .any(|l| l.contains(&format!("|Dispatched job {label} [try 1]"))),
            "{trace:?}"
        );
        assert_eq!(
            trace.iter().filter(|l| l.contains("new VM")).count(),
            2,
            "{trace:?}"
        );
        assert_eq!(done.dead["retries"], 1);
        rig.all_terminated().await;
        let instances = rig.instances().await;
        assert_eq!(instances.len(), 2, "a fresh instance for the retry");
        assert_ne!(instances[0].instance_id(), instances[1].instance_id());
    }

    /// Copy-in keeps losing its connection: after `jobs.retries` retries the job is given up
    /// and reported as Tango reports it; every instance is terminated.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_copy_in_that_keeps_failing_is_reported_as_tango_does() {
        let mut rig = Rig::new().await;
        rig.sshd.break_copy_in(100);
        rig.start(false).await;
        let options = job_options("hello", 30);
        let done = run_job(rig.daemon(), "course-giveup", "hello", &options).await;
        assert_eq!(rig.sshd.copy_in_failures_left(), 97, "three tries");
        let header = &done.header;
        let lines: Vec<&str> = header.lines().collect();
        assert_eq!(lines.len(), 5, "{header}");
        assert!(
            lines[0].ends_with(&format!("]: Received job {}:{}", options.job_name, done.id)),
            "{header}"
        );
        assert!(
            lines[1].ends_with(
                "]: Internal error: Unable to complete job after 2 tries. Pleae resubmit"
            ),
            "{header}"
        );
        assert!(
            lines[2].ends_with("]: Job status: waitVM=0 copyIn=-1 runJob=None copyOut=None"),
            "{header}"
        );
        assert!(
            lines[3].ends_with("]: Here is the output from the autograder:") && lines[4] == "---",
            "{header}"
        );
        assert!(done.body.is_empty(), "nothing ran");
        let trace = trace_of(&done.dead);
        let label = format!("{}:{}", options.job_name, done.id);
        let failures = trace
            .iter()
            .filter(|l| {
                l.contains(&format!(
                    "|Job {label} failed: Internal error: copyIn failed: "
                ))
            })
            .count();
        assert_eq!(failures, 3, "{trace:?}");
        for try_number in 0..3 {
            assert!(
                trace
                    .iter()
                    .any(|l| l.contains(&format!("|Dispatched job {label} [try {try_number}]"))),
                "{trace:?}"
            );
        }
        assert!(
            trace
                .last()
                .is_some_and(|l| l.contains("|Internal error: copyIn failed: ")),
            "{trace:?}"
        );
        assert_eq!(done.dead["retries"], 2);
        rig.all_terminated().await;
        assert_eq!(rig.instances().await.len(), 3, "a fresh instance per try");
    }
}

mod tashi {
    use super::*;

    /// The sshd standing in for every VM, the stand-in client, a daemon on `tashiSSH`.
    struct Rig {
        sshd: Sshd,
        /// Holds the client's symlink, state and call log.
        tashi_dir: PathBuf,
        prefix: String,
        daemon: Option<Daemon>,
    }

    impl Rig {
        fn new() -> Rig {
            let sshd = Sshd::start();
            let tashi_dir = sshd.scratch();
            let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tashi-client");
            std::os::unix::fs::symlink(&fixture, tashi_dir.join("tashi-client")).unwrap();
            Rig {
                sshd,
                tashi_dir,
                prefix: format!("t{}", support::unique().replace('-', "")),
                daemon: None,
            }
        }

        async fn start(&mut self) -> &Daemon {
            let autodriver = self.sshd.install_autodriver(&jobs::autodriver_binary());
            let sections = format!(
                "[vmms]\nname = \"tashiSSH\"\nprefix = {prefix}\nreuse_vms = true\n\
                 pool_size = 1\ndestroy_secs = 5.0\n\n{ssh}\n\
                 [tashi]\nclient = {client}\nhost_template = \"127.0.0.1\"\n\
                 images = [\"autograding_image\"]\n",
                prefix = toml_str(&self.prefix),
                ssh = ssh_section(&self.sshd, &autodriver),
                client = path_str(&self.tashi_dir.join("tashi-client")),
            );
            self.daemon = Some(start_daemon(&sections).await);
            self.daemon.as_ref().expect("started")
        }

        fn daemon(&self) -> &Daemon {
            self.daemon.as_ref().expect("started")
        }

        /// The client's invocations so far, each as its argv.
        fn calls(&self) -> Vec<Vec<String>> {
            std::fs::read_to_string(self.tashi_dir.join("tashi-calls.log"))
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str(l).expect("a call line"))
                .collect()
        }

        /// The instances the stand-in cluster holds now, by name.
        fn instances(&self) -> Vec<String> {
            let state: Value = std::fs::read_to_string(self.tashi_dir.join("tashi-state.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_else(|| json!({"instances": []}));
            state["instances"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(|i| i["name"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        }
    }

    /// The shared jobs through the daemon on a Tashi pool of one VM, reused by every job
    /// (none of them harms the VM), destroyed through the client at shutdown.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_shared_jobs_run_through_the_daemon_on_tashi() {
        let mut rig = Rig::new();
        rig.start().await;
        let finished = run_the_shared_jobs(rig.daemon(), "course-tashi").await;
        for done in &finished {
            let trace = trace_of(&done.dead);
            assert!(
                trace.iter().any(|l| l.contains("existing VM")),
                "the pool's VM: {trace:?}"
            );
        }
        let creates: Vec<Vec<String>> = rig
            .calls()
            .into_iter()
            .filter(|c| c.first().is_some_and(|f| f == "createVm"))
            .collect();
        assert_eq!(
            creates.len(),
            1,
            "one pool VM served every job: {creates:?}"
        );
        let created = &creates[0];
        let name = created[2].clone();
        assert!(
            name.starts_with(&format!("{}-", rig.prefix)) && name.ends_with("-autograding_image"),
            "{created:?}"
        );
        // Tango's arguments: cores, memory (limits.memory_mb) and the image as the disk.
        assert_eq!(
            created[3..],
            [
                "--cores",
                "1",
                "--memory",
                "2048",
                "--disks",
                "autograding_image"
            ],
            "{created:?}"
        );
        assert_eq!(rig.instances(), vec![name.clone()]);

        let status = rig.daemon().terminate(Duration::from_secs(60));
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
        assert!(rig.instances().is_empty(), "{:?}", rig.instances());
        assert!(
            rig.calls()
                .iter()
                .any(|c| *c == ["destroyVm", "--instance", name.as_str()]),
            "{:?}",
            rig.calls()
        );
    }

    /// On a Tashi pool, a copy-in that loses its SSH connection costs the VM: it is destroyed
    /// through the client, the pool makes a fresh one, and the job is retried on it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ssh_failure_in_copy_in_is_retried_on_a_fresh_tashi_vm() {
        let mut rig = Rig::new();
        rig.sshd.break_copy_in(1);
        rig.start().await;
        let options = job_options("hello", 30);
        let done = run_job(rig.daemon(), "course-tashi-retry", "hello", &options).await;
        assert_eq!(rig.sshd.copy_in_failures_left(), 0, "the failure happened");
        assert!(
            done.header
                .contains("]: Success: Autodriver returned normally\n"),
            "{}",
            done.header
        );
        let label = format!("{}:{}", options.job_name, done.id);
        let trace = trace_of(&done.dead);
        assert!(
            trace.iter().any(|l| l.contains(&format!(
                "|Job {label} failed: Internal error: copyIn failed: "
            ))),
            "{trace:?}"
        );
        assert_eq!(done.dead["retries"], 1);
        let created: Vec<String> = rig
            .calls()
            .iter()
            .filter(|c| c.first().is_some_and(|f| f == "createVm"))
            .map(|c| c[2].clone())
            .collect();
        assert_eq!(created.len(), 2, "a fresh VM for the retry: {created:?}");
        assert_ne!(created[0], created[1]);
        assert!(
            rig.calls()
                .iter()
                .any(|c| *c == ["destroyVm", "--instance", created[0].as_str()]),
            "the failed VM is destroyed: {:?}",
            rig.calls()
        );
        assert_eq!(rig.instances(), vec![created[1].clone()]);
    }
}

/// Per-job credentials need a backend with accounts: on any other the job is given up at once
/// (a retry would be refused the same way), with Tango's header and nothing run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_its_own_credentials_is_refused_by_a_backend_without_accounts() {
    let daemon = Daemon::start(DaemonOptions::local()).await;
    let options = JobOptions {
        extra: json!({"accessKeyId": "AKIDJOB", "accessKey": "job-secret"}),
        ..job_options("hello", 30)
    };
    let done = run_job(&daemon, "course-refused", "hello", &options).await;
    let error =
        "Internal error: initializeVM failed: the local backend does not take per-job credentials";
    let lines: Vec<&str> = done.header.lines().collect();
    assert_eq!(lines.len(), 5, "{}", done.header);
    assert!(
        lines[1].ends_with(&format!("]: {error}")),
        "{}",
        done.header
    );
    assert!(
        lines[2].ends_with("]: Job status: waitVM=None copyIn=None runJob=None copyOut=None"),
        "{}",
        done.header
    );
    assert!(done.body.is_empty());
    assert_eq!(done.dead["retries"], 0, "not retried");
    let trace = trace_of(&done.dead);
    assert!(
        trace
            .last()
            .is_some_and(|l| l.ends_with(&format!("|{error}"))),
        "{trace:?}"
    );
    assert!(!done.dead.to_string().contains("job-secret"));
}
