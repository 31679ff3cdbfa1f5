"""test_foldin.py - fold-in of a new item from the stream (catalogue.foldin,
DESIGN.md section 11), as separate processes over TCP: a `halflife broker`
and `halflife run`, events produced by python3-confluent-kafka with
python3-avro, the item topic read back with python3-avro.

The model has two interest clusters (items a-* along one axis, b-* along
another; the encoder passes a user's mean e_in through, so a user's query
points at the cluster it interacts with). The stream:
1. every user views items of its own cluster;
2. MIN_EVENTS users of cluster a (spread over the partitions, so over both
   shard threads) buy `new-1`, an item the model does not know, one fewer
   first: the item is not published before its MIN_EVENTS-th interaction,
   then it is (one ItemUpdate on the item topic, with foldin.events,
   decoded by python3-avro);
3. every other user views one more item of its cluster: `new-1` is in the
   lists of cluster a's other users and in none of cluster b's;
4. restart (SIGTERM, a new process: the topic is re-read, the worker's own
   sums are gone): `new-1` is still in cluster a's lists, and the new worker
   does not publish it again below twice the topic's count;
5. the compaction race (race()): operator's and fold-in records for the
   same new items in both orders, each under its own key: the operator's
   wins in the running worker and in a third one that re-reads the topic.
An operator's record for an item wins: `op-1`, given an embedding by
`halflife items` before any interaction, is bought by MIN_EVENTS users of
cluster a: its interactions are not folded in (halflife_foldin_events_total
counts new-1's alone) and no fold-in record is published for it.
"""
import io
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402
from test_items import lists_after, run_items, watermarks, wait_metric  # noqa: E402
from test_min_interval import wait_settled  # noqa: E402

sys.path.insert(0, U.SCHEMAS)
import hlm  # noqa: E402
import numpy as np  # noqa: E402

DIM, PER_CLUSTER, USERS, MIN_EVENTS, K = 8, 20, 40, 5, 10
T0 = 1_700_000_000_000
FOLDIN_KEY = b"\xfffoldin:"      # a fold-in record's key: this, then the item_id


def cluster_model(path):
    """Items a-i along axis 0, b-i along axis 1, with noise; one head; the
    encoder's one layer copies the head's mean (q = mean e_in)."""
    axis_model(path, (("a", 0, 1.0), ("b", 1, 1.0)), PER_CLUSTER, 0.3, 7, "clusters")


def axis_model(path, axes, per_axis, noise, seed, version):
    """per_axis items "<prefix>-i" along each (prefix, axis, norm) of axes,
    plus N(0, noise) per component; e_out = e_in, no bias; one 30-day head;
    the encoder's one layer copies the head's mean (q = mean e_in)."""
    rng = np.random.default_rng(seed)
    ids, vecs = [], []
    for c, axis, norm in axes:
        for i in range(per_axis):
            v = rng.standard_normal(DIM).astype(np.float32) * noise
            v[axis] += norm
            ids.append("%s-%d" % (c, i))
            vecs.append(v)
    e = np.array(vecs, dtype=np.float32)
    w = np.zeros((DIM, DIM + 1), dtype=np.float32)
    w[:, :DIM] = np.eye(DIM, dtype=np.float32)
    m = hlm.Model(DIM, [30 * 86400e3], [1.0] * 6, ids, e.copy(),
                  [(w, np.zeros(DIM, dtype=np.float32))], e.copy(),
                  np.zeros(len(ids), dtype=np.float32), version)
    hlm.write(path, m)


def users(c):
    return ["u-%s-%d" % (c, i) for i in range(USERS)]


def views(us, c, n, t, rng):
    out = []
    for r in range(n):
        for u in us:
            out.append((u, "%s-%d" % (c, rng.integers(PER_CLUSTER)), "VIEW", t, None))
            t += 10
    return out, t


def schema_before_foldin():
    """item_update.avsc as it was before the foldin field."""
    import json
    import avro.schema
    with open(os.path.join(U.SCHEMAS, "item_update.avsc")) as f:
        d = json.load(f)
    d["fields"] = [x for x in d["fields"] if x["name"] != "foldin"]
    return avro.schema.parse(json.dumps(d))


