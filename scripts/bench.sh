#!/usr/bin/env bash
# The benchmarks, from a fresh clone: installs what they need (wrk, hyperfine, redis-server
# from Debian's packages), builds release binaries, runs every benchmark on loopback, and
# REWRITES docs/benchmarks.md with the figures, the machine, the commit and the command.
#
#   scripts/bench.sh                  # everything (about 25 minutes on two cores)
#   scripts/bench.sh --quick          # a smoke pass: short runs, small counts
#   scripts/bench.sh --only api,scale # some sections: api, scale, jobs, burst, hostile, fair
#   scripts/bench.sh --out FILE       # write the report elsewhere (default docs/benchmarks.md
#                                     # for a full run; a quick or partial run writes
#                                     # /tmp/tango-benchmarks-partial.md, so the full report stays)
#
# Needs root (the local backend runs jobs as their own uids) and, for the Docker figures, a
# running Docker engine (the image is built locally by scripts/build-test-image.sh; without
# an engine those figures are left out). docs/benchmarks.md says what each figure means.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
command_line="scripts/bench.sh${*:+ $*}"

quick=0
all_sections=api,scale,jobs,burst,hostile,fair
only=$all_sections
out=
while (($#)); do
  case $1 in
    --quick) quick=1 ;;
    --only) only=$2; shift ;;
    --out) out=$2; shift ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
want() { [[ ,$only, == *,$1,* ]]; }
if [[ -z $out ]]; then
  # A partial run's report holds only its sections: it must not replace the full one.
  if ((quick)) || [[ $only != "$all_sections" ]]; then
    out=${TMPDIR:-/tmp}/tango-benchmarks-partial.md
  else
    out=docs/benchmarks.md
  fi
fi

# Sizes: the full run, or a quick smoke pass.
if ((quick)); then
  wrk_secs=2 wrk_rounds=1 conns=(1 16) scale_jobs=1000 scale_sample=200 e2e_count=3
  hostile_count=3 fair_count=20 hyperfine_runs=3 bursts=(10 20) burst_rounds=1 engine_runs=12 seq_count=3
else
  wrk_secs=2 wrk_rounds=3 conns=(1 16 64) scale_jobs=10000 scale_sample=1000 e2e_count=20
  hostile_count=40 fair_count=200 hyperfine_runs=20 bursts=(40 200) burst_rounds=2 engine_runs=40 seq_count=10
fi

log() { printf '\n== %s\n' "$*" >&2; }

