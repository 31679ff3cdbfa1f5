#!/usr/bin/env bash
# test_demo_args.sh - `halflife demo` refuses an option value it cannot
# read whole, exit 2 with the option named, before it trains or starts
# anything. It read --duration and --rate with atof(): "--duration ten"
# ran until Ctrl-C, "--duration 1m" stopped after one second and
# "--rate -100" replayed with no pacing at all, each without a word.
# HALFLIFE_* variables are read and checked as run reads them. Values
# that are fine still start the demo (the last cases, one short run).
set -u
name=demo_args
top=${HL_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
hl=${HL_HALFLIFE:-${HL_BUILD:-$top/build}/halflife}

if [ ! -x "$hl" ]; then
  echo "SKIP $name: $hl not built"; exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp" || exit 1
fail=0

# refused CASE NEEDLE ARGS...: `halflife demo ARGS` exits 2 and says NEEDLE.
# The timeout only bounds a demo that wrongly starts; a refusal is at once.
refused() {
  local case=$1 needle=$2; shift 2
  timeout 60 "$hl" demo -X metrics.port=0 "$@" >"$tmp/out" 2>&1
  local rc=$?
  if [ "$rc" -eq 2 ] && grep -qF -- "$needle" "$tmp/out"; then
    echo "PASS $name.$case"
  else
    echo "FAIL $name.$case: exit $rc, want 2 and \"$needle\": $(tail -c 300 "$tmp/out" | tr '\n' ' ')"
    fail=1
  fi
}

refused duration_word '--duration ten: want a number' --duration ten
refused duration_unit '--duration 1m: want a number' --duration 1m
refused rate_negative '--rate -100: want a number' --rate -100 --duration 1
refused rate_word '--rate fast: want a number' --rate fast --duration 1
refused no_value '--duration needs a value' --duration
refused unknown_option 'unknown option --durations' --durations 5

# --format and --input were first met by the producer thread: a misspelt
# format or a missing file left the demo running its whole duration (by
# default until Ctrl-C) with nothing to replay, and exit 0. Both are
# refused before anything starts, the format as a usage error.
printf 'user_id,item_id,event_type,timestamp_ms\nu1,i1,VIEW,1000\nu1,i2,JUMP,2000\nu2,i1,VIEW\n' \
  >"$tmp/in.csv"
refused format_unknown 'unknown dataset format "bogus"' --input "$tmp/in.csv" --format bogus \
  --duration 1
timeout 60 "$hl" demo -X metrics.port=0 --input "$tmp/none.csv" --format events-csv \
  --duration 1 >"$tmp/out" 2>&1
rc=$?
if [ "$rc" -eq 1 ] && grep -q "none.csv: open: No such file" "$tmp/out" &&
   ! grep -q 'event=demo_stopped' "$tmp/out"; then
  echo "PASS $name.input_missing"
else
  echo "FAIL $name.input_missing: exit $rc: $(tail -c 300 "$tmp/out" | tr '\n' ' ')"
  fail=1
fi

# HALFLIFE_<KEY> variables are the configuration's middle layer for demo as
# for run (README, "Configuration"): demo ignored them, so a misspelt one
# was not refused and HALFLIFE_METRICS_PORT did not move the endpoint.
HALFLIFE_NO_SUCH_KEY=1 refused env_unknown_key \
  'environment variable HALFLIFE_NO_SUCH_KEY names no key' --duration 1
HALFLIFE_METRICS_PORT=70000 refused env_bad_value 'metrics.port' --duration 1

# One demo run, on a fine --duration and --rate and the file above, holds
# the last two cases: the demo trains its model first (seconds; a minute
# under the sanitizers), and a second run trained the same model again.
timeout 120 "$hl" demo --duration 1 --rate 1000 -X metrics.port=0 --input "$tmp/in.csv" \
  --format events-csv >"$tmp/out" 2>&1
rc=$?
if [ "$rc" -eq 0 ] && grep -q 'event=demo_stopped' "$tmp/out"; then
  echo "PASS $name.valid_runs"
else
  echo "FAIL $name.valid_runs: 'demo --duration 1 --rate 1000 --input in.csv' exit $rc: $(tail -c 300 "$tmp/out" | tr '\n' ' ')"
  fail=1
fi

# The replayed file's bad lines are said by number and reason, as
# `halflife produce` says them: they were skipped without a word.
if [ "$rc" -eq 0 ] && grep -q 'event=bad_line file=.*in.csv line=3 why="unknown event_type' "$tmp/out" &&
   grep -q 'event=bad_line file=.*in.csv line=4 why="missing fields' "$tmp/out" &&
   grep -q 'event=demo_input_done events=1 bad_lines=2' "$tmp/out"; then
  echo "PASS $name.input_bad_lines_said"
else
  echo "FAIL $name.input_bad_lines_said: exit $rc: $(grep -E 'input|bad_line' "$tmp/out" | tail -c 400 | tr '\n' ' ')"
  fail=1
fi
exit $fail
