#!/usr/bin/env bash
# test_cmd_args.sh - argument errors of `halflife broker`, `produce` and
# `items` (worker/cmd/cmd_common.c): a stray argument (a value whose option
# was forgotten, or the second file of a shell glob) is named as such with
# exit 2, not called an unknown option. An unknown option of any subcommand
# is called one, wherever it stands.
# An empty kafka.bootstrap.servers is said to be missing at once. No broker
# is needed: each is refused before anything starts.
set -u
name=cmd_args
top=${HL_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
hl=${HL_HALFLIFE:-${HL_BUILD:-$top/build}/halflife}
if [ ! -x "$hl" ]; then
  echo "SKIP $name: $hl not built"; exit 0
fi
fail=0
check() {  # CASE OK WHY
  if [ "$2" = 1 ]; then echo "PASS $name.$1"; else echo "FAIL $name.$1: $3"; fail=1; fi
}
stray() {  # CASE STRAY ARGS...
  local case=$1 want=$2 out rc
  shift 2
  out=$(timeout 20 "$hl" "$@" 2>&1); rc=$?
  check "$case" "$([ $rc = 2 ] && echo "$out" | grep -qF "unexpected argument \"$want\"" &&
    ! echo "$out" | grep -q 'unknown option' && echo 1 || echo 0)" "exit $rc, output: ${out:0:300}"
}
stray items_glob b.csv items --input a.csv b.csv -X kafka.bootstrap.servers=127.0.0.1:1
stray produce_forgotten_option 20 produce --input a.csv --format events-csv 20
stray broker_forgotten_option 5 broker --brokers 2 5
out=$("$hl" produce --nope 1 2>&1); rc=$?
check unknown_option_still_named "$([ $rc = 2 ] && echo "$out" | grep -q 'unknown option --nope' &&
  echo 1 || echo 0)" "exit $rc, output: ${out:0:300}"
# An unknown option is called one, with where the options are listed,
# by every subcommand and wherever it stands: eval said "--nope needs a
# value" when it came last, train used getopt's words ("train: unrecognized
# option"), snapshot and model answered with the usage alone or opened it
# as a file, run called it an unexpected argument.
unknown() {  # CASE CMD ARGS...
  local case=$1 cmd=$2 out rc
  shift 2
  out=$(timeout 20 "$hl" "$cmd" "$@" 2>&1); rc=$?
  check "unknown_$case" "$([ $rc = 2 ] &&
    echo "$out" | grep -qF "halflife $cmd: unknown option --nope ('halflife $cmd --help'" &&
    ! echo "$out" | grep -q 'needs a value' && echo 1 || echo 0)" "exit $rc, output: ${out:0:300}"
}
for known in "train --input" "eval --input" "produce --input" "items --input" \
             "broker --port" "demo --duration" "run -X"; do
  cmd=${known%% *}
  unknown "${cmd}_first" "$cmd" --nope 1
  unknown "${cmd}_last" "$cmd" "${known#* }" 1 --nope
done
unknown snapshot_verb snapshot --nope
unknown snapshot_last snapshot dump x.snap --nope
unknown model_verb model --nope
unknown model_file model inspect --nope
unknown model_last model inspect x.hlm --nope
unknown model_compare model compare x.hlm y.hlm --nope
for cmd in train eval run; do
  opt=$([ $cmd = run ] && echo -c || echo --input)
  out=$(timeout 20 "$hl" $cmd $opt 2>&1); rc=$?
  check "no_value_$cmd" "$([ $rc = 2 ] && echo "$out" | grep -qF -- "halflife $cmd: $opt needs a value" &&
    echo 1 || echo 0)" "exit $rc, output: ${out:0:300}"
done
# An empty kafka.bootstrap.servers (a script's unset variable) is missing,
# said at once; it used to wait 15 s for an answer from no address.
f=${TMPDIR:-/tmp}/cmd_args_$$
printf 'u1,i1,VIEW,1700000000000\n' >"$f.events"
printf 'i1,true\n' >"$f.items"
for cmd in "produce --format events-csv --input $f.events" "items --input $f.items"; do
  start=$SECONDS
  out=$(timeout 60 "$hl" $cmd -X kafka.bootstrap.servers= 2>&1); rc=$?
  check "empty_bootstrap_${cmd%% *}" "$([ $rc = 2 ] && [ $((SECONDS - start)) -lt 10 ] &&
    echo "$out" | grep -q 'kafka.bootstrap.servers (from -X) is empty: give the brokers' &&
    echo 1 || echo 0)" \
    "exit $rc after $((SECONDS - start)) s, output: $(echo "$out" | grep -v '^%' | head -c 300)"
done
rm -f "$f.events" "$f.items"
exit $fail
