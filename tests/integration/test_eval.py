#!/usr/bin/python3
"""test_eval.py - `halflife eval` against independent Python references.

A random events-csv file (lines out of time order, equal timestamps, item
ids the model does not know) is evaluated by build/halflife and by the plain
Python below, which implements the protocols from their definitions:
  - popularity, loo and prequential, needs no model;
  - a model whose e_out is zero ranks by its biases alone, so its lists are
    known without running an encoder: that checks the model path (item
    dictionary, unknown items, exclusions, K, NDCG) exactly;
  - a random model must give the same hits whatever the refresh batch
    (the batched state copies of prequential are exact).
With HL_DATASETS, the popularity baseline on amazon-beauty must reproduce
the published HR@10 of 0.0152 within 15%.
"""
import collections
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile

import numpy as np

TOP = os.environ.get("HL_TOP") or os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
HALFLIFE = os.environ.get("HL_HALFLIFE") or os.path.join(TOP, "build", "halflife")
sys.path.insert(0, os.path.join(TOP, "schemas"))
import hlm  # noqa: E402

failed = 0
TMP = tempfile.mkdtemp(prefix="hl_eval_")


def case(fn):
    global failed
    try:
        why = fn()
    except AssertionError as e:
        print(f"FAIL test_eval.{fn.__name__}: {e}")
        failed += 1
        return
    except Exception as e:  # a crash is a failure with its reason
        print(f"FAIL test_eval.{fn.__name__}: {type(e).__name__}: {e}")
        failed += 1
        return
    if why:
        print(f"SKIP test_eval.{fn.__name__}: {why}")
    else:
        print(f"PASS test_eval.{fn.__name__}")
    sys.stdout.flush()


