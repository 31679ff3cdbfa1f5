#!/usr/bin/env bash
# test_quality.sh - `halflife train` on Amazon Beauty, measured by `halflife
# eval --protocol loo` (the published full-ranking leave-one-out protocol of
# ../shared/datasets/README.md), so training and evaluation are checked
# through the two binaries a user runs.
#
# In make test (short budget: about 20 s, 15 s of CPU): a small model,
# 3 epochs, sampled softmax, the default heads learned; the floor is
# HR@10 >= 0.03, twice popularity's 0.0135 (it reaches 0.045).
# Under SAN=1 only a smoke run on the first 2,000 users (quality is not a
# sanitizer matter, and ASan makes the full file too slow).
#
# The full quality report (not part of make test; about 5 minutes of CPU
# per row):
#   HL_QUALITY_FULL=1 HL_DATASETS=$PWD/../shared/datasets \
#     HL_HALFLIFE=$PWD/build/halflife bash tests/integration/test_quality.sh
# trains `halflife train` with no flags (the defaults are the best recipe
# found, core/train/train.h) and each ablation, prints one line per row
# (HR@10, NDCG@10, the learned half-lives, train time, events/s per core)
# and checks the targets: defaults HR@10 >= 0.085, and HR@10 >= 0.093 with
# NDCG@10 >= 0.0531 (above eSASRec and SASRec with sampled softmax).
# Measured 2026-12-03 (one thread, shared machine): defaults HR@10 0.0853
# NDCG@10 0.0520, half-lives learned from 15m,1h,4h,1d,30d to
# 37m,43m,64m,3.5h,48h (Beauty's seq format puts a user's events 1 h
# apart); with the half-lives fixed 0.0845 / 0.0507; full softmax instead
# of sampled 0.0841 / 0.0498; eight heads 0.0828 / 0.0502. The defaults
# over three seeds (2026-12-05, --threads 2, --seed 1/2/3): 0.0828 / 0.0510,
# 0.0853 / 0.0532, 0.0825 / 0.0498: a seed moves HR@10 by about 3%.
# Not kept (2026-12-05, --threads 2): --epochs 24 0.0795 with seed 1
# (overfits after epoch 13); --dim 256 0.0855 / 0.0822 / 0.0834 over seeds
# 1-3, mean 0.0837 against 0.0835, for twice the serving cost; --l2 0.01
# mean 0.0840, --ema 0.999 mean 0.0836, --negatives 1024 0.0819 / 0.0829
# (seeds 1-3, tests/quality/RESULTS.md "Beauty").
# Nor (2026-12-06, seed 1): --batch 128, --dropout 0.4 / 0.6, --hidden 512,
# --lr 0.002 / 0.005, --epochs 12; --lr-final 0.01 led on seed 1 (0.0848)
# but over seeds 2-7 read 0.0844 against the defaults' 0.0839. The defaults
# over seeds 1-7: HR@10 0.0838, NDCG@10 0.0513.
# Nor (2026-12-06, seed 1, one thread; defaults 0.0853): a 1-minute head,
# the last item alone on Beauty's 1 h spacing, 0.0852; history dropout
# 0.2 / 0.4 0.0844 / 0.0825 and targets 2-3 events ahead 0.0790 / 0.0777
# (both in commit f7df641, taken out again); --negatives 4096 0.0840;
# --hidden 256,256 0.0610.
set -u
name=test_quality
if [ -z "${HL_DATASETS:-}" ]; then
  echo "SKIP $name.beauty: HL_DATASETS is unset (../shared/datasets is absent)"
  exit 0
fi
top=${HL_TOP:-$(cd "$(dirname "$0")/../.." && pwd)}
hl=${HL_HALFLIFE:-$top/build/halflife}
beauty=$HL_DATASETS/amazon-beauty/Beauty.txt
py=/usr/bin/python3

if [ ! -f "$beauty" ]; then
  echo "SKIP $name.beauty: $beauty is absent"
  exit 0
fi
if [ "${HL_QUALITY_FULL:-0}" = 1 ]; then
  exec bash "$top/tests/quality/beauty_report.sh" "$hl" "$beauty"
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

short=(--dim 32 --hidden 128 --epochs 3 --lr 0.004 --dropout 0.2 --full-softmax-max 1000 --negatives 1024 --threads 1)
mode=short floor_hr=0.03 floor_ndcg=0.015 input=$beauty
args=("${short[@]}")
if [ "${HL_SAN:-0}" = 1 ]; then
  mode=smoke floor_hr=0 floor_ndcg=0 input=$tmp/small.txt
  head -n 2000 "$beauty" >"$input"
  args=(--dim 8 --hidden 16 --epochs 1)
fi

start=$SECONDS
if ! "$hl" train --input "$input" --format seq --out "$tmp/beauty.hlm" --holdout loo \
     --seed 1 "${args[@]}" >"$tmp/train.json" 2>"$tmp/train.err"; then
  echo "FAIL $name.beauty_$mode: halflife train failed"; sed 's/^/    /' "$tmp/train.err"
  exit 1
fi
train_s=$((SECONDS - start))
if ! "$hl" eval --model "$tmp/beauty.hlm" --input "$input" --format seq --protocol loo \
     --baseline popularity --quiet yes >"$tmp/eval.json" 2>"$tmp/eval.err"; then
  echo "FAIL $name.beauty_$mode: halflife eval failed"; sed 's/^/    /' "$tmp/eval.err"
  exit 1
fi
echo "train ($mode, ${train_s}s wall): $(cat "$tmp/train.json")"
echo "eval: $(cat "$tmp/eval.json")"

$py - "$tmp/train.json" "$tmp/eval.json" "$mode" "$floor_hr" "$floor_ndcg" <<'EOF'
import json, sys
train = json.load(open(sys.argv[1]))
ev = json.load(open(sys.argv[2]))
mode, floor_hr, floor_ndcg = sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
name = "test_quality.beauty_" + mode
hr, ndcg = ev["model"]["hr"], ev["model"]["ndcg"]
pop = ev["popularity"]["hr"]
why = []
if hr < floor_hr: why.append("HR@10 %.4f < %.3f" % (hr, floor_hr))
if ndcg < floor_ndcg: why.append("NDCG@10 %.4f < %.3f" % (ndcg, floor_ndcg))
if mode != "smoke" and hr < 2 * pop: why.append("HR@10 %.4f < 2 x popularity %.4f" % (hr, pop))
# train's own loo test figure must be the same protocol's answer
if abs(train["test_hr10"] - hr) > 0.002:
    why.append("train's own test HR@10 %.4f differs from eval's %.4f" % (train["test_hr10"], hr))
print("HR@10 %.4f NDCG@10 %.4f popularity HR@10 %.4f train %.0fs" %
      (hr, ndcg, pop, train["train_seconds"]))
print(("FAIL %s: " % name + "; ".join(why)) if why else "PASS " + name)
sys.exit(1 if why else 0)
EOF
