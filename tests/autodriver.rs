//! The autodriver binary, run directly on the shared example jobs and on jobs that try to
//! escape it.
//!
//! Needs root: the autodriver switches to a numeric uid per test (from 2_100_000_000 up,
//! none of them a real user) and the tests check that no process of that uid is left.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::jobs::{self, Job, Limits};
use tango::autodriver::report::{Limit, Report};
use tango::host::procs;

const MIB: u64 = 1024 * 1024;

fn require_root() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests need root: the autodriver switches users and the tests inspect every \
         process of the job's uid (run `cargo test --test autodriver` as root)"
    );
}

/// A uid no other test (in this or a concurrent test process) uses.
fn test_uid() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    2_100_000_000 + (std::process::id() % 100_000) * 100 + N.fetch_add(1, Ordering::Relaxed) % 100
}

/// The autodriver's options, Tango's defaults unless a test says otherwise.
#[derive(Debug, Clone)]
struct Opts {
    nproc: u64,
    fsize: u64,
    timeout: u64,
    osize: u64,
    cpu: u64,
    address_space: u64,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            nproc: 100,
            fsize: 100 * MIB,
            timeout: 30,
            osize: 1_024_000,
            cpu: 0,
            address_space: 0,
        }
    }
}

impl Opts {
    fn limits(&self) -> Limits {
        Limits {
            osize: self.osize,
            fsize: self.fsize,
            network_disabled: false,
        }
    }
}

/// A private directory for one run: `job/` for the inputs, and the autodriver's files.
struct Workspace {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    uid: u32,
}

impl Workspace {
    fn new() -> Workspace {
        let tmp = tempfile::Builder::new()
            .prefix("autodriver-test-")
            .tempdir()
            .expect("temp dir");
        // The job's uid must be able to reach its directory.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let root = tmp.path().to_path_buf();
        std::fs::create_dir(root.join("job")).unwrap();
        Workspace {
            _tmp: tmp,
            root,
            uid: test_uid(),
        }
    }

    fn job_dir(&self) -> PathBuf {
        self.root.join("job")
    }
    fn output(&self) -> PathBuf {
        self.root.join("output")
    }
    fn log(&self) -> PathBuf {
        self.root.join("output.log")
    }
    fn report(&self) -> PathBuf {
        self.root.join("report.json")
    }

    fn with_makefile(self, makefile: &str) -> Workspace {
        std::fs::write(self.job_dir().join("Makefile"), makefile).unwrap();
        self
    }

    fn command(&self, opts: &Opts) -> Command {
        let mut cmd = self.command_without_ids(opts);
        cmd.args([
            "--uid",
            &self.uid.to_string(),
            "--gid",
            &self.uid.to_string(),
        ]);
        cmd
    }