def compatible_both_ways(value):
    """The schema change resolves both ways in python3-avro: a reader of the
    old schema reads a fold-in record (the field is skipped), and a record of
    the old schema reads with the new one as foldin null."""
    import avro.io
    new, old = U.load_schema("item_update.avsc"), schema_before_foldin()
    as_old = avro.io.DatumReader(new, old).read(avro.io.BinaryDecoder(io.BytesIO(value[5:])))
    buf = io.BytesIO()
    avro.io.DatumWriter(old).write(as_old, avro.io.BinaryEncoder(buf))
    back = avro.io.DatumReader(old, new).read(avro.io.BinaryDecoder(io.BytesIO(buf.getvalue())))
    return "foldin" not in as_old and back["foldin"] is None and back["item_id"] == as_old["item_id"]


def item_records(bootstrap):
    """Every ItemUpdate on the item topic, decoded by python3-avro."""
    import avro.io
    from confluent_kafka import Consumer, TopicPartition
    reader = avro.io.DatumReader(U.load_schema("item_update.avsc"))
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "fold-%d" % time.time_ns()})
    parts = sorted(c.list_topics("items", timeout=10).topics["items"].partitions)
    hi = {p: c.get_watermark_offsets(TopicPartition("items", p), timeout=10)[1] for p in parts}
    c.assign([TopicPartition("items", p, 0) for p in parts])
    got, deadline = [], time.time() + 15
    while time.time() < deadline and len(got) < sum(hi.values()):
        msg = c.poll(0.5)
        if msg is None or msg.error():
            continue
        v = msg.value()
        got.append(reader.read(avro.io.BinaryDecoder(io.BytesIO(v[5:]))))
        got[-1]["_value"] = v
        got[-1]["_key"] = msg.key()
    c.close()
    return got


def last_lists(bootstrap, high):
    """Each user's newest list among those of events produced after high."""
    out = {}
    for d in sorted(lists_after(bootstrap, high), key=lambda d: d["source"]["offset"]):
        out[d["user_id"]] = [i["item_id"] for i in d["items"]]
    return out


def share(lists, us, item):
    have = [u for u in us if u in lists]
    return sum(item in lists[u] for u in have), len(have)


