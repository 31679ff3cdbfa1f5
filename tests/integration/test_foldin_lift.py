"""test_foldin_lift.py - catalogue.foldin.lift decides what a worker
publishes and lists (tests/quality/RESULTS.md, "The lift"), over TCP:
a `halflife broker` and `halflife run` per phase, events produced by
python3-confluent-kafka with python3-avro, the item topic and the lists
read back with python3-avro.

The model has three axes: p-* items along axis 0 with norm 1.6 (what every
user views: the "popular" direction), a-* along axis 1 and b-* along axis 2
(norm 1). One head, the encoder copies the head's mean e_in, so a user's
query is the mean e_in of what they viewed: cluster a's users about
(0.8, 0.5, 0), cluster b's (0.8, 0, 0.5). The stream, the same in both
phases:
1. every user views two p-items and two items of its cluster;
2. twelve other new items (bg-*), each bought by two users of each cluster,
   four interactions, one fewer than min.events: never published, they are
   only the other new items' users, the lift's baseline;
3. new-1 is bought by MIN_EVENTS users of cluster a: published.
Its users' mean query ranks the p-items first (1.28 against 0.5): with
lift 0 new-1 borrows their vectors, e_out along axis 0, and lands in the
lists of cluster b too. With lift 1 the baseline (about (0.8, 0.25, 0.25))
is taken off first, what sets new-1's users apart is axis 1, new-1's e_out
points along a, and no cluster b list holds it. Each phase checks its own
outcome, so the lift 0 phase shows the scenario is one the lift decides.
A third phase, lift 1 with catalogue.foldin.distinct=0.95: the lifted
mean query keeps about 0.4 of the raw one's length (every user shares the
p direction), so new-1 is held back (halflife_foldin_held_total), no
fold-in record goes out and no list holds it.
"""
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402
from test_foldin import axis_model, item_records, last_lists, share  # noqa: E402
from test_items import wait_metric, watermarks  # noqa: E402
from test_min_interval import wait_settled  # noqa: E402

import numpy as np  # noqa: E402

DIM, PER_AXIS, USERS, MIN_EVENTS, K, N_BG = 8, 20, 20, 5, 10, 12
T0 = 1_700_000_000_000
AXES = (("p", 0, 1.6), ("a", 1, 1.0), ("b", 2, 1.0))


def axes_model(path):
    axis_model(path, AXES, PER_AXIS, 0.15, 11, "axes")


def stream(rng):
    """(views, buys of the bg items, buys of new-1) and the cluster users."""
    ua = ["u-a-%d" % i for i in range(USERS)]
    ub = ["u-b-%d" % i for i in range(USERS)]
    t, views = T0, []
    for us, c in ((ua, "a"), (ub, "b")):
        for u in us:
            for item in ("p-%d" % rng.integers(PER_AXIS), "p-%d" % rng.integers(PER_AXIS),
                         "%s-%d" % (c, rng.integers(PER_AXIS)),
                         "%s-%d" % (c, rng.integers(PER_AXIS))):
                views.append((u, item, "VIEW", t, None))
                t += 10
    bg = []
    for j in range(N_BG):
        for u in (ua[j % USERS], ua[(j + 7) % USERS], ub[j % USERS], ub[(j + 7) % USERS]):
            bg.append((u, "bg-%d" % j, "PURCHASE", t, None))
            t += 10
    new = [(u, "new-1", "PURCHASE", t + 10 * i, None) for i, u in enumerate(ua[:MIN_EVENTS])]
    return views, bg, new, ua, ub, t + 1000


