#!/usr/bin/env bash
# test_unreachable.sh - `halflife produce` and `halflife items` pointed at
# an address where no broker listens end within seconds with a sentence
# naming the address, instead of waiting out message.timeout.ms (5 min)
# with progress lines. Both run at once: each waits 15 s for an answer.
set -u
name=unreachable
top=${HL_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
hl=${HL_HALFLIFE:-${HL_BUILD:-$top/build}/halflife}
if [ ! -x "$hl" ]; then
  echo "SKIP $name: $hl not built"; exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
printf 'u1,i1,view,1700000000000\n' >"$tmp/events.csv"
printf 'item_id,available\ni1,false\n' >"$tmp/items.csv"
addr=127.0.0.1:1                      # port 1: nothing listens there
start=$SECONDS
timeout 120 "$hl" produce --input "$tmp/events.csv" --format events-csv \
  -X kafka.bootstrap.servers=$addr >"$tmp/produce.out" 2>&1 &
p1=$!
timeout 120 "$hl" items --input "$tmp/items.csv" -X kafka.bootstrap.servers=$addr \
  >"$tmp/items.out" 2>&1 &
p2=$!
wait $p1; rc1=$?
wait $p2; rc2=$?
took=$((SECONDS - start))
for cmd in produce items; do
  rc=$([ $cmd = produce ] && echo $rc1 || echo $rc2)
  if [ "$rc" = 1 ] && grep -q "no broker at kafka.bootstrap.servers=$addr answered" "$tmp/$cmd.out"; then
    echo "PASS $name.$cmd"
  else
    echo "FAIL $name.$cmd: exit $rc: $(grep -v '^%' "$tmp/$cmd.out" | head -c 400)"; fail=1
  fi
done
if [ "$took" -le 60 ]; then
  echo "PASS $name.within_a_minute"
else
  echo "FAIL $name.within_a_minute: took $took s"; fail=1
fi
exit $fail
