#!/usr/bin/env bash
# Measures several servers in the same runs: every scenario on a fresh server (and a fresh data
# directory), one server at a time, the servers taking turns, for ROUNDS rounds. This is how the
# rounds of docs/benchmarks.md were taken; see there for the figures and the machine.
#
# Usage: benches/compare.sh ROUNDS "SCENARIOS" SERVER...
#        benches/compare.sh --base COMMIT ROUNDS "SCENARIOS"
#   SCENARIOS: any of fanout idle publish channels replay-ws replay-http storm fanout-sse
#              (replay, storm and fanout-sse, over event streams, need Reprise)
#   SERVER:    reprise=<path to a reprise binary>    (port 18080, sync durability,
#                                                     replay_cap_events = 200000)
#              sockudo=<path to a sockudo binary>    (port 18081, benches/peers/sockudo.json)
#   e.g. benches/compare.sh 3 "fanout idle publish" reprise=target/release/reprise \
#          reprise=/tmp/reprise-before sockudo=$HOME/.cargo/bin/sockudo
#
# --base COMMIT: Reprise at COMMIT against the current tree (uncommitted changes included), both
# built here in release mode: COMMIT in a detached git worktree that shares this tree's target
# directory (its dependencies are built once; only the two trees' own crates and the vendored
# sled are built twice, and the head's sources are touched so that cargo rebuilds them after the
# base), the worktree removed afterwards. Both binaries are kept as
# target/compare/reprise-base-<commit> and target/compare/reprise-head. At the end it prints, per
# scenario and figure, the median of each side over the rounds and the ratio head / base (and the
# range of the per-round ratios: each round runs the two one after the other, so a round's ratio
# shares that moment's conditions).
#   e.g. benches/compare.sh --base 0544806 3 "fanout publish idle"
#   BASE_WORKTREE (environment) says where the worktree goes (default: a temporary directory).
# STEAL_MAX=N (with --base): leave out of the medians and ratios every round of a scenario in
#   which either side's run saw more than N % of a core of the host's steal (reprise-load's
#   steal_percent: the vCPUs waiting for the host, which inflates the server's kernel time; see
#   docs/benchmarks.md, round two, eleventh pass), and say which rounds were left out.
# WAIT_FOR_BUILDS=0: do not wait for other builds before each run (see below).
# Sizes (environment, passed to every run of the scenario): FANOUT_ARGS, PUBLISH_ARGS,
#   IDLE_ARGS, CHANNELS_ARGS (e.g. FANOUT_ARGS="--subscribers 2000 --rate 20").
#
# The load generator is target/release/reprise-load (built here). Each run's output goes to
# target/compare/<n>-<kind>-<scenario>-<round>.txt (n: the server's place on the command line;
# with --base, 1 is the base and 2 the head) and its JSON line, whose "label" is that same name,
# to target/compare/results.jsonl. Before each run it waits until no cargo or rustc runs: other
# work on the machine shows in every figure ("other CPU" says how much).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib/ports.sh

base_commit=""
if [ "${1:-}" = "--base" ]; then
  base_commit=${2:?--base needs a commit}
  shift 2
