#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time and exits non-zero if
# any of them found a crash, a hang or an allocation over the limit.
#
#   bash fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to $FUZZ_SECONDS, else 30; the targets default
# to all of them (`cargo fuzz list`). Needs the nightly toolchain and
# cargo-fuzz (.ci/run installs both). All targets are built by one
# `cargo fuzz build`. Each run starts from the committed seeds
# (fuzz/corpus/TARGET) and writes what it finds to a scratch directory, so
# the seeds stay as committed; a failing input is saved under
# fuzz/artifacts/TARGET/ and the run command to replay it is printed.
set -euo pipefail
cd "$(dirname "$0")"

secs=${1:-${FUZZ_SECONDS:-30}}
shift || true
# Bounds of every run: inputs up to 64 KiB, a whole process under 2 GiB, no
# single allocation over 256 MiB (the delta target's documented bound is far
# lower), and any one input over 10 s is a hang.
opts=(-max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=256
  -max_len=65536 -timeout=10 -print_final_stats=1)
# cargo fuzz's default build: optimised, with debug assertions and overflow
# checks. (`run` must get the same build flags as `build`, or it rebuilds
# everything: `-O` alone drops the debug assertions.)
cargo +nightly fuzz build
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
  echo "=== fuzz $t for ${secs}s"
  mkdir -p "$scratch/$t"
  if ! cargo +nightly fuzz run "$t" "$scratch/$t" "corpus/$t" -- "${opts[@]}"; then
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing FAILED in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzzing: ${#targets[@]} targets, ${secs}s each, no crash"
