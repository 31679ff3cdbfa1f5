#!/usr/bin/env bash
# run.sh - run every test and print the one closing line of make test.
#
# Usage: tests/run.sh BUILD_DIR
# Runs each compiled tests/test_* binary (those waiting on brokers in the
# pool below), then each tests/integration/*.sh
# and *.py. Each prints PASS/FAIL/SKIP lines; a program that exits non-zero
# without printing a FAIL line counts as one failure of its own, so a crash
# is never silent. Output of every program goes to BUILD_DIR/test-logs/.
# The integration tests and fuzzers run HL_TEST_JOBS at a time (default 5,
# 2 under HL_SAN=1): most of their time is spent waiting on brokers,
# sessions and timers. Two at a time kept 0.7 of one core busy (measured
# with /usr/bin/time on 2026-12-06); five at a time kept 1.1 cores busy
# and ran make test's 1,198 checks in 373 s, nothing left to build
# (2026-12-07, 97 integration programs), where three took 555 s with the
# build for 1,152 checks in the CI before. Sanitized binaries burn several
# times the CPU, so SAN=1 keeps two. Each has its own ports (free ones) and
# temporary directories. HL_TEST_JOBS=1 runs them one by one.
set -u
build=${1:?usage: tests/run.sh BUILD_DIR}
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
logs="$build/test-logs"
mkdir -p "$logs"
rm -f "$logs"/*.count
export HL_BUILD="$build" HL_TOP="$top"
if [ -z "${HL_DATASETS:-}" ] && [ -d "$top/../shared/datasets" ]; then
  export HL_DATASETS=$(cd "$top/../shared/datasets" && pwd)
fi
[ -n "${HL_DATASETS:-}" ] || echo "note: ../shared/datasets is absent; tests that need it will SKIP"

passed=0 failed=0 skipped=0
jobs_default=5
[ "${HL_SAN:-0}" = 1 ] && jobs_default=2
jobs_max=${HL_TEST_JOBS:-$jobs_default}

# Runs one program; prints its FAIL/SKIP lines and one summary line in a
# single write (so lines of two programs never interleave) and leaves
# "passed failed skipped" in BUILD_DIR/test-logs/NAME.count.
run_one() {
  local name=$1; shift
  local log="$logs/$name.log" start=$SECONDS rc
  "$@" >"$log" 2>&1; rc=$?
  local p f s out
  p=$(grep -c '^PASS ' "$log"); f=$(grep -c '^FAIL ' "$log"); s=$(grep -c '^SKIP ' "$log")
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    out=$(echo "FAIL $name: exited $rc without a FAIL line (see $log)"; tail -n 20 "$log" | sed 's/^/    /')
    f=1
  fi
  out=$(printf '%s\n%s\n%-28s %3d passed %3d failed %3d skipped  %3ds' "${out:-}" \
        "$(grep -E '^(FAIL|SKIP) |^    ' "$log")" "$name" "$p" "$f" "$s" $((SECONDS - start)) |
        sed '/^$/d')
  printf '%s\n' "$out"
  echo "$p $f $s" >"$logs/$name.count"
}

# run_one in the background, at most jobs_max at once.
run_bg() {
  while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do wait -n; done
  run_one "$@" &
}

# The unit tests run one by one, but for these, which spend their time
# waiting on a mock broker's group or a stand-in registry (16-20 s each,
# 80 of the unit tests' 103 s in make test on 2026-12-07; test_registry
# 7 s, most of it a codec's retry clock): they join the pool below, after
# the slowest integration programs.
unit_waiting=" test_items_load test_schema_store test_consumer test_changelog test_changelog_fence test_registry "
names=()
for t in "$build"/tests/test_*; do
  [ -x "$t" ] || continue
  case $unit_waiting in *" $(basename "$t") "*) continue ;; esac
  run_one "$(basename "$t")" "$t"
  names+=("$(basename "$t")")
done
# The slowest programs (make test's per-program seconds, 2026-12-06 and
# 2026-12-07 CI: 30-74 s each) start first, so no long one starts last and
# holds make test's end on one core while the others idle; the rest keep
# their order. test_topic_recreated_changelog.py (62 s in the 2026-12-07
# CI) started among the last, in name order.
slow_first="test_model_reshape.py test_changelog_recreated.py test_delivery_refused.py
            test_topic_recreated_changelog.py test_deploy.sh test_crash.py test_items.py
            test_live.py test_demo_args.sh test_foldin_lift.py fuzz.sh test_readyz_rebalance.py
            test_outage.py test_model_reshape_rebalance.py"
ordered=()
for n in $slow_first; do [ -f "$here/integration/$n" ] && ordered+=("$here/integration/$n"); done
for n in $unit_waiting; do [ -x "$build/tests/$n" ] && ordered+=("$build/tests/$n"); done
for t in "$here"/integration/*.sh "$here"/integration/test_*.py; do
  case " $(echo $slow_first) " in *" $(basename "$t") "*) continue ;; esac
  ordered+=("$t")
done
for t in "${ordered[@]}"; do
  [ -f "$t" ] || continue
  case $t in
    *.sh) run_bg "$(basename "$t")" bash "$t" ;;
    *.py) run_bg "$(basename "$t")" /usr/bin/python3 "$t" ;;
    *) run_bg "$(basename "$t")" "$t" ;;
  esac
  names+=("$(basename "$t")")
done
if [ -n "${HL_FUZZ_CMDS:-}" ]; then
  for t in $HL_FUZZ_CMDS; do run_bg "$(basename "$t")" bash -c "$t"; names+=("$(basename "$t")"); done
fi
wait
for n in "${names[@]}"; do
  read -r p f s <"$logs/$n.count" || { p=0; f=1; s=0; echo "FAIL $n: no result (see $logs/$n.log)"; }
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
done
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
