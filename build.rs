//! Records the git commit the binaries are built from (`TANGO_COMMIT`), for `tango
//! --version` and the `tango_build_info` metric. Outside a git checkout (a source tarball, a
//! container build without `.git`) it is `TANGO_COMMIT` from the environment, else "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=TANGO_COMMIT");
    let commit = std::env::var("TANGO_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // Run again when HEAD moves (a checkout: HEAD; a commit: the branch it names), not on
    // every build.
    let branch = git(&["rev-parse", "--symbolic-full-name", "HEAD"]);
    for path in ["HEAD"].into_iter().chain(branch.as_deref()) {
        if let Some(file) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={file}");
        }
    }
    println!("cargo:rustc-env=TANGO_COMMIT={commit}");
}
