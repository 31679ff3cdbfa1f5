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
# and B_short, with the worker's default exclusion of seen items (the
# ring's items are left out of each list); PASS/FAIL is judged on that.
# The four arms are run again with --exclude-seen no and printed too:
# the arms' rings differ (B_short's ring holds no event before 60% of the
# time), and on taobao most hits are items the user saw before, so with
# exclusion B_short wins by recommending items B_full and migrated leave
# out as seen, not by a better state.
# Each comparison prints a paired bootstrap over users (the same users'
# events are scored in every arm; 2000 resamples): a gap inside its 95%
# interval is one this protocol cannot resolve (training noise adds more).
# Not part of make test: training takes minutes.
# Measured 2026-12-03 (load 5-10 on 2 cores; HR@10 over the last 20%,
# 16,895 events scored on taobao):
#   taobao, exclude seen:  A 0.003255  B_short 0.008286  B_full 0.007280
#     migrated 0.006984 (-4.1% vs B_full, interval [-9.0%, +0.9%]; 118 vs
#     123 hits); B_short vs B_full +13.8% [+2.4%, +27.8%]
#   taobao, no exclusion:  A 0.019414  B_short 0.044865  B_full 0.045576
#     migrated 0.045220 (-0.8% vs B_full, interval [-2.0%, +0.5%]);
#     B_short vs B_full -1.6% [-3.6%, +0.4%]
#   with --seed 2: exclude seen migrated -2.4% vs B_full, B_short +8.9%;
#     no exclusion migrated +0.8%, B_short -0.8%. B trained without --init
#     (its own half-lives): B_short still +7.6% over B_full with
#     exclusion, so it is not A's half-lives either.
#   ml, exclude seen:  A 0.016313, B_short = B_full = migrated 0.043881
#     (885 hits each, the same for every one of the 116 scored users);
#     no exclusion: A 0.014181, the three B arms 0.034560 (697 hits)
# On ml-latest-small the split cannot tell the three B cases apart: of the
# 20168 events scored only 600 are of users with events before 60% of the
# time, and every one of those users has events in 60-80% too.
#   HL_DATASETS=../shared/datasets bash tests/quality/swap_quality.sh [ml|taobao]
# Training options: HL_SWAPQ_TRAIN (default a short run, see below);
# HL_SWAPQ_KEEP=DIR keeps the two models there and reuses them;
# HL_SWAPQ_WEIGHTS=count|remainder|bias weights the swap's fit (eval
# --swap-weights; the worker's fit is unweighted).
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
keep=${HL_SWAPQ_KEEP:-$tmp}    # a directory: models trained once, reused
mkdir -p "$keep" || exit 1
[ -s "$keep/a.hlm" ] || "$hl" train --input "$input" --format "$format" --out "$keep/a.hlm" \
  --holdout time:0.6 "${train[@]}" >/dev/null || exit 1
[ -s "$keep/b.hlm" ] || "$hl" train --input "$input" --format "$format" --out "$keep/b.hlm" \
  --holdout time:0.8 --init "$keep/a.hlm" "${train[@]}" >/dev/null || exit 1
ev=(--input "$input" --format "$format" --protocol prequential --quiet yes --score-from 0.8)
hr() { /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["model"]["hr"])'; }
# arms EXCLUDE_SEEN: the four HR@10 (JSON) and per-user files $tmp/<arm>.<yes|no>.tsv
arms() {
  local x=(--exclude-seen "$1") o=$tmp/%s.$1.tsv a bs bf mg
  a=$("$hl" eval --model "$keep/a.hlm" "${ev[@]}" "${x[@]}" --per-user "${o/\%s/A}" | hr) || return 1
  bs=$("$hl" eval --model "$keep/b.hlm" "${ev[@]}" "${x[@]}" --apply-from 0.6 \
       --per-user "${o/\%s/B_short}" | hr) || return 1
  bf=$("$hl" eval --model "$keep/b.hlm" "${ev[@]}" "${x[@]}" --per-user "${o/\%s/B_full}" | hr) || return 1
  mg=$("$hl" eval --model "$keep/a.hlm" --swap-model "$keep/b.hlm" --swap-at 0.8 "${ev[@]}" "${x[@]}" \
       ${HL_SWAPQ_WEIGHTS:+--swap-weights "$HL_SWAPQ_WEIGHTS"} --per-user "${o/\%s/migrated}" | hr) || return 1
  echo "{\"dataset\":\"${ds_name}\",\"exclude_seen\":\"$1\",\"A\":$a,\"B_short\":$bs,\"B_full\":$bf,\"migrated\":$mg}"
}
ds_name=${1:-ml}
arms yes || exit 1
arms no || exit 1
/usr/bin/python3 - "$tmp" <<'PY'
import random, sys
tmp = sys.argv[1]
# Paired bootstrap over users: the same users' events are scored in every
# arm, so resampling users (2000 times, fixed seed) and taking each arm's
# HR over the sample gives the spread of a relative difference that the
# scored users alone can produce. A gap inside the 95% interval is one
# this protocol cannot resolve (the model's own training noise adds to it).
def load(name, excl):
    d = {}
    for line in open("%s/%s.%s.tsv" % (tmp, name, excl)):
        u, n, h = line.rstrip("\n").split("\t")
        d[u] = (int(n), int(h))
    return d
def interval(cols, users, p, rng, reps=2000):
    rel = []
    for _ in range(reps):
        idx = [rng.randrange(len(users)) for _ in users]
        hr = []
        for k in p:
            n = sum(cols[k][i][0] for i in idx)
            hr.append(sum(cols[k][i][1] for i in idx) / n if n else 0.0)
        rel.append(hr[0] / hr[1] - 1 if hr[1] else 0.0)
    rel.sort()
    return rel[int(0.025 * reps)], rel[int(0.975 * reps) - 1]

def report(excl):
    arms = {k: load(k, excl) for k in ("A", "B_short", "B_full", "migrated")}
    users = sorted(set().union(*arms.values()))
    cols = {k: [v.get(u, (0, 0)) for u in users] for k, v in arms.items()}
    rng, hits = random.Random(1), {}
    for p in [("migrated", "B_full"), ("migrated", "B_short"), ("migrated", "A"),
              ("B_short", "B_full")]:
        lo, hi = interval(cols, users, p, rng)
        h0, h1 = (sum(x[1] for x in cols[k]) for k in p)
        hits.update({p[0]: h0, p[1]: h1})
        print("exclude_seen=%-3s %-8s vs %-8s hits %4d vs %4d: %+6.1f%%, 95%% bootstrap "
              "interval over %d users [%+.1f%%, %+.1f%%] (resolves gaps beyond +-%.1f%%)" %
              (excl, p[0], p[1], h0, h1, 100 * (h0 / h1 - 1) if h1 else 0, len(users),
               100 * lo, 100 * hi, 50 * (hi - lo)))
    return hits

ok = True
for excl in ("yes", "no"):
    h = report(excl)
    mg, bf, bs, a = h["migrated"], h["B_full"], h["B_short"], h["A"]
    met = mg >= 0.98 * bf and mg > a and mg > bs
    ok = ok and (met or excl == "no")
    print(("PASS" if met else "FAIL") + " swap_quality (exclude_seen=%s): migrated %d hits vs "
          "B_full %d (%+.1f%%), A %d, B_short %d" % (excl, mg, bf, 100 * (mg / bf - 1) if bf else 0,
                                                      a, bs))
sys.exit(0 if ok else 1)
PY
