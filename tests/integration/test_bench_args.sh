#!/usr/bin/env bash
# test_bench_args.sh - every benchmark checks its command line before it
# runs (tests/bench/bench_args.h): --help and -h print a usage on stdout
# and exit 0 at once, an unknown flag is refused on stderr, named, with
# exit 2. `bench_swap --help` used to run the whole benchmark (minutes at
# 1M users): the timeout catches that. make test builds the benches
# (bench_faiss only where FAISS is installed: checked when built).
set -u
name=bench_args
top=${HL_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
build=${HL_BUILD:-$top/build}
if [ ! -d "$build/bench" ]; then
  echo "SKIP $name: $build/bench not built (make test builds it)"; exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() {  # CASE OK WHY
  if [ "$2" = 1 ]; then echo "PASS $name.$1"; else echo "FAIL $name.$1: $3"; fail=1; fi
}

for src in "$top"/tests/bench/bench_*.c; do
  b=$(basename "$src" .c)
  bin=$build/bench/$b
  if [ ! -x "$bin" ]; then
    [ "$b" = bench_faiss ] && continue
    check "$b" 0 "$bin not built"; continue
  fi
  for h in --help -h; do
    timeout 10 "$bin" "$h" >"$tmp/out" 2>"$tmp/err"; rc=$?
    ok=0
    [ "$rc" = 0 ] && grep -q "^usage: $b" "$tmp/out" && [ ! -s "$tmp/err" ] && ok=1
    check "${b}_$h" "$ok" "exit $rc (124: it ran the benchmark), stdout: $(head -c 200 "$tmp/out"), stderr: $(head -c 200 "$tmp/err")"
  done
  timeout 10 "$bin" --no-such-flag >"$tmp/out" 2>"$tmp/err"; rc=$?
  ok=0
  [ "$rc" = 2 ] && grep -q -- '--no-such-flag' "$tmp/err" && grep -q "^usage: $b" "$tmp/err" &&
    [ ! -s "$tmp/out" ] && ok=1
  check "${b}_unknown_flag" "$ok" "exit $rc (124: it ran the benchmark), stdout: $(head -c 200 "$tmp/out"), stderr: $(head -c 200 "$tmp/err")"
done
exit $fail
