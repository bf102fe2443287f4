//! The README's quick start: `scripts/quickstart.sh` builds, starts `tango serve` on the
//! embedded default with the `local` backend, grades `examples/hello/` through the REST API,
//! prints the output and stops the daemon. Here it runs with the binaries cargo already built
//! (`TANGO_BIN`, `AUTODRIVER`), so the test does not build again.

use std::path::Path;
use std::process::Command;

#[test]
fn the_quick_start_grades_the_sample_lab_and_stops_the_daemon() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(repo.join("scripts/quickstart.sh"))
        .env("TANGO_BIN", env!("CARGO_BIN_EXE_tango"))
        .env("AUTODRIVER", env!("CARGO_BIN_EXE_autodriver"))
        .env_remove("EXAMPLE")
        .output()
        .expect("run scripts/quickstart.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "quickstart.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );

    // The output file, as Autolab would receive it: Tango's header, the autodriver's
    // status line, the grader's output, the score JSON last.
    assert!(stdout.starts_with("Autograder ["), "{stdout}");
    assert!(
        stdout.contains("]: Received job quickstart_hello_1_student@example.com:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("]: Success: Autodriver returned normally\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Autodriver: Job exited with status 0\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Running the handin:\nHello, world!\n"),
        "{stdout}"
    );
    let last = stdout.trim_end_matches('\n').rsplit('\n').next();
    assert_eq!(
        last,
        Some(r#"{"scores": {"Correctness": 100}}"#),
        "{stdout}"
    );

    // It said where the daemon listened, and stopped it: nothing answers there now, and
    // the process is gone.
    let pid: u32 = stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("quickstart: tango (pid ")?
                .split(')')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no pid in:\n{stderr}"));
    assert!(
        stderr.contains(&format!("quickstart: tango (pid {pid}) stopped")),
        "{stderr}"
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .map(|c| !c.contains("tango.toml"))
                .unwrap_or(true),
        "tango (pid {pid}) still runs"
    );
    let port = stderr
        .lines()
        .find_map(|l| l.split("listens on http://127.0.0.1:").nth(1))
        .unwrap_or_else(|| panic!("no address in:\n{stderr}"));
    assert!(
        std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err(),
        "something still listens on {port}"
    );
}
