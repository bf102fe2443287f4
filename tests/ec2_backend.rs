//! The `ec2SSH` backend against moto's EC2 emulator (started per test on loopback) and a real
//! sshd standing in for the instance. moto's instances are not real and their addresses are
//! not ours: the backend's SSH step goes to the test sshd (`ec2.ssh_address = "bastion"`),
//! never to an address moto made up. Everything created is checked in moto through the SDK,
//! before and after.
//!
//! Needs root (see `tests/support/sshd.rs`) and `moto_server` (`pip install 'moto[server]'`).

// A test is a scenario read from top to bottom: its length is its story, not several things.
#![allow(clippy::too_many_lines)]
#![cfg(feature = "ec2")]

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, InstanceStateName, ResourceType, Tag, TagSpecification};
use support::jobs;
use support::moto::{self, Moto};
use support::sshd::{self, Sshd};
use tango::config::Config;
use tango::model::{InputFile, Machine};
use tango::vmms::{self, Vmms, VmmsError};

/// The key pair the configuration names (`ec2.security_key_name`).
const KEY_NAME: &str = "tango-test-key";
const GROUP: &str = "tango-test-sg";
/// The access key id the daemon's own configuration uses.
const CONFIG_KEY_ID: &str = "AKIDTANGOCONFIG";

struct Rig {
    moto: Moto,
    sshd: Sshd,
    config: Config,
    /// An SDK client of our own, to look at what the backend did.
    ec2: aws_sdk_ec2::Client,
    /// One of moto's stock AMIs, as `ec2.default_ami`.
    default_ami: String,
}

impl Rig {
    async fn new() -> Rig {
        let moto = Moto::start();
        let sshd = Sshd::start();
        let ec2 = moto.client("AKIDTESTCHECKER").await;
        let default_ami = ec2
            .describe_images()
            .owners("amazon")
            .send()
            .await
            .unwrap()
            .images()
            .iter()
            .find_map(|i| i.image_id().map(str::to_string))
            .expect("moto has stock AMIs");
        // The configured key pair is the test's client key, imported as an administrator
        // would import theirs.
        let public = sshd::public_key_of(&sshd.client_key);
        ec2.import_key_pair()
            .key_name(KEY_NAME)
            .public_key_material(aws_sdk_ec2::primitives::Blob::new(public.into_bytes()))
            .send()
            .await
            .unwrap();

        let mut config = Config::default();
        config.vmms.name = "ec2SSH".into();
        config.vmms.prefix = format!("e{}", support::unique().replace('-', ""));
        config.vmms.destroy_secs = 5.0;
        config.ssh.user = sshd.user.clone();
        config.ssh.key_path = sshd.client_key.clone();
        config.ssh.port = sshd.port;
        config.ssh.retries = 2;
        config.ssh.interval = 0.2;
        config.ec2.region = moto::REGION.into();
        config.ec2.endpoint_url = moto.endpoint.clone();
        config.ec2.access_key_id = CONFIG_KEY_ID.into();
        config.ec2.secret_access_key = "config-secret".into();
        config.ec2.default_ami = default_ami.clone();
        config.ec2.default_instance_type = "t3.small".into();
        config.ec2.default_security_group = GROUP.into();
        config.ec2.security_key_name = KEY_NAME.into();
        config.ec2.ssh_address = "bastion".into();
        config.ec2.bastion_host = "127.0.0.1".into();
        config.ec2.images = vec!["default.img".into()];
        config.timeouts.initialize_vm = 30;
        config.timeouts.copy_in = 20;
        config.timeouts.copy_out = 20;
        Rig {
            moto,
            sshd,
            config,
            ec2,
            default_ami,
        }
    }

    async fn backend(&self) -> Arc<dyn Vmms> {
        vmms::open(&self.config).await.expect("open ec2SSH")
    }

    /// Instances in moto whose Name starts with our prefix, with their state.
    async fn instances(&self) -> Vec<aws_sdk_ec2::types::Instance> {
        let out = self
            .ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("tag:Name")
                    .values(format!("{}-*", self.config.vmms.prefix))
                    .build(),
            )
            .send()
            .await
            .unwrap();
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
            .unwrap()
            .key_pairs()
            .iter()
            .filter_map(|k| k.key_name().map(str::to_string))
            .collect()
    }

    fn inputs(&self) -> Vec<InputFile> {
        let dir = self.sshd.scratch();
        fs::write(dir.join("Makefile"), "autograde:\n\techo hello\n").unwrap();
        vec![InputFile {
            local_file: dir.join("Makefile").display().to_string(),
            dest_file: "Makefile".into(),
        }]
    }
}