def run(*args, code=0):
    p = subprocess.run([HALFLIFE, "eval", *args, "--quiet", "yes"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == code, f"eval {' '.join(args)}: exit {p.returncode}: {p.stderr.strip()}"
    return json.loads(p.stdout) if code == 0 else p


# ---- the synthetic file ----

def make_events(seed=7, n_users=60, n_items=40):
    rnd = random.Random(seed)
    events = []     # (user, item, type, ts_ms) in file order
    for u in range(n_users):
        for _ in range(rnd.randint(1, 25)):
            # Skewed items so popularity means something; coarse times make ties.
            item = min(int(rnd.expovariate(1 / 8)), n_items - 1)
            ts = rnd.randrange(0, 200) * 3_600_000
            events.append((f"u{u}", f"i{item}", rnd.choice(["VIEW", "CLICK", "PURCHASE"]), ts))
    rnd.shuffle(events)
    path = os.path.join(TMP, "events.csv")
    with open(path, "w") as f:
        f.write("user_id,item_id,event_type,timestamp_ms,weight\n")
        for u, i, t, ts in events:
            f.write(f"{u},{i},{t},{ts},\n")
    return path, events


PATH, EVENTS = make_events()


def file_rows():
    """Item rows without a model: order of first appearance in the file."""
    rows = {}
    for _, i, _, _ in EVENTS:
        rows.setdefault(i, len(rows))
    return rows


def by_user():
    users = collections.defaultdict(list)
    for idx, (u, i, _, ts) in enumerate(EVENTS):
        users[u].append((ts, idx, i))
    return {u: sorted(v) for u, v in users.items()}


def in_time_order():
    return sorted(((ts, idx, u, i) for idx, (u, i, _, ts) in enumerate(EVENTS)))


def add(metric, rank):
    metric["n"] += 1
    if rank is not None:
        metric["hits"] += 1
        metric["ndcg"] += 1 / math.log2(rank + 2)


def new_metric():
    return {"n": 0, "hits": 0, "ndcg": 0.0}


def top_k(order_key, rows, k, excluded):
    ranked = sorted(rows, key=order_key)
    return [r for r in ranked if r not in excluded][:k]


# ---- references ----

def ref_loo(row_of, n_rows, k, score=None):
    """score: row -> model score (None: popularity of every non-target event)."""
    users = by_user()
    count = collections.Counter()
    for evs in users.values():
        for _, _, i in evs[:-1]:
            if row_of.get(i) is not None:
                count[row_of[i]] += 1
    key = (lambda r: (-score[r], r)) if score is not None else (lambda r: (-count[r], r))
    m = new_metric()
    for evs in users.values():
        if len(evs) < 2:
            continue
        seen = {row_of[i] for _, _, i in evs[:-1] if row_of.get(i) is not None}
        top = top_k(key, range(n_rows), k, seen)
        target = row_of.get(evs[-1][2])
        add(m, top.index(target) if target in top else None)
    return m


def ref_prequential(row_of, n_rows, k, history, windows, score=None, targets=None):
    """targets: a list that gets (file index, user, known, rank or -1) per
    event, in time order."""
    evs = in_time_order()
    count = collections.Counter()
    rings = collections.defaultdict(lambda: collections.deque(maxlen=history))
    m, per_window = new_metric(), [new_metric() for _ in range(windows)]
    for n, (_, idx, u, i) in enumerate(evs):
        seen = {r for r in rings[u] if r is not None}
        key = (lambda r: (-score[r], r)) if score is not None else (lambda r: (-count[r], r))
        top = top_k(key, range(n_rows), k, seen)
        row = row_of.get(i)
        rank = top.index(row) if row in top else None
        if targets is not None:
            targets.append((idx, u, int(row is not None), -1 if rank is None else rank))
        add(m, rank)
        add(per_window[n * windows // len(evs)], rank)
        if row is not None:
            count[row] += 1
        rings[u].append(row)
    return m, per_window


def check_metric(got, want, what):
    assert got["n"] == want["n"], f"{what}: n {got['n']}, want {want['n']}"
    assert got["hits"] == want["hits"], f"{what}: hits {got['hits']}, want {want['hits']}"
    assert abs(got["hr"] - want["hits"] / want["n"]) < 1e-6, f"{what}: hr {got['hr']}"
    if "ndcg" in got:
        assert abs(got["ndcg"] - want["ndcg"] / want["n"]) < 1e-6, \
            f"{what}: ndcg {got['ndcg']}, want {want['ndcg'] / want['n']}"


# ---- a model that ranks by its biases ----

def bias_model():
    """Knows 30 of the file's items (in a shuffled order) and 5 it never
    sees; e_out = 0, so the score of row r is bias[r] exactly."""
    rnd = random.Random(3)
    file_items = sorted({i for _, i, _, _ in EVENTS})
    known = rnd.sample(file_items, min(30, len(file_items)))
    ids = known + [f"x{j}" for j in range(5)]
    rnd.shuffle(ids)
    n, dim = len(ids), 4
    rng = np.random.default_rng(5)
    bias = rng.permutation(n).astype(np.float32) / 4
    layers = [(rng.standard_normal((dim, 2 * (dim + 1)), dtype=np.float32), np.zeros(dim, np.float32))]
    m = hlm.Model(dim, [3600e3, 86400e3], [1.0] * 6, ids,
                  rng.standard_normal((n, dim), dtype=np.float32), layers,
                  np.zeros((n, dim), np.float32), bias, "bias-only")
    path = os.path.join(TMP, "bias.hlm")
    hlm.write(path, m)
    return path, {i: r for r, i in enumerate(ids)}, [float(b) for b in bias]


# ---- cases ----

def test_help_and_usage():
    p = subprocess.run([HALFLIFE, "eval", "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "--protocol" in p.stdout and "--baseline" in p.stdout, p.stdout
    p = run("--input", PATH, "--format", "events-csv", "--protocol", "loo", code=2)
    assert "--model" in p.stderr, p.stderr
    p = run("--input", PATH, "--format", "events-csv", "--protocol", "later",
            "--baseline", "popularity", code=2)
    p = run("--input", PATH, "--format", "events-csv", "--protocol", "loo", "--k", "0",
            "--baseline", "popularity", code=2)
    p = run("--model", os.path.join(TMP, "missing.hlm"), "--input", PATH, "--format",
            "events-csv", "--protocol", "loo", code=1)
    assert "missing.hlm" in p.stderr, p.stderr


def test_model_of_another_catalogue_is_refused():
    """A model that knows none of the file's items scored HR 0 with exit 0,
    as if it were a bad model rather than the wrong file."""
    n, dim = 5, 4
    rng = np.random.default_rng(9)
    layers = [(rng.standard_normal((dim, 2 * (dim + 1)), dtype=np.float32), np.zeros(dim, np.float32))]
    m = hlm.Model(dim, [3600e3, 86400e3], [1.0] * 6, [f"other{j}" for j in range(n)],
                  rng.standard_normal((n, dim), dtype=np.float32), layers,
                  rng.standard_normal((n, dim), dtype=np.float32), np.zeros(n, np.float32),
                  "other-catalogue")
    path = os.path.join(TMP, "other.hlm")
    hlm.write(path, m)
    for protocol in ("loo", "prequential"):
        p = run("--model", path, "--input", PATH, "--format", "events-csv",
                "--protocol", protocol, code=1)
        assert "other.hlm" in p.stderr and "none of" in p.stderr, p.stderr


def test_loo_with_no_user_to_measure_is_refused():
    """Users of one event each leave loo nothing to measure: it printed
    HR 0 over n 0 with exit 0, a figure where there is none."""
    path = os.path.join(TMP, "singles.csv")
    with open(path, "w") as f:
        f.write("user_id,item_id,event_type,timestamp_ms\n")
        for u in range(5):
            f.write(f"s{u},i{u},VIEW,{1000 * u}\n")
    p = run("--input", path, "--format", "events-csv", "--protocol", "loo",
            "--baseline", "popularity", code=1)
    assert "singles.csv" in p.stderr and "2 events" in p.stderr, p.stderr


def test_loo_popularity_matches_reference():
    rows = file_rows()
    for k in (1, 5, 10, 100):
        got = run("--input", PATH, "--format", "events-csv", "--protocol", "loo",
                  "--baseline", "popularity", "--k", str(k))
        check_metric(got["popularity"], ref_loo(rows, len(rows), k), f"k={k}")
        assert got["items"] == len(rows) and "model" not in got
    assert got["users"] + got["users_skipped"] == len(by_user())


def test_prequential_popularity_matches_reference():
    rows = file_rows()
    for k, history in ((10, 32), (3, 2), (10, 1)):
        got = run("--input", PATH, "--format", "events-csv", "--protocol", "prequential",
                  "--baseline", "popularity", "--k", str(k), "--history", str(history),
                  "--windows", "4", "--batch", "7")
        want, per_window = ref_prequential(rows, len(rows), k, history, 4)
        check_metric(got["popularity"], want, f"k={k} history={history}")
        assert len(got["windows"]) == 4
        for w, (g, r) in enumerate(zip(got["windows"], per_window)):
            assert g["events"] == r["n"], f"window {w}: {g['events']} events, want {r['n']}"
            assert abs(g["popularity_hr"] - r["hits"] / r["n"]) < 1e-6, f"window {w}: {g}"


def test_model_by_bias_matches_reference():
    path, rows, bias = bias_model()
    for k in (1, 10):
        got = run("--model", path, "--input", PATH, "--format", "events-csv",
                  "--protocol", "loo", "--k", str(k), "--batch", "5")
        check_metric(got["model"], ref_loo(rows, len(rows), k, score=bias), f"loo k={k}")
        assert got["items"] == len(rows)
    got = run("--model", path, "--input", PATH, "--format", "events-csv",
              "--protocol", "prequential", "--k", "5", "--history", "4", "--windows", "3")
    want, per_window = ref_prequential(rows, len(rows), 5, 4, 3, score=bias)
    check_metric(got["model"], want, "prequential")
    unknown = sum(1 for _, i, _, _ in EVENTS if i not in rows)
    assert got["events_item_unknown"] == unknown > 0, got["events_item_unknown"]
    # With a model and the baseline, popularity ranks the model's items.
    got = run("--model", path, "--input", PATH, "--format", "events-csv",
              "--protocol", "loo", "--baseline", "popularity")
    check_metric(got["popularity"], ref_loo(rows, len(rows), 10), "popularity on model items")


def test_per_target_matches_reference():
    """--per-target: every scored event's rank, which pairs two arms up."""
    path, rows, bias = bias_model()
    out = os.path.join(TMP, "targets.tsv")
    got = run("--model", path, "--input", PATH, "--format", "events-csv",
              "--protocol", "prequential", "--k", "5", "--history", "4", "--batch", "7",
              "--per-target", out)
    want = []
    ref_prequential(rows, len(rows), 5, 4, 1, score=bias, targets=want)
    with open(out) as f:
        lines = [tuple(int(x) if j != 1 else x for j, x in enumerate(l.rstrip("\n").split("\t")))
                 for l in f]
    assert lines == want, f"first difference: {next(((a, b) for a, b in zip(lines, want) if a != b), (len(lines), len(want)))}"
    assert sum(r >= 0 for *_, r in lines) == got["model"]["hits"] > 0
    assert {kn for _, _, kn, _ in lines} == {0, 1}, "the file has known and unknown targets"
    # --score-from: only the scored events are written.
    got = run("--model", path, "--input", PATH, "--format", "events-csv",
              "--protocol", "prequential", "--score-from", "0.5", "--per-target", out)
    with open(out) as f:
        assert sum(1 for _ in f) == got["model"]["n"] < len(EVENTS)
    p = run("--input", PATH, "--format", "events-csv", "--protocol", "prequential",
            "--baseline", "popularity", "--per-target", out, code=2)
    assert "--per-target" in p.stderr, p.stderr


def test_foldin_max_per_list():
    """--foldin-max-per-list C: a list of k holds at most C folded items,
    the top k of model items and the C best folded ones. A model that knows
    20 of the file's 40 items folds the rest in at their first event, and
    they crowd the lists (more folded places than lists), so the cap bites.
    Per target: a model item's rank can only rise (a folded item above it
    is dropped) and a folded item hits only where it hit without the cap."""
    m = hlm.random_model(20, 8, n_heads=3, hidden=(16,), seed=11)
    m.item_ids = [f"i{j}" for j in range(20)]
    path = os.path.join(TMP, "fold.hlm")
    hlm.write(path, m)

    def arm(cap):
        out = os.path.join(TMP, f"fold{cap}.tsv")
        flags = ["--foldin-max-per-list", str(cap)] if cap is not None else []
        got = run("--model", path, "--input", PATH, "--format", "events-csv",
                  "--protocol", "prequential", "--k", "5", "--foldin", "1",
                  "--per-target", out, *flags)
        with open(out) as f:
            ranks = [(int(l.split("\t")[2]), int(l.split("\t")[3])) for l in f]
        return got, ranks

    free, free_ranks = arm(None)
    n = free["model"]["n"]
    assert free["foldin_list_places"] > n, f"only {free['foldin_list_places']} folded places in {n} lists"
    assert "foldin_max_per_list" not in free
    for cap in (1, 2):
        got, ranks = arm(cap)
        assert got["model"]["n"] == n
        assert got["foldin_list_places"] <= cap * n, \
            f"cap {cap}: {got['foldin_list_places']} folded places in {n} lists"
        assert got["foldin_max_per_list"]["dropped"] > 0, got["foldin_max_per_list"]
        for (known, r0), (_, r1) in zip(free_ranks, ranks):
            if known:
                assert r0 < 0 or 0 <= r1 <= r0, f"cap {cap}: a model item fell from {r0} to {r1}"
            else:
                assert r1 < 0 or r0 >= 0, f"cap {cap}: a folded item hit only under the cap"
        assert sum(r >= 0 for _, r in ranks) == got["model"]["hits"]
    # A cap of 0 or of k leaves the lists as they were.
    for cap in (0, 5):
        got, ranks = arm(cap)
        got.pop("seconds"), free.pop("seconds", None)
        assert ranks == free_ranks and got == free, f"cap {cap} changed the lists"


def test_batch_does_not_change_results():
    m = hlm.random_model(40, 8, n_heads=3, hidden=(16,), seed=11)
    m.item_ids = [f"i{j}" for j in range(40)]
    path = os.path.join(TMP, "random.hlm")
    hlm.write(path, m)
    for proto in ("prequential", "loo"):
        a = run("--model", path, "--input", PATH, "--format", "events-csv",
                "--protocol", proto, "--batch", "1")
        b = run("--model", path, "--input", PATH, "--format", "events-csv",
                "--protocol", proto, "--batch", "64")
        assert a["model"]["n"] == b["model"]["n"] > 0
        assert abs(a["model"]["hits"] - b["model"]["hits"]) <= 1, \
            f"{proto}: hits {a['model']['hits']} with batch 1, {b['model']['hits']} with 64"


def test_swap_options():
    """--swap-model (issue 10's quality comparison): a swap to the same model
    is the identity migration, so the lists barely move; --score-from scores
    only the later events, and --apply-from drops the earlier ones from the
    state without changing which events are scored."""
    m = hlm.random_model(40, 8, n_heads=3, hidden=(16,), seed=11)
    m.item_ids = [f"i{j}" for j in range(40)]
    path = os.path.join(TMP, "swap.hlm")
    hlm.write(path, m)
    base = ["--model", path, "--input", PATH, "--format", "events-csv",
            "--protocol", "prequential", "--k", "5"]
    plain = run(*base, "--score-from", "0.5")
    same = run(*base, "--score-from", "0.5", "--swap-model", path, "--swap-at", "0.5")
    assert same["model"]["n"] == plain["model"]["n"] > 0, (same["model"], plain["model"])
    assert abs(same["model"]["hits"] - plain["model"]["hits"]) <= 1, (same, plain)
    users_before = {u for u, _i, _t, ts in EVENTS if ts < same["swap"]["at_ts_ms"]}
    assert same["swap"]["users_migrated"] == len(users_before) > 0, same["swap"]
    full = run(*base)
    assert 0 < plain["model"]["n"] < full["model"]["n"], (plain["model"], full["model"])
    late = run(*base, "--score-from", "0.5", "--apply-from", "0.5")
    assert late["model"]["n"] == plain["model"]["n"], (late["model"], plain["model"])
    p = run(*base, "--swap-model", path, code=2)
    assert "--swap-at" in p.stderr, p.stderr


def test_swap_with_foldin():
    """--swap-model with --foldin: fold-in starts again in B's space, as the
    worker's does. Swapped to a model that knows only the same 20 of the
    file's 40 items, the unknown ones are folded in again after the swap
    and take places in the lists scored after it; swapped to one that
    knows all 40, nothing is folded after the swap (an item B knows is
    B's row, never a folded side row). Either way the migrated heads are
    as long as their masses allow (users whose events before the swap were
    all on items only B knows kept a mass of 0 under B's vectors once)."""
    a = hlm.random_model(20, 8, n_heads=3, hidden=(16,), seed=11)
    a.item_ids = [f"i{j}" for j in range(20)]
    b = hlm.random_model(40, 8, n_heads=3, hidden=(16,), seed=12)
    b.item_ids = [f"i{j}" for j in range(40)]
    pa, pb = os.path.join(TMP, "swapfold_a.hlm"), os.path.join(TMP, "swapfold_b.hlm")
    hlm.write(pa, a)
    hlm.write(pb, b)
    base = ["--model", pa, "--input", PATH, "--format", "events-csv", "--protocol",
            "prequential", "--k", "5", "--foldin", "1", "--score-from", "0.5",
            "--swap-at", "0.5"]
    again = run(*base, "--swap-model", pa)
    assert again["model"]["n"] > 0 and again["foldin_list_places"] > 0, again
    known = run(*base, "--swap-model", pb)
    assert known["model"]["n"] == again["model"]["n"], (known["model"], again["model"])
    assert known["foldin_list_places"] == 0, known
    for r in (again, known):
        means = r["swap_head_means"]
        assert means["before"]["inconsistent_heads"] == 0, means
        assert means["after"]["inconsistent_heads"] == 0, means
        assert 0 < means["after"]["max"] < 10 * means["before"]["max"], means


def time_at(f):
    """The time of the f quantile of the events, as eval's --apply-from F."""
    evs = in_time_order()
    return evs[int(f * len(evs))][0] if int(f * len(evs)) < len(evs) else math.inf


def ref_seen(row_of, n_rows, k, history, score, t_apply, t_score, full, exclude=True):
    """Prequential with a state-independent score: the state's ring holds
    the events from t_apply on, the full ring every earlier event; the lists
    leave out the rows of one of them (full) or of none (exclude False).
    Returns the metric and the metrics of targets in each ring."""
    own = collections.defaultdict(lambda: collections.deque(maxlen=history))
    whole = collections.defaultdict(lambda: collections.deque(maxlen=history))
    m, m_own, m_full = new_metric(), new_metric(), new_metric()
    for ts, _, u, i in in_time_order():
        ring = whole[u] if full else own[u]
        seen = {row_of[x] for x in ring if row_of.get(x) is not None} if exclude else set()
        if ts >= t_score:
            top = top_k(lambda r: (-score[r], r), range(n_rows), k, seen)
            row = row_of.get(i)
            rank = top.index(row) if row in top else None
            add(m, rank)
            if i in own[u]:
                add(m_own, rank)
            if i in whole[u]:
                add(m_full, rank)
        whole[u].append(i)
        if ts >= t_apply:
            own[u].append(i)
    return m, m_own, m_full


def test_seen_ring_full():
    """--seen-ring full: every arm leaves out the items of the ring after the
    full stream, so --apply-from changes the state and nothing else."""
    path, rows, bias = bias_model()
    base = ["--model", path, "--input", PATH, "--format", "events-csv",
            "--protocol", "prequential", "--k", "5", "--history", "4", "--score-from", "0.5"]
    t_apply, t_score = time_at(0.5), time_at(0.5)
    whole = run(*base)
    short_own = run(*base, "--apply-from", "0.5")
    short_full = run(*base, "--apply-from", "0.5", "--seen-ring", "full")
    short_none = run(*base, "--apply-from", "0.5", "--exclude-seen", "no")
    cases = ((whole, -math.inf, False, True), (short_own, t_apply, False, True),
             (short_full, t_apply, True, True), (short_none, t_apply, False, False))
    for got, t_app, full, excl in cases:
        want, w_own, w_full = ref_seen(rows, len(rows), 5, 4, bias, t_app, t_score, full, excl)
        what = f"apply_from={t_app} full={full} exclude={excl}"
        check_metric(got["model"], want, what)
        check_metric(got["targets_in_own_ring"], w_own, what + " own ring")
        check_metric(got["targets_in_full_ring"], w_full, what + " full ring")
    # The same exclusions make the bias model's lists the same: every hit
    # on a re-seen item is counted (or not) alike with and without the
    # older events.
    assert short_full["model"] == whole["model"], (short_full["model"], whole["model"])
    assert short_full["seen_ring"] == "full" and short_own["seen_ring"] == "own"
    # The short state's own ring forgets items, so it leaves out less: it
    # gains hits on items the full ring holds (which the full state leaves
    # out), and those crowd out some of its other hits, never add to them.
    gained = short_own["targets_in_full_ring"]["hits"]
    assert whole["targets_in_full_ring"]["hits"] == 0, whole
    assert short_own["model"]["hits"] > whole["model"]["hits"], (short_own, whole)
    assert short_own["model"]["hits"] - gained <= whole["model"]["hits"], (short_own, whole)
    assert short_none["targets_in_full_ring"]["hits"] >= gained > 0, short_none


def test_seen_history_sets_the_full_ring():
    """--seen-history: the full ring (what --seen-ring full leaves out) has
    its own length, so a longer state ring (--history, what a migration
    recomputes exactly) is measured with the same items left out."""
    path, rows, bias = bias_model()
    base = ["--model", path, "--input", PATH, "--format", "events-csv",
            "--protocol", "prequential", "--k", "5", "--history", "8", "--score-from", "0.5",
            "--seen-ring", "full"]
    got, whole = run(*base, "--seen-history", "4"), run(*base)
    assert got["history"] == 8 and got["seen_history"] == 4, got
    assert got["targets_in_full_ring"]["n"] < whole["targets_in_full_ring"]["n"], (got, whole)
    for n, res in ((4, got), (8, whole)):
        want, _, w_full = ref_seen(rows, len(rows), 5, n, bias, -math.inf, time_at(0.5), True)
        check_metric(res["model"], want, f"seen ring {n}")
        check_metric(res["targets_in_full_ring"], w_full, f"seen ring {n}: full ring")


def test_seen_window():
    """--seen-window N: the lists leave out the items of the state's last N
    events only (the worker's recs.exclude.seen.events, the same code), so
    a ring of 8 with a window of 4 ranks as a ring of 4 would; with
    --seen-ring full it sets that ring's length as --seen-history does."""
    path, rows, bias = bias_model()
    base = ["--model", path, "--input", PATH, "--format", "events-csv",
            "--protocol", "prequential", "--k", "5", "--score-from", "0.5"]
    got = run(*base, "--history", "8", "--seen-window", "4", "--baseline", "popularity")
    ring4 = run(*base, "--history", "4", "--baseline", "popularity")
    ring8 = run(*base, "--history", "8")
    assert got["history"] == 8 and got["seen_window"] == 4, got
    want, _, _ = ref_seen(rows, len(rows), 5, 4, bias, -math.inf, time_at(0.5), False)
    check_metric(got["model"], want, "ring 8, window 4")
    assert got["model"] == ring4["model"] and got["popularity"] == ring4["popularity"], \
        (got, ring4)
    assert got["model"] != ring8["model"], "the window left out as much as the ring"
    full = ["--history", "8", "--seen-ring", "full"]
    by_window, by_history = run(*base, *full, "--seen-window", "4"), \
        run(*base, *full, "--seen-history", "4")
    for key in ("model", "targets_in_full_ring", "seen_history"):
        assert by_window[key] == by_history[key], (key, by_window[key], by_history[key])
    p = run(*base, "--history", "8", "--seen-window", "9", code=2)
    assert "--seen-window 9 is above --history 8" in p.stderr, p.stderr
    p = run(*base, "--seen-window", "4", "--protocol", "loo", code=2)
    assert "prequential" in p.stderr, p.stderr
    nothing = run(*base, "--history", "8", "--seen-window", "4", "--exclude-seen", "no")
    assert nothing["model"] == run(*base, "--history", "8", "--exclude-seen", "no")["model"]
    p = run(*base, *full, "--seen-window", "4", "--seen-history", "5", code=2)
    assert "disagree" in p.stderr, p.stderr


def test_seen_ring_full_equals_own_when_nothing_is_skipped():
    """Without --apply-from the state's ring is the full ring, so a real
    encoder (and a swap) scores the same hits with either exclusion."""
    m = hlm.random_model(40, 8, n_heads=3, hidden=(16,), seed=11)
    m.item_ids = [f"i{j}" for j in range(40)]
    path = os.path.join(TMP, "seen.hlm")
    hlm.write(path, m)
    base = ["--model", path, "--input", PATH, "--format", "events-csv",
            "--protocol", "prequential", "--k", "5", "--history", "6"]
    for extra in ([], ["--swap-model", path, "--swap-at", "0.5"]):
        own = run(*base, *extra, "--baseline", "popularity")
        full = run(*base, *extra, "--baseline", "popularity", "--seen-ring", "full")
        for key in ("model", "popularity", "targets_in_own_ring", "targets_in_full_ring"):
            assert own[key] == full[key], (extra, key, own[key], full[key])
        assert own["targets_in_own_ring"] == own["targets_in_full_ring"], own
        assert own["targets_in_own_ring"]["n"] > 0 and own["targets_in_own_ring"]["hits"] == 0
    p = run(*base, "--seen-ring", "full", "--exclude-seen", "no", code=2)
    assert "--exclude-seen" in p.stderr, p.stderr
    p = run(*base, "--seen-ring", "full", "--protocol", "loo", code=2)
    assert "prequential" in p.stderr, p.stderr
    p = run(*base, "--seen-ring", "all", code=2)
    assert "--seen-ring all" in p.stderr, p.stderr


def test_beauty_popularity_reproduces_published():
    ds = os.environ.get("HL_DATASETS")
    if not ds:
        return "HL_DATASETS is not set (../shared/datasets absent)"
    beauty = os.path.join(ds, "amazon-beauty", "Beauty.txt")
    got = run("--input", beauty, "--format", "seq", "--protocol", "loo",
              "--baseline", "popularity", "--k", "10")
    hr = got["popularity"]["hr"]
    assert got["users"] == 22363 and got["items"] == 12101, got
    assert abs(hr - 0.0152) <= 0.15 * 0.0152, f"popularity HR@10 {hr:.4f}, published 0.0152"
    # Counting the targets too is how the published row was computed.
    got = run("--input", beauty, "--format", "seq", "--protocol", "loo",
              "--baseline", "popularity", "--popularity-counts", "all")
    assert abs(got["popularity"]["hr"] - 0.0152) < 0.0002, got["popularity"]
    assert abs(got["popularity"]["ndcg"] - 0.0068) < 0.0002, got["popularity"]


case(test_help_and_usage)
case(test_model_of_another_catalogue_is_refused)
case(test_loo_with_no_user_to_measure_is_refused)
case(test_loo_popularity_matches_reference)
case(test_prequential_popularity_matches_reference)
case(test_model_by_bias_matches_reference)
case(test_per_target_matches_reference)
case(test_foldin_max_per_list)
case(test_swap_with_foldin)
case(test_batch_does_not_change_results)
case(test_swap_options)
case(test_seen_ring_full)
case(test_seen_history_sets_the_full_ring)
case(test_seen_window)
case(test_seen_ring_full_equals_own_when_nothing_is_skipped)
case(test_beauty_popularity_reproduces_published)
shutil.rmtree(TMP, ignore_errors=True)
sys.exit(1 if failed else 0)
