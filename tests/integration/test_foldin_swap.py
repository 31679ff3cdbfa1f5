"""test_foldin_swap.py - fold-in goes on after a live model swap (fold.h,
README "Fold-in across a model swap"), as separate processes over TCP: a
`halflife broker`, one `halflife run` that swaps from model A to model B
without a restart, events produced by python3-confluent-kafka with
python3-avro, the item topic and the lists read back with python3-avro.

A and B are test_foldin_lift's three-axis model (p-* items along axis 0,
the popular direction; a-* along axis 1; b-* along axis 2) with different
noise, so two fingerprints of one geometry. Under A: every user views two
p-items and two of its cluster's, twelve other new items (bg-*) stay below
min.events, and new-1, bought by MIN_EVENTS users of cluster a, is
published. Then B is renamed over model.path and goes live in the same
process. The same kind of stream under B (new bg2-* items, then new-2
bought by MIN_EVENTS other users of cluster a) must fold new-2 in with B's
queries: a fold-in record for new-2, its e_out along a (the lift works
from B's own baseline: the bg2 items' users), no cluster b list holding
it, the lists after it made by B, and no note skipped. Before fold-in
followed swaps, every unknown-item event after the swap was counted in
halflife_foldin_skipped_total and new-2 was never published.
"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402
from test_foldin import axis_model, item_records, share  # noqa: E402
from test_foldin_lift import AXES, K, MIN_EVENTS, N_BG, PER_AXIS, USERS, DIM  # noqa: E402
from test_items import lists_after, wait_metric, watermarks  # noqa: E402
from test_min_interval import wait_settled  # noqa: E402

import numpy as np  # noqa: E402

T0 = 1_700_000_000_000


def era(rng, ua, ub, t, bg, new, buyers):
    """Views of p-items and the cluster's own, bg items bought by two users
    of each cluster (one fewer than min.events in all), then `new` bought by
    `buyers`. Returns (events before new, new's, the next free time)."""
    ev = []
    for us, c in ((ua, "a"), (ub, "b")):
        for u in us:
            for item in ("p-%d" % rng.integers(PER_AXIS), "p-%d" % rng.integers(PER_AXIS),
                         "%s-%d" % (c, rng.integers(PER_AXIS)),
                         "%s-%d" % (c, rng.integers(PER_AXIS))):
                ev.append((u, item, "VIEW", t, None))
                t += 10
    for j in range(N_BG):
        for u in (ua[j % USERS], ua[(j + 7) % USERS], ub[j % USERS], ub[(j + 7) % USERS]):
            ev.append((u, "%s-%d" % (bg, j), "PURCHASE", t, None))
            t += 10
    buys = [(u, new, "PURCHASE", t + 10 * i, None) for i, u in enumerate(buyers)]
    return ev, buys, t + 1000


def fold_records(bootstrap):
    return [r for r in item_records(bootstrap) if r["foldin"] is not None]


def body(ck, tmp, bootstrap):
    live = os.path.join(tmp, "m.hlm")
    axis_model(live, AXES, PER_AXIS, 0.15, 11, "axes-A")
    common = ["worker.threads=2", "batch.max.messages=50", "kafka.fetch.wait.max.ms=10",
              "kafka.session.timeout.ms=6000", "kafka.heartbeat.interval.ms=500",
              "snapshot.dir=" + os.path.join(tmp, "snap"), "recs.k=%d" % K,
              "model.check.ms=200", "catalogue.foldin.min.events=%d" % MIN_EVENTS]
    w = U.Worker(bootstrap, live, os.path.join(tmp, "w.log"), extra=common)
    rng = np.random.default_rng(7)
    ua = ["u-a-%d" % i for i in range(USERS)]
    ub = ["u-b-%d" % i for i in range(USERS)]
    ev, buys, t = era(rng, ua, ub, T0, "bg", "new-1", ua[:MIN_EVENTS])
    U.produce_events(bootstrap, "behaviour-events", ev)
    n = wait_settled(w, len(ev))
    U.produce_events(bootstrap, "behaviour-events", buys)
    n = wait_settled(w, n + len(buys))
    added = wait_metric(w, "halflife_items_added", 1, labels='source="foldin"')
    ck.check("published_under_a", added >= 1 and
             [r["item_id"] for r in fold_records(bootstrap)] == ["new-1"],
             "items added by fold-in %s, fold-in records %s (want new-1 alone)"
             % (added, [r["item_id"] for r in fold_records(bootstrap)]))

    tmp_model = live + ".tmp"                     # the documented way: rename over
    axis_model(tmp_model, AXES, PER_AXIS, 0.15, 12, "axes-B")
    os.rename(tmp_model, live)
    swaps = wait_metric(w, "halflife_model_swaps_total", 1)
    log = w.log_text()
    ck.check("swapped_and_rebound", swaps == 1 and "event=foldin_rebound" in log
             and log.count("event=worker_started") == 1,
             "swaps %s, foldin_rebound logged %s" % (swaps, "event=foldin_rebound" in log))
    skipped0 = w.metric("halflife_foldin_skipped_total")

    ev, buys, t = era(rng, ua, ub, t, "bg2", "new-2", ua[MIN_EVENTS:2 * MIN_EVENTS])
    U.produce_events(bootstrap, "behaviour-events", ev)
    n = wait_settled(w, n + len(ev))
    U.produce_events(bootstrap, "behaviour-events", buys)
    n = wait_settled(w, n + len(buys))
    added = wait_metric(w, "halflife_items_added", 2, labels='source="foldin"')
    fold = fold_records(bootstrap)
    new2 = [r for r in fold if r["item_id"] == "new-2"]
    ok = len(new2) == 1 and new2[0]["embedding"] is not None
    e_out = np.array(new2[0]["embedding"]["e_out"]) if ok else np.zeros(DIM)
    skipped = w.metric("halflife_foldin_skipped_total") - skipped0
    ck.check("published_under_b", ok and added >= 2 and skipped == 0,
             "fold-in records %s (want new-1 and new-2), items added by fold-in %s, "
             "notes skipped since the swap %s (want 0)"
             % ([(r["item_id"], r["foldin"]) for r in fold], added, skipped))
    ck.check("e_out_along_a", ok and abs(e_out[1]) > 2 * abs(e_out[0])
             and abs(e_out[1]) > 2 * abs(e_out[2]),
             "new-2's e_out %s, want it along a (axis 1): B's lift baseline"
             % np.round(e_out, 3).tolist())

    high = watermarks(bootstrap, "behaviour-events")
    again = [(u, "p-%d" % (i % PER_AXIS), "VIEW", t + 10 * i, None)
             for i, u in enumerate(ua[2 * MIN_EVENTS:] + ub)]
    U.produce_events(bootstrap, "behaviour-events", again)
    wait_settled(w, n + len(again))
    after = lists_after(bootstrap, high)
    last = {}
    for d in sorted(after, key=lambda d: d["source"]["offset"]):
        last[d["user_id"]] = [i["item_id"] for i in d["items"]]
    got_b, n_b = share(last, ub, "new-2")
    versions = sorted({d["model_version"] for d in after})
    ck.check("lists_by_b_without_new_2_in_cluster_b",
             n_b >= USERS - 2 and got_b == 0 and versions == ["axes-B"],
             "new-2 in %d of %d lists of cluster b (want none), list versions %s (want axes-B)"
             % (got_b, n_b, versions))
    ck.check("exit_0", w.stop() == 0, "SIGTERM exit status not 0")


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP foldin_swap: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_foldin_swap_")
    failed = []

    class Ck:
        def check(self, name, ok, why):
            print(("PASS foldin_swap.%s" % name) if ok else
                  ("FAIL foldin_swap.%s: %s (logs in %s)" % (name, why, tmp)))
            if not ok:
                failed.append(name)
    ck = Ck()
    broker = U.Broker(2, ["behaviour-events", "recommendations", "behaviour-events.dlq", "items"],
                      os.path.join(tmp, "broker.log"))
    try:
        U.run_guarded(ck.check, body, ck, tmp, broker.bootstrap)
    finally:
        broker.stop()
    return U.end_run(tmp, failed)


if __name__ == "__main__":
    sys.exit(main())
