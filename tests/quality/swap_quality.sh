#!/usr/bin/env bash
# swap_quality.sh - what migration is worth (issue 10): prequential HR@10
# on the last 20% of a dataset's time, for a model A trained on the first
# 60% of the time and B on the first 80% (warm-started from A):
#   A            A all the way (no swap)
#   B_short      B with state from the last 20% before the swap only (what a
#                restart gives when the topic keeps less than users' histories)
#   B_full       B with state from every event (the unreachable ideal)
#   migrated     0-80% under A, every user migrated into B, then B
# Target (issue 10): migrated within 2% (relative) of B_full and above A
# and B_short. Not part of make test: training takes minutes.
# Measured 2026-12-03 (load 5-10 on 2 cores; HR@10 over the last 20%):
#   ml:     A 0.016313  B_short 0.043881  B_full 0.043881  migrated 0.043881
#   taobao: A 0.003255  B_short 0.008286  B_full 0.007280  migrated 0.006984
# On ml-latest-small the split cannot tell the three B cases apart: of the
# 20168 events scored only 600 are of users with events before 60% of the
# time, and every one of those users has events in 60-80% too. On
# taobao-sample every scored user has earlier events, but the ~120 hits
# make a 4% difference about 5 hits.
#   HL_DATASETS=../shared/datasets bash tests/quality/swap_quality.sh [ml|taobao]
# Training options: HL_SWAPQ_TRAIN (default a short run, see below).
set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
hl=${HL_HALFLIFE:-$top/build/halflife}
ds=${HL_DATASETS:?set HL_DATASETS to the datasets directory}
case "${1:-ml}" in
  ml)     input=$ds/ml-latest-small/ratings.csv; format=movielens-csv ;;
  taobao) input=$ds/taobao-sample/UserBehavior.csv; format=taobao ;;
  *)      echo "usage: $0 [ml|taobao]" >&2; exit 2 ;;
esac
train=(${HL_SWAPQ_TRAIN:---dim 32 --hidden 128 --epochs 5 --lr 0.004 --dropout 0.2 --full-softmax-max 10000 --threads 2 --seed 1 --quiet})
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$hl" train --input "$input" --format "$format" --out "$tmp/a.hlm" --holdout time:0.6 \
  "${train[@]}" >/dev/null || exit 1
"$hl" train --input "$input" --format "$format" --out "$tmp/b.hlm" --holdout time:0.8 \
  --init "$tmp/a.hlm" "${train[@]}" >/dev/null || exit 1
ev=(--input "$input" --format "$format" --protocol prequential --quiet yes --score-from 0.8)
hr() { /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["model"]["hr"])'; }
a=$("$hl" eval --model "$tmp/a.hlm" "${ev[@]}" | hr) || exit 1
bs=$("$hl" eval --model "$tmp/b.hlm" "${ev[@]}" --apply-from 0.6 | hr) || exit 1
bf=$("$hl" eval --model "$tmp/b.hlm" "${ev[@]}" | hr) || exit 1
mg=$("$hl" eval --model "$tmp/a.hlm" --swap-model "$tmp/b.hlm" --swap-at 0.8 "${ev[@]}" | hr) || exit 1
echo "{\"dataset\":\"${1:-ml}\",\"A\":$a,\"B_short\":$bs,\"B_full\":$bf,\"migrated\":$mg}"
/usr/bin/python3 - "$a" "$bs" "$bf" "$mg" <<'PY'
import sys
a, bs, bf, mg = map(float, sys.argv[1:])
ok = mg >= 0.98 * bf and mg > a and mg > bs
print(("PASS" if ok else "FAIL") + " swap_quality: migrated %.4f vs B_full %.4f (%.1f%%), A %.4f, "
      "B_short %.4f" % (mg, bf, 100 * (mg / bf - 1) if bf else 0, a, bs))
sys.exit(0 if ok else 1)
PY
