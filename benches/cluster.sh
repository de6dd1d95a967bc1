#!/usr/bin/env bash
# Cluster mode against a single node, on this one machine: the same reprise-load runs against
#   single   one node, its default embedded sled log (sync durability)
#   cluster1 one node in cluster mode (--redis-url)
#   cluster3 three nodes in cluster mode, subscribers spread over them, publishes through all
# sharing a PRIVATE redis-server (a free loopback port, no persistence; never the shared 6379),
# emptied between runs. Every case runs ROUNDS times (the cases taking turns) and a comparison
# of acknowledged publishes/s, delivered frames/s and publish->receive p50/p99 is printed at the
# end. See docs/benchmarks.md, "Cluster mode", for the figures.
#
# With SOKETI=<path to a soketi binary> (benches/peers/soketi: `npm ci` there installs soketi 1.6.1),
# two more cases run soketi with its Redis adapter on the same private Redis:
#   soketi1  one soketi process (SOKETI_ADAPTER_DRIVER=redis)
#   soketi3  three soketi processes sharing the Redis adapter
#
# Usage: benches/cluster.sh [ROUNDS]    (default 2)
# Sizes (environment): FANOUT_SUBSCRIBERS (300), FANOUT_RATE (200/s), FANOUT_SECS (5),
#   PUBLISH_CONCURRENCY (32), PUBLISH_SECS (5).
# Output: target/cluster/<case>-<scenario>-<round>.txt, its JSON line in target/cluster/results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-2}
fanout_subscribers=${FANOUT_SUBSCRIBERS:-300}
fanout_rate=${FANOUT_RATE:-200}
fanout_secs=${FANOUT_SECS:-5}
publish_concurrency=${PUBLISH_CONCURRENCY:-32}
publish_secs=${PUBLISH_SECS:-5}

target_dir=${CARGO_TARGET_DIR:-target}
cargo build --release -p reprise -p reprise-load
reprise="$target_dir/release/reprise"
load="$target_dir/release/reprise-load"
out="$target_dir/cluster"
mkdir -p "$out"
: >"$out/results.jsonl"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port nobody listens on now (the kernel's pick for an ephemeral bind).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until 127.0.0.1:$1 answers $2 (an HTTP path, or "" for a bare TCP connect); $3 is the pid.
wait_up() {
  for _ in $(seq 1 200); do
    if [ -z "$2" ]; then
      (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    else
      curl -fsS "http://127.0.0.1:$1$2" >/dev/null 2>&1 && return 0
    fi
    kill -0 "$3" 2>/dev/null || break
    sleep 0.05
  done
  echo "nothing answers on port $1; see $work/*.log" >&2
  tail -n 20 "$work"/*.log >&2 || true
  exit 1
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  --logfile "$work/redis.log" &
redis_pid=$!
pids+=("$redis_pid")
wait_up "$redis_port" "" "$redis_pid"
echo "==> private redis-server pid $redis_pid on 127.0.0.1:$redis_port"

export REVERB_APP_ID=bench REVERB_APP_KEY=bench-key REVERB_APP_SECRET=bench-secret
node_pids=()
nodes=""
# Starts case $1's nodes; sets node_pids and nodes (the --nodes list).
start_case() {
  local count=1 cluster=()
  case "$1" in
    single) ;;
    cluster1) cluster=(--redis-url "redis://127.0.0.1:$redis_port/0") ;;
    cluster3) count=3 cluster=(--redis-url "redis://127.0.0.1:$redis_port/0") ;;
    soketi1) count=1 ;;
    soketi3) count=3 ;;
  esac
  redis-cli -p "$redis_port" flushall >/dev/null
  node_pids=()
  nodes=""
  for n in $(seq 1 $count); do
    local port
    port=$(free_port)
    case "$1" in
      soketi*)
        # soketi's metrics server would take 9601 on every process: off.
        SOKETI_PORT=$port SOKETI_DEFAULT_APP_ID=bench SOKETI_DEFAULT_APP_KEY=bench-key \
          SOKETI_DEFAULT_APP_SECRET=bench-secret SOKETI_ADAPTER_DRIVER=redis SOKETI_METRICS_ENABLED=false \
          SOKETI_DB_REDIS_HOST=127.0.0.1 SOKETI_DB_REDIS_PORT=$redis_port \
          "$SOKETI" start >"$work/node$n.log" 2>&1 &
        node_pids+=($!)
        pids+=($!)
        wait_up "$port" / $!
        ;;
      *)
        mkdir -p "$work/data$n"
        NO_COLOR=1 "$reprise" start --host 127.0.0.1 --port "$port" --data-dir "$work/data$n" "${cluster[@]}" \
          >"$work/node$n.log" 2>&1 &
        node_pids+=($!)
        pids+=($!)
        wait_up "$port" /up $!
        ;;
    esac
    nodes="${nodes:+$nodes,}127.0.0.1:$port"
  done
}

stop_case() {
  for pid in "${node_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${node_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"/data*
}

cases="single cluster1 cluster3${SOKETI:+ soketi1 soketi3}"
for round in $(seq 1 "$rounds"); do
  for scenario in fanout publish; do
    for case in $cases; do
      start_case "$case"
      sleep 1 # let the nodes settle (heartbeats, bus subscription)
      case "$scenario" in
        fanout) args=(fanout --subscribers "$fanout_subscribers" --rate "$fanout_rate" --duration-secs "$fanout_secs") ;;
        publish) args=(publish --concurrency "$publish_concurrency" --duration-secs "$publish_secs" --warmup-secs 1) ;;
      esac
      file="$out/$case-$scenario-$round"
      status=0
      # The server's CPU figures are of the first node only: meaningful for one node.
      "$load" --nodes "$nodes" --server-pid "${node_pids[0]}" --app-id bench --key bench-key \
        --secret bench-secret --label "$case-$scenario-$round" "${args[@]}" >"$file.txt" 2>&1 || status=$?
      stop_case
      grep '^{' "$file.txt" | tail -1 >>"$out/results.jsonl" || echo "$case: no result line (exit $status)" >&2
      echo "round $round $scenario $case: $(grep -E '^  check' "$file.txt" || echo "no check line (exit $status)")"
    done
  done
done

echo
echo "==> comparison (every run; latencies in us)"
python3 - "$out/results.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(f"{'case':9} {'scenario':8} {'round':>5} {'publishes/s':>12} {'frames/s':>10} {'p50':>7} {'p99':>7} {'ack p50':>8} {'ack p99':>8} check")
for r in rows:
    case, scenario, rnd = r["label"].rsplit("-", 2)
    lat = r.get("latency_us") or {}
    ack = r.get("ack_latency_us") or {}
    rate = r.get("publishes_per_sec", r.get("publish_rate", ""))
    print(f"{case:9} {scenario:8} {rnd:>5} {rate:>12} {r.get('frames_per_sec', ''):>10} "
          f"{lat.get('p50', ''):>7} {lat.get('p99', ''):>7} {ack.get('p50', ''):>8} {ack.get('p99', ''):>8} "
          f"{r.get('check', '?')}")
EOF
