#!/usr/bin/python3
"""test_swap_catalogue.py - a live model swap with the live catalogue holding
updates (DESIGN.md sections 10 and 11), as separate processes over TCP: a
`halflife broker`, one `halflife run` serving model A, item updates
published by `halflife items`, events and lists by confluent-kafka and
python3-avro.

Model B is A with its items in reverse order, the last 50 of A dropped and
20 items A does not know added (one, Z, given the vectors of an item P that
many lists hold and a higher bias, so Z would be listed if it were not
hidden). Shared items keep A's vectors; B's rows for them all differ.

1. Under A, no catalogue: the lists show the popular items.
2. Before the swap: X hidden, Z (unknown to A) hidden, new-a added with
   P's vectors and a much higher bias. Lists after that lack X, hold new-a.
3. B renamed over model.path: the same process swaps (no deferral), the
   catalogue is rebound (log line catalogue_rebound). Every list that
   carries B's version lacks X and Z, is k long, and new-a is in lists.
   Two users made after the swap: u1 with events on P, u2 with the same
   events on new-a. u2's heads must be u1's (an added item's e_in counts)
   so every item both lists hold has the same score, and new-a is not in
   u2's list (seen, like a model item in the history) though it tops u1's.
4. After the swap: Z available again, W (a popular item) hidden: Z is in
   lists again, W in none, every list still k long.

Run: HL_HALFLIFE=build/halflife HL_BUILD=build /usr/bin/python3 tests/integration/test_swap_catalogue.py
"""
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402
from test_items import lists_after, run_items, wait_metric, watermarks  # noqa: E402
from test_min_interval import read_all, wait_settled  # noqa: E402

sys.path.insert(0, U.SCHEMAS)
import hlm  # noqa: E402

SUITE = "swap_catalogue"
N_ITEMS, N_USERS, K = 600, 200, 20
N_EVENTS = 6000


def make_b(a):
    """B: A's items reversed, the last 50 dropped, 20 new ones (new Z
    copies P's vectors, bias + 1 over P's); returns B."""
    keep = list(range(N_ITEMS - 50))[::-1]
    ids = [a.item_ids[r] for r in keep] + ["b-only-%02d" % i for i in range(20)]
    rng = np.random.default_rng(7)
    new_in = rng.standard_normal((20, a.dim)).astype(np.float32) * 0.01
    new_out = rng.standard_normal((20, a.dim)).astype(np.float32) * 0.01
    e_in = np.concatenate([a.e_in[keep], new_in]).astype(np.float32)
    e_out = np.concatenate([a.e_out[keep], new_out]).astype(np.float32)
    bias = np.concatenate([a.bias[keep], np.full(20, -1.0, np.float32)]).astype(np.float32)
    b = hlm.Model(a.dim, a.half_life_ms, a.type_weight, ids, e_in, a.layers, e_out, bias,
                  version="swap-catalogue-B")
    return b


def csv_vec(v):
    return ",".join("%.9g" % x for x in v)


def items_csv(ctx, name, lines):
    path = os.path.join(ctx["tmp"], name)
    with open(path, "w") as f:
        f.write("item_id,available,expires_at_ms\n" + "\n".join(lines) + "\n")
    return run_items(ctx["bootstrap"], path, ctx["log"])


def produce_and_lists(ctx, events):
    high = watermarks(ctx["bootstrap"], "behaviour-events")
    U.produce_events(ctx["bootstrap"], "behaviour-events", events)
    ctx["produced"] += len(events)
    wait_settled(ctx["w"], ctx["produced"])
    return lists_after(ctx["bootstrap"], high)


def names(d):
    return [i["item_id"] for i in d["items"]]


