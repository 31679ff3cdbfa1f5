#!/usr/bin/env bash
# preq_report.sh - prequential HR@10 (time order, each event scored before
# it is applied) on ml-latest-small and taobao-sample: the defaults of
# `halflife train`, the same with one head, and popularity, each trained on
# the first 80% of the time and measured on the whole stream by
# `halflife eval --protocol prequential` (its last windows are unseen
# events). One JSON line per dataset and row. The "no regression" check of
# the issue "Quality" compares these lines across versions.
#
# Usage: preq_report.sh HALFLIFE DATASETS_DIR [EXTRA_TRAIN_FLAGS...]
set -u
hl=${1:?usage: preq_report.sh HALFLIFE DATASETS_DIR}
ds=${2:?usage: preq_report.sh HALFLIFE DATASETS_DIR}
shift 2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sets=("ml-latest-small|$ds/ml-latest-small/ratings.csv|movielens-csv"
      "taobao-sample|$ds/taobao-sample/UserBehavior.csv|taobao")
# The defaults before learned half-lives (2026-12-03), kept as a row so the
# "no regression" comparison is in the same run.
rows=("defaults|" "one_head|--half-lives 1d"
      "previous_defaults|--dim 64 --half-lives 1h,1d,30d --epochs 20 --dropout 0.3 --no-tie --fixed-half-lives --full-softmax-max 50000")
for s in "${sets[@]}"; do
  IFS='|' read -r name file fmt <<<"$s"
  [ -f "$file" ] || { echo "SKIP preq.$name: $file is absent"; continue; }
  for row in "${rows[@]}"; do
    rname=${row%%|*}
    read -r -a flags <<<"${row#*|}"
    if ! "$hl" train --input "$file" --format "$fmt" --out "$tmp/m.hlm" --holdout time:0.8 \
         --quiet "$@" "${flags[@]}" >"$tmp/train.json" 2>"$tmp/err" ||
       ! "$hl" eval --model "$tmp/m.hlm" --input "$file" --format "$fmt" \
         --protocol prequential --baseline popularity --quiet yes >"$tmp/eval.json" 2>>"$tmp/err"; then
      echo "FAIL preq.$name.$rname"; sed 's/^/    /' "$tmp/err"; continue
    fi
    /usr/bin/python3 - "$name" "$rname" "$tmp/train.json" "$tmp/eval.json" <<'PY'
import json, sys
ds, row, tr, ev = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), json.load(open(sys.argv[4]))
out = {"dataset": ds, "row": row, "hr10": ev["model"]["hr"],
       "popularity_hr10": ev["popularity"]["hr"], "half_lives_s": tr["half_lives_s"],
       "train_seconds": tr["train_seconds"]}
w = ev.get("windows", [])
if len(w) >= 2:       # the last 20% of the stream: events no model trained on
    n = sum(x["events"] for x in w[-2:])
    out["hr10_last_20pct"] = sum(x["model_hr"] * x["events"] for x in w[-2:]) / n
    out["popularity_hr10_last_20pct"] = sum(x["popularity_hr"] * x["events"] for x in w[-2:]) / n
print(json.dumps(out))
PY
  done
done
