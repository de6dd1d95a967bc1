#!/usr/bin/env bash
# What a publish costs and writes, by event size: for each round, each payload size and each
# reprise binary in turn, a fresh server (sync durability, replay_cap_events = 200000, a fresh
# data directory) and `reprise-load --payload-bytes P publish --concurrency 16`. Besides the load
# generator's rate and the server's CPU, it reads what the server wrote: `wchar` from
# /proc/PID/io (bytes passed to write and its kin) and the sectors the disk under the data
# directory was sent, from /proc/diskstats (the whole disk, so other writers count too).
# `write_bytes` in /proc/PID/io is not used: with large page-cache folios (ext4 on Linux 6.16 and
# later) it counts a whole folio per first write into it, not what reaches the disk (see
# docs/benchmarks.md, round two, fourteenth pass).
#
# Usage: benches/publish_writes.sh ROUNDS "PAYLOADS" REPRISE_BINARY...
#   e.g. benches/publish_writes.sh 4 "100 1000 3000 8000" /tmp/reprise-before target/release/reprise
#   SECS (environment): seconds per run (default 8); CONCURRENCY: publishers (default 16).
# Output: one line per run: binary, payload, publishes/s, ack p50 (µs), server CPU µs per publish,
# the host's steal (% of a core), bytes written per publish, device bytes per publish.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:?rounds}
payloads=${2:?payload sizes}
shift 2
[ $# -gt 0 ] || { echo "name at least one reprise binary" >&2; exit 2; }
secs=${SECS:-8}
concurrency=${CONCURRENCY:-16}
. benches/lib/one_server.sh
disk=$(basename "$(df --output=source "$work" | tail -1)")

io_field() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/io"; }
sectors_written() { awk -v d="$disk" '$3 == d { print $10 }' /proc/diskstats; }

for round in $(seq "$rounds"); do
  for payload in $payloads; do
    for binary in "$@"; do
      rm -rf "$work/data"
      start_server "$binary"
      wchar0=$(io_field "$server_pid" wchar)
      sectors0=$(sectors_written)
      run_load --server-pid "$server_pid" --payload-bytes "$payload" publish --concurrency "$concurrency" \
        --duration-secs "$secs" --warmup-secs 0
      wchar1=$(io_field "$server_pid" wchar)
      sectors1=$(sectors_written)
      stop_server
      tail -1 "$work/load.txt" | python3 -c '
import json, sys
run = json.loads(sys.stdin.read())
binary, payload, wchar, sectors, round_ = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
assert run["check"] == "ok", run
n = run["publishes"]
rate, p50 = run["publishes_per_sec"], run["ack_latency_us"]["p50"]
cpu, steal = run["server_cpu_us_per_publish"], run["steal_percent"]
print(f"round {round_} {binary} payload={payload} publishes/s={rate:.0f} ack_p50_us={p50:.0f}"
      f" server_cpu_us={cpu} steal%={steal} written_per_publish={wchar // n}"
      f" device_per_publish={sectors * 512 // n}")
' "$binary" "$payload" $((wchar1 - wchar0)) $((sectors1 - sectors0)) "$round"
    done
  done
done