def phase1(ck, ctx):
    produce_and_lists(ctx, ctx["events"][:1500])
    by_user, _ = read_all(ctx["bootstrap"], "recommendations")
    freq = collections.Counter(i for ls in by_user.values() for i in names(ls[-1]))
    in_b = set(ctx["b"].item_ids)
    pop = [i for i, _ in freq.most_common() if i in in_b]
    ctx["x"], ctx["p"], ctx["wid"] = pop[0], pop[1], pop[2]
    ck.check("popular_items_found", freq[ctx["x"]] >= 10 and freq[ctx["wid"]] >= 5,
             "most listed %s in %d lists, third %s in %d" % (ctx["x"], freq[ctx["x"]],
                                                           ctx["wid"], freq[ctx["wid"]]))


def phase2(ck, ctx):
    a, p = ctx["a"], ctx["a"].item_ids.index(ctx["p"])
    rc = items_csv(ctx, "before.csv", [
        "%s,false" % ctx["x"], "%s,false" % ctx["z"],
        "new-a,true,,%.9g,%s,%s" % (float(a.bias[p]) + 3.0, csv_vec(a.e_in[p]),
                                    csv_vec(a.e_out[p]))])
    n = wait_metric(ctx["w"], "halflife_item_updates_total", 3)
    after = produce_and_lists(ctx, ctx["events"][1500:2500])
    bad = [d["user_id"] for d in after if ctx["x"] in names(d) or len(names(d)) != K]
    ck.check("before_swap_applied", rc == 0 and n == 3 and after and not bad
             and sum("new-a" in names(d) for d in after) >= 5,
             "items exit %s, updates %s, %d lists, %d hold X or are short" % (rc, n, len(after),
                                                                            len(bad)))


def phase3(ck, ctx):
    tmp = ctx["live"] + ".tmp"
    hlm.write(tmp, ctx["b"])
    os.rename(tmp, ctx["live"])
    swaps = wait_metric(ctx["w"], "halflife_model_swaps_total", 1)
    log = ctx["w"].log_text()
    ck.check("swapped_and_rebound", swaps == 1 and "event=catalogue_rebound" in log
             and "model_swap_deferred" not in log and log.count("event=worker_started") == 1,
             "swaps %s; log: rebound %s deferred %s" % (swaps, "event=catalogue_rebound" in log,
                                                       "model_swap_deferred" in log))
    ts = max(e[3] for e in ctx["events"]) + 60000
    pair = [(u, it, "CLICK", ts + k * 1000, None) for k in range(3)
            for u, it in (("sc-u1", ctx["p"]), ("sc-u2", "new-a"))]
    produce_and_lists(ctx, ctx["events"][2500:4500] + pair)
    by_user, _ = read_all(ctx["bootstrap"], "recommendations")
    vb = [d for ls in by_user.values() for d in ls if d["model_version"] == "swap-catalogue-B"]
    bad = [d["user_id"] for d in vb if ctx["x"] in names(d) or ctx["z"] in names(d)
           or len(names(d)) != K]
    n_new = sum("new-a" in names(d) for d in vb)
    ck.check("lists_after_swap_keep_catalogue", len(vb) >= 50 and not bad and n_new >= 5,
             "%d lists of B, %d hold X or Z or are short (%s), new-a in %d"
             % (len(vb), len(bad), bad[:3], n_new))
    check_pair(ck, by_user)


def check_pair(ck, by_user):
    """u2's events on new-a built the same heads as u1's on P."""
    if "sc-u1" not in by_user or "sc-u2" not in by_user:
        ck.check("added_item_heads_and_seen", False, "no list for sc-u1 or sc-u2")
        return
    l1 = {i["item_id"]: i["score"] for i in by_user["sc-u1"][-1]["items"]}
    l2 = {i["item_id"]: i["score"] for i in by_user["sc-u2"][-1]["items"]}
    both = set(l1) & set(l2)
    off = [(i, l1[i], l2[i]) for i in both if abs(l1[i] - l2[i]) > 1e-5 * max(1, abs(l1[i]))]
    ck.check("added_item_heads_and_seen",
             "new-a" in l1 and "new-a" not in l2 and len(both) >= K - 2 and not off,
             "new-a in u1 %s, in u2 %s, %d items in both, score mismatches %s"
             % ("new-a" in l1, "new-a" in l2, len(both), off[:3]))


