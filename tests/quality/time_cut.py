#!/usr/bin/python3
"""time_cut.py SRC FORMAT OUT FRACTION - the events of SRC before the time of
the FRACTION quantile of all its events (the time of event int(F x n) in time
order, where `halflife eval` puts --score-from and --swap-at: eval_preq.c
time_at), written to OUT in the same format. A model trained on OUT knows
only the items seen before the cut, as a model trained on the day's data
would: `--holdout time:F` on the whole file would still list the later items
(untrained). Formats: taobao (no header,
time in column 5) and movielens-csv (a header, time in column 4)."""
import sys

def main():
    if len(sys.argv) != 5 or sys.argv[2] not in ("taobao", "movielens-csv"):
        sys.exit("usage: time_cut.py SRC taobao|movielens-csv OUT FRACTION")
    src, fmt, out, frac = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    if not 0 < frac <= 1:
        sys.exit("time_cut.py: FRACTION must be in (0, 1]")
    with open(src) as f:
        lines = f.read().splitlines(True)
    head = [] if fmt == "taobao" else lines[:1]
    body = [l for l in lines[len(head):] if l.strip()]
    col = 4 if fmt == "taobao" else 3
    t = [int(float(l.split(",")[col])) for l in body]
    ts = sorted(t)
    i = int(frac * len(ts))
    keep = body if i >= len(ts) else [l for l, x in zip(body, t) if x < ts[i]]
    with open(out, "w") as f:
        f.writelines(head + keep)

if __name__ == "__main__":
    main()