    /// The command line without `--uid/--gid`.
    fn command_without_ids(&self, opts: &Opts) -> Command {
        let mut cmd = Command::new(jobs::autodriver_binary());
        cmd.args(["-u", &opts.nproc.to_string()])
            .args(["-f", &opts.fsize.to_string()])
            .args(["-t", &opts.timeout.to_string()])
            .args(["-o", &opts.osize.to_string()])
            .args(["-c", &opts.cpu.to_string()])
            .args(["-a", &opts.address_space.to_string()])
            .arg("--output")
            .arg(self.output())
            .arg("--output-log")
            .arg(self.log())
            .arg("--report")
            .arg(self.report())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn start(&self, opts: &Opts) -> Child {
        self.command(opts)
            .arg(self.job_dir())
            .spawn()
            .expect("start the autodriver")
    }

    fn run(&self, opts: &Opts) -> Run {
        let started = Instant::now();
        let out = self
            .command(opts)
            .arg(self.job_dir())
            .output()
            .expect("run the autodriver");
        self.finish(out, started.elapsed())
    }

    fn finish(&self, out: std::process::Output, elapsed: Duration) -> Run {
        let exit = out.status.code().expect("the autodriver ended by a signal");
        assert!(
            out.stdout.is_empty(),
            "with --output nothing goes to stdout: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        let output = std::fs::read(self.output()).expect("the output file");
        let report: Report =
            serde_json::from_slice(&std::fs::read(self.report()).expect("the report file"))
                .expect("the report is JSON");
        assert_eq!(report.autodriver_exit, exit);
        Run {
            exit,
            output,
            report,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            uid: self.uid,
            elapsed,
        }
    }
}

#[derive(Debug)]
struct Run {
    exit: i32,
    output: Vec<u8>,
    report: Report,
    stderr: String,
    uid: u32,
    elapsed: Duration,
}

impl Run {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }

    fn first_line(&self) -> String {
        self.text().lines().next().unwrap_or("").to_string()
    }

    /// Nothing of the job's uid runs any more.
    fn assert_nothing_left(&self) {
        assert_no_process_of(self.uid);
    }
}

fn assert_no_process_of(uid: u32) {
    let left = procs::live_processes_of(uid).expect("read /proc");
    assert!(
        left.is_empty(),
        "processes of the job's uid {uid} outlived it: {left:?}"
    );
}

/// Runs a shared job and checks it against its `expect` file.
fn run_shared(job: &Job, opts: &Opts) -> Run {
    require_root();
    let ws = Workspace::new();
    job.copy_inputs_to(&ws.job_dir());
    let run = ws.run(opts);
    check_shared(job, opts, &run);
    run.assert_nothing_left();
    run
}

fn check_shared(job: &Job, opts: &Opts, run: &Run) {
    assert!(
        job.expect.allows_autodriver_exit(run.exit),
        "{}: the autodriver exited {} ({:?}); stderr {}; output:\n{}",
        job.name,
        run.exit,
        job.expect.status,
        run.stderr,
        run.text()
    );
    if let Err(e) = job.expect.check_output(&run.output, &opts.limits()) {
        panic!("{}: {e}", job.name);
    }
}

// ---- the shared jobs, one test each ----

/// Every shared job has a test here, so a new one is not forgotten.
#[test]
fn every_shared_job_is_tested() {
    let names: Vec<String> = jobs::all_jobs().into_iter().map(|j| j.name).collect();
    let tested = [
        "bigfile", "binary", "files", "flood", "forever", "forkbomb", "hello", "memhog", "network",
        "nonzero", "partial", "score",
    ];
    assert_eq!(
        names, tested,
        "a shared job has no test in tests/autodriver.rs"
    );
}

#[test]
fn hello() {
    let run = run_shared(&jobs::job("hello"), &Opts::default());
    assert_eq!(run.first_line(), "Autodriver: Job exited with status 0");
    assert_eq!(run.report.exit_status, Some(0));
    assert_eq!(run.report.limit, Limit::None);
    let status_line = "Autodriver: Job exited with status 0\n";
    assert_eq!(
        run.report.output_bytes,
        (run.output.len() - status_line.len()) as u64
    );
}

#[test]
fn score() {
    let run = run_shared(&jobs::job("score"), &Opts::default());
    assert!(!run.report.truncated);
}

#[test]
fn nonzero() {
    let run = run_shared(&jobs::job("nonzero"), &Opts::default());
    assert_eq!(run.first_line(), "Autodriver: Job exited with status 2");
    assert_eq!(run.report.exit_status, Some(2));
}

#[test]
fn binary() {
    let run = run_shared(&jobs::job("binary"), &Opts::default());
    assert!(jobs::contains(&run.output, b"bytes: \xff\xfe not utf-8"));
}

#[test]
fn files() {
    run_shared(&jobs::job("files"), &Opts::default());
}

#[test]
fn flood() {
    let opts = Opts {
        osize: 64 * 1024,
        ..Opts::default()
    };
    let run = run_shared(&jobs::job("flood"), &opts);
    assert!(run.report.truncated);
    assert!(run.report.output_bytes >= 50_000_000, "{:?}", run.report);
    assert_eq!(
        run.output.len(),
        "Autodriver: Job exited with status 0\n".len()
            + 64 * 1024
            + "\n...[excess bytes elided]...\n".len()
    );
    assert!(run.output.ends_with(b"last line of the flood\n"));
}

#[test]
fn bigfile() {
    let opts = Opts::default();
    let run = run_shared(&jobs::job("bigfile"), &opts);
    assert_eq!(run.report.limit, Limit::Fsize);
    let sizes = jobs::ls_sizes(&run.text());
    assert_eq!(sizes, vec![("big.bin".to_string(), 100 * MIB)]);
}

#[test]
fn forever() {
    let opts = Opts {
        timeout: 3,
        ..Opts::default()
    };
    let run = run_shared(&jobs::job("forever"), &opts);
    assert_eq!(run.exit, 2);
    assert_eq!(
        run.first_line(),
        "Autodriver: Job timed out after 3 seconds"
    );
    assert_eq!(run.report.limit, Limit::Timeout);
    assert_eq!(run.report.signal, Some(libc::SIGKILL));
    assert!(run.report.killed_processes >= 1);
    assert!(run.report.wall_secs >= 3.0, "{:?}", run.report);
    assert!(
        run.elapsed < Duration::from_secs(30),
        "hung: {:?}",
        run.elapsed
    );
}

#[test]
fn forkbomb() {
    require_root();
    let job = jobs::job("forkbomb");
    let opts = Opts {
        timeout: 10,
        ..Opts::default()
    };
    let ws = Workspace::new();
    job.copy_inputs_to(&ws.job_dir());

    // While the bomb goes off, this process must still be able to start processes. The
    // prober starts one after another (the bomb may end the job within a fifth of a second,
    // once the uid's process budget is spent and the script's own `sleep` cannot start), and
    // every one of them must succeed; how many fit in the run is the machine's speed, not
    // the claim, so only probes begun while the bomb ran are counted, and one is required.
    let stop = Arc::new(AtomicBool::new(false));
    let bombing = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let prober = {
        let (stop, bombing, failures) = (stop.clone(), bombing.clone(), failures.clone());
        std::thread::spawn(move || {
            let mut during = 0;
            while !stop.load(Ordering::Acquire) {
                let began_during = bombing.load(Ordering::Acquire);
                match Command::new("true").status() {
                    Ok(s) if s.success() => {}
                    other => failures.lock().unwrap().push(format!("{other:?}")),
                }
                if began_during {
                    during += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            during
        })
    };
    bombing.store(true, Ordering::Release);
    let run = ws.run(&opts);
    let ran_for = run.elapsed;
    // The run is over once `ws.run` returns: a probe begun after this did not meet the bomb.
    bombing.store(false, Ordering::Release);
    stop.store(true, Ordering::Release);
    let during = prober.join().unwrap();
    check_shared(&job, &opts, &run);
    assert!(
        during >= 1,
        "no probe began during the fork bomb ({ran_for:?})"
    );
    assert_eq!(*failures.lock().unwrap(), Vec::<String>::new());
    run.assert_nothing_left();
}

#[test]
fn memhog() {
    let opts = Opts {
        address_space: 256 * MIB,
        ..Opts::default()
    };
    run_shared(&jobs::job("memhog"), &opts);
}

#[test]
fn network() {
    // Without disable_network (a backend's job, see tests/local_backend.rs) the job just
    // succeeds and lists the interfaces it sees.
    run_shared(&jobs::job("network"), &Opts::default());
}

#[test]
fn partial() {
    require_root();
    let job = jobs::job("partial");
    let opts = Opts::default();
    let ws = Workspace::new();
    job.copy_inputs_to(&ws.job_dir());
    let started = Instant::now();
    let mut child = ws.start(&opts);
    for want in &job.expect.partial_output_contains_while_running {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let log = std::fs::read(ws.log()).unwrap_or_default();
            if jobs::contains(&log, want.as_bytes()) {
                break;
            }
            assert!(Instant::now() < deadline, "the log never showed {want:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job had ended before its partial output was read"
        );
    }
    let out = child.wait_with_output().unwrap();
    let run = ws.finish(out, started.elapsed());
    check_shared(&job, &opts, &run);
    run.assert_nothing_left();
}

// ---- what the autodriver does beyond the shared jobs ----

#[test]
fn job_runs_as_its_uid_in_its_directory() {
    require_root();
    let ws = Workspace::new()
        .with_makefile("all:\n\t@id -u\n\t@id -g\n\t@echo home=$$HOME\n\t@pwd\n\t@touch made\n");
    let run = ws.run(&Opts::default());
    assert_eq!(run.exit, 0, "{}", run.text());
    let dir = ws.job_dir().canonicalize().unwrap();
    let want = format!(
        "Autodriver: Job exited with status 0\n{uid}\n{uid}\nhome={d}\n{d}\n",
        uid = ws.uid,
        d = dir.display()
    );
    assert_eq!(run.text(), want);
    assert_eq!((run.report.uid, run.report.gid), (ws.uid, ws.uid));
    // Afterwards the directory is empty and belongs to its owner again.
    assert_eq!(std::fs::read_dir(ws.job_dir()).unwrap().count(), 0);
    assert_eq!(std::fs::metadata(ws.job_dir()).unwrap().uid(), 0);
}

#[test]
fn daemonised_children_do_not_outlive_the_job() {
    require_root();
    // A double fork into a new session: out of make's process group and session.
    let ws = Workspace::new().with_makefile(
        "all:\n\t@sh -c 'setsid sh -c \"sleep 300\" </dev/null >/dev/null 2>&1 &'\n\
         \t@sh -c 'nohup sleep 300 </dev/null >/dev/null 2>&1 &'\n\t@echo started\n",
    );
    let run = ws.run(&Opts::default());
    assert_eq!(run.exit, 0, "{}", run.text());
    assert!(run.report.killed_processes >= 2, "{:?}", run.report);
    assert!(run.elapsed < Duration::from_secs(20), "{:?}", run.elapsed);
    run.assert_nothing_left();
}

#[test]
fn a_job_that_runs_a_while_yields_to_younger_ones() {
    require_root();
    // `nice` prints the caller's niceness; a child started after the demotion inherits it.
    // The autodriver is make's parent: field 4 of make's /proc stat, its nice field 19.
    // Then the autodriver's session (field 6) and its pid, and its session's autogroup.
    let ws = Workspace::new().with_makefile(
        "all:\n\t@echo before $$(nice)\n\t@sleep 1.5\n\t@echo after $$(nice)\n\
         \t@sh -c 'echo child $$(nice)'\n\t@cat /proc/self/autogroup || true\n\
         \t@echo driver $$(cut -d' ' -f19 /proc/$$(cut -d' ' -f4 /proc/$$PPID/stat)/stat)\n\
         \t@d=$$(cut -d' ' -f4 /proc/$$PPID/stat); \
         echo driver-session $$(cut -d' ' -f6 /proc/$$d/stat) $$d; \
         cat /proc/$$d/autogroup || true\n",
    );
    let started = Instant::now();
    let out = ws
        .command(&Opts::default())
        .args(["--demote-after", "700"])
        .arg(ws.job_dir())
        .output()
        .expect("run the autodriver");
    let run = ws.finish(out, started.elapsed());
    assert_eq!(run.exit, 0, "{}", run.text());
    let text = run.text();
    for line in ["before 0", "after 10", "child 10", "driver 10"] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in {text}");
    }
    // Where the kernel groups sessions for the scheduler, the job's whole group yields.
    let autogroups = std::fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled")
        .is_ok_and(|v| v.trim() == "1");
    if autogroups {
        assert!(
            text.lines()
                .any(|l| l.starts_with("/autogroup-") && l.ends_with(" nice 10")),
            "the session's autogroup was not reniced: {text}"
        );
    } else {
        // Not counted as proved: the nice checks above still ran, the autogroup ones not.
        eprintln!(
            "note: this host has no scheduler autogroups (kernel.sched_autogroup_enabled is \
             not 1): the autogroup renice was NOT checked"
        );
    }
    // Without a terminal (as under tango), the autodriver leads a session of its own, so its
    // work for the job is not weighed as its starter's; with one, it stays in ours.
    // The driver-session line, then the autodriver's autogroup on the next.
    let mut after = text
        .lines()
        .skip_while(|l| !l.starts_with("driver-session "));
    let session = after
        .next()
        .and_then(|l| l.strip_prefix("driver-session "))
        .unwrap_or_else(|| panic!("no driver-session line in {text}"));
    let (sid, pid) = session.split_once(' ').expect("session and pid");
    let has_terminal = std::fs::File::open("/dev/tty").is_ok();
    assert_eq!(sid == pid, !has_terminal, "session {sid}, autodriver {pid}");
    if autogroups && !has_terminal {
        let ours = std::fs::read_to_string("/proc/self/autogroup").expect("our autogroup");
        let ours = ours.split_whitespace().next().unwrap_or_default();
        let group = after.next().unwrap_or_default();
        assert!(
            group.starts_with("/autogroup-") && group.ends_with(" nice 10"),
            "the autodriver's own autogroup was not reniced: {group:?} in {text}"
        );
        assert!(
            !group.starts_with(&format!("{ours} ")),
            "the autodriver is in our autogroup: {group:?}"
        );
    }
    run.assert_nothing_left();
}

#[test]
fn cpu_limit_stops_a_busy_job() {
    require_root();
    let ws = Workspace::new().with_makefile("all:\n\t@echo spinning\n\t@while :; do :; done\n");
    let opts = Opts {
        cpu: 2,
        timeout: 60,
        ..Opts::default()
    };
    let run = ws.run(&opts);
    assert_eq!(run.exit, 2, "{}", run.text());
    assert_eq!(
        run.first_line(),
        "Autodriver: Job timed out after 2 seconds"
    );
    assert_eq!(run.report.limit, Limit::Cpu);
    assert!(run.report.cpu_secs >= 2.0, "{:?}", run.report);
    assert!(run.elapsed < Duration::from_secs(50), "{:?}", run.elapsed);
    run.assert_nothing_left();
}

#[test]
fn a_job_that_grows_into_the_address_space_limit_is_reported() {
    require_root();
    // Grows 8 MiB at a time until an allocation fails, then lingers a moment (as a job
    // printing its error would): the sampled peak shows the limit was reached.
    let ws = Workspace::new().with_makefile("all:\n\t@python3 grow.py\n");
    std::fs::write(
        ws.job_dir().join("grow.py"),
        "import time\nl = []\ntry:\n    while True:\n        l.append(bytearray(8 << 20))\n\
         except MemoryError:\n    print('out of memory', flush=True)\n    time.sleep(1)\n",
    )
    .unwrap();
    let opts = Opts {
        address_space: 256 * MIB,
        ..Opts::default()
    };
    let run = ws.run(&opts);
    assert_eq!(run.exit, 0, "{}", run.text());
    assert!(run.text().contains("out of memory"), "{}", run.text());
    assert_eq!(run.report.limit, Limit::Memory, "{:?}", run.report);
    assert!(run.report.peak_rss_bytes > 100 * MIB, "{:?}", run.report);
    // Far from the limit, the report says none.
    let ws = Workspace::new().with_makefile("all:\n\t@python3 -c 'x = bytearray(64 << 20)'\n");
    let run = ws.run(&opts);
    assert_eq!(run.exit, 0, "{}", run.text());
    assert_eq!(run.report.limit, Limit::None, "{:?}", run.report);
}

#[test]
fn files_the_job_leaves_in_shared_places_are_removed() {
    require_root();
    let ws = Workspace::new();
    let tmp_file = format!("/tmp/autodriver-test-{}", ws.uid);
    let shm_dir = format!("/dev/shm/autodriver-test-{}", ws.uid);
    let ws = ws.with_makefile(&format!(
        "all:\n\t@echo x > {tmp_file}\n\t@mkdir {shm_dir}\n\t@echo y > {shm_dir}/f\n\t@echo done\n"
    ));
    // A file of someone else in /tmp stays.
    let bystander = tempfile::NamedTempFile::new().unwrap();
    let run = ws.run(&Opts::default());
    assert_eq!(run.exit, 0, "{}", run.text());
    assert!(!Path::new(&tmp_file).exists(), "{tmp_file} was left");
    assert!(!Path::new(&shm_dir).exists(), "{shm_dir} was left");
    assert!(bystander.path().exists());
}

#[test]
fn a_link_planted_at_the_log_is_not_followed() {
    require_root();
    let ws = Workspace::new().with_makefile("all:\n\t@echo output\n");
    let victim = ws.root.join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    symlink(&victim, ws.log()).unwrap();
    symlink(&victim, ws.output()).unwrap();
    let run = ws.run(&Opts::default());
    assert_eq!(run.exit, 0, "{}", run.text());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(run.text(), "Autodriver: Job exited with status 0\noutput\n");
}

#[test]
fn the_log_holds_only_the_head() {
    require_root();
    let ws = Workspace::new().with_makefile("all:\n\t@seq 1 100000\n");
    let opts = Opts {
        osize: 1000,
        ..Opts::default()
    };
    let run = ws.run(&opts);
    assert_eq!(run.exit, 0);
    let log = std::fs::read(ws.log()).unwrap();
    assert_eq!(log.len(), 1000);
    assert!(log.starts_with(b"1\n2\n3\n"));
    assert!(run.output.ends_with(b"99999\n100000\n"));
}

#[test]
fn a_stop_signal_kills_the_job_and_cleans_up() {
    require_root();
    let ws = Workspace::new().with_makefile("all:\n\t@echo waiting\n\t@sleep 300\n");
    let started = Instant::now();
    let mut child = ws.start(&Opts::default());
    // Wait until the job runs, then stop the autodriver.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !jobs::contains(&std::fs::read(ws.log()).unwrap_or_default(), b"waiting") {
        assert!(Instant::now() < deadline, "the job never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(started.elapsed() < Duration::from_secs(30));
    let output = String::from_utf8_lossy(&std::fs::read(ws.output()).unwrap()).into_owned();
    assert_eq!(output, "Autodriver: Interrupted by signal 15\n");
    assert_no_process_of(ws.uid);
}

#[test]
fn usage_errors_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for args in [
        vec![],
        vec!["-t", "ten", d],
        vec!["-t", "-1", d],
        vec!["--uid", "5", d],
        vec![d, d],
        vec!["--bogus", d],
    ] {
        let out = Command::new(jobs::autodriver_binary())
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
    }
    require_root();
    let out = Command::new(jobs::autodriver_binary())
        .args(["--uid", "0", "--gid", "0", d])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Autodriver: refusing to run a job as root\n"
    );
}

#[test]
fn a_missing_directory_is_an_os_error() {
    require_root();
    let ws = Workspace::new();
    std::fs::remove_dir(ws.job_dir()).unwrap();
    let out = ws
        .command(&Opts::default())
        .arg(ws.job_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let output = String::from_utf8_lossy(&std::fs::read(ws.output()).unwrap()).into_owned();
    assert!(
        output.starts_with("Autodriver: Error changing directory:"),
        "{output}"
    );
    let report: Report = serde_json::from_slice(&std::fs::read(ws.report()).unwrap()).unwrap();
    assert_eq!(report.autodriver_exit, 3);
    assert!(report.error.is_some());
}

/// Runs `cmd` as `uid` without privileges, through util-linux's `setpriv`.
fn as_user(uid: u32, cmd: &Command) -> Command {
    let mut wrapped = Command::new("setpriv");
    wrapped
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    wrapped
}

#[test]
fn unprivileged_it_runs_make_as_its_caller_and_still_kills_the_job() {
    require_root();
    let ws = Workspace::new().with_makefile(
        "all:\n\t@id -u\n\t@sh -c 'setsid sleep 300 </dev/null >/dev/null 2>&1 &'\n\
         \t@sleep 300\n",
    );
    // The caller owns the workspace; the autodriver cannot switch users.
    for p in [ws.root.clone(), ws.job_dir(), ws.job_dir().join("Makefile")] {
        std::os::unix::fs::chown(&p, Some(ws.uid), Some(ws.uid)).unwrap();
    }
    let opts = Opts {
        timeout: 2,
        nproc: 0,
        ..Opts::default()
    };
    let mut plain = ws.command_without_ids(&opts);
    plain.arg(ws.job_dir());
    let started = Instant::now();
    let out = as_user(ws.uid, &plain).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let run = ws.finish(out, started.elapsed());
    assert_eq!(
        run.text(),
        format!("Autodriver: Job timed out after 2 seconds\n{}\n", ws.uid)
    );
    assert!(run.report.killed_processes >= 2, "{:?}", run.report);
    run.assert_nothing_left();

    // Asking for another uid without privileges is an OS error.
    let mut other = ws.command_without_ids(&opts);
    other.args(["--uid", "5", "--gid", "5"]).arg(ws.job_dir());
    let out = as_user(ws.uid, &other).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn a_limit_above_the_hard_limit_in_force_keeps_the_lower_one() {
    require_root();
    // Unprivileged under a hard RLIMIT_NPROC of 400, asked for 100000: it cannot raise the
    // hard limit, so the job runs under 400 instead of failing with EPERM.
    let ws = Workspace::new()
        .with_makefile("all:\n\t@awk '/Max processes/ { print $$3, $$4 }' /proc/self/limits\n");
    for p in [ws.root.clone(), ws.job_dir(), ws.job_dir().join("Makefile")] {
        std::os::unix::fs::chown(&p, Some(ws.uid), Some(ws.uid)).unwrap();
    }
    let opts = Opts {
        timeout: 20,
        nproc: 100_000,
        ..Opts::default()
    };
    let mut plain = ws.command_without_ids(&opts);
    plain.arg(ws.job_dir());
    let user = as_user(ws.uid, &plain);
    let mut limited = Command::new("prlimit");
    limited
        .arg("--nproc=400:400")
        .arg(user.get_program())
        .args(user.get_args());
    let started = Instant::now();
    let out = limited.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let run = ws.finish(out, started.elapsed());
    assert_eq!(
        run.text(),
        "Autodriver: Job exited with status 0\n400 400\n"
    );
}

#[test]
fn it_refuses_to_run_as_the_grading_user() {
    require_root();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let nobody = tango::autodriver::passwd::find_user(&passwd, "nobody")
        .expect("this test needs a `nobody` user in /etc/passwd");
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(nobody.uid), Some(nobody.gid)).unwrap();
    let mut cmd = Command::new(jobs::autodriver_binary());
    cmd.args(["--user", "nobody", "--output-log"])
        .arg(dir.path().join("log"))
        .arg(dir.path());
    let out = as_user(nobody.uid, &cmd).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Autodriver: This should not be run as the grading user nobody\n"
    );
}

#[test]
fn set_user_id_it_will_not_pick_another_uid() {
    require_root();
    // A set-user-ID root copy, run by an ordinary uid.
    let bin_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin_dir.path().join("autodriver");
    std::fs::copy(jobs::autodriver_binary(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let ws = Workspace::new();
    std::os::unix::fs::chown(&ws.root, Some(ws.uid), Some(ws.uid)).unwrap();
    let mut cmd = Command::new(&bin);
    cmd.args(["--uid", "1", "--gid", "1", "--output-log"])
        .arg(ws.log())
        .arg(ws.job_dir());
    let out = as_user(ws.uid, &cmd).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("need the autodriver to be started by root"),
        "{out:?}"
    );
    // Nor write, as root, a file its caller could not.
    let protected = tempfile::tempdir().unwrap();
    std::fs::set_permissions(protected.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let target = protected.path().join("planted");
    let mut cmd = Command::new(&bin);
    cmd.arg("--output").arg(&target).arg(ws.job_dir());
    let out = as_user(ws.uid, &cmd).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        !target.exists(),
        "a set-user-ID autodriver wrote a file for its caller"
    );
}

// ---- --stdin-inputs: the job's files as a tar archive on standard input ----

/// A tar archive of `(name, content)` regular files, as the daemon sends them.
fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut out);
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.finish().unwrap();
    }
    out
}

