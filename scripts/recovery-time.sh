#!/usr/bin/env bash
# Recovery time of a lost worker host, for several lease lengths: runs the multi-host test
# that cuts a worker host's link mid-burst (tests/multihost.rs) with `jobs.lease_secs` set to
# each value, and prints the time from the cut to the first of that host's jobs finishing on
# the other host. Root, a Docker engine and iproute2 are needed (as for the test).
#
#   scripts/recovery-time.sh            # leases 3 6 10 15, one run each
#   scripts/recovery-time.sh 5 15       # these leases
#   RUNS=3 scripts/recovery-time.sh     # three runs of each
#
# docs/benchmarks.md ("Recovery of a lost host") has the figures and what bounds them.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tango-rs/target}
TANGO_TEST_AUTODRIVER=${TANGO_TEST_AUTODRIVER:-$(scripts/build-autodriver.sh)}
export TANGO_TEST_AUTODRIVER
scripts/build-test-image.sh >/dev/null
leases=("$@")
((${#leases[@]})) || leases=(3 6 10 15)
runs=${RUNS:-1}
cargo build --locked --tests --quiet
printf '%-10s %s\n' "lease (s)" "cut -> first requeued job finished (s)"
for lease in "${leases[@]}"; do
  for ((i = 0; i < runs; i++)); do
    line=$(TANGO_MH_LEASE_SECS=$lease cargo nextest run --locked --test multihost \
      --no-capture -- a_worker_host_cut_off 2>&1 | grep '^recovery:' || true)
    if [[ -z $line ]]; then
      echo "lease $lease: the test failed (run it alone to see why)" >&2
      exit 1
    fi
    seconds=$(sed -E 's/.* ([0-9.]+) s after the cut.*/\1/' <<<"$line")
    printf '%-10s %s\n' "$lease" "$seconds"
  done
done
