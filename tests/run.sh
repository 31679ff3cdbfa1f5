#!/usr/bin/env bash
# run.sh - run every test and print the one closing line of make test.
#
# Usage: tests/run.sh BUILD_DIR
# Runs each compiled tests/test_* binary, then each tests/integration/*.sh
# and *.py. Each prints PASS/FAIL/SKIP lines; a program that exits non-zero
# without printing a FAIL line counts as one failure of its own, so a crash
# is never silent. Output of every program goes to BUILD_DIR/test-logs/.
set -u
build=${1:?usage: tests/run.sh BUILD_DIR}
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
logs="$build/test-logs"
mkdir -p "$logs"
export HL_BUILD="$build" HL_TOP="$top"
if [ -z "${HL_DATASETS:-}" ] && [ -d "$top/../shared/datasets" ]; then
  export HL_DATASETS=$(cd "$top/../shared/datasets" && pwd)
fi
[ -n "${HL_DATASETS:-}" ] || echo "note: ../shared/datasets is absent; tests that need it will SKIP"

passed=0 failed=0 skipped=0
run_one() {
  local name=$1; shift
  local log="$logs/$name.log" start=$SECONDS rc
  "$@" >"$log" 2>&1; rc=$?
  local p f s
  p=$(grep -c '^PASS ' "$log"); f=$(grep -c '^FAIL ' "$log"); s=$(grep -c '^SKIP ' "$log")
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "FAIL $name: exited $rc without a FAIL line (see $log)"; tail -n 20 "$log" | sed 's/^/    /'
    f=1
  fi
  grep -E '^(FAIL|SKIP) |^    ' "$log"
  printf '%-28s %3d passed %3d failed %3d skipped  %3ds\n' "$name" "$p" "$f" "$s" $((SECONDS - start))
  passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
}

for t in "$build"/tests/test_*; do
  [ -x "$t" ] || continue
  run_one "$(basename "$t")" "$t"
done
for t in "$here"/integration/*.sh "$here"/integration/test_*.py; do
  [ -f "$t" ] || continue
  case $t in
    *.sh) run_one "$(basename "$t")" bash "$t" ;;
    *.py) run_one "$(basename "$t")" /usr/bin/python3 "$t" ;;
  esac
done
if [ -n "${HL_FUZZ_CMDS:-}" ]; then
  for t in $HL_FUZZ_CMDS; do run_one "$(basename "$t")" bash -c "$t"; done
fi
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