fn machine(id: u64) -> Machine {
    Machine {
        name: "default".into(),
        image: "default.img".into(),
        vmms: "ec2SSH".into(),
        cores: Some(1.0),
        memory: Some(512),
        id: Some(id),
        owner: Some("manager-a".into()),
        ..Machine::default()
    }
}

fn tag_of<'a>(instance: &'a aws_sdk_ec2::types::Instance, key: &str) -> Option<&'a str> {
    instance
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

fn state_of(instance: &aws_sdk_ec2::types::Instance) -> Option<InstanceStateName> {
    instance.state().and_then(|s| s.name()).cloned()
}

#[tokio::test]
async fn an_instance_is_launched_as_configured_used_over_ssh_and_terminated() {
    let rig = Rig::new().await;
    let backend = rig.backend().await;
    assert_eq!(backend.name(), "ec2SSH");
    assert_eq!(
        backend.get_images().await.unwrap(),
        vec!["default.img".to_string()]
    );
    assert!(rig.instances().await.is_empty());

    let mut vm = machine(1000);
    backend.initialize_vm(&mut vm).await.unwrap();
    let name = format!("{}-1000-default", rig.config.vmms.prefix);
    assert_eq!(backend.instance_name(&vm), name);
    assert_eq!(
        vm.host.as_deref(),
        Some("127.0.0.1"),
        "the bastion, not moto's address"
    );

    // What moto holds: one running instance, launched as Tango would.
    let instances = rig.instances().await;
    assert_eq!(instances.len(), 1);
    let instance = &instances[0];
    assert_eq!(instance.instance_id(), vm.instance.as_deref());
    assert_eq!(state_of(instance), Some(InstanceStateName::Running));
    assert_eq!(
        instance.instance_type().map(|t| t.as_str()),
        Some("t2.micro"),
        "1 core, 512 MiB is Tango's t2.micro"
    );
    assert_eq!(instance.image_id(), Some(rig.default_ami.as_str()));
    assert_eq!(instance.key_name(), Some(KEY_NAME));
    assert_eq!(tag_of(instance, "Name"), Some(name.as_str()));
    assert_eq!(tag_of(instance, "tango:owner"), Some("manager-a"));
    assert_eq!(tag_of(instance, "tango:id"), Some("1000"));
    assert_eq!(
        tag_of(instance, "tango:prefix"),
        Some(rig.config.vmms.prefix.as_str())
    );
    // The security group was missing, so it was made, open for SSH only.
    let groups = rig
        .ec2
        .describe_security_groups()
        .filters(Filter::builder().name("group-name").values(GROUP).build())
        .send()
        .await
        .unwrap();
    let group = &groups.security_groups()[0];
    assert!(
        instance
            .security_groups()
            .iter()
            .any(|g| g.group_id() == group.group_id())
    );
    let rules = group.ip_permissions();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0].ip_protocol(), Some("tcp"));
    assert_eq!(
        (rules[0].from_port(), rules[0].to_port()),
        (Some(22), Some(22))
    );

    // getVMs finds it by our tags, with its owner.
    let listed = backend.get_vms().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, Some(1000));
    assert_eq!(listed[0].name, "default");
    assert_eq!(listed[0].image, "default.img");
    assert_eq!(listed[0].owner.as_deref(), Some("manager-a"));
    assert_eq!(listed[0].instance, vm.instance);
    assert!(backend.exists_vm(&vm).await.unwrap());

    // The SSH steps go to the sshd standing in for the instance.
    backend.wait_vm(&vm, Duration::from_secs(20)).await.unwrap();
    backend.copy_in(&vm, &rig.inputs()).await.unwrap();
    assert_eq!(
        fs::read_to_string(rig.sshd.home.join("autolab/Makefile")).unwrap(),
        "autograde:\n\techo hello\n"
    );
    fs::write(rig.sshd.home.join("output"), vec![b'x'; 50_000]).unwrap();
    let out = rig.sshd.scratch().join("out");
    backend.copy_out(&vm, &out, 1000).await.unwrap();
    assert_eq!(
        fs::metadata(&out).unwrap().len(),
        1000 + tango::vmms::OUTPUT_SLACK
    );

    // A second machine of another shape gets Tango's type for it.
    let mut big = Machine {
        cores: Some(4.0),
        memory: Some(16_384),
        ..machine(1001)
    };
    backend.initialize_vm(&mut big).await.unwrap();

    backend.safe_destroy_vm(&vm).await.unwrap();
    backend.safe_destroy_vm(&big).await.unwrap();
    let after = rig.instances().await;
    assert_eq!(after.len(), 2);
    for instance in &after {
        assert!(
            matches!(
                state_of(instance),
                Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
            ),
            "{instance:?}"
        );
        if instance.instance_id() == big.instance.as_deref() {
            assert_eq!(
                instance.instance_type().map(|t| t.as_str()),
                Some("m3.xlarge")
            );
        }
    }
    assert!(backend.get_vms().await.unwrap().is_empty());
    assert!(!backend.exists_vm(&vm).await.unwrap());
    // Only the configuration's credentials were used.
    assert_eq!(
        rig.moto.signers_of("RunInstances"),
        [CONFIG_KEY_ID, CONFIG_KEY_ID]
    );
    // The configured key pair is the administrator's: never deleted.
    assert!(rig.key_pairs().await.contains(&KEY_NAME.to_string()));
}

