"""test_foldin_after_tombstone.py - an item the model does not know that an
operator's record only hid (available=false, no embedding) earns fold-in
vectors once that record is deleted (its tombstone), as README "Fold-in"
says: "after the record's tombstone, fold-in starts" again. Interactions
seen while the operator's record was in effect must not stop it for good.

Then a stale fold-in tombstone (core/catalogue.h, "A stale tombstone"): a
worker lagging behind the item topic gives stale-x's slot up and tombstones
its fold-in key after a newer record of stale-x. Kafka has no conditional
delete, so before the tombstone named the record it evicts
(halflife.evicts.offset), every reader deleted the newer record, and
compaction later too. Records written by hand, all in partition 0:
record (2 events), record (4 events), tombstone naming the first.
- the running worker ignores it (counted), keeps stale-x, and sends its
  record again after it, so the key's last message is a record;
- a worker started afterwards, reading from the start, keeps stale-x too
  and sends nothing more (the running worker answered already);
- a tombstone naming the key's newest record deletes it in both;
- with both workers running, stale tombstones of four more items: each
  worker ignores each one, and the records sent again after them are one
  per item, or a few: each worker waits a random delay of its own and
  sends nothing once it has read another's copy. Before, every running
  worker sent its copy at once: two workers, two records per tombstone.
"""
import io
import os
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402
from test_min_interval import wait_settled  # noqa: E402
from test_items import run_items, wait_metric  # noqa: E402


DIM = 16
STALE_KEY = b"\xfffoldin:stale-x"
ADDED, FOLD = "halflife_items_added", 'source="foldin"'
STALE = "halflife_items_foldin_stale_tombstones_total"


def fold_record(events, item="stale-x"):
    """item's fold-in ItemUpdate (Confluent framing, id 3)."""
    v = [1.0] + [0.0] * (DIM - 1)
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", 3))
    U.avro.io.DatumWriter(U.load_schema("item_update.avsc")).write(
        {"item_id": item, "available": True, "expires_at": None,
         "embedding": {"e_in": v, "e_out": v, "bias": 0.0}, "foldin": {"events": events}},
        U.avro.io.BinaryEncoder(buf))
    return buf.getvalue()


def produce_stale_key(bootstrap, value, evicts=None, key=STALE_KEY):
    """One message under key (stale-x's fold-in key) to partition 0; its offset."""
    from confluent_kafka import Producer
    p, got = Producer({"bootstrap.servers": bootstrap}), []
    headers = None if evicts is None else [("halflife.evicts.offset", str(evicts).encode())]
    p.produce("items", key=key, value=value, partition=0, headers=headers,
              on_delivery=lambda err, msg: got.append(-1 if err else msg.offset()))
    p.flush(30)
    return got[0] if got else -1


def stale_key_messages(bootstrap, want, timeout=10):
    """(offset, is a record) of stale-x's fold-in key in partition 0, read
    until there are want of them or timeout."""
    from confluent_kafka import Consumer, TopicPartition
    deadline, got = time.time() + timeout, []
    while time.time() < deadline:
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "fat-%d" % time.time_ns()})
        hi = c.get_watermark_offsets(TopicPartition("items", 0), timeout=10)[1]
        c.assign([TopicPartition("items", 0, 0)])
        n, got = 0, []
        while n < hi and time.time() < deadline:
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            n += 1
            if msg.key() == STALE_KEY:
                got.append((msg.offset(), msg.value() is not None))
        c.close()
        if len(got) >= want:
            break
        time.sleep(0.2)
    return got