def body(ck, tmp, bootstrap, common):
    model = os.path.join(tmp, "m.hlm")
    cluster_model(model)
    ops = os.path.join(tmp, "op.csv")
    with open(ops, "w") as f:
        f.write("item_id,available,expires_at_ms\nop-1,true,,0,%s,%s\n" % (",".join(["0"] * DIM), ",".join(["0"] * DIM)))
    rc = run_items(bootstrap, ops, open(os.path.join(tmp, "items.log"), "w"))
    rng = np.random.default_rng(3)
    ua, ub = users("a"), users("b")
    w = U.Worker(bootstrap, model, os.path.join(tmp, "w1.log"), extra=common)
    ev_a, t = views(ua, "a", 3, T0, rng)
    ev_b, t = views(ub, "b", 3, t, rng)
    U.produce_events(bootstrap, "behaviour-events", ev_a + ev_b)
    n = wait_settled(w, len(ev_a) + len(ev_b))
    buyers = ua[:MIN_EVENTS]
    buys = [(u, "new-1", "PURCHASE", t + 10 * i, None) for i, u in enumerate(buyers)]
    opbuys = [(u, "op-1", "PURCHASE", t + 10 * i + 5, None) for i, u in enumerate(buyers)]
    t += 1000
    U.produce_events(bootstrap, "behaviour-events", buys[:-1] + opbuys)
    n = wait_settled(w, n + len(buys) - 1 + len(opbuys))
    early = w.metric("halflife_foldin_published_total")
    noted = w.metric("halflife_foldin_events_total")
    U.produce_events(bootstrap, "behaviour-events", buys[-1:])
    n = wait_settled(w, n + 1)
    pub = wait_metric(w, "halflife_items_added", 1, labels='source="foldin"')
    recs = item_records(bootstrap)
    fold = [r for r in recs if r["foldin"] is not None]
    ck.check("published_at_min_events",
             rc == 0 and early == 0 and pub == 1 and len(fold) == 1
             and fold[0]["item_id"] == "new-1" and fold[0]["foldin"]["events"] == MIN_EVENTS
             and fold[0]["embedding"] is not None and fold[0]["_key"] == FOLDIN_KEY + b"new-1",
             "items exit %s; published before the %d-th buy: %s; foldin gauge %s; fold-in "
             "records %s" % (rc, MIN_EVENTS, early, pub,
                             [(r["item_id"], r["foldin"]) for r in fold]))
    ck.check("schema_change_compatible", fold and compatible_both_ways(fold[0]["_value"]),
             "python3-avro could not resolve the fold-in record against the schema "
             "before the foldin field, or back")
    ck.check("operator_wins", not any(r["item_id"] == "op-1" for r in fold),
             "a fold-in record was published for op-1, which an operator's record names")
    ck.check("operator_item_not_folded", noted == MIN_EVENTS - 1,
             "halflife_foldin_events_total %s after new-1's first %d buys and op-1's %d "
             "(want %d: an operator's item is not folded in)"
             % (noted, MIN_EVENTS - 1, MIN_EVENTS, MIN_EVENTS - 1))
    high = watermarks(bootstrap, "behaviour-events")
    more_a, t = views(ua[MIN_EVENTS:], "a", 1, t + 1000, rng)
    more_b, t = views(ub, "b", 1, t, rng)
    U.produce_events(bootstrap, "behaviour-events", more_a + more_b)
    n = wait_settled(w, n + len(more_a) + len(more_b))
    lists = last_lists(bootstrap, high)
    got_a, n_a = share(lists, ua[MIN_EVENTS:], "new-1")
    got_b, n_b = share(lists, ub, "new-1")
    ck.check("recommended_to_its_cluster_only",
             n_a >= USERS - MIN_EVENTS - 2 and got_a >= 0.8 * n_a and n_b >= USERS - 2
             and got_b == 0,
             "new-1 in %d of %d lists of cluster a's other users, %d of %d of cluster b's"
             % (got_a, n_a, got_b, n_b))
    rc1 = w.stop()
    w = U.Worker(bootstrap, model, os.path.join(tmp, "w2.log"), extra=common)
    high = watermarks(bootstrap, "behaviour-events")
    again_a, t = views(ua[MIN_EVENTS:], "a", 1, t + 1000, rng)
    rebuy = [(u, "new-1", "PURCHASE", t + 10 * i, None) for i, u in enumerate(ua[MIN_EVENTS:
                                                                              2 * MIN_EVENTS])]
    U.produce_events(bootstrap, "behaviour-events", again_a + rebuy)
    wait_settled(w, len(again_a) + len(rebuy))
    lists = last_lists(bootstrap, high)
    got_a, n_a = share(lists, ua[2 * MIN_EVENTS:], "new-1")
    again = w.metric("halflife_foldin_published_total")
    added = w.metric("halflife_items_added", 'source="foldin"')
    ck.check("restart_keeps_it",
             rc1 == 0 and added == 1 and n_a > 0 and got_a >= 0.8 * n_a and again == 0,
             "first exit %s; after restart foldin gauge %s, new-1 in %d of %d lists of "
             "cluster a, published again %s (want 0: %d buys < 2 x %d)"
             % (rc1, added, got_a, n_a, again, MIN_EVENTS, MIN_EVENTS))
    t = race(ck, bootstrap, w, ua, ub, t, rng, "running")
    ck.check("second_exit_0", w.stop() == 0, "SIGTERM exit status not 0 (see w2.log)")
    w = U.Worker(bootstrap, model, os.path.join(tmp, "w3.log"), extra=common)
    wait_metric(w, "halflife_items_added", 2, labels='source="foldin"')
    race(ck, bootstrap, w, ua, ub, t, rng, "reread")
    ck.check("third_exit_0", w.stop() == 0, "SIGTERM exit status not 0 (see w3.log)")