/// One entry with any name and kind (the tar crate will not write `..` or `/` names), then
/// the end-of-archive marker.
fn raw_entry(name: &str, kind: tar::EntryType, link: &str) -> Vec<u8> {
    let mut header = tar::Header::new_old();
    header.set_entry_type(kind);
    header.set_size(0);
    header.set_mode(0o644);
    let old = header.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Runs the autodriver as the Docker backend does: `--stdin-inputs`, no `--output` (the
/// output is its standard output), into a directory that does not exist yet. Returns the
/// exit code, standard output and standard error.
fn run_with_stdin(ws: &Workspace, dir: &Path, stdin: Vec<u8>) -> (i32, String, String) {
    use std::io::Write;
    let mut cmd = Command::new(jobs::autodriver_binary());
    cmd.args(["-u", "100", "-f", "104857600", "-t", "20", "-o", "1024000"])
        .args(["--uid", &ws.uid.to_string(), "--gid", &ws.uid.to_string()])
        .arg("--stdin-inputs")
        .arg("--output-log")
        .arg(ws.log())
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start the autodriver");
    let mut input = child.stdin.take().unwrap();
    // Written from a thread: the autodriver may stop reading before the end (it must not
    // need end of file), and a full pipe must not block the test.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
        // Held open a moment: the autodriver must finish reading without end of file.
        std::thread::sleep(Duration::from_millis(300));
    });
    let out = child.wait_with_output().expect("run the autodriver");
    writer.join().unwrap();
    (
        out.status.code().expect("the autodriver ended by a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn stdin_inputs_land_in_the_directory_and_the_output_is_on_stdout() {
    require_root();
    let ws = Workspace::new();
    let dir = ws.root.join("fresh/job");
    let makefile = "all:\n\t@cat data.txt\n\t@ls -ln | tail -n +2 | while read m l u g s rest; do echo \"$$u $$s\"; done\n\t@echo \"stdin gave $$(cat | wc -c) bytes\"\n";
    let mut stdin = tar_of(&[
        ("Makefile", makefile.as_bytes()),
        ("data.txt", b"the data\n"),
    ]);
    // What follows the archive is not the job's: it must never see it.
    stdin.extend_from_slice(b"NOT FOR THE JOB\n");
    let (exit, stdout, stderr) = run_with_stdin(&ws, &dir, stdin);
    assert_eq!(exit, 0, "stdout {stdout}; stderr {stderr}");
    let uid = ws.uid;
    let size = makefile.len();
    assert_eq!(
        stdout,
        format!(
            "Autodriver: Job exited with status 0\nthe data\n{uid} {size}\n{uid} 9\nstdin gave 0 bytes\n"
        ),
        "the files were there, the job's, and only the output went to stdout"
    );
    assert!(stderr.is_empty(), "{stderr}");
    assert_no_process_of(uid);
}

#[test]
fn stdin_inputs_out_of_the_directory_are_refused() {
    require_root();
    for (name, kind, link) in [
        ("../escape", tar::EntryType::Regular, ""),
        ("/tmp/tango-stdin-inputs-abs", tar::EntryType::Regular, ""),
        ("a/../../escape", tar::EntryType::Regular, ""),
        ("link", tar::EntryType::Symlink, "/etc"),
        ("hard", tar::EntryType::Link, "/etc/passwd"),
        ("dev", tar::EntryType::Char, ""),
    ] {
        let ws = Workspace::new();
        let dir = ws.job_dir();
        let (exit, stdout, _) = run_with_stdin(&ws, &dir, raw_entry(name, kind, link));
        assert_eq!(exit, 3, "{name}: {stdout}");
        assert!(
            stdout.starts_with(&format!(
                "Autodriver: Error unpacking the inputs: input {name:?} refused"
            )),
            "{name}: {stdout}"
        );
        assert!(!ws.root.join("escape").exists(), "{name}");
        assert!(!Path::new("/tmp/tango-stdin-inputs-abs").exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "{name}");
    }
}

#[test]
fn stdin_inputs_cut_short_are_an_os_error() {
    require_root();
    let ws = Workspace::new();
    let whole = tar_of(&[("Makefile", b"all:\n\t@echo ran\n")]);
    // The entry without the end-of-archive marker, then end of file.
    let (exit, stdout, _) = run_with_stdin(&ws, &ws.job_dir(), whole[..1024].to_vec());
    assert_eq!(exit, 3, "{stdout}");
    assert!(
        stdout.starts_with("Autodriver: Error unpacking the inputs: the input archive ended"),
        "{stdout}"
    );
    assert!(!stdout.contains("ran"));
}
