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
# and B_short.
#
# Protocols (which items each list leaves out; HL_SWAPQ_PROTOCOLS, default
# "same own none", the first is the one PASS/FAIL and the exit code judge):
#   same  every arm leaves out the items of the user's ring as it would be
#         after the whole stream (eval --seen-ring full): the default
#         exclusion of the worker (recs.exclude.seen=true), applied alike.
#   own   each arm leaves out its own state's ring (eval's default, what a
#         worker with that state would serve).
#   none  nothing is left out (--exclude-seen no).
# Why "same" is the default: the issue asks what the state (the heads) is
# worth. Under "own" the arms differ in what they leave out too: B_short's
# ring holds no event before 60% of the time, so it recommends items the
# user saw before, which B_full and migrated leave out as seen, and on
# taobao most hits are such repeats. Measured (targets_in_full_ring): 24 of
# B_short's 140 hits are on items the full ring holds, none of the others'
# are, and with the same exclusion B_short drops to 119. So "own" rewards
# forgetting what the user saw, an exclusion policy any arm could adopt,
# not a better state. "same" keeps the worker's exclusion and gives
# A, B_full and migrated exactly their "own" lists (their ring is the full
# ring; the script checks it), changing only B_short's. "none" isolates the
# state too and resolves ~4x finer (~770 hits against ~120 on taobao), but
# 87% of its taobao hits are items the worker would never show by default.
# Each comparison prints a paired bootstrap over users (the same users'
# events are scored in every arm; 2000 resamples): a gap inside its 95%
# interval is one this protocol cannot resolve (training noise adds more).
# Per arm it also prints the scored events whose item the arm's own ring
# or the full ring held, and the hits on them.
# Not part of make test: training takes minutes.
# Seven trainings (seeds 1-7, tests/quality/RESULTS.md "Model swap"; README
# "Daily retrain" has the table with rings 32, 64, 128): ring 32 sums to
#   738/1006/1054/1026 (-2.7%), ring 128 1041 (-1.2%); seed 7 misses by
#   more than its interval at both. Since masses follow the heads
#   (2026-12-05, schemas/model.md) ring 32 gives 1033 (-1.99%), and with
#   the worker's default fold-in (HL_SWAPQ_EVAL="--foldin 2") 779/1022/
#   1068/1045 (-2.2%; before the masses 1026, -3.9%, and without exclusion
#   -11.3%, now +0.1%).
# Since 2026-12-05 each model is trained on the events before its cut only
# (time_cut.py; HL_SWAPQ_CUT=0 for the protocol the figures below up to
# "Where migrated differs" were measured with). Measured then, same, ring
# 32, --seed 1/2/3 (load 2-4), hits of A / B_short / B_full / migrated:
#   124/141/150/149 (-0.7%)  100/151/153/151 (-1.3%)  98/154/157/152 (-3.2%)
#   sum 322/446/460/452 (-1.7%); the old protocol, same seeds: -6.4%,
#   -1.6%, -3.4%, sum 167/334/363/349 (-3.9%). tests/quality/RESULTS.md.
# Measured 2026-12-03 (load 5-7 on 2 cores; HR@10 over the last 20%,
# 16,895 events scored on taobao, 3,533 of them items the full ring held):
#   taobao, same:  A 0.003255 (55 hits)  B_short 0.007044 (119)
#     B_full 0.007280 (123)  migrated 0.006984 (118): -4.1% vs B_full
#     [-9.0%, +0.9%], -0.8% vs B_short [-7.4%, +6.0%]: target not met
#     (the gaps are 5 and 1 hits, inside the intervals)
#   taobao, own:   B_short 0.008286 (140; +13.8% vs B_full [+2.4%, +27.8%]),
#     the other arms as under same: target not met
#   taobao, none:  A 0.019414 (328)  B_short 0.044865 (758)
#     B_full 0.045576 (770)  migrated 0.045220 (764): -0.8% vs B_full
#     [-2.0%, +0.5%], +0.8% vs B_short [-1.3%, +3.0%]: target met
#   the same with --seed 2 (HL_SWAPQ_TRAIN, load 6-11):
#     same:  A 58  B_short 110  B_full 124  migrated 121: -2.4% vs B_full
#     [-7.0%, +2.7%], +10.0% vs B_short [+3.1%, +19.5%]: not met (3 hits
#     short of B_full where 2% allows 2.5)
#     own:   B_short 135 (+8.9% vs B_full [-1.9%, +22.2%]): not met
#     none:  A 350  B_short 752  B_full 758  migrated 764: +0.8% vs B_full
#     [-0.5%, +2.2%], +1.6% vs B_short [-0.5%, +4.1%]: met
#   Earlier, under own only: B trained without --init (its own half-lives)
#     still gave B_short +7.6% over B_full, so A's half-lives are not the
#     cause either.
#   ml, every protocol: A 329 hits (same, own) / 286 (none); the three B
#     arms 885 / 697 each, the same for every one of the 116 scored users:
#     "above B_short" is a tie, so not met. ml-latest-small rates a movie
#     once, so no scored target is ever in a ring (0 of 20,168) and same
#     and own give the same hits.
# Where migrated differs from B_full (2026-12-04, seed 1, the same two
# models; load 10-20): taobao's scored users have a median of 60 events
# before the swap (p90 180), and 576 of the 814 more than the ring's 32,
# so most of a long head is older than the ring and goes through M. M fits
# poorly: its relative residual over the 55,368 shared items (every item:
# none is unknown to either model) is 0.47. On the longest head the
# migrated state is 0.33 away from B_full's (relative norm over all users;
# median user 0.13), and the ring holds 18% of that head's norm^2.
# Weighting the fit changes little (HL_SWAPQ_WEIGHTS count / remainder /
# bias: error 0.32 / 0.33 / 0.33, 118 hits each): the map is not the lever.
# A longer ring is: HL_SWAPQ_EVAL="--history 128 --seen-history 32" (the
# state's ring 128 events, the items left out still the last 32 of the
# full stream, eval --seen-history) puts 70% of the longest head's norm^2
# in the ring, the error falls to 0.115 (median user 0), and
#   same:  A 55  B_short 119  B_full 123  migrated 123 (the same hits for
#          every user as B_full): target met
#   none (--history 128):  A 328  B_short 758  B_full 770  migrated 773:
#          +0.4% [+0.0%, +0.9%], and +2.0% [+0.0%, +4.1%] over B_short
# With --history 128 alone the lists also leave out the last 128 items,
# and on taobao (hits are mostly repeats) every arm loses most of its hits
# (same: A 19, B_short 34, B_full 32, migrated 32). A worker gets the
# first figures with state.history=128 and recs.exclude.seen.events=32
# (its lists leave out the items of the last 32 events only; eval
# --seen-window 32 runs the same code, and with --seen-ring full it is
# --seen-history 32). Measured 2026-12-04 with new trainings (load 7-8;
# HL_SWAPQ_EVAL="--history H --seen-window 32", protocol same, hits of
# A / B_short / B_full / migrated, migrated vs B_full):
#   H 32 (default)  seed 1: 55 / 120 / 125 / 117  -6.4% [-11.0%, -2.1%] not met
#                   seed 2: 57 / 108 / 122 / 120  -1.6% [-8.1%, +5.0%]  met
#   H 64            seed 1: 55 / 120 / 125 / 122  -2.4% [-5.9%, +0.9%]  not met
#                   seed 2: 57 / 108 / 122 / 118  -3.3% [-7.8%, +1.0%]  not met
#   H 128           seed 1: 55 / 120 / 125 / 124  -0.8% [-2.7%, +0.0%]  met
#                   seed 2: 57 / 108 / 122 / 122  +0.0% (user by user)  met
#   (own: the same but B_short 138 / 129, so "above B_short" fails there.)
# The ring costs 25 bytes per event per user: at dim 64 and 5 heads a
# user takes 2,197 bytes with 32 events, 3,029 with 64 and 4,629 with 128
# (build/bench/bench_state --memory 5 H), so the default stays 32 and the
# configuration that meets the target is opt-in (README, "Daily retrain"; a
# ring of 64, 3,029 bytes, meets it in the seven trainings' sum).
# On ml-latest-small the split cannot tell the three B cases apart: of the
# 20168 events scored only 600 are of users with events before 60% of the
# time, and every one of those users has events in 60-80% too.
#   HL_DATASETS=../shared/datasets bash tests/quality/swap_quality.sh [ml|taobao]
# Training options: HL_SWAPQ_TRAIN (default a short run, see below);
# HL_SWAPQ_KEEP=DIR keeps the two models there and reuses them;
# HL_SWAPQ_EVAL adds eval options to every arm (e.g. "--history 128
# --seen-window 32": a longer ring, so less of each head goes through M,
# with the worker's default 32 items left out);
# HL_SWAPQ_WEIGHTS=count|remainder|bias weights the swap's fit (eval
# --swap-weights; the worker's fit is unweighted);
# HL_SWAPQ_LOCAL=K sets the migration's local correction (eval
# --swap-local; the worker's is core/migrate.h's HL_MIG_LOCAL, 0 is the
# map M alone, the migration before 2026-12-05).
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
# Each model is trained on the events before its cut only (time_cut.py), so
# it knows only the items seen before it, as a daily retrain does.
# HL_SWAPQ_CUT=0 trains on the whole file with --holdout time:F instead (the
# protocol before 2026-12-05: A then lists every later item too, untrained,
# and the swap's fit runs over them).
cut_train() {  # FRACTION OUT [train options...]
  local f=$1 out=$2; shift 2
  if [ "${HL_SWAPQ_CUT:-1}" = 1 ]; then
    /usr/bin/python3 "$top/tests/quality/time_cut.py" "$input" "$format" "$out.events" "$f" &&
      "$hl" train --input "$out.events" --format "$format" --out "$out" "$@" >/dev/null
  else
    "$hl" train --input "$input" --format "$format" --out "$out" --holdout "time:$f" "$@" >/dev/null
  fi
}
[ -s "$keep/a.hlm" ] || cut_train 0.6 "$keep/a.hlm" "${train[@]}" || exit 1
[ -s "$keep/b.hlm" ] || cut_train 0.8 "$keep/b.hlm" --init "$keep/a.hlm" "${train[@]}" || exit 1
ev=(--input "$input" --format "$format" --protocol prequential --quiet yes --score-from 0.8
    ${HL_SWAPQ_EVAL:-})
