#!/usr/bin/env bash
# test_train_init.sh - a daily retrain (`halflife train --init A`) gives a
# model a worker can swap to: A learned its half-lives, B keeps them (a
# swap refuses other half-lives), and `halflife eval --swap-model B`, which
# migrates with the worker's code, accepts the pair. Seconds: 3000
# synthetic events, one epoch each.
set -u
name=train_init
top=${HL_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
build=${HL_BUILD:-$top/build}
hl=${HL_HALFLIFE:-$build/halflife}
if [ ! -x "$hl" ] || [ ! -x "$build/tests/test_offline" ]; then
  echo "SKIP $name: $hl or $build/tests/test_offline not built"; exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() {  # CASE OK WHY
  if [ "$2" = 1 ]; then echo "PASS $name.$1"; else echo "FAIL $name.$1: $3"; fail=1; fi
}
HL_OFFLINE_MAKE_EVENTS=$tmp/e.csv HL_OFFLINE_N=3000 HL_OFFLINE_USERS=100 HL_OFFLINE_ITEMS=200 \
  "$build/tests/test_offline" >/dev/null
common=(--input "$tmp/e.csv" --format events-csv --dim 8 --epochs 1 --threads 1 --quiet)
a=$("$hl" train "${common[@]}" --out "$tmp/a.hlm" --holdout time:0.6 --learn-half-lives 2>&1)
b=$("$hl" train "${common[@]}" --out "$tmp/b.hlm" --holdout time:0.8 --init "$tmp/a.hlm" \
    --half-lives 1h,1d --seed 2 2>&1)
hl_of() { /usr/bin/python3 -c 'import json,sys; print(json.loads(sys.argv[1])["half_lives_s"])' "$1"; }
ha=$(hl_of "$a" 2>/dev/null) hb=$(hl_of "$b" 2>/dev/null)
check heads_kept "$([ -n "$ha" ] && [ "$ha" = "$hb" ] && echo 1)" \
  "A's half-lives (s) $ha, B's $hb (train A: $a; train B: $b)"
ev=$("$hl" eval --model "$tmp/a.hlm" --swap-model "$tmp/b.hlm" --swap-at 0.8 --input "$tmp/e.csv" \
     --format events-csv --protocol prequential --score-from 0.8 --quiet yes 2>&1)
check swap_accepted "$(echo "$ev" | grep -q '"hr"' && echo 1)" "eval --swap-model: $ev"
exit $fail
