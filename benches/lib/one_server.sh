# Sourced by benches/publish_writes.sh and benches/cold_replay.sh: one Reprise server at a time on
# port 18080 (app bench / bench-key / bench-secret, sync durability, replay_cap_events =
# REPLAY_CAP), its data in $work/data, and the load generator built here as $load. The caller
# runs from the repository's root. A server still running when the script exits is stopped, and
# $work removed.

. benches/lib/ports.sh
port=18080
cargo build --release -p reprise-load
load=$(realpath "${CARGO_TARGET_DIR:-target}/release/reprise-load")
work=$(mktemp -d)
server_pid=""
cleanup() {
  [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
printf '[server]\nreplay_cap_events = %s\n' "${REPLAY_CAP:-200000}" >"$work/reprise.toml"

# start_server BINARY: starts it on $work/data (kept as it is) and waits until it answers.
start_server() {
  if listening $port; then
    echo "port $port is already in use: stop what listens there first" >&2
    exit 1
  fi
  mkdir -p "$work/data"
  REVERB_APP_ID=bench REVERB_APP_KEY=bench-key REVERB_APP_SECRET=bench-secret \
    "$1" start --host 127.0.0.1 --port $port --config "$work/reprise.toml" \
    --data-dir "$work/data" >>"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/up" && return; sleep 0.1; done
  echo "the server did not start: see $work/server.log" >&2
  exit 1
}

stop_server() {
  kill "$server_pid" && wait "$server_pid" || true
  server_pid=""
}

# run_load ARGS...: the load generator against the server, its output in $work/load.txt; a failed
# run prints it and ends the script.
run_load() {
  "$load" --port $port --app-id bench --key bench-key --secret bench-secret "$@" >"$work/load.txt" 2>&1 ||
    { cat "$work/load.txt" >&2; exit 1; }
}
