#!/usr/bin/env bash
# test_index_start.sh - recs.index=ivf at start (issue 14): the index is
# built at model load and its recall@k on a sample is logged; values that
# only the model can judge are refused with a message naming the key:
#  - recs.index.nlist above the model's item count,
#  - recs.index.nprobe above the index's number of lists.
# and recs.index.nprobe left at 0 probes nlist / 16 lists.
# The model is a random one written by schemas/hlm.py (2,000 items, dim
# 16). The bootstrap address is a closed port: the index is built before
# the worker needs a broker, so the good start is stopped once it logs.
set -u
name=index_start
top=${HL_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
hl=${HL_HALFLIFE:-${HL_BUILD:-$top/build}/halflife}

if [ ! -x "$hl" ]; then
  echo "SKIP $name: $hl not built"; exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
if ! /usr/bin/python3 "$top/schemas/hlm.py" random "$tmp/m.hlm" --items 2000 --dim 16 >/dev/null; then
  echo "FAIL $name.model: hlm.py random failed"; exit 1
fi

run() {
  timeout "$1" "$hl" run -X kafka.bootstrap.servers=127.0.0.1:9 -X metrics.port=0 \
    -X model.path="$tmp/m.hlm" -X snapshot.dir="$tmp/snap" -X recs.index=ivf \
    -X schemas.dir="$top/schemas" "${@:2}" >"$tmp/out" 2>&1
}

# refused CASE NEEDLE ARGS...: the worker exits 1 and says NEEDLE.
refused() {
  local case=$1 needle=$2; shift 2
  run 20 "$@"
  local rc=$?
  if [ "$rc" -eq 1 ] && grep -qF -- "$needle" "$tmp/out"; then
    echo "PASS $name.$case"
  else
    echo "FAIL $name.$case: exit $rc, want 1 and \"$needle\": $(grep -v rdkafka "$tmp/out" | head -c 400)"
    fail=1
  fi
}

refused nlist_above_items 'recs.index.nlist=3000: index: nlist 3000: must be 1..2000' \
  -X recs.index.nlist=3000
refused nprobe_above_nlist "recs.index.nprobe=60: more than the index's 50 lists" \
  -X recs.index.nlist=50 -X recs.index.nprobe=60

# A good start logs the index with its recall on the sample, a number in
# [0, 1]; every list probed is the exact scan, so recall is 1.
run 5 -X recs.index.nlist=40 -X recs.index.nprobe=40 -X recs.k=10
line=$(grep 'event=index ' "$tmp/out" | head -n 1)
recall=$(printf '%s' "$line" | sed -n 's/.*recall_at_10=\([0-9.]*\).*/\1/p')
if printf '%s' "$line" | grep -q 'mode=ivf items=2000 nlist=40 nprobe=40' && [ "$recall" = "1.0000" ]; then
  echo "PASS $name.logs_recall_at_load"
else
  echo "FAIL $name.logs_recall_at_load: want mode=ivf ... recall_at_10=1.0000, got: ${line:-$(head -c 400 "$tmp/out")}"
  fail=1
fi
run 5 -X recs.index.nlist=40 -X recs.index.nprobe=2 -X recs.k=10
recall=$(grep 'event=index ' "$tmp/out" | sed -n 's/.*recall_at_10=\([0-9.]*\).*/\1/p' | head -n 1)
if [ -n "$recall" ] && awk -v r="$recall" 'BEGIN { exit !(r > 0 && r < 1) }'; then
  echo "PASS $name.few_probes_lose_recall"
else
  echo "FAIL $name.few_probes_lose_recall: recall_at_10=${recall:-none} with 2 of 40 lists, want in (0, 1)"
  fail=1
fi
# recs.index.nprobe unset (0): nlist / 16 lists.
run 5 -X recs.index.nlist=64
if grep -q 'event=index mode=ivf items=2000 nlist=64 nprobe=4 ' "$tmp/out"; then
  echo "PASS $name.default_nprobe_is_nlist_over_16"
else
  echo "FAIL $name.default_nprobe_is_nlist_over_16: $(grep 'event=index ' "$tmp/out" | head -c 300)"
  fail=1
fi
exit $fail
