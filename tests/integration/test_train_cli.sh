#!/usr/bin/env bash
# test_train_cli.sh - `halflife train` as a user meets it with odd inputs:
# each case is refused with a sentence naming what was wrong, before any
# training time is spent, and never leaves a model behind. Seconds: a
# 600-event file, one epoch of dim 4 where training runs at all.
set -u
name=train_cli
top=${HL_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
build=${HL_BUILD:-$top/build}
hl=${HL_HALFLIFE:-$build/halflife}
if [ ! -x "$hl" ]; then echo "SKIP $name: $hl not built"; exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() {  # CASE OK WHY
  if [ "$2" = 1 ]; then echo "PASS $name.$1"; else echo "FAIL $name.$1: $3"; fail=1; fi
}
# 60 users of 10 events over 30 items, a minute apart.
{
  echo user_id,item_id,event_type,timestamp_ms
  for u in $(seq 0 59); do
    for k in $(seq 0 9); do
      echo "u$u,i$(( (u * 7 + k * 3) % 30 )),VIEW,$(( 1700000000000 + u * 1000 + k * 60000 ))"
    done
  done
} >"$tmp/e.csv"
common=(--input "$tmp/e.csv" --format events-csv --dim 4 --hidden 0 --epochs 1 --threads 1)

# --out in a missing directory: refused before the input is read, not
# after the whole training (minutes with the defaults).
out=$("$hl" train "${common[@]}" --out "$tmp/missing/m.hlm" 2>&1); rc=$?
check out_missing_dir "$([ $rc = 1 ] && ! echo "$out" | grep -q epoch &&
  echo "$out" | grep -q "$tmp/missing" && echo 1)" "exit $rc, output: $out"
touch "$tmp/file"
out=$("$hl" train "${common[@]}" --out "$tmp/file/m.hlm" 2>&1); rc=$?
check out_under_file "$([ $rc = 1 ] && ! echo "$out" | grep -q epoch && echo 1)" \
  "exit $rc, output: $out"
mkdir "$tmp/dir"
out=$("$hl" train "${common[@]}" --out "$tmp/dir" 2>&1); rc=$?
check out_is_dir "$([ $rc = 1 ] && ! echo "$out" | grep -q epoch &&
  echo "$out" | grep -q directory && echo 1)" "exit $rc, output: $out"
check out_nothing_left "$([ -z "$(ls "$tmp/dir")" ] && [ ! -e "$tmp/dir.tmp" ] && echo 1)" \
  "left behind: $(ls "$tmp/dir") $(ls -d "$tmp"/dir.tmp 2>/dev/null)"
# --out naming the input (a slip of the shell history) replaced the
# dataset with the model once training was done.
cp "$tmp/e.csv" "$tmp/same.csv"
out=$("$hl" train "${common[@]/$tmp\/e.csv/$tmp/same.csv}" --out "$tmp/same.csv" 2>&1); rc=$?
check out_is_input "$([ $rc = 1 ] && cmp -s "$tmp/e.csv" "$tmp/same.csv" &&
  echo "$out" | grep -q 'is the input' && echo 1)" "exit $rc, output: $out"
out=$("$hl" train "${common[@]}" --out "$tmp/ok.hlm" 2>&1); rc=$?
check out_ok "$([ $rc = 0 ] && [ -s "$tmp/ok.hlm" ] && [ ! -e "$tmp/ok.hlm.tmp" ] && echo 1)" \
  "exit $rc, output: $out"
# Integer options take integers: --seed 1e3 trained with seed 1 and
# --epochs 1.5 one epoch, silently.
for o in "--seed 1e3" "--seed 2.5" "--epochs 1.5" "--dim 4.5" "--batch 1e1x"; do
  out=$("$hl" train "${common[@]}" $o --out "$tmp/int.hlm" 2>&1); rc=$?
  check "integer_$(echo "${o#--}" | tr " ." "_p")" "$([ $rc = 2 ] && [ ! -e "$tmp/int.hlm" ] &&
    echo "$out" | grep -q -- "${o%% *}" && echo 1)" "$o: exit $rc, output: $out"
  rm -f "$tmp/int.hlm"
