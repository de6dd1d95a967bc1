#!/usr/bin/env bash
# Counts the instructions the server executes for a fixed publish-and-fan-out run, under
# valgrind's callgrind. An instruction count does not depend on how busy the machine is (unlike
# CPU time), so it is the figure docs/benchmarks.md records for every round.
#
# The run: a release server (sync durability, fresh data directory) under callgrind;
# `reprise-load fanout --subscribers S --events E --rate 0` against it (one publisher, each
# publish sent when the previous was acknowledged, every subscriber checked for every event in
# order); then SIGTERM, which makes callgrind write its profile. It is done twice, with E and with
# E + EXTRA_EVENTS publishes, and the difference divided by EXTRA_EVENTS is the count per publish
# (with its S frames): start-up, connects and shutdown cancel out.
#
# Not counted: the instructions of sled's start-up spin. sled starts its IO thread pool inside a
# lazily initialised static (`sled::lazy::Lazy`), and the pool's new threads spin on that static's
# lock until it is built; under valgrind, which runs one thread at a time, a spinning thread burns
# whole time slices, from a few million instructions to several hundred million depending on how
# the threads were scheduled. That function's own count is taken off each total (its ordinary
# calls cost a few instructions each), so the totals compare.
#
# Usage: benches/callgrind.sh [SUBSCRIBERS] [EVENTS] [EXTRA_EVENTS]    (default 100 200 1000)
#   REPRISE=<path>: measure that reprise binary (e.g. target/compare/reprise-base-<commit>, kept by
#   compare.sh --base) instead of building the current tree's.
#   SCENARIO=channels: 16 channels of one subscriber each, 16 publishers back to back
#   (`channels --channels 16 --subscribers-per-channel 1 --publishers 16 --rate 0`): the publish
#   path with group commits, where a commit's size depends on timing (so its count varies more).
#   SUBSCRIBERS_PER_CHANNEL=<n> (with SCENARIO=channels, default 1): 0 publishes to channels
#   nobody subscribes to, as `reprise-load publish` does (and most of a backend's publishes).
#   PAYLOAD_BYTES=<n>: each event's data size (the load generator's `--payload-bytes`, default
#   100); larger events show what the log's writes cost per byte.
# Output: target/callgrind/<scenario>-<events>.out (open with callgrind_annotate or kcachegrind),
# the load generator's report beside it (.txt), and a summary on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

subscribers=${1:-100}
events=${2:-200}
extra=${3:-1000}
scenario=${SCENARIO:-fanout}

target_dir=${CARGO_TARGET_DIR:-target}
# Built one at a time, as compare.sh does: together they would unify features differently and
# each script would rebuild what the other just built.
if [ -z "${REPRISE:-}" ]; then
  cargo build --release -p reprise --bin reprise
fi
cargo build --release -p reprise-load
reprise=${REPRISE:-$target_dir/release/reprise}
load="$target_dir/release/reprise-load"
out="$target_dir/callgrind"
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d)
server_pid=""
cleanup() {
  [ -z "$server_pid" ] || kill -TERM "$server_pid" 2>/dev/null || true
  [ -z "$server_pid" ] || wait "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Runs the scenario with $1 publishes under callgrind; prints the program's instruction total.
measure() {
  local publishes=$1 port profile
  port=$(free_port)
  profile="$out/$scenario-$publishes.out"
  rm -rf "$work/data"
  REVERB_APP_ID=bench REVERB_APP_KEY=bench-key REVERB_APP_SECRET=bench-secret NO_COLOR=1 \
    valgrind --tool=callgrind --callgrind-out-file="$profile" \
    "$reprise" start --host 127.0.0.1 --port "$port" --data-dir "$work/data" >"$out/$scenario-$publishes.server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 600); do
    curl -fsS "http://127.0.0.1:$port/up" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { echo "the server did not start" >&2; exit 1; }
    sleep 0.1
  done
  local args
  case "$scenario" in
    fanout) args=(fanout --subscribers "$subscribers" --events "$publishes") ;;
    channels) args=(channels --channels 16 --subscribers-per-channel "${SUBSCRIBERS_PER_CHANNEL:-1}" --publishers 16
      --events "$publishes") ;;
    *) echo "unknown SCENARIO $scenario (fanout or channels)" >&2; exit 2 ;;
  esac
  # Under valgrind the server is ~50 times slower: long limits, and the check still applies.
  "$load" --port "$port" --app-id bench --key bench-key --secret bench-secret \
    --connect-concurrency 10 --payload-bytes "${PAYLOAD_BYTES:-100}" "${args[@]}" --rate 0 --duration-secs 3600 --drain-secs 600 \
    >"$out/$scenario-$publishes.txt" 2>&1 || { echo "reprise-load failed: see $out/$scenario-$publishes.txt" >&2; exit 1; }
  grep -q '^  check: ok' "$out/$scenario-$publishes.txt" || { echo "check failed" >&2; exit 1; }
  kill -TERM "$server_pid"
  wait "$server_pid" || true
  server_pid=""
  # The profile's "totals:" line is the instructions of every thread of the run; less the spin
  # (see the top of this file).
  local total spin
  total=$(grep -E '^(summary|totals):' "$profile" | tail -1 | awk '{print $2}')
  spin=$(callgrind_annotate "$profile" 2>/dev/null | grep -F 'sled::lazy::Lazy<T,F> as core::ops::deref::Deref>::deref' |
    head -1 | awk '{gsub(",", "", $1); print $1}')
  echo $((total - ${spin:-0}))
}

small=$(measure "$events")
large=$(measure "$((events + extra))")
per_publish=$(((large - small) / extra))
echo
echo "==> callgrind, $scenario, $reprise: $events publishes: $small instructions; $((events + extra)): $large"
case "$scenario" in
  fanout) echo "    per publish (with its $subscribers frames): $per_publish instructions; per frame: $((per_publish / subscribers))" ;;
  channels) echo "    per publish (with its one frame): $per_publish instructions" ;;
esac
echo "    profiles: $out/$scenario-$events.out, $out/$scenario-$((events + extra)).out"
echo "    e.g.: callgrind_annotate --inclusive=yes $out/$scenario-$((events + extra)).out | head -60"
