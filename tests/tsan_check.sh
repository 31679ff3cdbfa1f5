#!/usr/bin/env bash
# tsan_check.sh - run the tests that start threads under ThreadSanitizer
# (make tsan-check; the binaries are built with SAN=thread into BUILD_DIR).
#
# Usage: tests/tsan_check.sh BUILD_DIR
# Runs the unit tests in UNITS and the integration tests in INTEGRATION one
# by one, each with TSAN_OPTIONS pointing at tests/tsan.supp (races inside
# the uninstrumented libraries) and writing its reports to
# BUILD_DIR/tsan-logs/NAME.PID. A test fails when it fails on its own or
# when any of its processes reported a race; the report files name the two
# accesses. Not part of make test: the set takes several minutes on two
# cores. OPENBLAS_NUM_THREADS=1: the worker runs OpenBLAS single-threaded
# in production (DESIGN.md section 6); its own pool would only add reports
# on memory TSan cannot see it hand over.
set -u
build=${1:?usage: tests/tsan_check.sh BUILD_DIR}
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
logs="$build/tsan-logs"
rm -rf "$logs"; mkdir -p "$logs"

UNITS="test_log test_metrics test_persist test_registry test_schema_store test_snapshot_write
       test_changelog test_changelog_reshape test_items_load test_swap test_swap_chain
       test_models test_models_keep"
# A live model swap, a rebalance, item-topic catalogue updates under a
# swap, a reshape swap through a rebalance (changelog claims), refused
# deliveries (reports served by several polling threads); each waits on
# /metrics scrapes while events flow. All but the catalogue's found a race
# once. (The index swap, fold-in and /readyz tests ran clean;
# test_accounting.py's million events take minutes here.)
INTEGRATION="test_model_swap.py test_rebalance.py test_swap_catalogue.py
             test_model_reshape_rebalance.py test_delivery_refused.py"

export HL_BUILD="$build" HL_TOP="$top" HL_SAN=thread HL_HALFLIFE="$build/halflife"
export OPENBLAS_NUM_THREADS=1
if [ -z "${HL_DATASETS:-}" ] && [ -d "$top/../shared/datasets" ]; then
  export HL_DATASETS=$(cd "$top/../shared/datasets" && pwd)
fi
tsan_base="suppressions=$here/tsan.supp halt_on_error=0 second_deadlock_stack=1 history_size=4"

failed=0
# Runs one program with its reports going to $logs/NAME.*; prints one line.
run_one() {
  local name=$1; shift
  local log="$logs/$name.log" start=$SECONDS rc n
  TSAN_OPTIONS="$tsan_base log_path=$logs/$name" "$@" >"$log" 2>&1; rc=$?
  n=$(cat "$logs/$name".[0-9]* 2>/dev/null | grep -c '^WARNING: ThreadSanitizer')
  if [ "$rc" -ne 0 ] || [ "$n" -gt 0 ] || grep -q '^FAIL ' "$log"; then
    failed=$((failed + 1))
    printf 'FAIL %-28s exit %d, %d race reports (%s/%s.*)  %3ds\n' "$name" "$rc" "$n" \
           "$logs" "$name" $((SECONDS - start))
  else
    printf 'PASS %-28s %3ds\n' "$name" $((SECONDS - start))
  fi
}

for t in $UNITS; do run_one "$t" "$build/tests/$t"; done
for t in $INTEGRATION; do run_one "$t" /usr/bin/python3 "$here/integration/$t"; done
[ "$failed" -eq 0 ] && echo "tsan-check: clean" || echo "tsan-check: $failed failed"
[ "$failed" -eq 0 ]