protocols=(${HL_SWAPQ_PROTOCOLS:-same own none})
# The eval options of a protocol (see the header).
excl() {
  case $1 in
    same) echo --exclude-seen yes --seen-ring full ;;
    own)  echo --exclude-seen yes --seen-ring own ;;
    none) echo --exclude-seen no ;;
    *)    echo "swap_quality.sh: protocol $1: expected same, own or none" >&2; return 1 ;;
  esac
}
# arms PROTOCOL: each arm's eval JSON in $tmp/<arm>.<protocol>.json and its
# per-user hits in $tmp/<arm>.<protocol>.tsv
arms() {
  local x o=$tmp/%s.$1 a
  x=($(excl "$1")) || return 1
  for a in A B_short B_full migrated; do
    local m=(--model "$keep/b.hlm")
    case $a in
      A)        m=(--model "$keep/a.hlm") ;;
      B_short)  m+=(--apply-from 0.6) ;;
      migrated) m=(--model "$keep/a.hlm" --swap-model "$keep/b.hlm" --swap-at 0.8
                   ${HL_SWAPQ_WEIGHTS:+--swap-weights "$HL_SWAPQ_WEIGHTS"}
                   ${HL_SWAPQ_LOCAL:+--swap-local "$HL_SWAPQ_LOCAL"}) ;;
    esac
    "$hl" eval "${m[@]}" "${ev[@]}" "${x[@]}" --per-user "${o/\%s/$a}.tsv" \
      > "${o/\%s/$a}.json" || return 1
  done
}
for p in "${protocols[@]}"; do arms "$p" || exit 1; done
/usr/bin/python3 - "$tmp" "${1:-ml}" "${protocols[@]}" <<'PY'
import json, random, sys
tmp, ds, protocols = sys.argv[1], sys.argv[2], sys.argv[3:]
ARMS = ("A", "B_short", "B_full", "migrated")
# Paired bootstrap over users: the same users' events are scored in every
# arm, so resampling users (2000 times, fixed seed) and taking each arm's
# HR over the sample gives the spread of a relative difference that the
# scored users alone can produce. A gap inside the 95% interval is one
# this protocol cannot resolve (the model's own training noise adds to it).
def load(name, proto):
    d = {}
    for line in open("%s/%s.%s.tsv" % (tmp, name, proto)):
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

