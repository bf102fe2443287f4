#!/usr/bin/env bash
# Instructions per request of the daemon's own code (user space), counted by callgrind: a
# figure that does not move with the machine's load, unlike requests/s on a shared VM, so
# two builds can be compared one change at a time.
#
#   scripts/instructions.sh [TANGO_BINARY] [N]
#
# Starts Redis and `tango serve --no-manager` (Redis store) under callgrind on free loopback
# ports, sends 200 requests of each route to warm it, then N (default 1000) more one at a
# time on one keep-alive connection, and prints the instructions counted per request for
# `info`, `open`, `poll` of a 2 KiB file and Autolab's `addJob`. Kernel time (the socket
# calls) is not counted. The binary defaults to the release build bench.sh makes.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tango-rs/target}
bin=${1:-$CARGO_TARGET_DIR/release/tango}
n=${2:-1000}
[[ -x $bin ]] || { echo "instructions.sh: no $bin (build it: cargo build --release)" >&2; exit 1; }
for tool in valgrind callgrind_control callgrind_annotate redis-server redis-cli curl python3; do
  command -v "$tool" >/dev/null || { echo "instructions.sh: $tool is missing" >&2; exit 1; }
done

run=$(mktemp -d /tmp/tango-instr.XXXXXX)
source scripts/services.sh
cleanup() {
  stop_pids
  rm -rf "$run"
}
trap cleanup EXIT

start_redis "$run"
port=$(free_port)
mkdir -p "$run/courselabs"
cat >"$run/tango.toml" <<EOF
[server]
bind = "127.0.0.1"
port = $port
keys = ["test"]
courselabs = "$run/courselabs"

[log]
file = "$run/tango.log"
timing = true

[store]
backend = "redis"
redis_port = $redis_port

[vmms]
name = "local"
EOF
valgrind --tool=callgrind --callgrind-out-file="$run/callgrind.out" \
  "$bin" serve --config "$run/tango.toml" --no-manager >"$run/valgrind.log" 2>&1 &
vg=$!
pids+=("$vg")
url=http://127.0.0.1:$port
for _ in $(seq 300); do curl -sf "$url/" >/dev/null 2>&1 && break; sleep 0.2; done
curl -sf "$url/" >/dev/null || { cat "$run/valgrind.log" >&2; exit 1; }
curl -sf "$url/open/test/api/" >/dev/null
printf 'autograde:\n\t@echo ok\n' >"$run/Makefile"
curl -sf -H 'Filename: Makefile' --data-binary @"$run/Makefile" "$url/upload/test/api/" >/dev/null
tenant=$(printf %s test | sha256sum | cut -c1-16)
head -c 1536 /dev/urandom | base64 >"$run/courselabs/$tenant-api/output/poll.txt"

# send ROUTE COUNT: COUNT requests on one connection, each checked for statusId 0 (poll
# answers the file itself).
send() {
  python3 - "$port" "$1" "$2" <<'PY'
import http.client, json, sys
port, route, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port)
paths = {"info": "/info/test/", "open": "/open/test/api/", "poll": "/poll/test/api/poll.txt/"}
for i in range(count):
    if route == "addJob":
        body = json.dumps({"image": "autograding_image",
            "files": [{"localFile": "Makefile", "destFile": "Makefile"}],
            "output_file": f"user{i}@x.edu_1_lab_autograde.txt", "timeout": 60,
            "callback_url": f"http://127.0.0.1:9/courses/c/assessments/lab/autograde_done?dave=ABCDEFG&submission_id={i}",
            "jobName": f"c_lab_1_user{i}@x.edu", "disable_network": False}, separators=(",", ":"))
        c.request("POST", "/addJob/test/api/", body=body,
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    else:
        c.request("GET", paths[route])
    r = c.getresponse()
    data = r.read()
    if r.status != 200 or (route != "poll" and json.loads(data)["statusId"] != 0):
        sys.exit(f"{route}: {r.status} {data[:200]!r}")
PY
}

printf '%-8s %s\n' route instructions/request
for route in info open poll addJob; do
  send "$route" 200
  callgrind_control -z "$vg" >/dev/null 2>&1
  send "$route" "$n"
  rm -f "$run"/callgrind.out.*
  callgrind_control -d "$vg" >/dev/null 2>&1
  for _ in $(seq 50); do compgen -G "$run/callgrind.out.*" >/dev/null && break; sleep 0.1; done
  sleep 0.5
  total=$(callgrind_annotate "$(compgen -G "$run/callgrind.out.*" | head -n1)" 2>/dev/null |
    awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
  printf '%-8s %d\n' "$route" $((total / n))
done
