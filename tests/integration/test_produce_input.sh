#!/usr/bin/env bash
# test_produce_input.sh - `halflife produce` with input that gives it
# nothing to send: a file none of whose lines is an event of --format (a
# wrong --format, most often) exits 1 with a sentence naming the file and
# the format, where it used to report events=0 and exit 0; an empty file
# still exits 0 (nothing to send is not an error). Needs a `halflife broker`:
# produce asks the cluster before it reads.
set -u
name=produce_input
top=${HL_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
hl=${HL_HALFLIFE:-${HL_BUILD:-$top/build}/halflife}
if [ ! -x "$hl" ]; then
  echo "SKIP $name: $hl not built"; exit 0
fi
tmp=$(mktemp -d)
broker=
trap '[ -n "$broker" ] && kill -TERM $broker 2>/dev/null; wait; rm -rf "$tmp"' EXIT
fail=0
check() {  # CASE OK WHY
  if [ "$2" = 1 ]; then echo "PASS $name.$1"; else echo "FAIL $name.$1: $3"; fail=1; fi
}

mkfifo "$tmp/addr"
"$hl" broker --partitions 1 --topics ev >"$tmp/addr" 2>"$tmp/broker.log" &
broker=$!
read -r bs <"$tmp/addr"
if [ -z "$bs" ]; then
  echo "FAIL $name.broker: no address: $(head -c 400 "$tmp/broker.log")"; exit 1
fi
x=(-X "kafka.bootstrap.servers=$bs")

for i in 1 2 3; do echo "u$i,i$i,VIEW,170000000000$i"; done >"$tmp/events.csv"
timeout 60 "$hl" produce --input "$tmp/events.csv" --format movielens-csv --topic ev "${x[@]}" \
  >"$tmp/out" 2>&1; rc=$?
check wrong_format_fails "$([ $rc = 1 ] && grep -q 'events.csv: no line of it is a movielens-csv event' \
  "$tmp/out" && echo 1 || echo 0)" "exit $rc: $(grep -v '^%' "$tmp/out" | tail -c 400)"

: >"$tmp/empty.csv"
timeout 60 "$hl" produce --input "$tmp/empty.csv" --format events-csv --topic ev "${x[@]}" \
  >"$tmp/out" 2>&1; rc=$?
check empty_file_is_no_error "$([ $rc = 0 ] && echo 1 || echo 0)" \
  "exit $rc: $(grep -v '^%' "$tmp/out" | tail -c 400)"

timeout 60 "$hl" produce --input "$tmp/events.csv" --format events-csv --topic ev "${x[@]}" \
  >"$tmp/out" 2>&1; rc=$?
check right_format_sends "$([ $rc = 0 ] && grep -q 'delivered=3 ' "$tmp/out" && echo 1 || echo 0)" \
  "exit $rc: $(grep -v '^%' "$tmp/out" | tail -c 400)"
# An empty topic name (--topic "", or -X input.topic= from a script's unset
# variable): the mock took "" as a topic and produce reported every event
# delivered; a real cluster refuses the name. It is refused before sending.
timeout 60 "$hl" produce --input "$tmp/events.csv" --format events-csv --topic "" "${x[@]}" \
  >"$tmp/out" 2>&1; rc=$?
check empty_topic_refused "$([ $rc = 2 ] && grep -q 'no topic' "$tmp/out" && echo 1 || echo 0)" \
  "exit $rc: $(grep -v '^%' "$tmp/out" | tail -c 400)"
exit $fail
