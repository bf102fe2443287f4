#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what is missing, starts what the tests
# need on loopback, runs the format check, clippy and every test, then stops what it started.
#
#   scripts/test.sh            # everything
#   scripts/test.sh -- FILTER  # only tests whose names contain FILTER (after the checks)
#
# Reuses a build directory between runs (CARGO_TARGET_DIR, default ~/.cache/tango-rs/target):
# a cold build of this dependency set takes about 7 minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tango-rs/target}
mkdir -p "$CARGO_TARGET_DIR"
filter=()
if [[ ${1:-} == "--" ]]; then shift; filter=("$@"); fi

log() { printf '\n== %s\n' "$*"; }

# ---- what the tests need, installed when missing ----
# Debian packages: Redis (the store), an sshd and ssh (standing in for EC2/Tashi VMs), sudo
# (the VM's autodriver runs through it), debootstrap (the Docker test image's root fs),
# prometheus (its promtool checks the /metrics bodies, tests/ops.rs).
need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
[[ -x /usr/sbin/sshd ]] || need_apt+=(openssh-server)
command -v ssh >/dev/null || need_apt+=(openssh-client)
command -v sudo >/dev/null || need_apt+=(sudo)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v promtool >/dev/null || need_apt+=(prometheus)
# tests/multihost.rs: network namespaces (ip), nsenter, the second engine's certificates.
command -v ip >/dev/null || need_apt+=(iproute2)
command -v nsenter >/dev/null || need_apt+=(util-linux)
command -v openssl >/dev/null || need_apt+=(openssl)
if ((${#need_apt[@]})); then
  log "installing ${need_apt[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# PyPI: moto's EC2 API emulator.
if ! command -v moto_server >/dev/null; then
  log "installing moto[server] (PyPI)"
  python3 -m pip install -q 'moto[server]'
fi
# PyPI: schemathesis, which fuzzes the real daemon from docs/openapi.yaml (tests/fuzz.rs).
if ! command -v st >/dev/null; then
  log "installing schemathesis (PyPI)"
  python3 -m pip install -q schemathesis
fi

# ---- services, private to this run, stopped on exit ----
run_dir=$(mktemp -d /tmp/tango-test.XXXXXX)
source scripts/services.sh
cleanup() {
  stop_pids
  rm -rf "$run_dir"
}
trap cleanup EXIT

start_redis "$run_dir"
export TANGO_TEST_REDIS="127.0.0.1:$redis_port"
log "redis on $TANGO_TEST_REDIS"

# ---- checks ----
log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -D warnings"
cargo clippy --all-targets --locked -- -D warnings

log "cargo build (and the static autodriver)"
cargo build --all-targets --locked
# Built once here, so each test process (nextest runs one per test) need not ask cargo.
TANGO_TEST_AUTODRIVER=$(scripts/build-autodriver.sh)
export TANGO_TEST_AUTODRIVER

log "the Docker test image (built when missing)"
scripts/build-test-image.sh >/dev/null

log "tests"
# The multi-host tests (tests/multihost.rs) run after the rest, one at a time: they start a
# second Docker engine and cut hosts off, which would disturb the timing of other tests.
status=0
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --locked --no-fail-fast --no-tests=pass -E 'not binary(multihost)' "${filter[@]}" || status=$?
  log "multi-host tests"
  cargo nextest run --locked --no-fail-fast --no-tests=pass --test multihost "${filter[@]}" || status=$?
else
  for t in tests/*.rs; do
    name=$(basename "$t" .rs)
    [[ $name == multihost ]] && continue
    cargo test --locked --no-fail-fast --test "$name" -- "${filter[@]}" || status=$?
  done
  cargo test --locked --no-fail-fast --lib --bins -- "${filter[@]}" || status=$?
  log "multi-host tests"
  cargo test --locked --no-fail-fast --test multihost -- --test-threads=1 "${filter[@]}" || status=$?
fi
((status == 0)) || exit "$status"
# Doc tests: nextest does not run them.
cargo test --locked --doc
log "all checks passed"
