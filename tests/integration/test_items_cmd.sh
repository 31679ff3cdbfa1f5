#!/usr/bin/env bash
# test_items_cmd.sh - `halflife items` refuses bad lines of its input file
# by number and reason, sends nothing for them and exits 1; usage errors
# exit 2. No broker is needed: nothing valid is sent. (Valid files are
# published to a real broker in test_items.py.)
set -u
name=items_cmd
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

long=$(printf 'x%.0s' $(seq 1 300))
{
  echo "item_id,available,expires_at_ms"
  echo "a,maybe"
  echo "$long,true"
  echo "b,true,soon"
  echo "c,true,,0.5,1,2,3"
  echo "d,true,,0.5,1,nan,3,4"
  echo "g,true,,nan,1,2,3,4"
  echo "e,delete,5"
  echo "f,true,,0.5,1,2,3,4,5,6"
  echo "h,true,,0.5,1,2,300,4"
  echo "i,true,,1e30,1,2,3,4"
  printf 'j\377,true\nk\300\257,delete\n'
  echo "s,true,1765000000"
} >"$tmp/bad.csv"
"$hl" items --input "$tmp/bad.csv" --dim 2 -X kafka.bootstrap.servers=127.0.0.1:1 >"$tmp/out" 2>&1
rc=$?
ok=1
for want in 'line=2 why="available is not' 'line=3 why="item_id outside' 'line=4 why="expires_at_ms' \
            'line=5 why="vectors: want' 'line=6 why="a vector value' 'line=7 why="bias is not' \
            'line=8 why="delete takes' 'line=9 why="vectors of another dim' \
            'line=10 why="a vector value is not a number within' 'line=11 why="bias is not a number within' \
            'line=12 why="item_id is not valid UTF-8' 'line=13 why="item_id is not valid UTF-8' \
            'line=14 why="expires_at_ms is before 1973: seconds?'; do
  grep -qF -- "$want" "$tmp/out" || { ok=0; echo "    missing: $want"; }
done
grep -q 'bad.csv: 13 bad lines' "$tmp/out" || ok=0
grep -q 'bad_line file=.*bad.csv line=2 ' "$tmp/out" || { ok=0; echo "    bad_line names no file"; }
check bad_lines_named "$([ $rc = 1 ] && echo $ok || echo 0)" "exit $rc: $(head -c 400 "$tmp/out")"

# A line longer than the reader's 1 MiB buffer is one bad line: its tail
# must not be read as a line of its own ("z,delete" would delete item z,
# which the file never names). Nothing valid is left, so no broker is asked.
{ head -c 1048575 /dev/zero | tr '\0' x; echo "z,delete"; echo "b,maybe"; } >"$tmp/long.csv"
"$hl" items --input "$tmp/long.csv" -X kafka.bootstrap.servers=127.0.0.1:1 >"$tmp/out" 2>&1
rc=$?
ok=1
for want in 'line=1 why="longer than' 'line=2 why="available is not' '2 bad lines'; do
  grep -qF -- "$want" "$tmp/out" || { ok=0; echo "    missing: $want"; }
done
grep -q 'no broker' "$tmp/out" && ok=0
check long_line_is_one_bad_line "$([ $rc = 1 ] && echo $ok || echo 0)" "exit $rc: $(grep -v '^%' "$tmp/out" | head -c 600)"

# A NUL byte ended the line for fgets(): "z,delete<NUL>junk" deleted item
# z, and a NUL in the first 1 MiB of a longer line hid its length, so its
# tail "z,delete" was published as a line of its own. Either is one bad
# line, and nothing valid is left to ask a broker for.
printf 'z,delete\0junk\n' >"$tmp/nul.csv"
{ printf '\0'; head -c 1048574 /dev/zero | tr '\0' x; echo "z,delete"; } >"$tmp/nul_long.csv"
for f in nul nul_long; do
  "$hl" items --input "$tmp/$f.csv" -X kafka.bootstrap.servers=127.0.0.1:1 >"$tmp/out" 2>&1
  rc=$?
  check "${f}_line_is_one_bad_line" "$([ $rc = 1 ] && grep -q '1 bad lines' "$tmp/out" &&
    ! grep -q 'no broker' "$tmp/out" && echo 1)" \
    "exit $rc: $(grep -v '^%' "$tmp/out" | head -c 600)"
done
# A line was cut at its first CR, wherever it stood: "z,delete<CR>junk"
# deleted item z, and a file with lone-CR line ends (old Mac tools) sent
# its first line alone. Only the CR of a CRLF end is a line end; any other
# is one bad line, named, and nothing valid is left to ask a broker for.
printf 'z,delete\rjunk\r\na,true\rb,delete\rc,true\ny,true,\r5\n' >"$tmp/cr.csv"
"$hl" items --input "$tmp/cr.csv" -X kafka.bootstrap.servers=127.0.0.1:1 >"$tmp/out" 2>&1
rc=$?
ok=1
for want in 'line=1 why="CR inside the line' 'line=2 why="CR inside the line' \
            'line=3 why="CR inside the line' '3 bad lines'; do
  grep -qF -- "$want" "$tmp/out" || { ok=0; echo "    missing: $want"; }