def arms_line(proto, js):
    # The four HR@10, then per arm the hits on items the user's ring held:
    # own ring (the arm's state) and full ring (after the whole stream).
    print(json.dumps({"dataset": ds, "protocol": proto, **{a: js[a]["model"]["hr"] for a in ARMS}}))
    for a in ARMS:
        j = js[a]
        print("  %-9s %s hits %4d of %d; targets in own ring %5d (hits %4d), in full ring "
              "%5d (hits %4d)" % (proto, a, j["model"]["hits"], j["model"]["n"],
                                  j["targets_in_own_ring"]["n"], j["targets_in_own_ring"]["hits"],
                                  j["targets_in_full_ring"]["n"], j["targets_in_full_ring"]["hits"]))
    # What the migration got wrong at the swap (eval's swap_diagnose): M's
    # residual over the shared items, and the longest head's error against
    # the head B builds from the same events: with M alone for what is
    # older than the ring, and as the migration left it (its local
    # correction too: core/migrate.h), with the ring's share of the head.
    sw, lh = js["migrated"].get("swap", {}), js["migrated"].get("swap_longest_head")
    if lh:
        print("  %-9s migration: M fitted on %d items, residual %.3f; longest head vs B_full's: "
              "error %.3f with M alone (median user %.3f), %.3f as migrated (median user "
              "%.3f), ring's share of its norm^2 %.3f (history %d)" % (
              proto, sw.get("fit_shared", 0), sw.get("fit_residual", 0), lh["err_vs_full"],
              lh["err_vs_full_median_user"], lh.get("err_migrated", -1),
              lh.get("err_migrated_median_user", -1), lh["ring_share_of_full"],
              js["migrated"]["history"]))