#[tokio::test]
async fn a_job_with_its_own_credentials_gets_a_key_pair_that_is_deleted_after() {
    let mut rig = Rig::new().await;
    let key_dir = rig.sshd.scratch();
    rig.config.ec2.dynamic_security_key_path = key_dir.clone();
    let backend = rig.backend().await;
    let job_key_id = format!("AKIDJOB{}", support::unique().replace('-', ""));
    let job_backend = backend
        .with_credentials(&job_key_id, "job-secret")
        .expect("ec2SSH takes per-job credentials");
    let mut vm = machine(2000);
    job_backend.initialize_vm(&mut vm).await.unwrap();
    let key_name = format!("{}-2000-default", rig.config.vmms.prefix);

    // A fresh key pair in the job's account, its private key written for ssh only.
    assert!(
        rig.key_pairs().await.contains(&key_name),
        "{:?}",
        rig.key_pairs().await
    );
    let instances = rig.instances().await;
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].key_name(), Some(key_name.as_str()));
    let pem = key_dir.join(format!("{key_name}.pem"));
    assert!(pem.exists(), "the per-job private key is written");
    assert_eq!(
        fs::metadata(&pem).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The instance would get the key pair's public half from EC2; give it to our sshd.
    rig.sshd.authorize(&sshd::public_key_of(&pem));
    job_backend
        .wait_vm(&vm, Duration::from_secs(20))
        .await
        .unwrap();
    job_backend.copy_in(&vm, &rig.inputs()).await.unwrap();
    assert!(rig.sshd.home.join("autolab/Makefile").exists());

    // Every EC2 call for this machine was signed with the job's key id.
    assert_eq!(
        rig.moto.signers_of("RunInstances"),
        vec![job_key_id.clone()]
    );
    assert_eq!(
        rig.moto.signers_of("CreateKeyPair"),
        vec![job_key_id.clone()]
    );

    job_backend.safe_destroy_vm(&vm).await.unwrap();
    assert!(!rig.key_pairs().await.contains(&key_name));
    assert!(!pem.exists(), "the private key file is removed");
    let after = rig.instances().await;
    assert!(matches!(
        state_of(&after[0]),
        Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
    ));
    assert!(
        rig.moto
            .signers_of("TerminateInstances")
            .iter()
            .all(|k| *k == job_key_id)
    );
    assert_eq!(
        rig.moto.signers_of("DeleteKeyPair").last(),
        Some(&job_key_id)
    );
}

#[tokio::test]
async fn an_image_named_after_one_of_our_amis_launches_that_ami() {
    let rig = Rig::new().await;
    // Make an AMI of our own named "grader-2026" (moto makes it from an instance).
    let made = rig
        .ec2
        .run_instances()
        .image_id(&rig.default_ami)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();
    let source = made.instances()[0].instance_id().unwrap().to_string();
    let ami = rig
        .ec2
        .create_image()
        .instance_id(&source)
        .name("grader-2026")
        .send()
        .await
        .unwrap()
        .image_id()
        .unwrap()
        .to_string();

    let mut config = rig.config.clone();
    config.ec2.images = Vec::new();
    let backend = vmms::open(&config).await.unwrap();
    // Without a configured list, the images are the AMIs this account owns.
    assert!(
        backend
            .get_images()
            .await
            .unwrap()
            .contains(&"grader-2026".to_string())
    );
    let mut vm = Machine {
        name: "grader-2026".into(),
        image: "grader-2026".into(),
        ..machine(1000)
    };
    backend.initialize_vm(&mut vm).await.unwrap();
    let instances = rig.instances().await;
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].image_id(), Some(ami.as_str()));
    backend.safe_destroy_vm(&vm).await.unwrap();
}

