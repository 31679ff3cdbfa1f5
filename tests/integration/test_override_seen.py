"""test_override_seen.py - an item the model knows, whose e_out and bias an
operator's embedding overrides, stays out of the lists of users who
interacted with it (recs.exclude.seen), as it does without the override.

The override makes the item a side row of the catalogue (its model row
masked); the user's ring names it by its model row."""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402
from test_min_interval import read_all, wait_settled  # noqa: E402
from test_items import run_items, wait_metric  # noqa: E402

sys.path.insert(0, U.SCHEMAS)
import hlm  # noqa: E402


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP override_seen: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_ovseen_")
    model_path = os.path.join(tmp, "m.hlm")
    U.make_model(model_path, 200, 16)
    m = hlm.read(model_path)
    ids = [i.decode() if isinstance(i, bytes) else i for i in m.item_ids]
    x, row = ids[7], 7
    cat = os.path.join(tmp, "cat.csv")
    with open(cat, "w") as f:     # X's own vectors, a bias that tops every list
        f.write("%s,true,,200,%s,%s\n" % (x, ",".join("%.9g" % v for v in m.e_in[row]),
                                           ",".join("%.9g" % v for v in m.e_out[row])))
    broker = U.Broker(2, ["behaviour-events", "recommendations", "behaviour-events.dlq",
                          "items"], os.path.join(tmp, "broker.log"))
    failed = 0
    try:
        w = U.Worker(broker.bootstrap, model_path, os.path.join(tmp, "w.log"),
                     extra=["kafka.fetch.wait.max.ms=10", "schemas.dir=" + U.SCHEMAS,
                            "snapshot.dir=" + os.path.join(tmp, "snap")])
        log = open(os.path.join(tmp, "items.log"), "w")
        rc = run_items(broker.bootstrap, cat, log)
        n = wait_metric(w, "halflife_item_updates_total", 1)
        t0 = 1700000000000
        ev = [("buyer", x, "PURCHASE", t0, None), ("other", ids[3], "CLICK", t0 + 1, None),
              ("buyer", ids[3], "CLICK", t0 + 2, None)]
        U.produce_events(broker.bootstrap, "behaviour-events", ev)
        wait_settled(w, len(ev))
        by_user, _ = read_all(broker.bootstrap, "recommendations")
        buyer = [[i["item_id"] for i in d["items"]] for d in by_user.get("buyer", [])]
        other = [[i["item_id"] for i in d["items"]] for d in by_user.get("other", [])]
        ok_setup = rc == 0 and n == 1 and other and x in other[-1]
        print(("PASS" if ok_setup else "FAIL") + " override_seen.override_listed: items rc %s, "
              "updates %s, X in other's list: %s" % (rc, n, bool(other) and x in other[-1]))
        bad = bool(buyer) and x in buyer[-1]
        print(("FAIL" if bad or not buyer else "PASS") + " override_seen.seen_excluded: buyer's "
              "last list %s X (%s) it purchased: %s" % ("holds" if bad else "lacks", x,
                                                        buyer[-1][:5] if buyer else None))
        failed = (not ok_setup) + (bad or not buyer)
        w.stop()
    finally:
        broker.stop()
    print("logs in", tmp)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
