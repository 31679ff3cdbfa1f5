#!/usr/bin/env bash
# test_broker_args.sh - `halflife broker` refuses, with exit 2 and a
# sentence naming the value, what it used to accept silently:
# - a --topics name real Kafka refuses ("x/y", "a b", "..", 250
#   characters): the mock took any bytes, so a test passed on it with a
#   topic a real cluster would refuse;
# - an empty --topics name ("", "a,", "a,,b"): no topic was created for it,
#   without a word;
# - a --topics name given twice (it failed later with 'Topic already
#   exists', which did not say where the second came from);
# - --refuse-produce FILE in a directory that does not exist, or naming a
#   directory: the file could never be created, so the refusal a test
#   waits for never came and nothing said why;
# - --refuse-produce with --delay-produce: once a delay was set, the mock
#   never refused again, silently.
# Valid names still start a broker (stopped with SIGTERM once it prints
# its address).
set -u
name=broker_args
top=${HL_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
hl=${HL_HALFLIFE:-${HL_BUILD:-$top/build}/halflife}
if [ ! -x "$hl" ]; then
  echo "SKIP $name: $hl not built"; exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() {  # CASE OK WHY
  if [ "$2" = 1 ]; then echo "PASS $name.$1"; else echo "FAIL $name.$1: $3"; fail=1; fi
}
# A broker that starts prints its address and runs until a signal: timeout
# ends it (exit 124), which fails the case rather than hanging the test.
refused() {  # CASE WANT ARGS...
  local case=$1 want=$2 out rc
  shift 2
  out=$(timeout 10 "$hl" broker "$@" 2>&1 </dev/null); rc=$?
  check "$case" "$([ $rc = 2 ] && echo "$out" | grep -qF -- "$want" && echo 1 || echo 0)" \
    "exit $rc, output: $(echo "$out" | grep -v '^%' | head -c 300)"
}
long=$(printf 'z%.0s' $(seq 1 250))
refused topic_slash '"x/y": a topic name is made of' --topics a,x/y
refused topic_space '"a b": a topic name is made of' --topics "a b"
refused topic_dotdot "'..' are not topic names" --topics ..
refused topic_long 'longer than 249' --topics "$long"
refused topic_none '"": an empty name' --topics ""
refused topic_trailing_comma '"": an empty name' --topics items,
refused topic_double_comma '"": an empty name' --topics items,,ev
refused topic_twice '"items": named twice' --topics items,ev,items
refused refuse_file_no_dir "directory $tmp/none does not exist" --refuse-produce "$tmp/none/refuse"
refused refuse_file_is_dir "$tmp: is a directory" --refuse-produce "$tmp"
refused refuse_and_delay "cannot be used together" --refuse-produce "$tmp/r" \
  --delay-produce "$tmp/d"

# Valid: Kafka's characters, a 249-character name, a file to be created.
mkfifo "$tmp/addr"
"$hl" broker --topics "a.b_c-D9,${long:0:249}" --refuse-produce "$tmp/refuse" \
  >"$tmp/addr" 2>"$tmp/log" &
pid=$!
read -r bs <"$tmp/addr"
kill -TERM $pid 2>/dev/null
wait $pid; rc=$?
check valid_names_start "$([ -n "$bs" ] && [ $rc = 0 ] && echo 1 || echo 0)" \
  "address '$bs', exit $rc: $(grep -v '^%' "$tmp/log" | head -c 300)"
exit $fail