done
# --init: a damaged model or one of another dim is refused before the
# input is read (a large file takes a while to load), naming the fix.
"$hl" train "${common[@]}" --quiet --out "$tmp/init4.hlm" >/dev/null 2>&1
head -c 700 "$tmp/init4.hlm" >"$tmp/torn.hlm"
out=$("$hl" train "${common[@]}" --init "$tmp/torn.hlm" --out "$tmp/i.hlm" 2>&1); rc=$?
check init_damaged "$([ $rc = 1 ] && ! echo "$out" | grep -q 'events,' &&
  echo "$out" | grep -q torn.hlm && echo 1)" "exit $rc, output: $out"
out=$("$hl" train "${common[@]}" --dim 8 --init "$tmp/init4.hlm" --out "$tmp/i.hlm" 2>&1); rc=$?
check init_other_dim "$([ $rc = 1 ] && ! echo "$out" | grep -q 'events,' &&
  echo "$out" | grep -q -- '--dim 4' && echo 1)" "exit $rc, output: $out"

# The JSON summary on stdout stays JSON whatever the path holds (a
# retrain script reads it): a quote or a backslash in --out broke it.
q="$tmp/a\"b\\c.hlm"
out=$("$hl" train "${common[@]}" --quiet --out "$q" 2>&1); rc=$?
got=$(/usr/bin/python3 -c 'import json,sys; print(json.loads(sys.argv[1])["model"])' "$out" 2>&1)
check summary_json "$([ $rc = 0 ] && [ "$got" = "$q" ] && echo 1)" \
  "exit $rc, stdout: $out, parsed: $got"

# --epochs 0 without --init trains nothing: the model would be the random
# start. With --init it copies the known items' rows (allowed).
out=$("$hl" train "${common[@]}" --epochs 0 --out "$tmp/e0.hlm" 2>&1); rc=$?
check epochs0_no_init "$([ $rc = 2 ] && [ ! -e "$tmp/e0.hlm" ] &&
  echo "$out" | grep -q -- '--init' && echo 1)" "exit $rc, output: $out"
out=$("$hl" train "${common[@]}" --epochs 0 --init "$tmp/init4.hlm" --out "$tmp/e0.hlm" 2>&1); rc=$?
check epochs0_init "$([ $rc = 0 ] && [ -s "$tmp/e0.hlm" ] && echo 1)" "exit $rc, output: $out"

# The memory a run needs is said before it starts (it is allocated up
# front; without it the kernel may kill the run without a word).
out=$("$hl" train "${common[@]}" --out "$tmp/mem.hlm" 2>&1 >/dev/null); rc=$?
check memory_said "$([ $rc = 0 ] && echo "$out" |
  grep -qE '^train: 600 events, 60 users, 30 items; [0-9.]+M parameters, about [0-9]+ MB to train$' &&
  echo 1)" "exit $rc, stderr: $out"

# --init with another --hidden: the MLP cannot start from the model's, and
# the run says so (it used to say only how many item rows it took).
out=$("$hl" train "${common[@]}" --hidden 6 --init "$tmp/init4.hlm" --out "$tmp/h.hlm" 2>&1); rc=$?
check init_other_hidden "$([ $rc = 0 ] && echo "$out" | grep -q 'MLP' && echo 1)" \
  "exit $rc, output: $out"
out=$("$hl" train "${common[@]}" --init "$tmp/init4.hlm" --out "$tmp/h.hlm" 2>&1); rc=$?
check init_same_hidden "$([ $rc = 0 ] && ! echo "$out" | grep -q 'MLP' && echo 1)" \
  "exit $rc, output: $out"

# A stray argument (a value with its option forgotten, or a shell glob) is
# named, not reported as missing --input/--format/--out that were given.
out=$("$hl" train "${common[@]}" --out "$tmp/s.hlm" 20 2>&1); rc=$?
check stray_argument "$([ $rc = 2 ] && echo "$out" | grep -q '"20"' &&
  ! echo "$out" | grep -q 'are required' && echo 1)" "exit $rc, output: $out"

# Progress within an epoch (an epoch of a large file takes minutes), each
# line with the time left; --progress-interval 0 prints after every batch,
# so the lines are there however fast or slow the machine.
out=$("$hl" train "${common[@]}" --epochs 2 --batch 64 --progress-interval 0 \
      --out "$tmp/p.hlm" 2>&1 >/dev/null); rc=$?