fi
rounds=${1:?rounds}
scenarios=${2:?scenarios}
shift 2
[ $# -gt 0 ] || [ -n "$base_commit" ] || { echo "name at least one server, or --base COMMIT" >&2; exit 2; }

target_dir=$(realpath -m "${CARGO_TARGET_DIR:-target}")
out="$target_dir/compare"
mkdir -p "$out"

# Builds Reprise at $base_commit in a detached worktree sharing $target_dir, then the current
# tree; each binary is copied out at once, since both builds write target/release/reprise.
if [ -n "$base_commit" ]; then
  short=$(git rev-parse --short "$base_commit^{commit}")
  base_tree=${BASE_WORKTREE:-$(mktemp -d -u /tmp/reprise-base-XXXXXX)}
  git worktree add --detach "$base_tree" "$short" >/dev/null
  echo "==> building the base ($short) in $base_tree"
  status=0
  (cd "$base_tree" && CARGO_TARGET_DIR="$target_dir" cargo build --release -p reprise --bin reprise) || status=$?
  [ $status -ne 0 ] || cp "$target_dir/release/reprise" "$out/reprise-base-$short"
  git worktree remove --force "$base_tree"
  [ $status -eq 0 ] || { echo "the base did not build" >&2; exit 1; }
  echo "==> building the current tree"
  # Cargo names the artifacts of a workspace crate or path dependency without its path, so the
  # base's build replaced the head's, and it judges them fresh by comparing their time with the
  # sources' (relative paths, so the head's files): touching the head's sources makes it build
  # them again. All of them: the vendored sled and reprise-alloc too (a head whose sled differed
  # from the base's was once measured with the base's sled).
  find src api/src storage/src alloc/src vendor -name '*.rs' -exec touch {} +
  cargo build --release -p reprise --bin reprise
  cp "$target_dir/release/reprise" "$out/reprise-head"
  if cmp -s "$out/reprise-base-$short" "$out/reprise-head"; then
    echo "the base and head binaries are identical: nothing to compare" >&2
    exit 1
  fi
  set -- "reprise=$out/reprise-base-$short" "reprise=$out/reprise-head"
fi

cargo build --release -p reprise-load
load="$target_dir/release/reprise-load"
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
    fanout) echo "fanout ${FANOUT_ARGS:-}" ;;
    publish) echo "publish ${PUBLISH_ARGS:-}" ;;
    idle) echo "idle ${IDLE_ARGS:-}" ;;
    channels) echo "channels ${CHANNELS_ARGS:-}" ;;
    storm) echo "$1" ;;
    *) echo "unknown scenario $1" >&2; exit 2 ;;
  esac
}

# Starts server spec $1 (kind=path), logging to $2; sets pid and port.
start_server() {
  local kind=${1%%=*} path=${1#*=}
  case "$kind" in
    reprise) port=18080 ;;
    sockudo) port=18081 ;;
    *) echo "unknown server kind $kind (reprise=PATH or sockudo=PATH)" >&2; exit 2 ;;
  esac
  # A server left over (another run's, or one that did not exit) would answer in this one's place.
  if listening $port; then
    echo "port $port is already in use: stop what listens there first" >&2
    exit 1
  fi
  case "$kind" in
    reprise)
      mkdir -p "$work/data"
      REVERB_APP_ID=bench REVERB_APP_KEY=bench-key REVERB_APP_SECRET=bench-secret \
        "$path" start --host 127.0.0.1 --port $port --config "$work/reprise.toml" --data-dir "$work/data" >"$2" 2>&1 &
      ;;
    sockudo)
      # Sockudo reads config/ of its working directory first: start it from an empty one.
      # Two lines: with `mkdir ... && (...) &` the whole list ran in the background, so `$!` was
      # a shell around Sockudo (its CPU was measured as nothing, and stopping it left Sockudo up).
      mkdir -p "$work/sockudo"
      (cd "$work/sockudo" && exec "$path" --config "$sockudo_config") >"$2" 2>&1 &
      ;;
  esac
  pid=$!
  for _ in $(seq 1 200); do
    listening $port && return 0
    kill -0 $pid 2>/dev/null || break
    sleep 0.05
  done
  echo "$1 did not start; see $2" >&2
  exit 1
}

# Sockudo takes its 10 s shutdown grace period: a server still up after 15 s is killed, so that
# the next one finds its port free.
stop_server() {
  kill -TERM $pid 2>/dev/null || true
  for _ in $(seq 1 150); do
    kill -0 $pid 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  rm -rf "$work/data"
}

