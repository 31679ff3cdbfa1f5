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
# A value that is an option is refused, naming both: `train --input
# --bogus` opened "--bogus" as the dataset, `--epochs --quiet` called
# "--quiet" a bad epoch count, `produce --input --format ...` took the
# next option for the file. No option takes a value starting with "--".
as_value() {  # CASE CMD OPT ARGS...
  local case=$1 cmd=$2 opt=$3 out rc
  shift 3
  out=$(timeout 20 "$hl" "$cmd" "$@" 2>&1); rc=$?
  check "value_is_option_$case" "$([ $rc = 2 ] &&
    echo "$out" | grep -qF -- "halflife $cmd: $opt needs a value; got the option --bogus" &&
    echo 1 || echo 0)" "exit $rc, output: ${out:0:300}"
}
as_value train_input train --input --input --bogus --format seq --out x.hlm
as_value train_epochs train --epochs --input a --epochs --bogus
as_value eval_input eval --input --input --bogus --format seq --protocol loo
as_value eval_k eval --k --k --bogus
as_value produce_input produce --input --input --bogus --format seq
as_value items_input items --input --input --bogus
as_value broker_port broker --port --port --bogus
as_value demo_duration demo --duration --duration --bogus
as_value model_compare model --max-residual compare a.hlm b.hlm --max-residual --bogus
as_value run_config run -c -c --bogus
as_value run_x run -X -X --bogus
# train takes exact option names, as every other subcommand: getopt_long
# took "--inp" for --input and "--e" was ambiguous in getopt's words.
for abbrev in --inp --epoch --tie=1; do
  out=$(timeout 20 "$hl" train $abbrev 1 --format seq --out x.hlm 2>&1); rc=$?
  check "train_exact_${abbrev#--}" "$([ $rc = 2 ] &&
    echo "$out" | grep -qF -- "halflife train: unknown option $abbrev ('halflife train --help'" &&
    echo 1 || echo 0)" "exit $rc, output: ${out:0:300}"
done
# A bad number says the range it must be in, as produce's --rate does:
# eval said "not an allowed value" and train "bad value for --dim".
range() {  # CASE WANT CMD ARGS...
  local case=$1 want=$2 out rc
  shift 2
  out=$(timeout 20 "$hl" "$@" 2>&1); rc=$?
  check "range_$case" "$([ $rc = 2 ] && echo "$out" | grep -qF -- "$want" &&
    echo 1 || echo 0)" "exit $rc, output: ${out:0:300}"
}
range eval_k "halflife eval: --k 0: want an integer in 1..1000" eval --k 0
range eval_history "halflife eval: --history x: want an integer in 1..255" eval --history x
range eval_swap_at "halflife eval: --swap-at 2: want a number in 0..1" eval --swap-at 2
range eval_cap "halflife eval: --foldin-bias-cap -2: want a number in -1..1000000000" \
  eval --foldin-bias-cap -2
range eval_words "halflife eval: --exclude-seen maybe: want yes or no" eval --exclude-seen maybe
range eval_seq_step "4102444800000 (event i of a user is at i x MS, and the worker refuses an event after 2100)" \
  eval --seq-step-ms 0
range eval_protocol "halflife eval: --protocol later: want loo or prequential" \
  eval --input x --format seq --protocol later
range train_dim "halflife train: --dim 0: want an integer in 1..4096" train --dim 0
range train_lr "halflife train: --lr 11: want a number in 1e-09..10" train --lr 11
range train_seed "halflife train: --seed -1: want an integer in 0..18446744073709551615" \
  train --seed -1
# What a new user reads first fits a terminal: `halflife --help` ran to
# 150 columns (each command's arguments and purpose in one row), and a
# usage error of eval or train was followed by its whole usage (100 and
# 50 lines), which scrolled the line saying what was wrong out of sight.
out=$("$hl" --help 2>&1); rc=$?
wide=$(echo "$out" | awk 'length > 80' | head -2)
check help_fits_80_columns "$([ $rc = 0 ] && [ -z "$wide" ] &&
  echo "$out" | grep -q -- '--model MODEL\]' && echo 1 || echo 0)" "exit $rc, too wide: $wide"
# So does each command's --help: `halflife run --help` printed each key's
# meaning on its key's line, up to 900 columns, and demo, broker and eval
# had a line or two past 80. The commands are those `halflife --help` lists.
for cmd in $("$hl" --help | awk '/^commands:/ {f = 1; next} f && /^  [a-z]/ {print $1}'); do
  out=$("$hl" $cmd --help 2>&1); rc=$?
  wide=$(echo "$out" | awk 'length > 80 {print length ": " substr($0, 1, 100)}' | head -2)
  check "help_fits_80_columns_$cmd" "$([ $rc = 0 ] && [ -z "$wide" ] && [ -n "$out" ] &&
    echo 1 || echo 0)" "exit $rc, $(echo "$out" | awk 'length > 80' | wc -l) lines too wide: $wide"
done
for cmd in "eval --input x.csv --format seq --protocol loo" "train --dim 4"; do
  out=$(timeout 20 "$hl" $cmd 2>&1); rc=$?
  check "short_usage_error_${cmd%% *}" "$([ $rc = 2 ] && [ $(echo "$out" | wc -l) -le 6 ] &&
    echo "$out" | grep -qF "'halflife ${cmd%% *} --help' lists the options" &&
    echo 1 || echo 0)" "exit $rc, $(echo "$out" | wc -l) lines: ${out:0:200}"
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
