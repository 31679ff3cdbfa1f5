"""test_foldin_e_in.py - catalogue.foldin.e_in.scale (README, "Fold-in"):
what a folded item's e_in adds to the state of a user who meets it, as
separate processes over TCP (a `halflife broker`, `halflife run`, events
and item records produced by python3-confluent-kafka with python3-avro).

The model is test_foldin.py's two clusters (one head, the encoder passes
the head's mean e_in through: q = the user's weighted mean e_in, so a
list's scores are q . e_out and tell the state apart). The item topic holds
a fold-in record for fold-1 (as another worker publishes it, under the
fold-in key) and an operator's record for op-1, both along cluster b's
axis. Per scale (0, 0.5, 1; one worker each, catalogue.foldin off so the
worker publishes nothing itself) three users view the same three a-items
at the same times, then x meets fold-1, y meets unk-1 (an item nobody
knows) and z meets op-1, at the same time. Checks:
- scale 0: x's list is y's, item for item and score for score (the
  folded item's event changed the state as an unknown item's does: no
  vector, no mass);
- every scale: x's scores are those of q = (sum of the a-items' e_in +
  scale x fold-1's e_in) / (3 + scale) (the event counts with scale of its
  weight);
- every scale: z's are those of the whole op-1 e_in (an operator's
  embedding is untouched).
"""
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402
from test_foldin import DIM, FOLDIN_KEY, K, cluster_model, item_update, produce_keyed  # noqa: E402
from test_items import lists_after, wait_metric, watermarks  # noqa: E402
from test_min_interval import wait_settled  # noqa: E402

sys.path.insert(0, U.SCHEMAS)
import hlm  # noqa: E402
import numpy as np  # noqa: E402

T0 = 1_700_000_000_000
A_ITEMS = ["a-1", "a-4", "a-7"]
B_AXIS = 1                       # item_update's vectors: 2.0 along it


def last_list(bootstrap, high, user):
    """user's newest list among those of events produced after high:
    [(item_id, score)]."""
    ds = [d for d in lists_after(bootstrap, high) if d["user_id"] == user]
    if not ds:
        return None
    d = max(ds, key=lambda d: d["source"]["offset"])
    return [(i["item_id"], i["score"]) for i in d["items"]]


def expected_ok(lst, model, q, e_b):
    """Every listed item's score is q . e_out + b: the model's, or the
    catalogue's (fold-1 and op-1: e_out e_b, bias 0)."""
    if not lst:
        return False
    row = {iid: r for r, iid in enumerate(model.item_ids)}
    for iid, score in lst:
        r = row.get(iid)
        if r is None and iid not in ("fold-1", "op-1"):
            return False
        want = float(np.dot(q, e_b)) if r is None else \
            float(np.dot(q, model.e_out[r]) + model.bias[r])
        if abs(score - want) > 1e-4 * max(1.0, abs(want)):
            return False
    return True


def phase(ck, tmp, bootstrap, model_path, model, scale, t):
    common = ["worker.threads=1", "batch.max.messages=50", "kafka.fetch.wait.max.ms=10",
              "kafka.session.timeout.ms=6000", "kafka.heartbeat.interval.ms=500",
              "recs.k=%d" % K, "catalogue.foldin=false", "snapshot.dir=" + os.path.join(tmp, "snap"),
              "catalogue.foldin.e_in.scale=%g" % scale]
    w = U.Worker(bootstrap, model_path, os.path.join(tmp, "w-%g.log" % scale), extra=common)
    wait_metric(w, "halflife_items_added", 1, labels='source="foldin"')
    wait_metric(w, "halflife_items_added", 1, labels='source="topic"')
    x, y, z = ("%s-%g" % (u, scale) for u in ("x", "y", "z"))
    evs = []
    for i, item in enumerate(A_ITEMS):
        evs += [(u, item, "VIEW", t + 10 * i, None) for u in (x, y, z)]
    t += 10 * len(A_ITEMS)
    evs += [(x, "fold-1", "VIEW", t, None), (y, "unk-1", "VIEW", t, None),
            (z, "op-1", "VIEW", t, None)]
    high = watermarks(bootstrap, "behaviour-events")
    U.produce_events(bootstrap, "behaviour-events", evs)
    wait_settled(w, len(evs))
    lx, ly, lz = (last_list(bootstrap, high, u) for u in (x, y, z))
    rows = [model.item_ids.index(i) for i in A_ITEMS]
    s_a = model.e_in[rows].sum(axis=0).astype(np.float64)
    e_b = np.zeros(DIM)
    e_b[B_AXIS] = 2.0
    q_x = (s_a + scale * e_b) / (len(A_ITEMS) + scale)
    q_z = (s_a + e_b) / (len(A_ITEMS) + 1)
    name = "scale_%g" % scale
    if scale == 0:
        ck.check(name + "_as_unknown", lx is not None and lx == ly,
                 "x (met fold-1) %s\ny (met unk-1) %s" % (lx, ly))
    ck.check(name + "_weighs_e_in", expected_ok(lx, model, q_x, e_b),
             "x's list %s, want the scores of q = (a-items + %g x fold-1's e_in) / %g"
             % (lx, scale, len(A_ITEMS) + scale))
    ck.check(name + "_operator_whole", expected_ok(lz, model, q_z, e_b),
             "z's list %s, want the scores of q = (a-items + op-1's e_in) / %d"
             % (lz, len(A_ITEMS) + 1))
    ck.check(name + "_exit_0", w.stop() == 0, "SIGTERM exit status not 0")
    return t + 1000


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP foldin_e_in: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_foldin_e_in_")
    failed = [0]

    class Ck:
        def check(self, name, ok, why):
            print(("PASS foldin_e_in.%s" % name) if ok else
                  ("FAIL foldin_e_in.%s: %s (logs in %s)" % (name, why, tmp)))
            failed[0] += 0 if ok else 1
    broker = U.Broker(1, ["behaviour-events", "recommendations", "behaviour-events.dlq", "items"],
                      os.path.join(tmp, "broker.log"))
    try:
        model_path = os.path.join(tmp, "m.hlm")
        cluster_model(model_path)
        model = hlm.read(model_path)
        produce_keyed(broker.bootstrap, [(FOLDIN_KEY + b"fold-1", item_update("fold-1", B_AXIS, 5)),
                                         (b"op-1", item_update("op-1", B_AXIS, None))])
        t = T0
        for scale in (0.0, 0.5, 1.0):
            t = phase(Ck(), tmp, broker.bootstrap, model_path, model, scale, t)
    except Exception as e:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        Ck().check("ran", False, repr(e))
    finally:
        broker.stop()
    if failed[0] == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed[0] else 0


if __name__ == "__main__":
    sys.exit(main())
