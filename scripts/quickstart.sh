#!/usr/bin/env bash
# The quick start, in one command: builds tango, starts `tango serve` on the embedded default
# (memory store; the `local` backend, which runs jobs on this host; a temporary courselabs
# directory; a free loopback port), grades the sample lab in examples/hello/ end to end the
# way Autolab does (open, upload, addJob, poll, all with curl), prints the job's output, and
# stops the daemon.
#
#   scripts/quickstart.sh
#
# Environment (all optional):
#   TANGO_BIN=path   use this tango binary instead of building one
#   AUTODRIVER=path  use this autodriver binary instead of building one
#   EXAMPLE=dir      grade this lab instead (a `hello.sh` handin and an `autograde-Makefile`)
#   WAIT_SECS=n      give up waiting for the output after n seconds (default 120)
#
# Exit status: 0 when the job ran and its output came back with Tango's success line;
# non-zero otherwise (the daemon's log is printed then).
#
# The `local` backend is for development and trying things out, not a security boundary:
# see docs/backends.md. Needs bash, curl and make (and cargo unless both binaries are given).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
example=${EXAMPLE:-$repo/examples/hello}
wait_secs=${WAIT_SECS:-120}
key=quickstart
courselab=quickstart-hello
handin=student@example.com_1_hello.sh
output_file=student@example.com_1_hello_autograde.txt

say() { printf 'quickstart: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

command -v curl >/dev/null || die "curl is needed"

if [[ -z ${TANGO_BIN:-} || -z ${AUTODRIVER:-} ]]; then
  command -v cargo >/dev/null || die "cargo is needed to build tango (or set TANGO_BIN and AUTODRIVER)"
  # The build directory scripts/test.sh uses too, so running both compiles the dependencies
  # once; and only what grading a sample job needs (not the EC2 backend's SDK, which is most
  # of a cold build).
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tango-rs/target}
  say "building tango and the autodriver (cargo build, into $CARGO_TARGET_DIR)"
  (cd "$repo" && cargo build --locked --no-default-features --features daemon \
    --bin tango --bin autodriver >&2)
  target=$CARGO_TARGET_DIR
  TANGO_BIN=${TANGO_BIN:-$target/debug/tango}
  AUTODRIVER=${AUTODRIVER:-$target/debug/autodriver}
fi
[[ -x $TANGO_BIN ]] || die "no tango binary at $TANGO_BIN"
[[ -x $AUTODRIVER ]] || die "no autodriver binary at $AUTODRIVER"

# Everything the daemon writes goes here, and is removed at the end. Mode 0711: when tango
# runs as root, jobs run under uids of their own, which must reach their machine directory.
work=$(mktemp -d "${TMPDIR:-/tmp}/tango-quickstart.XXXXXX")
chmod 711 "$work"
log=$work/tango.log
tango_pid=

stop() {
  if [[ -n $tango_pid ]] && kill -0 "$tango_pid" 2>/dev/null; then
    kill -TERM "$tango_pid" 2>/dev/null || true
    # It stops at once when no job runs; give it a while, then insist.
    for _ in $(seq 100); do
      kill -0 "$tango_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$tango_pid" 2>/dev/null || true
    wait "$tango_pid" 2>/dev/null || true
    say "tango (pid $tango_pid) stopped"
  fi
  rm -rf "$work"
}
trap stop EXIT

fail() {
  say "$*"
  if [[ -s $log ]]; then
    say "the daemon's log:"
    tail -n 40 "$log" >&2
  fi
  exit 1
}

cat >"$work/tango.toml" <<EOF
# The embedded default (memory store) with the local backend, on a free loopback port.
[server]
bind = "127.0.0.1"
port = 0
keys = ["$key"]
courselabs = "$work/courselabs"

[log]
level = "info"

[vmms]
name = "local"

[local]
autodriver = "$AUTODRIVER"
work_dir = "$work/machines"
EOF

if [[ $(id -u) != 0 ]]; then
  # Without root the local backend cannot give jobs their own uid: they run as you and can
  # read what you can (this configuration's key, every courselab). Fine for trying it out on
  # your own machine; tango refuses it unless the configuration says so.
  say "not root: jobs will run as $(id -un), unisolated (local.allow_unisolated = true)"
  echo "allow_unisolated = true" >>"$work/tango.toml"
fi

say "starting $TANGO_BIN serve --config $work/tango.toml"
# Port 0: the kernel picks a free port, and tango logs the address it listens on.
env -u RUST_LOG "$TANGO_BIN" serve --config "$work/tango.toml" >"$log" 2>&1 </dev/null &
tango_pid=$!

port=
for _ in $(seq 300); do
  kill -0 "$tango_pid" 2>/dev/null || fail "tango exited before it listened"
  port=$(grep -m1 'RESTful Tango listening' "$log" 2>/dev/null |
    grep -oE '127\.0\.0\.1:[0-9]+' | head -n1 | cut -d: -f2 || true)
  [[ -n $port ]] && break
  sleep 0.1
done
[[ -n $port ]] || fail "tango did not start listening within 30 s"
base=http://127.0.0.1:$port
say "tango (pid $tango_pid) listens on $base"

# A JSON answer's statusId must be 0.
check() { # what, answer
  [[ $2 == *'"statusId":0'* || $2 == *'"statusId": 0'* ]] || fail "$1 failed: $2"
}

say "GET / -> $(curl -fsS "$base/" | tr -d '\n')"
check open "$(curl -fsS "$base/open/$key/$courselab/")"
check "upload $handin" "$(curl -fsS -X POST -H "Filename: $handin" \
  --data-binary "@$example/hello.sh" "$base/upload/$key/$courselab/")"
check "upload autograde-Makefile" "$(curl -fsS -X POST -H "Filename: autograde-Makefile" \
  --data-binary "@$example/autograde-Makefile" "$base/upload/$key/$courselab/")"
# Autolab's addJob body: its seven fields, in its order.
job=$(cat <<EOF
{"image": "autograding_image",
 "files": [{"localFile": "$handin", "destFile": "hello.sh"},
           {"localFile": "autograde-Makefile", "destFile": "Makefile"}],
 "output_file": "$output_file", "timeout": 60, "callback_url": "",
 "jobName": "quickstart_hello_1_student@example.com", "disable_network": false}
EOF
)
answer=$(curl -fsS -X POST --data-binary "$job" "$base/addJob/$key/$courselab/")
check addJob "$answer"
say "addJob -> $answer"

# poll answers JSON ("Output file not found") until the output file is there, then the file.
encoded=${output_file//@/%40}
out=$work/output.txt
deadline=$((SECONDS + wait_secs))
while :; do
  type=$(curl -fsS -o "$out" -w '%{content_type}' "$base/poll/$key/$courselab/$encoded/") ||
    fail "poll failed"
  [[ $type == application/json* ]] || break
  ((SECONDS < deadline)) || fail "no output within $wait_secs s; last poll: $(cat "$out")"
  sleep 0.2
done

say "the job's output:"
cat "$out"
grep -q 'Success: Autodriver returned normally' "$out" || fail "the job did not end normally"
