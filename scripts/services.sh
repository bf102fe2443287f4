# Sourced by test.sh, bench.sh and instructions.sh: the processes a run starts on loopback
# (each added to `pids`) and the Redis of the run's own that each of them needs.

pids=()

# stop_pids: every process in `pids`, killed and waited for (the scripts' exit traps).
stop_pids() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_redis DIR: Redis on a free loopback port, without persistence, its files and log in
# DIR; returns once it answers. Sets redis_port.
start_redis() {
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$1" --daemonize no >"$1/redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  redis-cli -p "$redis_port" ping >/dev/null
}
