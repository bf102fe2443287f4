//! tango-rs as a container (`Dockerfile`), the way autolab-docker runs Tango: the image is
//! built from the binaries cargo built, on the locally made test image (no registry here),
//! started with the host's engine socket, reports healthy through its `/readyz` health check,
//! grades a job in a sibling container, and stops cleanly on `docker stop`.
//!
//! Needs a Docker engine and the test image (`scripts/build-test-image.sh`, run when missing).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::docker::{Cleanup, autodriver, docker, docker_ok, test_image, unique_prefix};

#[test]
fn the_container_image_becomes_healthy_and_grades_a_job() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let base = test_image();
    let prefix = unique_prefix("image");
    let tag = format!("tango-rs-test:{}", prefix.to_lowercase());
    let name = format!("{prefix}-tango");
    let mut cleanup = Cleanup::new(&prefix);
    cleanup.image(&tag);
    cleanup.container(&name);

    // The build context: the two binaries, as the Dockerfile's header says.
    let context = tempfile::tempdir().expect("temp dir");
    std::fs::copy(env!("CARGO_BIN_EXE_tango"), context.path().join("tango")).expect("tango");
    std::fs::copy(autodriver(), context.path().join("autodriver")).expect("autodriver");
    let dockerfile = repo.join("Dockerfile").display().to_string();
    let base_arg = format!("BASE={base}");
    let context_dir = context.path().display().to_string();
    docker_ok(&[
        "build",
        "-q",
        "-f",
        &dockerfile,
        "--build-arg",
        &base_arg,
        "-t",
        &tag,
        &context_dir,
    ]);

    // Host networking on a free port: the engine is shared, so no fixed port.
    let port = support::free_port();
    let key = "container-key";
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-e",
        &format!("TANGO_SERVER_PORT={port}"),
        "-e",
        &format!("TANGO_VMMS_PREFIX={prefix}"),
        "-e",
        &format!("RESTFUL_KEY={key}"),
        &tag,
    ]);

    // The image's HEALTHCHECK (/readyz) turns it healthy: the first check runs after its
    // 10-second interval.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = docker_ok(&["inspect", "--format", "{{.State.Health.Status}}", &name]);
        if status.trim() == "healthy" {
            break;
        }
        assert!(
            status.trim() != "unhealthy" && Instant::now() < deadline,
            "health {status:?}; logs:\n{}",
            String::from_utf8_lossy(&docker(&["logs", &name]).stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // A job, through the client on the host, graded in a sibling container.
    let hello = support::jobs::job("hello");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tango"))
        .arg("run")
        .arg(&hello.dir)
        .args(["--timeout", "60"])
        .env("TANGO_URL", format!("http://127.0.0.1:{port}"))
        .env("TANGO_KEY", key)
        .output()
        .expect("tango run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Success: Autodriver returned normally") && stdout.contains("hello from"),
        "{stdout}"
    );

    // docker stop: SIGTERM, a clean exit, and no machine of its prefix left behind.
    docker_ok(&["stop", "-t", "60", &name]);
    let code = docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(code.trim(), "0");
    let label = format!("label=tango.prefix={prefix}");
    let left = docker_ok(&["ps", "-aq", "--filter", &label]);
    assert!(left.trim().is_empty(), "machines left: {left}");
}
