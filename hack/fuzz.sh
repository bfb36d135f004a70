#!/usr/bin/env bash
# Builds the fuzz targets under fuzz/ and runs each, one after the other, for a bounded time, then
# prints a table of what each run did. Used by `make fuzz`; docs/fuzzing.md describes the targets.
#
#   hack/fuzz.sh [target...]       every target when none is named (`cargo fuzz list`)
#
# Environment: FUZZ_SECONDS (per target, default 60), FUZZ_TIMEOUT (seconds one input may take
# before it counts as a finding, default 10), FUZZ_RSS_MB (memory one run may use, default 2048).
# Each run grows fuzz/corpus/<target>/ (only the committed seed-* files are tracked by git) and
# logs to fuzz/logs/<target>.log; an input that crashes, times out or runs out of memory is kept
# under fuzz/artifacts/<target>/ and fails the script once every target has run.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
timeout=${FUZZ_TIMEOUT:-10}
rss_mb=${FUZZ_RSS_MB:-2048}
# cargo fuzz builds with -Z flags (sanitizer, coverage); the pinned toolchain is stable, and this
# lets it accept them.
export RUSTC_BOOTSTRAP=1

targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo fuzz list)
fi

echo "==> building ${#targets[@]} fuzz targets" >&2
cargo fuzz build >&2

mkdir -p fuzz/logs
rows=()
failed=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  log="fuzz/logs/$t.log"
  echo "==> fuzzing $t for ${seconds}s" >&2
  status=ok
  # One process, one job: the machine's other work keeps its cores.
  if ! cargo fuzz run "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -timeout="$timeout" -rss_limit_mb="$rss_mb" \
      -print_final_stats=1 >"$log" 2>&1; then
    status="FAILED (see $log)"
    failed+=("$t")
  fi
  stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
  done_line=$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE)' "$log" | tail -1 || true)
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$done_line")
  corp=$(sed -nE 's/.* corp: ([0-9]+)\/.*/\1/p' <<<"$done_line")
  rows+=("$(printf '%-18s %8s %12s %9s %7s %7s %8s  %s' "$t" "${seconds}s" \
    "$(stat number_of_executed_units)" "$(stat average_exec_per_sec)" "${cov:--}" \
    "${corp:--}" "$(stat peak_rss_mb)" "$status")")
done

printf '%-18s %8s %12s %9s %7s %7s %8s  %s\n' target time execs execs/s cov corpus rss_mb result
printf '%s\n' "${rows[@]}"
if ((${#failed[@]})); then
  echo "fuzz: findings in ${failed[*]}: the inputs are under fuzz/artifacts/" >&2
  exit 1
fi