def phase4(ck, ctx):
    # Since fold-in follows swaps, B's workers also publish fold-in records
    # for the items B dropped: count this phase's two from where it starts.
    n0 = ctx["w"].metric("halflife_item_updates_total")
    rc = items_csv(ctx, "after.csv", ["%s,true" % ctx["z"], "%s,false" % ctx["wid"]])
    n = wait_metric(ctx["w"], "halflife_item_updates_total", n0 + 2) - n0
    after = produce_and_lists(ctx, ctx["events"][4500:])
    bad = [d["user_id"] for d in after if ctx["wid"] in names(d) or ctx["x"] in names(d)
           or len(names(d)) != K or d["model_version"] != "swap-catalogue-B"]
    n_z = sum(ctx["z"] in names(d) for d in after)
    ck.check("updates_after_swap_apply", rc == 0 and n >= 2 and after and not bad and n_z >= 5,
             "items exit %s, updates %s, %d lists, %d hold W or X, are short or not B (%s), "
             "Z in %d" % (rc, n, len(after), len(bad), bad[:3], n_z))


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP %s.all: %s" % (SUITE, why))
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_swapcat_")
    failed = [0]

    class Ck:
        def check(self, name, ok, why):
            print(("PASS %s.%s" % (SUITE, name)) if ok else
                  ("FAIL %s.%s: %s (logs in %s)" % (SUITE, name, why, tmp)))
            failed[0] += 0 if ok else 1
    ck = Ck()
    ctx = {"tmp": tmp, "live": os.path.join(tmp, "live.hlm"), "produced": 0}
    a_path, ev_path = os.path.join(tmp, "a.hlm"), os.path.join(tmp, "e.csv")
    U.make_model(a_path, N_ITEMS, 16)
    shutil.copyfile(a_path, ctx["live"])
    U.make_events(ev_path, N_EVENTS, N_USERS, N_ITEMS)
    ctx["events"] = U.read_events_csv(ev_path)
    ctx["a"] = hlm.read(a_path)
    ctx["a"].item_ids = [i.decode() if isinstance(i, bytes) else i for i in ctx["a"].item_ids]
    broker = U.Broker(2, ["behaviour-events", "recommendations", "behaviour-events.dlq", "items"],
                      os.path.join(tmp, "broker.log"))
    ctx["bootstrap"] = broker.bootstrap
    ctx["log"] = open(os.path.join(tmp, "items_cmd.log"), "w")
    common = ["worker.threads=2", "batch.max.messages=50", "kafka.fetch.wait.max.ms=10",
              "model.check.ms=200", "snapshot.dir=" + os.path.join(tmp, "snap"),
              "recs.k=%d" % K, "recs.scoring=two-stage"]
    try:
        ctx["w"] = U.Worker(broker.bootstrap, ctx["live"], os.path.join(tmp, "w.log"), extra=common)
        wait_metric(ctx["w"], "halflife_items_loaded", 1)
        ctx["b"] = make_b(ctx["a"])
        ctx["z"] = "b-only-00"
        phase1(ck, ctx)
        p = ctx["a"].item_ids.index(ctx["p"])
        zb = ctx["b"].item_ids.index(ctx["z"])
        ctx["b"].e_out[zb] = ctx["a"].e_out[p]
        ctx["b"].e_in[zb] = ctx["a"].e_in[p]
        ctx["b"].bias[zb] = ctx["a"].bias[p] + 1.0
        phase2(ck, ctx)
        phase3(ck, ctx)
        phase4(ck, ctx)
        rc = ctx["w"].stop()
        ck.check("exit_0", rc == 0, "SIGTERM exit status %s" % rc)
    except Exception as e:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        ck.check("ran", False, repr(e))
    finally:
        if ctx.get("w") is not None:
            ctx["w"].stop()
        broker.stop()
        ctx["log"].close()
    if failed[0] == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed[0] else 0


if __name__ == "__main__":
    sys.exit(main())
