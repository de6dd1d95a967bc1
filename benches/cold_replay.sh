#!/usr/bin/env bash
# A channel's history read back cold: each reprise binary in turn fills a channel with EVENTS
# events (`reprise-load replay --via http`), is stopped, the OS's page cache is dropped (root
# only: /proc/sys/vm/drop_caches), and a fresh server on the same data directory serves the whole
# channel over the HTTP history API (`replay --skip-fill`), every event checked in order. What it
# measures is reading sled's pages back from the disk, which the warm `replay-http` scenario of
# compare.sh never does.
#
# Usage: benches/cold_replay.sh ROUNDS REPRISE_BINARY...
#   EVENTS (environment): events in the channel (default 200000, the server's replay cap here).
# Output: one line per run: binary, events/s read back, server CPU µs per event, size of the data
# directory.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:?rounds}
shift
[ $# -gt 0 ] || { echo "name at least one reprise binary" >&2; exit 2; }
[ -w /proc/sys/vm/drop_caches ] || { echo "needs root, to drop the page cache" >&2; exit 2; }
events=${EVENTS:-200000}
REPLAY_CAP=$events
. benches/lib/one_server.sh

for round in $(seq "$rounds"); do
  for binary in "$@"; do
    rm -rf "$work/data"
    start_server "$binary"
    run_load replay --events "$events" --via http --channel cold
    stop_server
    sync && echo 3 >/proc/sys/vm/drop_caches
    start_server "$binary"
    run_load --server-pid "$server_pid" replay --skip-fill --channel cold --via http
    stop_server
    megabytes=$(du -sm "$work/data" | cut -f1)
    tail -1 "$work/load.txt" | python3 -c '
import json, sys
run = json.loads(sys.stdin.read())
assert run["check"] == "ok", run
rate, cpu = run["events_per_sec"], run["server_cpu_us_per_event"]
print(f"round {sys.argv[1]} {sys.argv[2]} events/s={rate:.0f} server_cpu_us_per_event={cpu} data_dir_mb={sys.argv[3]}")
' "$round" "$binary" "$megabytes"
  done
done