# ---- what the benchmarks need, installed when missing ----
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v hyperfine >/dev/null || need_apt+=(hyperfine)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v jq >/dev/null || need_apt+=(jq)
command -v curl >/dev/null || need_apt+=(curl)
if ((${#need_apt[@]})); then
  log "installing ${need_apt[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# ---- release binaries (no EC2 SDK: no benchmark needs it) ----
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tango-rs/target}
run=$(mktemp -d /tmp/tango-bench.XXXXXX)
log "cargo build --release (tango, autodriver, the bench tool)"
cargo build --release --locked --no-default-features --features daemon \
  --bin tango --bin autodriver --bench bench --message-format=json-render-diagnostics \
  >"$run/build.json"
tango_bin=$CARGO_TARGET_DIR/release/tango
autodriver_bin=$CARGO_TARGET_DIR/release/autodriver
bench_bin=$(jq -r 'select(.reason == "compiler-artifact" and .target.name == "bench"
  and .executable != null) | .executable' "$run/build.json" | tail -n1)
[[ -x $bench_bin ]] || { echo "bench.sh: the bench tool was not built" >&2; exit 1; }

docker_ok=0
if { want jobs || want burst; } && command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  log "the static autodriver and the Docker test image"
  static_autodriver=$(scripts/build-autodriver.sh)
  scripts/build-test-image.sh >/dev/null
  docker_ok=1
fi

# ---- processes of this run, stopped on exit ----
source scripts/services.sh
cleanup() {
  stop_pids
  if ((docker_ok)); then
    for prefix in bench local; do
      ids=$(docker ps -aq --filter label=tango.prefix=$prefix 2>/dev/null || true)
      [[ -z $ids ]] || docker rm -f $ids >/dev/null 2>&1 || true
    done
  fi
  rm -rf "$run"
}
trap cleanup EXIT

results=$run/results.jsonl
: >"$results"
# record SECTION NAME JSON: one result line.
record() { jq -c --arg s "$1" --arg n "$2" '. + {section: $s, name: $n}' <<<"$3" >>"$results"; }

start_redis "$run"

key=test
tenant=$(printf %s "$key" | sha256sum | cut -c1-16)

# start_tango NAME STORE EXTRA_TOML [serve flags...]: a fresh daemon; sets tango_pid,
# tango_url, tango_labs.
start_tango() {
  local name=$1 store=$2 extra=$3; shift 3
  local dir=$run/$name port
  port=$(free_port)
  mkdir -p "$dir/courselabs" "$dir/machines"
  redis-cli -p "$redis_port" flushall >/dev/null
  cat >"$dir/tango.toml" <<EOF
[server]
bind = "127.0.0.1"
port = $port
keys = ["$key"]
courselabs = "$dir/courselabs"

[log]
file = "$dir/tango.log"
# One line per job with the time of each phase (read by \`phases\`).
timing = true

[store]
backend = "$store"
redis_port = $redis_port

[local]
autodriver = "$autodriver_bin"
work_dir = "$dir/machines"

$extra
EOF
  "$tango_bin" serve --config "$dir/tango.toml" "$@" >"$dir/stderr.log" 2>&1 &
  tango_pid=$!
  pids+=("$tango_pid")
  tango_url=http://127.0.0.1:$port
  tango_labs=$dir/courselabs
  for _ in $(seq 300); do
    curl -sf "$tango_url/" >/dev/null 2>&1 && return 0
    kill -0 "$tango_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench.sh: tango ($name) did not start:" >&2
  cat "$dir/stderr.log" "$dir/tango.log" >&2 || true
  exit 1
}
stop_tango() {
  kill "$tango_pid" 2>/dev/null || true
  wait "$tango_pid" 2>/dev/null || true
}

# A trivial job: its output is one line.
mkdir -p "$run/trivial"
printf 'autograde:\n\t@echo trivial-ok\n' >"$run/trivial/Makefile"

# plug: for the memory store with its manager on, one `forever` job holding the only job
# slot (vmms.max_concurrent_jobs = 1), so the manager never dispatches another: every job
# added after it stays queued, as with `--no-manager` on Redis.
plug() {
  "$bench_bin" jobs --url "$tango_url" --key "$key" --courselabs "$tango_labs" \
    --courselab plug --job tests/jobs/forever --timeout 86400 --count 0 --warmup 0 >/dev/null
  local body
  body=$(jq -nc '{image: "autograding_image", files: [{localFile: "Makefile", destFile: "Makefile"}],
    output_file: "plug.txt", timeout: 86400, callback_url: "", jobName: "plug", disable_network: false}')
  curl -sf -X POST --data-binary "$body" "$tango_url/addJob/$key/plug/" | jq -e '.statusId == 0' >/dev/null
  for _ in $(seq 200); do
    if curl -sf "$tango_url/jobs/$key/0/" | jq -e '.jobs | any(.assigned)' >/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench.sh: the plug job did not start" >&2
  exit 1
}
memory_config='[vmms]
name = "local"
max_concurrent_jobs = 1
pool_size = 1'

# ---- API ----
# wrk with a report line; $1 section name, $2 conns, $3 url, $4 lua file or "".
wrk_lua_report='
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKJSON {\"requests\":%d,\"secs\":%.3f,\"rps\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"errors\":%d,\"non2xx\":%d}\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.connect + e.read + e.write + e.timeout, e.status))
end
'
lua() { # lua NAME BODY: a wrk script file with the report function
  printf '%s\n%s\n' "$2" "$wrk_lua_report" >"$run/$1.lua"
  echo "$run/$1.lua"
}
get_lua=$(lua get '')
upload_lua=$(lua upload '
local n = 0
local base = string.rep("x", 10240)
request = function()
  n = n + 1
  -- A new 10 KiB file each time (so no upload is skipped as already there), under 64 names.
  local body = string.format("%012d\n", n) .. string.sub(base, 14)
  return wrk.format("POST", nil, {["Filename"] = "handin" .. (n % 64) .. ".c",
    ["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end')
addjob_lua=$(lua addjob '
local n = 0
request = function()
  n = n + 1
  local body = string.format([[{"image":"autograding_image","files":[{"localFile":"Makefile","destFile":"Makefile"}],"output_file":"user%d@x.edu_1_lab_autograde.txt","timeout":60,"callback_url":"http://127.0.0.1:9/courses/c/assessments/lab/autograde_done?dave=ABCDEFG&submission_id=%d","jobName":"c_lab_1_user%d@x.edu","disable_network":false}]], n, n, n)
  return wrk.format("POST", nil, {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end')

# wrk_run SECTION NAME CONNS URL LUA [PAIR ROUND]: one wrk run, recorded; PAIR names the
# route a ceiling run is paired with, ROUND the round of that pair.
wrk_run() {
  local section=$1 name=$2 c=$3 url=$4 script=$5 pair=${6:-} round=${7:-0} line
  line=$(wrk -t1 -c"$c" -d"${wrk_secs}s" --timeout 10s -s "$script" "$url" | sed -n 's/^WRKJSON //p')
  [[ -n $line ]] || { echo "bench.sh: wrk gave no report for $name" >&2; exit 1; }
  record "$section" "$name" "$(jq -c --argjson c "$c" --arg pair "$pair" --argjson round "$round" \
    '. + {conns: $c, round: $round} + (if $pair == "" then {} else {pair: $pair} end)' <<<"$line")"
  printf '  %-8s c=%-3s %s\n' "$name${pair:+ ($pair)}" "$c" "$line" >&2
}

# paired SECTION NAME CONNS URL LUA: the route and the ceiling, alternately, wrk_rounds
# times each. This machine's share of its CPUs moves within seconds (steal time of 15-30%
# came and went during single runs), so a ceiling measured once, many seconds before a
# route, can meet another machine than the route did; alternating short runs makes both
# meet the same one. report.py pools each side's rounds.
paired() {
  local section=$1 name=$2 c=$3 url=$4 script=$5 round
  for ((round = 1; round <= wrk_rounds; round++)); do
    wrk_run "$section" ceiling "$c" "$ceiling_url" "$get_lua" "$name" "$round"
    wrk_run "$section" "$name" "$c" "$url" "$script" "" "$round"
  done
}

api_bench() { # api_bench STORE: the API routes against the daemon now running
  local store=$1 lab=api
  # A courselab as Autolab leaves it: a Makefile, a handin and an autograder tarball, and an
  # output file to poll.
  curl -sf "$tango_url/open/$key/$lab/" >/dev/null
  # Cut to size after writing, not with `| head`: under pipefail a base64 still writing
  # when head has had its fill dies of SIGPIPE, and set -e ends the whole run (it did once).
  head -c 7680 /dev/urandom | base64 -w 76 >"$run/handin.c"
  truncate -s 10240 "$run/handin.c"
  head -c 102400 /dev/urandom >"$run/autograde.tar"
  curl -sf -H 'Filename: Makefile' --data-binary @"$run/trivial/Makefile" "$tango_url/upload/$key/$lab/" | jq -e '.statusId == 0' >/dev/null
  curl -sf -H 'Filename: user@x.edu_1_handin.c' --data-binary @"$run/handin.c" "$tango_url/upload/$key/$lab/" | jq -e '.statusId == 0' >/dev/null
  curl -sf -H 'Filename: autograde.tar' --data-binary @"$run/autograde.tar" "$tango_url/upload/$key/$lab/" | jq -e '.statusId == 0' >/dev/null
  head -c 2048 /dev/urandom | base64 >"$tango_labs/$tenant-$lab/output/poll.txt"
  # Each request checked once before it is loaded.
  curl -sf "$tango_url/info/$key/" | jq -e '.statusId == 0' >/dev/null
  curl -sf "$tango_url/open/$key/$lab/" | jq -e '.statusId == 0 and (.files | length) == 3' >/dev/null
  cmp -s <(curl -sf "$tango_url/poll/$key/$lab/poll.txt/") "$tango_labs/$tenant-$lab/output/poll.txt"
  curl -sf "$tango_url/open/$key/up/" >/dev/null
  local before c
  before=$(curl -sf "$tango_url/info/$key/" | jq '.info.job_requests')
  # Each route alternates with the ceiling it is compared with (see `paired`).
  for c in "${conns[@]}"; do
    paired "api-$store" info "$c" "$tango_url/info/$key/" "$get_lua"
    paired "api-$store" open "$c" "$tango_url/open/$key/$lab/" "$get_lua"
    paired "api-$store" poll "$c" "$tango_url/poll/$key/$lab/poll.txt/" "$get_lua"
    paired "api-$store" upload "$c" "$tango_url/upload/$key/up/" "$upload_lua"
    paired "api-$store" addJob "$c" "$tango_url/addJob/$key/$lab/" "$addjob_lua"
  done
  local after
  after=$(curl -sf "$tango_url/info/$key/" | jq '.info.job_requests')
  # Every addJob answered was a job added (wrk counts answers, not their status).
  local answered
  answered=$(jq -s --arg s "api-$store" '[.[] | select(.section == $s and .name == "addJob") | .requests] | add' "$results")
  echo "  addJob: $answered answered, $((after - before)) jobs added" >&2
  record "api-$store" addJob-check "$(jq -nc --argjson a "$answered" --argjson j "$((after - before))" '{answered: $a, added: $j}')"
}

start_ceiling() { # the bare axum server, running beside the daemon; sets ceiling_url
  local port
  port=$(free_port)
  "$bench_bin" ceiling "$port" &
  pids+=($!)
  ceiling_url=http://127.0.0.1:$port/
  for _ in $(seq 100); do curl -sf "$ceiling_url" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "bench.sh: the ceiling server did not start" >&2
  exit 1
}

if want api; then
  log "API: memory store (manager plugged), then Redis (--no-manager); each beside the ceiling"
  start_ceiling
  start_tango api-memory memory "$memory_config"
  plug
  api_bench memory
  stop_tango
  start_tango api-redis redis '' --no-manager
  # One Redis round trip on its own (PING, one connection): what `info` with Redis adds to
  # a request at least, beside the ceiling's own latency.
  rtt=$(redis-benchmark -p "$redis_port" -c 1 -n 20000 -t ping --csv 2>/dev/null |
    awk -F'"' '$2 == "PING_MBULK" {print $4, $10}')
  record api-redis redis-rtt "$(jq -nc --argjson rps "${rtt% *}" --argjson p50 "${rtt#* }" '{rps: $rps, p50_ms: $p50}')"
  echo "  redis PING round trip: ${rtt#* } ms p50" >&2
  api_bench redis
  stop_tango
fi

# ---- scale ----
if want scale; then
  for store in memory redis; do
    log "scale: $scale_jobs queued jobs, $store store"
    if [[ $store == memory ]]; then
      start_tango "scale-$store" memory "$memory_config"
      sleep 1
      plug
    else
      start_tango "scale-$store" redis '' --no-manager
    fi
    sleep 1
    line=$("$bench_bin" scale --url "$tango_url" --key "$key" --courselabs "$tango_labs" \
      --jobs "$scale_jobs" --sample "$scale_sample" --pid "$tango_pid")
    if [[ $store == redis ]]; then
      line=$(jq -c --argjson m "$(redis-cli -p "$redis_port" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')" \
        '. + {redis_used_mib: ($m / 1048576)}' <<<"$line")
    fi
    record scale "$store" "$line"
    echo "  $line" >&2
    stop_tango
  done
fi

# ---- jobs end to end ----
# jobs_bench SECTION NAME ARGS...: `bench jobs` against the daemon now running.
jobs_bench() {
  local section=$1 name=$2 line; shift 2
  line=$("$bench_bin" jobs --url "$tango_url" --key "$key" --courselabs "$tango_labs" "$@")
  record "$section" "$name" "$line"
  printf '  %-12s %s\n' "$name" "$line" >&2
}
# phases SECTION NAME: the median of each phase of the jobs the daemon now running ran, from
# its log (`log.timing = true`: "job timing (seconds) ... machine=0.470 copy_in=0.078 ...").
phases() {
  local line
  line=$(python3 - "$run/$3/tango.log" <<'PY'
import json, re, statistics, sys
rows = [dict(re.findall(r"(\w+)=([0-9.]+)", l)) for l in open(sys.argv[1]) if "job timing" in l]
keys = ["queued", "machine", "copy_in", "run", "copy_out", "total"]
print(json.dumps({"n": len(rows), **{k + "_ms": statistics.median(float(r[k]) * 1000 for r in rows)
      for k in keys if rows and all(k in r for r in rows)}}))
PY
)
  record "$1" "$2" "$line"
  printf '  %-12s %s\n' "$2" "$line" >&2
}
wait_pool() { # wait_pool N: until the autograding_image pool has N free machines
  for _ in $(seq 600); do
    if curl -sf "$tango_url/pool/$key/autograding_image/" |
      jq -e --argjson n "$1" '(.pools.autograding_image.free // []) | length >= $n' >/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "bench.sh: the pool never reached $1 free machines" >&2
  exit 1
}

if want jobs; then
  log "jobs: a trivial job end to end on local"
  start_tango jobs-local memory '[vmms]
name = "local"
pool_size = 1
createvm_secs = 0.0'
  jobs_bench jobs local --job "$run/trivial" --count "$e2e_count" --expect trivial-ok
  stop_tango

  if ((docker_ok)); then
    docker_common="[docker]
autodriver = \"$static_autodriver\""
    log "jobs: Docker, warm pool (one machine, refilled before each job)"
    start_tango jobs-docker-warm memory "[vmms]
name = \"localDocker\"
prefix = \"bench\"
pool_size = 1
$docker_common"
    curl -sf -X POST "$tango_url/prealloc/$key/autograding_image/1/" | jq -e '.statusId == 0' >/dev/null
    wait_pool 1
    jobs_bench jobs docker-warm --job "$run/trivial" --count "$e2e_count" --expect trivial-ok --wait-pool
    phases phases docker-warm jobs-docker-warm
    stop_tango

    log "jobs: Docker, no pool (reuse_vms = false: a container made for each job)"
    start_tango jobs-docker-cold memory "[vmms]
name = \"localDocker\"
prefix = \"bench\"
reuse_vms = false
$docker_common"
    jobs_bench jobs docker-nopool --job "$run/trivial" --count "$e2e_count" --expect trivial-ok
    phases phases docker-nopool jobs-docker-cold
    stop_tango

    log "jobs: bare docker run --rm autograding_image true (hyperfine)"
    hyperfine -N --warmup 2 --runs "$hyperfine_runs" --export-json "$run/hyperfine.json" \
      'docker run --rm autograding_image true' >&2
    record jobs docker-run "$(jq -c '.results[0] | {n: (.times | length), p50_ms: (.median * 1000),
      mean_ms: (.mean * 1000), min_ms: (.min * 1000), max_ms: (.max * 1000)}' "$run/hyperfine.json")"

  else
    log "jobs: no Docker engine here: the Docker figures are left out"
  fi
fi

# ---- deadline bursts on Docker ----
# The daemon as an admin has it: the default configuration, with only what this machine needs
# (a port, a courselabs directory, the Docker backend and where the static autodriver is).
# start_default NAME VMMS_TOML DOCKER_TOML: a fresh daemon, like start_tango but nothing else
# set; the two arguments are more lines for the [vmms] and [docker] tables.
start_default() {
  local name=$1 vmms=$2 docker=${3:-} dir=$run/$1 port
  port=$(free_port)
  mkdir -p "$dir/courselabs"
  cat >"$dir/tango.toml" <<EOF
[server]
bind = "127.0.0.1"
port = $port
courselabs = "$dir/courselabs"

[vmms]
name = "localDocker"
$vmms

[docker]
autodriver = "$static_autodriver"
$docker
EOF
  "$tango_bin" serve --config "$dir/tango.toml" >"$dir/stderr.log" 2>&1 &
  tango_pid=$!
  pids+=("$tango_pid")
  tango_url=http://127.0.0.1:$port
  tango_labs=$dir/courselabs
  for _ in $(seq 300); do
    curl -sf "$tango_url/" >/dev/null 2>&1 && return 0
    kill -0 "$tango_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench.sh: tango ($name) did not start:" >&2
  cat "$dir/stderr.log" >&2 || true
  exit 1
}
# burst_bench NAME JOB EXPECT ARGS...: `bench burst` against the daemon now running.
burst_bench() {
  local name=$1 job=$2 expect=$3 line; shift 3
  line=$("$bench_bin" burst --url "$tango_url" --key "$key" --courselabs "$tango_labs" \
    --job "$job" --expect "$expect" --patience 1200 "$@")
  record burst "$name" "$line"
  printf '  %-28s %s\n' "$name" "$line" >&2
}
# engine ROUND: the engine's own pace, bare `docker run --rm autograding_image true` at 4, 8
# and 16 at once.
engine() {
  local p line
  for p in 4 8 16; do
    line=$("$bench_bin" docker-run --count "$engine_runs" --parallel "$p")
    record burst "docker-run-p$p" "$(jq -c --argjson r "$1" '. + {round: $r}' <<<"$line")"
    printf '  %-28s %s\n' "docker run, $p at once" "$line" >&2
  done
}

if want burst; then
  if ((docker_ok)); then
    log "burst: the default configuration on Docker, alternating with bare docker run"
    start_default burst-default ''
    for ((round = 1; round <= burst_rounds; round++)); do
      for n in "${bursts[@]}"; do
        engine "$round"
        burst_bench "default-trivial-$n-r$round" "$run/trivial" trivial-ok --count "$n"
      done
      burst_bench "default-hello-${bursts[0]}-r$round" tests/jobs/hello "hello from" --count "${bursts[0]}"
    done
    line=$("$bench_bin" docker-run --count "$engine_runs" --parallel 8 --shared-netns)
    record burst docker-run-shared-netns "$line"
    printf '  %-28s %s\n' "docker run, shared netns" "$line" >&2
    log "burst: one after another, default configuration, beside docker run one at a time"
    line=$("$bench_bin" docker-run --count "$seq_count" --parallel 1)
    record burst docker-run-seq "$line"
    printf '  %-28s %s\n' "docker run, one at a time" "$line" >&2
    burst_bench default-trivial-seq "$run/trivial" trivial-ok --count "$seq_count" --sequential
    burst_bench default-hello-seq tests/jobs/hello "hello from" --count "$seq_count" --sequential
    stop_tango

    log "burst: no pool (reuse_vms = false: a container made for each job)"
    start_default burst-nopool 'reuse_vms = false'
    line=$("$bench_bin" docker-run --count "$seq_count" --parallel 1)
    record burst docker-run-seq-nopool "$line"
    printf '  %-28s %s\n' "docker run, one at a time" "$line" >&2
    burst_bench nopool-trivial-seq "$run/trivial" trivial-ok --count "$seq_count" --sequential
    burst_bench "nopool-trivial-${bursts[0]}" "$run/trivial" trivial-ok --count "${bursts[0]}"
    stop_tango

    n=${bursts[-1]}
    log "burst (tuned): 8 spares made ahead by /prealloc"
    start_default burst-spares 'pool_size = 8'
    curl -sf -X POST "$tango_url/prealloc/$key/autograding_image/8/" | jq -e '.statusId == 0' >/dev/null
    wait_pool 8
    engine 0
    burst_bench "spares-trivial-$n" "$run/trivial" trivial-ok --count "$n" --warmup 0
    stop_tango

    log "burst (tuned): engine capacity 8 instead of twice its CPUs"
    start_default burst-capacity '' '
[[docker.engines]]
url = "unix:///var/run/docker.sock"
capacity = 8'
    burst_bench "capacity8-trivial-$n" "$run/trivial" trivial-ok --count "$n"
    stop_tango

    log "burst (not default): a network of its own for every container"
    start_default burst-ownnet '' 'reuse_network = false'
    burst_bench "ownnet-trivial-$n" "$run/trivial" trivial-ok --count "$n"
    stop_tango
  else
    log "burst: no Docker engine here: the burst figures are left out"
  fi
fi

# ---- hostile beside normal ----
if want hostile; then
  log "hostile: hello alone, then beside forkbomb, flood, memhog and forever (local backend)"
  start_tango hostile memory '[vmms]
name = "local"
pool_size = 8
createvm_secs = 0.0

[limits]
memory_mb = 256'
  line=$("$bench_bin" hostile --url "$tango_url" --key "$key" --courselabs "$tango_labs" \
    --job tests/jobs/hello --expect "hello from" --count "$hostile_count" \
    --hostile tests/jobs/forkbomb --hostile tests/jobs/flood --hostile tests/jobs/memhog \
    --hostile tests/jobs/forever --hostile-timeout 10)
  record hostile local "$line"
  echo "  $line" >&2
  stop_tango
fi

# ---- fair share under a burst ----
if want fair; then
  for scheduling in fifo fair; do
    log "fair: $fair_count jobs of one course at once, then one of another ($scheduling, local)"
    start_tango "fair-$scheduling" memory "[vmms]
name = \"local\"
pool_size = 2
max_concurrent_jobs = 2
createvm_secs = 0.0

[jobs]
scheduling = \"$scheduling\""
    line=$("$bench_bin" fair --url "$tango_url" --key "$key" --courselabs "$tango_labs" \
      --courselab busy --job "$run/trivial" --expect trivial-ok --count "$fair_count")
    record fair "$scheduling" "$line"
    echo "  $line" >&2
    stop_tango
  done
fi

# ---- the report ----
log "writing $out"
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain 2>/dev/null) ]]; then commit="$commit-dirty"; fi
machine=$(jq -nc --arg cpu "$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)" \
  --arg nproc "$(nproc)" --arg mem "$(free -m | awk '/^Mem:/ {print $2}')" \
  --arg kernel "$(uname -r)" \
  --arg docker "$( ((docker_ok)) && docker version --format '{{.Server.Version}} ({{.Server.Os}}), storage driver: '"$(docker info --format '{{.Driver}}')" || echo none)" \
  --arg redis "$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')" \
  --arg wrk "$(wrk -v 2>&1 | head -n1 | cut -d' ' -f2)" \
  '{cpu: $cpu, nproc: $nproc, mem_mib: $mem, kernel: $kernel, docker: $docker, redis: $redis, wrk: $wrk}')
# Kept after the run, so that the report can be written again by hand if need be: a full
# run's under its own name, so that a partial run after it does not take its place.
kept=${TMPDIR:-/tmp}/tango-bench-results.jsonl
if ((quick)) || [[ $only != "$all_sections" ]]; then kept=${kept%.jsonl}-partial.jsonl; fi
cp "$results" "$kept"
log "results kept in $kept"
python3 benches/report.py --results "$results" --out "$out" --commit "$commit" \
  --date "$(date -u '+%Y-%m-%d %H:%M UTC')" --command "$command_line" --machine "$machine" \
  --quick "$quick" --wrk-secs "$wrk_secs" --wrk-rounds "$wrk_rounds"
log "done: $out"
