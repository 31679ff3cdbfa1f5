"""test_foldin_after_tombstone.py - an item the model does not know that an
operator's record only hid (available=false, no embedding) earns fold-in
vectors once that record is deleted (its tombstone), as README "Fold-in"
says: "after the record's tombstone, fold-in starts" again. Interactions
seen while the operator's record was in effect must not stop it for good."""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402
from test_min_interval import wait_settled  # noqa: E402
from test_items import run_items, wait_metric  # noqa: E402


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP foldin_after_tombstone: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_fat_")
    model = os.path.join(tmp, "m.hlm")
    U.make_model(model, 200, 16)
    broker = U.Broker(2, ["behaviour-events", "recommendations", "behaviour-events.dlq",
                          "items"], os.path.join(tmp, "broker.log"))
    failed = 1
    try:
        w = U.Worker(broker.bootstrap, model, os.path.join(tmp, "w.log"),
                     extra=["kafka.fetch.wait.max.ms=10", "catalogue.foldin.min.events=2",
                            "snapshot.dir=" + os.path.join(tmp, "snap")])
        log = open(os.path.join(tmp, "items.log"), "w")
        hide, delete = os.path.join(tmp, "hide.csv"), os.path.join(tmp, "del.csv")
        open(hide, "w").write("new-x,false\n")
        open(delete, "w").write("new-x,delete\n")
        t0 = 1700000000000
        rc1 = run_items(broker.bootstrap, hide, log)
        wait_metric(w, "halflife_item_updates_total", 1)
        ev = [("u%d" % i, "new-x", "PURCHASE", t0 + i, None) for i in range(3)]
        U.produce_events(broker.bootstrap, "behaviour-events", ev)
        n = wait_settled(w, len(ev))
        while_hidden = w.metric("halflife_foldin_published_total")
        rc2 = run_items(broker.bootstrap, delete, log)
        wait_metric(w, "halflife_item_updates_total", 2)
        ev = [("u%d" % i, "new-x", "PURCHASE", t0 + 100 + i, None) for i in range(3, 40)]
        U.produce_events(broker.bootstrap, "behaviour-events", ev)
        n = wait_settled(w, n + len(ev))
        after = wait_metric(w, "halflife_foldin_published_total", 1, timeout=10)
        noted = w.metric("halflife_foldin_events_total")
        ok = rc1 == 0 and rc2 == 0 and while_hidden == 0 and after >= 1
        print(("PASS" if ok else "FAIL") + " foldin_after_tombstone: items exit %s %s; "
              "published while hidden %s (want 0), after the tombstone and %d more buys %s "
              "(want >= 1); fold-in events %s" % (rc1, rc2, while_hidden, len(ev), after, noted))
        failed = 0 if ok else 1
        w.stop()
    finally:
        broker.stop()
    print("logs in", tmp)
    return failed


if __name__ == "__main__":
    sys.exit(main())