check progress_in_epoch "$([ $rc = 0 ] &&
  echo "$out" | grep -qE '^train: epoch 1/2 [0-9]+% loss [0-9.]+ .* left ~' &&
  echo "$out" | grep -qE '^train: epoch 1/2 loss [0-9.]+ .* left ~' &&
  echo "$out" | grep -qE '^train: epoch 2/2 loss ' && echo 1)" "exit $rc, stderr: $out"
out=$("$hl" train "${common[@]}" --progress-interval -1 --out "$tmp/p.hlm" 2>&1); rc=$?
check progress_interval_bad "$([ $rc = 2 ] && echo 1)" "exit $rc, output: $out"

# Half-lives out of order or repeated: refused (learned ones are kept
# ordered by projection, which would move "1d,1h"'s second head to a day).
for lives in 1d,1h 1h,1h; do
  out=$("$hl" train "${common[@]}" --half-lives $lives --out "$tmp/order.hlm" 2>&1); rc=$?
  check "half_lives_not_increasing_${lives/,/_}" "$([ $rc = 2 ] &&
    echo "$out" | grep -q -- "--half-lives" && [ ! -e "$tmp/order.hlm" ] && echo 1)" \
    "exit $rc, output: $out"
done

# A trailing comma names a layer or head that is not there: refused, not
# read as the list without it.
for opt in "--hidden 8," "--half-lives 1h,"; do
  out=$("$hl" train "${common[@]}" $opt --out "$tmp/comma.hlm" 2>&1); rc=$?
  check "trailing_comma_${opt%% *}" "$([ $rc = 2 ] && echo "$out" | grep -q -- "${opt%% *}" &&
    [ ! -e "$tmp/comma.hlm" ] && echo 1)" "exit $rc, output: $out"
done

# /dev/zero as --input: no line ever ends. getline() grew its buffer until
# the machine's memory ran out and then read as the end of the file, so
# the run said "no events" (or, for a file, trained silently on the lines
# before it). It is refused, naming the file, having read a bounded amount.
# The address-space cap keeps a regression from taking the machine's
# memory (ASan reserves more than it, so not under HL_SAN=1).
out=$( { [ "${HL_SAN:-0}" = 1 ] || ulimit -v 4000000; } &&
       "$hl" train --input /dev/zero --format events-csv --dim 4 --hidden 0 --epochs 1 \
         --out "$tmp/zero.hlm" 2>&1); rc=$?
check no_line_end "$([ $rc = 1 ] && echo "$out" | grep -q '/dev/zero: line 1 has no end' &&
  [ ! -e "$tmp/zero.hlm" ] && echo 1)" "exit $rc, output: $out"

# seq: item i of a user is at i x --seq-step-ms. A step past 2100 (up to
# 1e15 was taken) is refused, naming the flag and its bound, by train and
# eval; a user line whose last item would be after 2100 is a bad line,
# named, not events the worker refuses.
for cmd in train eval; do
  out=$("$hl" $cmd --input "$tmp/e.csv" --format seq --seq-step-ms 4102444800001 \
        $([ $cmd = train ] && echo --out "$tmp/st.hlm" || echo --model "$tmp/ok.hlm" --protocol loo) 2>&1); rc=$?
  check "seq_step_bound_$cmd" "$([ $rc = 2 ] && [ ! -e "$tmp/st.hlm" ] &&
    echo "$out" | grep -q -- '--seq-step-ms.*1\.\.4102444800000' && echo 1)" "exit $rc, output: $out"
done
for u in $(seq 0 59); do echo "u$u i$((u % 30)) i$(((u + 1) % 30)) i$(((u + 2) % 30))"; done \
  >"$tmp/s.seq"
echo "late i1 i2 i3 i4" >>"$tmp/s.seq"
out=$("$hl" train --input "$tmp/s.seq" --format seq --seq-step-ms 2000000000000 --dim 4 \
      --hidden 0 --epochs 1 --threads 1 --out "$tmp/seq.hlm" 2>&1 >/dev/null); rc=$?
check seq_past_2100_bad_line "$([ $rc = 0 ] && echo "$out" | grep -q 'line 61.*after 2100' &&
  echo 1)" "exit $rc, stderr: $out"
exit $fail
