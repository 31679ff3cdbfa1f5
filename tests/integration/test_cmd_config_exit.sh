#!/usr/bin/env bash
# test_cmd_config_exit.sh - `halflife produce` and `halflife items` exit 2,
# as run and demo do, on a configuration error: no kafka.bootstrap.servers,
# an -X or HALFLIFE_* key that does not exist, a value out of range, an
# unknown dataset format. They
# exited 1, the status they give for records not delivered, so a script
# could not tell a typo from a broker that lost data. Each is refused
# before any broker is contacted, so none is needed.
set -u
name=cmd_config_exit
top=${HL_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
hl=${HL_HALFLIFE:-${HL_BUILD:-$top/build}/halflife}

if [ ! -x "$hl" ]; then
  echo "SKIP $name: $hl not built"; exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
printf 'u1,i1,VIEW,1000\n' >"$tmp/events.csv"
printf 'i1,true\n' >"$tmp/items.csv"

# expect CASE NEEDLE CMD ARGS...: `halflife CMD ARGS` exits 2 and says NEEDLE.
expect() {
  local case=$1 needle=$2; shift 2
  timeout 60 "$hl" "$@" >"$tmp/out" 2>&1
  local rc=$?
  if [ "$rc" -eq 2 ] && grep -qF -- "$needle" "$tmp/out"; then
    echo "PASS $name.$case"
  else
    echo "FAIL $name.$case: exit $rc, want 2 and \"$needle\": $(head -c 300 "$tmp/out")"
    fail=1
  fi
}

bs=kafka.bootstrap.servers=127.0.0.1:1
for cmd in produce items; do
  if [ "$cmd" = produce ]; then in=(--input "$tmp/events.csv" --format events-csv); else in=(--input "$tmp/items.csv"); fi
  expect "${cmd}_no_bootstrap" 'kafka.bootstrap.servers=HOST:PORT is required' "$cmd" "${in[@]}"
  expect "${cmd}_unknown_key" 'unknown key "no.such.key"' "$cmd" "${in[@]}" -X "$bs" -X no.such.key=1
  expect "${cmd}_bad_value" 'input.format' "$cmd" "${in[@]}" -X "$bs" -X input.format=avro
  HALFLIFE_NO_SUCH_KEY=1 expect "${cmd}_unknown_env" \
    'environment variable HALFLIFE_NO_SUCH_KEY names no key' "$cmd" "${in[@]}" -X "$bs"
done
# produce's --format is checked with the other options: it exited 1 for an
# unknown format, as for a file it could not read.
expect produce_bad_format 'unknown dataset format "bogus"' \
  produce --input "$tmp/events.csv" --format bogus -X "$bs"
exit $fail