def report(proto):
    js = {a: json.load(open("%s/%s.%s.json" % (tmp, a, proto))) for a in ARMS}
    arms_line(proto, js)
    per = {a: load(a, proto) for a in ARMS}
    users = sorted(set().union(*per.values()))
    cols = {k: [v.get(u, (0, 0)) for u in users] for k, v in per.items()}
    rng = random.Random(1)
    for p in [("migrated", "B_full"), ("migrated", "B_short"), ("migrated", "A"),
              ("B_short", "B_full")]:
        lo, hi = interval(cols, users, p, rng)
        h0, h1 = (js[k]["model"]["hits"] for k in p)
        print("protocol=%-4s %-8s vs %-8s hits %4d vs %4d: %+6.1f%%, 95%% bootstrap "
              "interval over %d users [%+.1f%%, %+.1f%%] (resolves gaps beyond +-%.1f%%)" %
              (proto, p[0], p[1], h0, h1, 100 * (h0 / h1 - 1) if h1 else 0, len(users),
               100 * lo, 100 * hi, 50 * (hi - lo)))
    return {a: js[a]["model"]["hits"] for a in ARMS}

ok = True
if "same" in protocols and "own" in protocols:
    # The arms that apply every event have the full ring as their own, so
    # "same" must give them exactly their "own" lists (user by user).
    for a in ("A", "B_full", "migrated"):
        if load(a, "same") != load(a, "own"):
            print("FAIL check: %s scores differently under same and own, though its ring "
                  "is the full ring: eval --seen-ring full is broken" % a)
            ok = False
for proto in protocols:
    h = report(proto)
    # The migrated heads must be no longer than their masses allow (eval's
    # swap_head_means): stop 31's defect left masses of 0 under full heads.
    hm = json.load(open("%s/migrated.%s.json" % (tmp, proto))).get("swap_head_means")
    if hm:
        print("  %-9s head means before / after the swap: median %.3g / %.3g, largest "
              "%.3g / %.3g, inconsistent heads %d / %d" % (
                  proto, hm["before"]["median"], hm["after"]["median"], hm["before"]["max"],
                  hm["after"]["max"], hm["before"]["inconsistent_heads"],
                  hm["after"]["inconsistent_heads"]))
        if hm["after"]["inconsistent_heads"]:
            print("FAIL check: %d migrated heads are longer than their masses allow"
                  % hm["after"]["inconsistent_heads"])
            ok = False
    mg, bf, bs, a = h["migrated"], h["B_full"], h["B_short"], h["A"]
    met = mg >= 0.98 * bf and mg > a and mg > bs
    ok = ok and (met or proto != protocols[0])
    print(("PASS" if met else "FAIL") + " swap_quality (protocol=%s%s): migrated %d hits vs "
          "B_full %d (%+.1f%%), A %d, B_short %d" % (
              proto, ", judged" if proto == protocols[0] else ", shown", mg, bf,
              100 * (mg / bf - 1) if bf else 0, a, bs))
sys.exit(0 if ok else 1)
PY
