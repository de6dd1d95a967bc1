#!/usr/bin/env bash
# Smoke run of the load generator: builds the release binaries, starts a Reprise server on a free
# loopback port with a temporary data directory, runs every reprise-load scenario once at a small
# size, and fails if any scenario's check fails (each one checks counts, order and duplicates).
# Takes well under 3 minutes once built. Each scenario's JSON line is collected in
# target/smoke/results.jsonl; the server's log is target/smoke/server.log (under
# $CARGO_TARGET_DIR instead of target/ when that is set).
#
# Usage: benches/smoke.sh            (from anywhere in the repository)
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir=${CARGO_TARGET_DIR:-target}
bin="$target_dir/release"
out="$target_dir/smoke"
mkdir -p "$out"
: >"$out/results.jsonl"

# One optimised build for the binaries and, in the same resolution, the criterion benches (so
# they cannot rot): `scripts/test` relies on this instead of a `cargo bench --no-run`, which
# would compile every dependency optimised a second time.
echo "==> building reprise, reprise-load and the criterion benches (release)"
cargo build --release --workspace --bins --bench '*'

# Both processes hold many sockets; every socket is a file.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

data_dir=$(mktemp -d)
config="$data_dir/reprise.toml"
# The WebSocket replay reads 2000 events in one subscribe: above the default cap of 1000.
cat >"$config" <<'EOF'
[server]
replay_cap_events = 5000
EOF

export REVERB_APP_ID=smoke REVERB_APP_KEY=smoke-key REVERB_APP_SECRET=smoke-secret
# Port 0: the kernel picks a free port, which the server logs.
NO_COLOR=1 RUST_LOG=info "$bin/reprise" start --host 127.0.0.1 --port 0 --config "$config" \
  --data-dir "$data_dir/log" >"$out/server.log" 2>&1 &
server_pid=$!

cleanup() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  rm -rf "$data_dir"
}
trap cleanup EXIT

port=""
for _ in $(seq 1 100); do
  port=$(sed 's/\x1b\[[0-9;]*m//g' "$out/server.log" | grep -o 'address=127\.0\.0\.1:[0-9]*' | head -n1 | cut -d: -f2 || true)
  if [ -n "$port" ] && curl -fsS "http://127.0.0.1:$port/up" >/dev/null 2>&1; then
    break
  fi
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "the server exited during start-up:" >&2
    cat "$out/server.log" >&2
    exit 1
  fi
  port=""
  sleep 0.1
done
if [ -z "$port" ]; then
  echo "the server did not come up within 10 s:" >&2
  cat "$out/server.log" >&2
  exit 1
fi
echo "==> server pid $server_pid on 127.0.0.1:$port"

load=("$bin/reprise-load" --port "$port" --server-pid "$server_pid")
failed=()
run() {
  local name=$1
  shift
  echo "==> $name"
  local output
  if output=$("${load[@]}" "$@"); then
    echo "$output"
  else
    echo "$output"
    failed+=("$name")
  fi
  # The last line of every scenario is its JSON.
  tail -n1 <<<"$output" >>"$out/results.jsonl"
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "the server died during $name:" >&2
    tail -n 50 "$out/server.log" >&2
    exit 1
  fi
}

started=$SECONDS
run fanout fanout --subscribers 50 --duration-secs 2 --rate 50
run fanout-sse fanout --transport sse --subscribers 50 --duration-secs 2 --rate 50
run channels channels --channels 100 --subscribers-per-channel 2 --publishers 4 --rate 200 --duration-secs 2
run idle idle --connections 200 --channels 20 --settle-secs 1
run publish --label sync publish --concurrency 16 --duration-secs 2 --warmup-secs 0.5
run replay-ws replay --events 2000 --via ws
run replay-http replay --events 2000 --via http
run storm storm --clients 100 --rate 20 --warm-secs 1 --down-ms 500 --tail-secs 0.5

echo
echo "==> smoke finished in $((SECONDS - started)) s; results in $out/results.jsonl"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "all scenarios passed their checks"