def item_update(item_id, axis, events):
    """An ItemUpdate (Confluent framing, id 3) whose vectors point along axis
    (2 x the cluster's items: first in its users' lists); events: foldin."""
    import avro.io
    import struct
    v = [2.0 if d == axis else 0.0 for d in range(DIM)]
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", 3))
    avro.io.DatumWriter(U.load_schema("item_update.avsc")).write(
        {"item_id": item_id, "available": True, "expires_at": None,
         "embedding": {"e_in": v, "e_out": v, "bias": 0.0},
         "foldin": None if events is None else {"events": events}},
        avro.io.BinaryEncoder(buf))
    return buf.getvalue()


def produce_keyed(bootstrap, records):
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap})
    for key, value in records:
        p.produce("items", key=key, value=value)
    p.flush(30)


RACE = [  # (key, item, axis, foldin events), in the order written
    (b"race-1", "race-1", 1, None), (FOLDIN_KEY + b"race-1", "race-1", 0, 5),
    (FOLDIN_KEY + b"race-2", "race-2", 0, 5), (b"race-2", "race-2", 1, None),
    (b"legacy-1", "legacy-1", 0, 5),
]


def race(ck, bootstrap, w, ua, ub, t, rng, phase):
    """Issue 11's compaction race: an operator's record and a fold-in one for
    the same new item written at the same moment. race-1's fold-in record
    lands after the operator's, race-2's before; each is under its own key,
    so compaction keeps both, and the topic as written is what it leaves
    (`halflife broker` does not compact: the order of the records read is
    the simulation). The operator's vectors (cluster b) win either way, in
    the running worker and in one that re-reads the topic; legacy-1, a
    fold-in record under the item_id as older workers wrote it, still reads
    as a fold-in item (cluster a)."""
    if phase == "running":
        produce_keyed(bootstrap, [(k, item_update(i, a, e)) for k, i, a, e in RACE])
        wait_metric(w, "halflife_items_added", 3, labels='source="topic"')
        wait_metric(w, "halflife_items_added", 2, labels='source="foldin"')
    high = watermarks(bootstrap, "behaviour-events")
    va, t = views(ua[MIN_EVENTS:], "a", 1, t + 1000, rng)
    vb, t = views(ub, "b", 1, t, rng)
    U.produce_events(bootstrap, "behaviour-events", va + vb)
    wait_settled(w, len(va) + len(vb))
    lists = last_lists(bootstrap, high)
    got = {item: (share(lists, ua[MIN_EVENTS:], item), share(lists, ub, item))
           for item in ("race-1", "race-2", "legacy-1")}
    ok = all(got[i][1][0] >= 0.8 * got[i][1][1] > 0 and got[i][0][0] == 0
             for i in ("race-1", "race-2"))
    ok = ok and got["legacy-1"][0][0] >= 0.8 * got["legacy-1"][0][1] > 0 \
        and got["legacy-1"][1][0] == 0
    ck.check("race_operator_wins_" + phase, ok,
             "(lists of cluster a holding it, of n), (cluster b's): %s; want race-1 and race-2 "
             "in b's (the operator's vectors), legacy-1 in a's" % got)
    return t


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP foldin.new_item: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_foldin_")
    failed = [0]

    class Ck:
        def check(self, name, ok, why):
            print(("PASS foldin.%s" % name) if ok else
                  ("FAIL foldin.%s: %s (logs in %s)" % (name, why, tmp)))
            failed[0] += 0 if ok else 1
    broker = U.Broker(4, ["behaviour-events", "recommendations", "behaviour-events.dlq", "items"],
                      os.path.join(tmp, "broker.log"))
    common = ["worker.threads=2", "batch.max.messages=50", "kafka.fetch.wait.max.ms=10",
              "kafka.session.timeout.ms=6000", "kafka.heartbeat.interval.ms=500",
              "snapshot.dir=" + os.path.join(tmp, "snap"), "recs.k=%d" % K,
              "catalogue.foldin.min.events=%d" % MIN_EVENTS]
    try:
        body(Ck(), tmp, broker.bootstrap, common)
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
