#!/usr/bin/env bash
# beauty_report.sh - the quality report of issue "Quality" on Amazon Beauty
# (leave-one-out, full ranking, seen items excluded): `halflife train` with
# no flags, then each ablation (one flag changed), each scored by
# `halflife eval --protocol loo`. One JSON line per row, then the targets.
# Run through HL_QUALITY_FULL=1 tests/integration/test_quality.sh.
#
# Usage: beauty_report.sh HALFLIFE BEAUTY_TXT
set -u
hl=${1:?usage: beauty_report.sh HALFLIFE BEAUTY_TXT}
beauty=${2:?usage: beauty_report.sh HALFLIFE BEAUTY_TXT}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# name and the flags it adds to the defaults
rows=("defaults|" "fixed_half_lives|--fixed-half-lives" "untied|--no-tie"
      "full_softmax|--full-softmax-max 50000")
fail=0
for row in "${rows[@]}"; do
  name=${row%%|*}
  read -r -a flags <<<"${row#*|}"
  start=$SECONDS
  if ! "$hl" train --input "$beauty" --format seq --out "$tmp/$name.hlm" --holdout loo \
       --quiet "${flags[@]}" >"$tmp/$name.train" 2>"$tmp/$name.err" ||
     ! "$hl" eval --model "$tmp/$name.hlm" --input "$beauty" --format seq --protocol loo \
       --baseline popularity --quiet yes >"$tmp/$name.eval" 2>>"$tmp/$name.err"; then
    echo "FAIL quality.$name: halflife train or eval failed"; sed 's/^/    /' "$tmp/$name.err"
    fail=1; continue
  fi
  /usr/bin/python3 - "$name" "$tmp/$name.train" "$tmp/$name.eval" $((SECONDS - start)) <<'PY'
import json, sys
name, tr, ev, wall = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3])), int(sys.argv[4])
print(json.dumps({"row": name, "hr10": round(ev["model"]["hr"], 4),
                  "ndcg10": round(ev["model"]["ndcg"], 4),
                  "popularity_hr10": round(ev["popularity"]["hr"], 4),
                  "half_lives_s": tr["half_lives_s"], "train_seconds": tr["train_seconds"],
                  "threads": tr["threads"], "wall_seconds": wall,
                  "events_per_second_per_core": tr["events_per_second_per_core"]}))
if name == "defaults":
    hr, nd, secs = ev["model"]["hr"], ev["model"]["ndcg"], tr["train_seconds"]
    for what, ok in (("defaults HR@10 %.4f >= 0.085" % hr, hr >= 0.085),
                     ("HR@10 %.4f >= 0.093 and NDCG@10 %.4f >= 0.0531" % (hr, nd),
                      hr >= 0.093 and nd >= 0.0531),
                     ("defaults train in %.0f s <= 600 s" % secs, secs <= 600)):
        print(("PASS" if ok else "FAIL") + " quality.target: " + what + (" (met)" if ok else " (not met)"))
PY
done
exit $fail
