"""test_foldin_full.py - a catalogue full of fold-in items gives their slots
up (README "Fold-in", "When the catalogue is full"). Fold-in records are
deleted by no one, so before this they held catalogue.max.new.items for
good: every new id was then refused as catalogue_full, an operator's add
included, and fold-in learnt no new item.

With catalogue.max.new.items=5, 12 items the model does not know are each
bought by 4 users (fold-in publishes each at 2 and 4 interactions):
- no fold-in record is refused as catalogue_full; at least 7 fold-in items
  gave their slot up (halflife_items_foldin_evicted_total), 5 are listed;
- the worker tombstoned the fold-in key of each item it evicted (so the
  topic says what its catalogue did), each tombstone naming the record it
  evicts (halflife.evicts.offset: a lagging worker's must not delete a
  newer record, test_foldin_after_tombstone.py);
- an operator's add of a new item, with every slot held by fold-in items,
  is applied, not refused;
- a worker started afterwards, reading the topic from its start (two
  partitions: records and the tombstones that made room for them are read
  in another order), lists the same: 4 fold-in items and the operator's.

Then, on a topic of one partition with catalogue.max.new.items=2: a
fold-in item F, then three operator's adds in one burst. The worker gives
F up for the second add and refuses the third as catalogue_full, so F's
tombstone lands after the third. A worker started afterwards must refuse
the third too and list the same 2 adds: before, it took the second and
third into its loading slack while F was kept, then dropped F at its
tombstone and listed 3 adds, more than the bound, for good.
"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402
from test_items import run_items, wait_metric  # noqa: E402
from test_min_interval import wait_settled  # noqa: E402

DIM, MAX_NEW, ITEMS, BUYERS = 16, 5, 12, 4
FOLDIN_KEY = b"\xfffoldin:"
FULL = 'reason="catalogue_full"'


def foldin_tombstones(bootstrap, want, timeout=15):
    """The item topic's tombstones under fold-in keys, read until there are
    want of them (they are sent while the worker runs) or timeout; and how
    many of them do not name, in header halflife.evicts.offset, a record of
    their key read before them in their partition (the record the eviction
    gave up)."""
    from confluent_kafka import Consumer, TopicPartition
    deadline, got, unnamed = time.time() + timeout, set(), 0
    while time.time() < deadline:
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "ff-%d" % time.time_ns()})
        parts = sorted(c.list_topics("items", timeout=10).topics["items"].partitions)
        hi = {p: c.get_watermark_offsets(TopicPartition("items", p), timeout=10)[1]
              for p in parts}
        c.assign([TopicPartition("items", p, 0) for p in parts])
        n, got, unnamed, seen = 0, set(), 0, set()
        while n < sum(hi.values()) and time.time() < deadline:
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            n += 1
            if msg.value() is not None:
                seen.add((msg.key(), msg.partition(), msg.offset()))
            elif msg.key().startswith(FOLDIN_KEY):
                got.add(msg.key()[len(FOLDIN_KEY):].decode())
                at = dict(msg.headers() or []).get("halflife.evicts.offset")
                unnamed += at is None or (msg.key(), msg.partition(), int(at)) not in seen
        c.close()
        if len(got) >= want:
            break
        time.sleep(0.2)
    return got, unnamed


def op_csv(path, ids):
    with open(path, "w") as f:
        f.write("item_id,available,expires_at_ms\n")
        for i in ids:
            f.write("%s,true,,0,%s,%s\n" % (i, ",".join(["0.5"] * DIM), ",".join(["0.5"] * DIM)))


def restart_refuses_as_running(tmp, model):
    """The one-partition check in the docstring; True when it passed."""
    broker = U.Broker(1, ["behaviour-events", "recommendations", "behaviour-events.dlq",
                          "items"], os.path.join(tmp, "broker1.log"))
    try:
        cfg = ["kafka.fetch.wait.max.ms=10", "catalogue.foldin.min.events=2",
               "catalogue.max.new.items=2"]
        w = U.Worker(broker.bootstrap, model, os.path.join(tmp, "w1.log"),
                     extra=cfg + ["snapshot.dir=" + os.path.join(tmp, "snap1")])
        U.produce_events(broker.bootstrap, "behaviour-events",
                         [("b%d" % b, "fresh-f", "PURCHASE", 1700000000000 + b, None)
                          for b in range(2)])
        fold = wait_metric(w, "halflife_items_added", 1, timeout=15, labels='source="foldin"')
        ops = os.path.join(tmp, "ops3.csv")
        op_csv(ops, ["op-1", "op-2", "op-3"])
        rc = run_items(broker.bootstrap, ops, open(os.path.join(tmp, "items1.log"), "w"))
        full = wait_metric(w, "halflife_item_updates_invalid_total", 1, timeout=15, labels=FULL)
        tomb, unnamed = foldin_tombstones(broker.bootstrap, 1)
        ran = (w.metric("halflife_items_added", 'source="foldin"'),
               w.metric("halflife_items_added", 'source="topic"'), full)
        w.stop()
        w2 = U.Worker(broker.bootstrap, model, os.path.join(tmp, "w1b.log"),
                      extra=cfg + ["snapshot.dir=" + os.path.join(tmp, "snap1b")])
        loaded = wait_metric(w2, "halflife_items_loaded", 1, timeout=20)
        again = (w2.metric("halflife_items_added", 'source="foldin"'),
                 w2.metric("halflife_items_added", 'source="topic"'),
                 w2.metric("halflife_item_updates_invalid_total", FULL))
        w2.stop()
    finally:
        broker.stop()
    ok = fold == 1 and rc == 0 and tomb == {"fresh-f"} and unnamed == 0 and ran == (0, 2, 1) \
        and loaded == 1 and again == ran
    print(("PASS" if ok else "FAIL") + " foldin_full: one partition, max 2: fold-in listed %s "
          "(want 1), items exit %s, fold-in keys tombstoned %s (want fresh-f), not naming the record evicted %d "
          "(want 0); running: fold-in, operator's listed and catalogue_full %s (want (0, 2, 1)); "
          "restarted: loaded %s, %s (want the same)" % (fold, rc, sorted(tomb), unnamed, ran,
                                                        loaded, again))
    return ok


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP foldin_full: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_ffull_")
    model = os.path.join(tmp, "m.hlm")
    U.make_model(model, 200, DIM)
    broker = U.Broker(2, ["behaviour-events", "recommendations", "behaviour-events.dlq",
                          "items"], os.path.join(tmp, "broker.log"))
    failed = 1
    try:
        w = U.Worker(broker.bootstrap, model, os.path.join(tmp, "w.log"),
                     extra=["kafka.fetch.wait.max.ms=10", "catalogue.foldin.min.events=2",
                            "catalogue.max.new.items=%d" % MAX_NEW,
                            "snapshot.dir=" + os.path.join(tmp, "snap")])
        t0 = 1700000000000
        # item by item, so each is published (and the catalogue full) in turn
        ev = [("u%d" % (i * BUYERS + b), "fresh-%02d" % i, "PURCHASE", t0 + 10 * (i * BUYERS + b),
               None) for i in range(ITEMS) for b in range(BUYERS)]
        U.produce_events(broker.bootstrap, "behaviour-events", ev)
        n = wait_settled(w, len(ev))
        want_ev = ITEMS - MAX_NEW
        evicted = wait_metric(w, "halflife_items_foldin_evicted_total", want_ev, timeout=15)
        full = w.metric("halflife_item_updates_invalid_total", FULL)
        listed = w.metric("halflife_items_added", 'source="foldin"')
        tomb, unnamed = foldin_tombstones(broker.bootstrap, int(evicted))
        ops = os.path.join(tmp, "op.csv")
        op_csv(ops, ["op-new"])
        rc = run_items(broker.bootstrap, ops, open(os.path.join(tmp, "items.log"), "w"))
        op = wait_metric(w, "halflife_items_added", 1, timeout=15, labels='source="topic"')
        full_after = w.metric("halflife_item_updates_invalid_total", FULL)
        evicted_after = w.metric("halflife_items_foldin_evicted_total")
        fold_after = w.metric("halflife_items_added", 'source="foldin"')
        w.stop()
        w2 = U.Worker(broker.bootstrap, model, os.path.join(tmp, "w2.log"),
                      extra=["catalogue.max.new.items=%d" % MAX_NEW,
                             "snapshot.dir=" + os.path.join(tmp, "snap2")])
        loaded = wait_metric(w2, "halflife_items_loaded", 1, timeout=20)
        again = (w2.metric("halflife_items_added", 'source="foldin"'),
                 w2.metric("halflife_items_added", 'source="topic"'),
                 w2.metric("halflife_item_updates_invalid_total", FULL))
        w2.stop()
        ok = (full == 0 and evicted >= want_ev and listed == MAX_NEW and len(tomb) >= want_ev
              and len(tomb) == evicted and unnamed == 0 and rc == 0 and op == 1
              and full_after == 0
              and evicted_after == evicted + 1 and fold_after == MAX_NEW - 1 and loaded == 1
              and again == (fold_after, 1, 0))
        print(("PASS" if ok else "FAIL") + " foldin_full: %d events settled; "
              "refused as catalogue_full %s (want 0), fold-in items evicted %s (want >= %d), "
              "listed %s (want %d), fold-in keys tombstoned %d (want = evicted), not naming "
              "the record evicted %d (want 0); "
              "operator's add with every slot taken: items exit %s, listed %s (want 1), "
              "catalogue_full %s (want 0), evicted %s (want %s), fold-in listed %s (want %d); "
              "restarted: loaded %s, fold-in, operator's listed and catalogue_full %s (want "
              "(%s, 1, 0))"
              % (n, full, evicted, want_ev, listed, MAX_NEW, len(tomb), unnamed, rc, op, full_after,
                 evicted_after, evicted + 1, fold_after, MAX_NEW - 1, loaded, again, fold_after))
        failed = 0 if ok else 1
    finally:
        broker.stop()
    failed |= 0 if restart_refuses_as_running(tmp, model) else 1
    print("logs in", tmp)
    return failed


if __name__ == "__main__":
    sys.exit(main())