for round in $(seq 1 "$rounds"); do
  for scenario in $scenarios; do
    n=0
    for server in "$@"; do
      n=$((n + 1))
      # WAIT_FOR_BUILDS=0 skips this wait (on a machine others always build on, it may never end).
      while [ "${WAIT_FOR_BUILDS:-1}" = 1 ] && { pgrep -x cargo >/dev/null || pgrep -x rustc >/dev/null; }; do
        sleep 10
      done
      name="$n-${server%%=*}"
      file="$out/$name-$scenario-$round"
      start_server "$server" "$file.server.log"
      sleep 1 # let the server settle
      status=0
      "$load" --port $port --app-id bench --key bench-key --secret bench-secret --server-pid $pid \
        --label "$name-$scenario-$round" $(scenario_args "$scenario") >"$file.txt" 2>&1 || status=$?
      stop_server
      # The label names the server, the scenario and the round.
      if line=$(grep '^{' "$file.txt" | tail -1); then
        echo "$line" >>"$out/results.jsonl"
        echo "$line" >>"$work/results.jsonl"
      else
        echo "$name: no result line (exit $status)" >&2
      fi
      echo "round $round $scenario $name: $(grep -E '^  check' "$file.txt" || echo "no check line (exit $status)")"
    done
  done
done

[ -n "$base_commit" ] || exit 0
echo
echo "==> head (the current tree) against base ($short): median of $rounds round(s), ratio head / base"
STEAL_MAX=${STEAL_MAX:-} python3 - "$work/results.jsonl" <<'EOF'
import json, os, statistics, sys
from collections import defaultdict

steal_max = float(os.environ["STEAL_MAX"]) if os.environ.get("STEAL_MAX") else None

# label: "<n>-reprise-<scenario>-<round>"; n = 1 is the base, 2 the head.
runs = defaultdict(dict)  # (scenario, figure) -> {(side, round): value}
checks = defaultdict(list)
disturbed = defaultdict(set)  # scenario -> rounds in which either side saw too much steal
for line in open(sys.argv[1]):
    if not line.strip():
        continue
    result = json.loads(line)
    n, _kind, rest = result["label"].split("-", 2)
    scenario, rnd = rest.rsplit("-", 1)
    side = "base" if n == "1" else "head"
    checks[(scenario, side)].append(result.get("check", "?"))
    if steal_max is not None and result.get("steal_percent", 0) > steal_max:
        disturbed[scenario].add(rnd)
    for key, value in result.items():
        values = value.items() if isinstance(value, dict) else [("", value)]
        for sub, v in values:
            if sub == "samples" or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            runs[(scenario, key + ("." + sub if sub else ""))][(side, rnd)] = v

for scenario, rounds in sorted(disturbed.items()):
    print(f"{scenario}: round(s) {' '.join(sorted(rounds, key=int))} left out (steal above {steal_max:g} %)")
print(f"{'scenario':12} {'figure':42} {'base':>12} {'head':>12} {'head/base':>9}  per round")
for (scenario, figure), values in runs.items():
    values = {(side, r): v for (side, r), v in values.items() if r not in disturbed[scenario]}
    base = [v for (side, _), v in values.items() if side == "base"]
    head = [v for (side, _), v in values.items() if side == "head"]
    if not base or not head or len(set(base + head)) == 1:
        continue  # an input of the scenario (sizes), the same on both sides
    mb, mh = statistics.median(base), statistics.median(head)
    ratio = f"{mh / mb:.3f}" if mb else "-"
    rounds = sorted({r for (_, r) in values})
    per = [values[("head", r)] / values[("base", r)] for r in rounds
           if values.get(("base", r)) and ("head", r) in values]
    spread = f"{min(per):.3f}-{max(per):.3f}" if per else ""
    print(f"{scenario:12} {figure:42} {mb:>12.6g} {mh:>12.6g} {ratio:>9}  {spread}")
for (scenario, side), results in sorted(checks.items()):
    print(f"checks {scenario} {side}: {' '.join(results)}")
EOF