done
grep -q 'no broker' "$tmp/out" && ok=0
check cr_inside_line_is_bad "$([ $rc = 1 ] && echo $ok || echo 0)" \
  "exit $rc: $(grep -v '^%' "$tmp/out" | head -c 600)"
# ... in the words the dataset readers use for it (train, eval, produce):
# the two said it differently, as if they were two rules.
printf 'u1 a b c\rd\nu2 a b c\n' >"$tmp/cr.seq"
"$hl" train --input "$tmp/cr.seq" --format seq --dim 4 --epochs 1 --out "$tmp/cr.hlm" \
  >"$tmp/train.out" 2>&1
items_why=$(sed -n 's/.* line=1 why="\([^"]*\)".*/\1/p' "$tmp/out" | head -n 1)
train_why=$(sed -n 's/^  line 1: //p' "$tmp/train.out" | head -n 1)
check cr_inside_line_same_words "$([ -n "$items_why" ] && [ "$items_why" = "$train_why" ] &&
  echo 1 || echo 0)" "items: '$items_why', train: '$train_why'"
# /dev/zero: one line with no end, read 1 MiB at a time as lines of NUL
# bytes for ever. Refused, naming it, after a bounded read.
timeout 20 "$hl" items --input /dev/zero -X kafka.bootstrap.servers=127.0.0.1:1 >"$tmp/out" 2>&1
rc=$?
check dev_zero_refused "$([ $rc = 1 ] && grep -q '/dev/zero: line 1 has no end' "$tmp/out" &&
  echo 1)" "exit $rc: $(grep -v '^%' "$tmp/out" | head -c 600)"

# Lines sent before such a read failure are still waited for and said
# delivered: the run went straight to its exit, destroying the producer
# with whatever it still held, and never said what had arrived.
mkfifo "$tmp/addr"
"$hl" broker >"$tmp/addr" 2>"$tmp/broker.log" &
broker=$!
read -r bs <"$tmp/addr"
{ printf 'a,true\nb,true\n'; head -c 300000000 /dev/zero; } |
  timeout 60 "$hl" items --input - -X kafka.bootstrap.servers="$bs" >"$tmp/out" 2>&1
rc=$?
kill -TERM $broker 2>/dev/null; wait $broker
check sent_before_read_failure_waited "$([ $rc = 1 ] && grep -q 'line 3 has no end' "$tmp/out" &&
  grep -q 'event=items_done .*sent=2 delivered=2 ' "$tmp/out" && echo 1)" \
  "exit $rc: $(grep -v '^%' "$tmp/out" | head -c 600)"

"$hl" items >"$tmp/out" 2>&1; rc=$?
check no_input_is_usage "$([ $rc = 2 ] && echo 1 || echo 0)" "exit $rc"
"$hl" items --input "$tmp/none.csv" -X kafka.bootstrap.servers=127.0.0.1:1 >"$tmp/out" 2>&1; rc=$?
check missing_file "$([ $rc = 1 ] && grep -q 'none.csv' "$tmp/out" && echo 1 || echo 0)" "exit $rc"
# Blank lines are skipped also when they hold a CR (a file saved on
# Windows) or spaces: they were bad lines, and the run exited 1. The one
# real bad line after them is counted alone.
printf 'item_id,available\r\n\r\n  \t\n\r\nb,maybe\r\n' >"$tmp/blank.csv"
"$hl" items --input "$tmp/blank.csv" -X kafka.bootstrap.servers=127.0.0.1:1 >"$tmp/out" 2>&1; rc=$?
check blank_lines_skipped "$([ $rc = 1 ] && grep -q '1 bad lines' "$tmp/out" &&
  grep -q 'line=5 why="available' "$tmp/out" && echo 1 || echo 0)" \
  "exit $rc: $(grep -v '^%' "$tmp/out" | head -c 400)"
# The same rules as the dataset readers' (lines.h, hl_lines_trim): a
# blank line may hold CRs anywhere, and the CRs that end a line are all
# line end (CRCRLF: a CRLF file converted once more), so "b,maybe<CR><CR>"
# is judged by its available, not called a CR inside the line; the
# readers disagreed on both.
printf ' \r \nb,maybe\r\r\n' >"$tmp/crcr.csv"
"$hl" items --input "$tmp/crcr.csv" -X kafka.bootstrap.servers=127.0.0.1:1 >"$tmp/out" 2>&1; rc=$?
check trailing_crs_are_line_end "$([ $rc = 1 ] && grep -q '1 bad lines' "$tmp/out" &&
  grep -q 'line=2 why="available' "$tmp/out" && echo 1 || echo 0)" \
  "exit $rc: $(grep -v '^%' "$tmp/out" | head -c 400)"

# A directory given as --input: fopen() takes it and its first read fails,
# which read as an empty file: nothing published and exit 0. It is refused,
# naming the path.
mkdir "$tmp/dir.csv"
"$hl" items --input "$tmp/dir.csv" -X kafka.bootstrap.servers=127.0.0.1:1 >"$tmp/out" 2>&1; rc=$?
check directory_refused "$([ $rc = 1 ] && grep -q "dir.csv: is a directory" "$tmp/out" &&
  echo 1 || echo 0)" "exit $rc: $(grep -v '^%' "$tmp/out" | head -c 400)"
exit $fail