#[tokio::test]
async fn the_reserved_reservation_is_never_listed_or_terminated() {
    let rig = Rig::new().await;
    // An instance named like ours but in the reservation the configuration protects.
    let name = format!("{}-7-default", rig.config.vmms.prefix);
    let made = rig
        .ec2
        .run_instances()
        .image_id(&rig.default_ami)
        .min_count(1)
        .max_count(1)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(Tag::builder().key("Name").value(&name).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let reservation = made.reservation_id().unwrap().to_string();
    let instance_id = made.instances()[0].instance_id().unwrap().to_string();

    let mut config = rig.config.clone();
    config.ec2.reservation_id = reservation.clone();
    let backend = vmms::open(&config).await.unwrap();
    assert!(backend.get_vms().await.unwrap().is_empty());
    let vm = Machine {
        instance: Some(instance_id.clone()),
        host: Some("127.0.0.1".into()),
        ..machine(7)
    };
    let err = backend.destroy_vm(&vm).await.unwrap_err().to_string();
    assert!(err.contains(&reservation), "{err}");
    let instances = rig.instances().await;
    assert_eq!(state_of(&instances[0]), Some(InstanceStateName::Running));

    // Without the protection it is an ordinary leftover of ours.
    let backend = rig.backend().await;
    let listed = backend.get_vms().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, Some(7));
    assert_eq!(listed[0].owner, None, "made outside tango: no owner tag");
}

#[tokio::test]
async fn an_ssh_failure_in_copy_in_is_a_clear_error() {
    let mut rig = Rig::new().await;
    let backend = rig.backend().await;
    let mut vm = machine(1000);
    backend.initialize_vm(&mut vm).await.unwrap();
    backend.wait_vm(&vm, Duration::from_secs(20)).await.unwrap();
    rig.sshd.stop();
    let err = backend.copy_in(&vm, &rig.inputs()).await.unwrap_err();
    assert!(matches!(err, VmmsError::Backend(_)), "{err:?}");
    assert!(err.to_string().contains("cannot reach"), "{err}");
    // The instance is still there for the worker to destroy.
    assert!(backend.exists_vm(&vm).await.unwrap());
    backend.safe_destroy_vm(&vm).await.unwrap();
    assert!(!backend.exists_vm(&vm).await.unwrap());
}

#[tokio::test]
async fn bad_ec2_settings_are_reported_before_anything_is_launched() {
    let rig = Rig::new().await;
    let mut config = rig.config.clone();
    config.ec2.default_instance_type = String::new();
    let backend = vmms::open(&config).await.unwrap();
    let mut vm = Machine {
        cores: Some(3.0),
        ..machine(1000)
    };
    let err = backend
        .initialize_vm(&mut vm)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("ec2.default_instance_type"), "{err}");

    let mut config = rig.config.clone();
    config.ec2.default_ami = String::new();
    let backend = vmms::open(&config).await.unwrap();
    let err = backend
        .initialize_vm(&mut machine(1001))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("ec2.default_ami"), "{err}");
    assert!(rig.instances().await.is_empty());

    let mut config = rig.config.clone();
    config.ec2.secret_access_key = String::new();
    let err = vmms::open(&config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("secret_access_key"), "{err}");
}

/// Tango's example jobs, one after another on one instance (as a pool reuses it), through
/// the autodriver installed on the "instance" as docs/backends.md says (run through sudo).
#[tokio::test]
async fn the_example_jobs_run_on_an_ec2_instance() {
    let mut rig = Rig::new().await;
    let autodriver = rig.sshd.install_autodriver(&jobs::autodriver_binary());
    rig.config.ssh.autodriver = autodriver;
    let backend = rig.backend().await;
    let mut vm = machine(1000);
    backend.initialize_vm(&mut vm).await.unwrap();
    backend.wait_vm(&vm, Duration::from_secs(20)).await.unwrap();
    let scratch = rig.sshd.scratch();
    for (name, timeout) in [("hello", 60), ("score", 60), ("forever", 3), ("flood", 60)] {
        let job = jobs::job(name);
        sshd::run_example_job(backend.as_ref(), &vm, &job, timeout, &scratch).await;
    }
    backend.safe_destroy_vm(&vm).await.unwrap();
    assert!(matches!(
        state_of(&rig.instances().await[0]),
        Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
    ));
}