def partition0(bootstrap):
    """Every (offset, key, is a record) of the item topic's partition 0."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "fat-%d" % time.time_ns()})
    hi = c.get_watermark_offsets(TopicPartition("items", 0), timeout=10)[1]
    c.assign([TopicPartition("items", 0, 0)])
    got, deadline = [], time.time() + 10
    while len(got) < hi and time.time() < deadline:
        msg = c.poll(0.5)
        if msg is not None and not msg.error():
            got.append((msg.offset(), msg.key(), msg.value() is not None))
    c.close()
    return got


def resends(bootstrap, tombstones):
    """Records of each key after its tombstone's offset (tombstones: key
    -> offset)."""
    n = dict.fromkeys(tombstones, 0)
    for off, key, record in partition0(bootstrap):
        if key in tombstones and record and off > tombstones[key]:
            n[key] += 1
    return n


def two_readers(bootstrap, w, w2):
    """Stale tombstones read by two running workers: one copy each, or a few."""
    items = ["twin-%d" % i for i in range(4)]
    keys = {i: b"\xfffoldin:" + i.encode() for i in items}
    base = (w.metric(STALE), w2.metric(STALE))
    first = {}
    for i in items:
        first[i] = produce_stale_key(bootstrap, fold_record(2, i), key=keys[i])
        produce_stale_key(bootstrap, fold_record(4, i), key=keys[i])
    tombs = {keys[i]: produce_stale_key(bootstrap, None, evicts=first[i], key=keys[i])
             for i in items}
    stale = (wait_metric(w, STALE, base[0] + len(items), timeout=10),
             wait_metric(w2, STALE, base[1] + len(items), timeout=10))
    deadline = time.time() + 15
    while time.time() < deadline and min(resends(bootstrap, tombs).values()) < 1:
        time.sleep(0.3)
    time.sleep(6)           # past every worker's delay: a late copy would be there
    n = resends(bootstrap, tombs)
    ok = (stale == (base[0] + len(items), base[1] + len(items)) and min(n.values()) >= 1
          and sum(n.values()) <= len(items) + 1)
    print(("PASS" if ok else "FAIL") + " foldin_after_tombstone.stale_two_readers: stale "
          "tombstones counted %s (want %s), records sent again after each %s (want 1 each, "
          "%d in all at most)" % (stale, (base[0] + len(items), base[1] + len(items)),
                                  sorted(n.values()), len(items) + 1))
    return ok


def wait_below(workers, want, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = [x.metric(ADDED, FOLD) for x in workers]
        if all(g <= want for g in got):
            return got
        time.sleep(0.2)
    return got


def stale_tombstone(tmp, bootstrap, model, w):
    f0 = w.metric(ADDED, FOLD)
    o1 = produce_stale_key(bootstrap, fold_record(2))
    produce_stale_key(bootstrap, fold_record(4))
    held = wait_metric(w, ADDED, f0 + 1, timeout=10, labels=FOLD)
    produce_stale_key(bootstrap, None, evicts=o1)
    stale = wait_metric(w, STALE, 1, timeout=10)
    kept = w.metric(ADDED, FOLD)
    msgs = stale_key_messages(bootstrap, 4)
    w2 = U.Worker(bootstrap, model, os.path.join(tmp, "w2.log"),
                  extra=["kafka.fetch.wait.max.ms=10", "snapshot.dir=" + os.path.join(tmp, "s2")])
    try:
        loaded = wait_metric(w2, "halflife_items_loaded", 1, timeout=20)
        late = (w2.metric(ADDED, FOLD), w2.metric(STALE))
        msgs2 = stale_key_messages(bootstrap, len(msgs))
        newest = produce_stale_key(bootstrap, None, evicts=msgs2[-1][0] if msgs2 else 0)
        gone = wait_below([w, w2], f0)
        twins = two_readers(bootstrap, w, w2)
    finally:
        w2.stop()
    last_is_record = [r for _, r in msgs] == [True, True, False, True]
    ok = (held == f0 + 1 and stale == 1 and kept == f0 + 1 and last_is_record
          and loaded == 1 and late == (f0 + 1, 1) and msgs2 == msgs and newest > 0
          and gone == [f0, f0] and twins)
    print(("PASS" if ok else "FAIL") + " foldin_after_tombstone.stale: fold-in items %s, "
          "with stale-x %s (want %s); after a tombstone naming its older record: stale "
          "tombstones %s (want 1), fold-in items %s (want %s), the key's messages "
          "(record?) %s (want record, record, tombstone, record); a worker started "
          "afterwards: loaded %s, fold-in items and stale tombstones %s (want (%s, 1)), the "
          "key's messages then %s (want the same); a tombstone naming the newest record: "
          "fold-in items %s (want [%s, %s])"
          % (f0, held, f0 + 1, stale, kept, f0 + 1, [r for _, r in msgs], loaded, late,
             f0 + 1, [r for _, r in msgs2], gone, f0, f0))
    return ok


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
        ok = stale_tombstone(tmp, broker.bootstrap, model, w) and ok
        failed = 0 if ok else 1
        w.stop()
    finally:
        broker.stop()
    print("logs in", tmp)
    return failed


if __name__ == "__main__":
    sys.exit(main())
