#!/usr/bin/env bash
# Measures several servers in the same runs: every scenario on a fresh server (and a fresh data
# directory), one server at a time, the servers taking turns, for ROUNDS rounds. This is how the
# "latest round" of docs/benchmarks.md was taken; see there for the figures and the machine.
#
# Usage: benches/compare.sh ROUNDS "SCENARIOS" SERVER...
#   SCENARIOS: any of fanout idle publish channels replay-ws replay-http storm fanout-sse
#              (replay, storm and fanout-sse, over event streams, need Reprise)
#   SERVER:    reprise=<path to a reprise binary>    (port 18080, sync durability,
#                                                     replay_cap_events = 200000)
#              sockudo=<path to a sockudo binary>    (port 18081, benches/peers/sockudo.json)
#   e.g. benches/compare.sh 3 "fanout idle publish" reprise=target/release/reprise \
#          reprise=/tmp/reprise-before sockudo=$HOME/.cargo/bin/sockudo
#
# The load generator is target/release/reprise-load (built here). Each run's output goes to
# target/compare/<n>-<kind>-<scenario>-<round>.txt (n: the server's place on the command line)
# and its JSON line, whose "label" is that same name, to target/compare/results.jsonl. Before
# each run it waits until no cargo or rustc runs: other work on the machine shows in every
# figure ("other CPU" says how much).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:?rounds}
scenarios=${2:?scenarios}
shift 2
[ $# -gt 0 ] || { echo "name at least one server" >&2; exit 2; }

target_dir=${CARGO_TARGET_DIR:-target}
cargo build --release -p reprise-load
load="$target_dir/release/reprise-load"
out="$target_dir/compare"
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '[server]\nreplay_cap_events = 200000\n' >"$work/reprise.toml"
sockudo_config=$(realpath benches/peers/sockudo.json)

scenario_args() {
  case "$1" in
    replay-ws) echo "replay --via ws" ;;
    replay-http) echo "replay --via http" ;;
    fanout-sse) echo "fanout --transport sse" ;;
    fanout | idle | publish | channels | storm) echo "$1" ;;
    *) echo "unknown scenario $1" >&2; exit 2 ;;
  esac
}

# Starts server spec $1 (kind=path), logging to $2; sets pid and port.
start_server() {
  local kind=${1%%=*} path=${1#*=}
  case "$kind" in
    reprise)
      port=18080
      mkdir -p "$work/data"
      REVERB_APP_ID=bench REVERB_APP_KEY=bench-key REVERB_APP_SECRET=bench-secret \
        "$path" start --host 127.0.0.1 --port $port --config "$work/reprise.toml" --data-dir "$work/data" >"$2" 2>&1 &
      ;;
    sockudo)
      port=18081
      # Sockudo reads config/ of its working directory first: start it from an empty one.
      mkdir -p "$work/sockudo" && (cd "$work/sockudo" && exec "$path" --config "$sockudo_config") >"$2" 2>&1 &
      ;;
    *) echo "unknown server kind $kind (reprise=PATH or sockudo=PATH)" >&2; exit 2 ;;
  esac
  pid=$!
  for _ in $(seq 1 200); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && return 0
    kill -0 $pid 2>/dev/null || break
    sleep 0.05
  done
  echo "$1 did not start; see $2" >&2
  exit 1
}

stop_server() {
  kill -TERM $pid
  wait $pid || true # Sockudo takes its 10 s shutdown grace period
  rm -rf "$work/data"
}

for round in $(seq 1 "$rounds"); do
  for scenario in $scenarios; do
    n=0
    for server in "$@"; do
      n=$((n + 1))
      while pgrep -x cargo >/dev/null || pgrep -x rustc >/dev/null; do sleep 10; done
      name="$n-${server%%=*}"
      file="$out/$name-$scenario-$round"
      start_server "$server" "$file.server.log"
      sleep 1 # let the server settle
      status=0
      "$load" --port $port --app-id bench --key bench-key --secret bench-secret --server-pid $pid \
        --label "$name-$scenario-$round" $(scenario_args "$scenario") >"$file.txt" 2>&1 || status=$?
      stop_server
      # The label names the server, the scenario and the round.
      grep '^{' "$file.txt" | tail -1 >>"$out/results.jsonl" || echo "$name: no result line (exit $status)" >&2
      echo "round $round $scenario $name: $(grep -E '^  check' "$file.txt" || echo "no check line (exit $status)")"
    done
  done
done
