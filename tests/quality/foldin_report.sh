#!/usr/bin/env bash
# foldin_report.sh - fold-in's effect on quality (issue 11): prequential
# HR@10 over the last 30% of the time of each dataset, the model trained on
# the first 70% (`halflife train --holdout time:0.7`), with the catalogue
# frozen (items first seen late can never be listed) and with fold-in
# (`halflife eval --foldin N`, what one worker does with
# catalogue.foldin.min.events=N). One JSON line per dataset and row: HR@10
# on every target and on targets the model does not know. Folded-in items
# in a user's ring count as seen, as model items do (otherwise a user's
# repeat of an item it just met scores as a hit the frozen catalogue cannot
# have). About 12 minutes per dataset on a loaded 2-core box (training).
#
# Usage: foldin_report.sh HALFLIFE DATASETS_DIR [MIN_EVENTS...] (default 2, the
# worker's default; the rule is the worker's, core/foldin.h)
set -u
hl=${1:?usage: foldin_report.sh HALFLIFE DATASETS_DIR [MIN_EVENTS...]}
ds=${2:?usage: foldin_report.sh HALFLIFE DATASETS_DIR [MIN_EVENTS...]}
shift 2
mins=("$@")
[ ${#mins[@]} -gt 0 ] || mins=(2)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sets=("taobao-sample|$ds/taobao-sample/UserBehavior.csv|taobao"
      "ml-latest-small|$ds/ml-latest-small/ratings.csv|movielens-csv")
for s in "${sets[@]}"; do
  IFS='|' read -r name file fmt <<<"$s"
  [ -f "$file" ] || { echo "SKIP foldin.$name: $file is absent"; continue; }
  # The model must not know the items first seen late: `train --holdout
  # time:0.7` on the whole file would still list them (untrained), so it
  # trains on a copy holding the first 70% of the time only.
  /usr/bin/python3 "$(dirname "$0")/time_cut.py" "$file" "$fmt" "$tmp/first70" 0.7 || {
    echo "FAIL foldin.$name.cut"; continue; }
  if ! "$hl" train --input "$tmp/first70" --format "$fmt" --out "$tmp/m.hlm" --holdout time:1 \
       --quiet >"$tmp/train.json" 2>"$tmp/err"; then
    echo "FAIL foldin.$name.train"; sed 's/^/    /' "$tmp/err"; continue
  fi
  for row in frozen "${mins[@]}"; do
    flags=()
    [ "$row" = frozen ] || flags=(--foldin "$row")
    if ! "$hl" eval --model "$tmp/m.hlm" --input "$file" --format "$fmt" \
         --protocol prequential --score-from 0.7 --quiet yes "${flags[@]}" \
         >"$tmp/eval.json" 2>"$tmp/err"; then
      echo "FAIL foldin.$name.$row"; sed 's/^/    /' "$tmp/err"; continue
    fi
    /usr/bin/python3 - "$name" "$row" "$tmp/eval.json" <<'PY'
import json, sys
ds, row, ev = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
u = ev["model_unknown_targets"]
print(json.dumps({"dataset": ds, "row": "frozen" if row == "frozen" else "foldin_min_%s" % row,
                  "hr10_last_30pct": ev["model"]["hr"], "targets": ev["model"]["n"],
                  "hr10_unknown_targets": u["hr"], "unknown_targets": u["n"],
                  "foldin": ev.get("foldin")}))
PY
  done
done