def phase(ck, tmp, lift, distinct=0.0):
    name = "lift_%g" % lift + ("_distinct_%g" % distinct if distinct else "")
    broker = U.Broker(2, ["behaviour-events", "recommendations", "behaviour-events.dlq", "items"],
                      os.path.join(tmp, "broker-%s.log" % name))
    try:
        bootstrap = broker.bootstrap
        model = os.path.join(tmp, "m.hlm")
        common = ["worker.threads=2", "batch.max.messages=50", "kafka.fetch.wait.max.ms=10",
                  "kafka.session.timeout.ms=6000", "kafka.heartbeat.interval.ms=500",
                  "snapshot.dir=" + os.path.join(tmp, "snap-" + name), "recs.k=%d" % K,
                  "catalogue.foldin.min.events=%d" % MIN_EVENTS,
                  "catalogue.foldin.lift=%g" % lift, "catalogue.foldin.distinct=%g" % distinct]
        w = U.Worker(bootstrap, model, os.path.join(tmp, "w-%s.log" % name), extra=common)
        views, bg, new, ua, ub, t = stream(np.random.default_rng(5))
        U.produce_events(bootstrap, "behaviour-events", views + bg)
        n = wait_settled(w, len(views) + len(bg))
        U.produce_events(bootstrap, "behaviour-events", new)
        n = wait_settled(w, n + len(new))
        if distinct:
            held(ck, name, w, bootstrap, ua + ub, t)
            return
        wait_metric(w, "halflife_items_added", 1, labels='source="foldin"')
        fold = [r for r in item_records(bootstrap) if r["foldin"] is not None]
        ok = len(fold) == 1 and fold[0]["item_id"] == "new-1" and fold[0]["embedding"]
        e_out = np.array(fold[0]["embedding"]["e_out"]) if ok else np.zeros(DIM)
        ck.check(name + "_published_new_1_only", ok,
                 "fold-in records %s (want new-1 alone: the bg items stay below min.events)"
                 % [(r["item_id"], r["foldin"]) for r in fold])
        high = watermarks(bootstrap, "behaviour-events")
        again = [(u, "p-%d" % (i % PER_AXIS), "VIEW", t + 10 * i, None)
                 for i, u in enumerate(ua[MIN_EVENTS:] + ub)]
        U.produce_events(bootstrap, "behaviour-events", again)
        wait_settled(w, n + len(again))
        got_b, n_b = share(last_lists(bootstrap, high), ub, "new-1")
        along = "a (axis 1)" if lift > 0 else "p (axis 0)"
        want_axis = abs(e_out[1]) > 2 * abs(e_out[0]) if lift > 0 else \
            e_out[0] > 2 * abs(e_out[1])
        ck.check(name + "_e_out_along_" + along.split()[0], ok and want_axis,
                 "new-1's e_out %s, want it along %s" % (np.round(e_out, 3).tolist(), along))
        lists_ok = n_b >= USERS - 2 and (got_b == 0 if lift > 0 else got_b > 0)
        ck.check(name + "_cluster_b_lists", lists_ok,
                 "new-1 in %d of %d lists of cluster b (want %s)"
                 % (got_b, n_b, "none" if lift > 0 else "some: it borrowed p's vectors"))
        ck.check(name + "_exit_0", w.stop() == 0, "SIGTERM exit status not 0")
    finally:
        broker.stop()


def held(ck, name, w, bootstrap, us, t):
    """The distinct gate's phase: new-1 held back, published nowhere."""
    n_held = wait_metric(w, "halflife_foldin_held_total", 1)
    fold = [r for r in item_records(bootstrap) if r["foldin"] is not None]
    high = watermarks(bootstrap, "behaviour-events")
    again = [(u, "p-%d" % (i % PER_AXIS), "VIEW", t + 10 * i, None) for i, u in enumerate(us)]
    n = w.metric("halflife_events_consumed_total")
    U.produce_events(bootstrap, "behaviour-events", again)
    wait_settled(w, n + len(again))
    got, n_l = share(last_lists(bootstrap, high), us, "new-1")
    ck.check(name + "_held", n_held >= 1 and not fold and n_l >= len(us) - 2 and got == 0,
             "held %s (want >= 1), fold-in records %s (want none), new-1 in %d of %d lists"
             % (n_held, [r["item_id"] for r in fold], got, n_l))
    ck.check(name + "_exit_0", w.stop() == 0, "SIGTERM exit status not 0")


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP foldin_lift: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_foldin_lift_")
    failed = [0]

    class Ck:
        def check(self, name, ok, why):
            print(("PASS foldin_lift.%s" % name) if ok else
                  ("FAIL foldin_lift.%s: %s (logs in %s)" % (name, why, tmp)))
            failed[0] += 0 if ok else 1
    try:
        axes_model(os.path.join(tmp, "m.hlm"))
        for lift, distinct in ((0.0, 0.0), (1.0, 0.0), (1.0, 0.95)):
            phase(Ck(), tmp, lift, distinct)
    except Exception as e:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        Ck().check("ran", False, repr(e))
    if failed[0] == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed[0] else 0


if __name__ == "__main__":
    sys.exit(main())
