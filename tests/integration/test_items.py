"""test_items.py - the live catalogue end to end (DESIGN.md section 11), as
separate processes over TCP: a `halflife broker`, a `halflife run`, item
updates published by `halflife items` and, for one record and two bad
ones, by python3-avro (the reference Avro implementation) in Confluent
framing with schema id 3.

Four phases of one synthetic stream:
1. no catalogue: the lists show which items are popular (X, Y, Z);
2. X hidden (available=false), Z hidden (written by python3-avro), Y given
   an expires_at inside phase 2, and new-a added with X's vectors and a
   higher bias: every list published after the updates were read (their
   events produced after halflife_item_updates_total showed them) lacks X
   and Z and is still k long, every list whose generated_at is at or after
   Y's expiry lacks Y, and new-a is in lists; the bad records are counted by
   reason and dead-lettered with the reason in a header, and one too large
   for the worker's producer is counted (halflife_dlq_errors_total) and
   said (event=item_dlq_failed) instead of being dropped unsaid;
3. X available again: X is back in lists;
4. restart (SIGTERM, a new process; the topic is re-read before the worker
   joins the group) and rebalance (a second member joins the group, so
   partitions move): the lists of phase 4, from both members, still lack Z
   and Y, hold new-a and X, and each user's last list equals what core/
   computes offline
   (build/tests/test_offline with HL_OFFLINE_CATALOGUE) from every event
   with the same catalogue: the same items in the same order, the same
   scores, added item included.

Then, on a broker of its own that refuses every Produce request
(--refuse-produce, TOPIC_AUTHORIZATION_FAILED) once the item topic holds two
bad updates, a worker reading them: each dead-letter copy the broker
refuses is counted in halflife_dlq_errors_total and said
(event=item_dlq_failed, naming the update's offset and the error); before,
they went to halflife_delivery_errors_total alone, whose alert speaks of
lists, and the item reader said nothing.

The workers score two-stage (recs.scoring=two-stage: int8 candidates with
the catalogue's hidden rows excluded inside the scan, side items scored
exactly) and the offline reference scores exact fp32 over every item, so
phase 4 also shows the two paths publish the same lists.
"""
import collections
import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402
from test_e2e import compare  # noqa: E402
from test_min_interval import read_all, wait_settled  # noqa: E402

sys.path.insert(0, U.SCHEMAS)
import hlm  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, K = 8000, 300, 1000, 20
BIG = 1200000           # over MAX_OUT, the worker's kafka.message.max.bytes
MAX_OUT = 1000000
PHASE = N_EVENTS // 4


def watermarks(bootstrap, topic):
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "items-wm-%d" % time.time_ns()})
    parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
    hi = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    c.close()
    return hi


def lists_after(bootstrap, high):
    """Every list whose source event was produced after the watermarks high."""
    by_user, _ = read_all(bootstrap, "recommendations")
    return [d for ls in by_user.values() for d in ls
            if d["source"]["offset"] >= high.get(d["source"]["partition"], 0)]


def wait_metric(w, name, want, timeout=30, labels=None):
    deadline = time.time() + timeout
    v = 0
    while time.time() < deadline:
        try:
            v = w.metric(name, labels)
        except OSError:
            v = 0
        if v >= want:
            return v
        time.sleep(0.2)
    return v


def run_items(bootstrap, path, log):
    r = subprocess.run([U.HL, "items", "--input", path, "-X",
                        "kafka.bootstrap.servers=" + bootstrap], stdout=log, stderr=log)
    return r.returncode


def avro_update(item_id, available, expires_at=None, embedding=None, schema_id=3):
    w = U.avro.io.DatumWriter(U.load_schema("item_update.avsc"))
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", schema_id))
    w.write({"item_id": item_id, "available": available,
             "expires_at": None if expires_at is None else U.ms_to_dt(expires_at),
             "embedding": embedding}, U.avro.io.BinaryEncoder(buf))
    return buf.getvalue()


def produce_raw(bootstrap, topic, records):
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 4000000})
    for key, value in records:
        p.produce(topic, key=key.encode(), value=value)
    p.flush(30)


def dlq_reasons(bootstrap, topic):
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "items-dlq-%d" % time.time_ns()})
    parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
    hi = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    got, deadline = [], time.time() + 15
    while time.time() < deadline and len(got) < sum(hi.values()):
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        h = dict(m.headers() or [])
        if h.get("halflife.source.topic") == b"items":
            got.append(h.get("halflife.reason", b"").decode())
        else:
            got.append("other")
    c.close()
    return got


def phase2(ck, ctx):
    """Hide X and Z, expire Y in phase 2, add new-a; then the lists."""
    m, ids = ctx["model"], ctx["ids"]
    x, y, z = ctx["x"], ctx["y"], ctx["z"]
    row = ids.index(x)
    expiry = ctx["events"][PHASE + PHASE // 2][3]
    e_in = ",".join("%.9g" % v for v in m.e_in[row])
    e_out = ",".join("%.9g" % v for v in m.e_out[row])
    lines = ["item_id,available,expires_at_ms", "%s,false" % x, "%s,true,%d" % (y, expiry),
             "new-a,true,,%.9g,%s,%s" % (float(m.bias[row]) + 0.05, e_in, e_out)]
    with open(ctx["cat"], "w") as f:
        f.write("\n".join(lines) + "\n")
    rc = run_items(ctx["bootstrap"], ctx["cat"], ctx["log"])
    produce_raw(ctx["bootstrap"], "items", [
        (z, avro_update(z, False)),                                   # valid, by the reference
        ("bad-1", avro_update("bad-1", True, embedding={"e_in": [1.0, 2.0, 3.0],
                                                        "e_out": [1.0] * 16, "bias": 0.0})),
        ("other-key", avro_update("bad-2", False)),
        # Not Avro, and over the worker's kafka.message.max.bytes: its
        # dead-letter copy is refused at once, which used to go unsaid.
        ("bad-big", b"\x07" * BIG),
    ])
    with open(ctx["cat"], "a") as f:
        f.write("%s,false\n" % z)
    w = ctx["w"]
    n_upd = wait_metric(w, "halflife_item_updates_total", 4)
    n_dim = wait_metric(w, "halflife_item_updates_invalid_total", 1, labels='reason="bad_dim"')
    n_key = wait_metric(w, "halflife_item_updates_invalid_total", 1, labels='reason="bad_key"')
    n_lost = wait_metric(w, "halflife_dlq_errors_total", 1)
    said = [ln for ln in w.log_text().splitlines() if " event=item_dlq_failed " in ln]
    ck.check("updates_read", rc == 0 and n_upd == 4 and n_dim == 1 and n_key == 1,
             "halflife items exit %s, updates %s, bad_dim %s, bad_key %s" % (rc, n_upd, n_dim, n_key))
    ck.check("refused_dead_letter_said", n_lost == 1 and len(said) == 1,
             "halflife_dlq_errors_total %s (want 1), event=item_dlq_failed lines %d (want 1)"
             % (n_lost, len(said)))
    high = watermarks(ctx["bootstrap"], "behaviour-events")
    U.produce_events(ctx["bootstrap"], "behaviour-events", ctx["events"][PHASE:2 * PHASE])
    wait_settled(w, 2 * PHASE)
    after = lists_after(ctx["bootstrap"], high)
    items = [[i["item_id"] for i in d["items"]] for d in after]
    with_hidden = [d["user_id"] for d, it in zip(after, items) if x in it or z in it]
    short = [len(it) for it in items if len(it) != K]
    expired = [d["user_id"] for d, it in zip(after, items)
               if d["generated_at"] >= expiry and y in it]
    n_new = sum("new-a" in it for it in items)
    ck.check("hidden_absent_and_lists_full", after and not with_hidden and not short,
             "%d lists after the update, %d hold X or Z (%s), lengths off k: %s"
             % (len(after), len(with_hidden), with_hidden[:3], short[:5]))
    ck.check("expired_absent", not expired and any(d["generated_at"] >= expiry for d in after),
             "%d lists at or after Y's expiry still hold Y (%s)" % (len(expired), expired[:3]))
    ck.check("added_item_listed", n_new >= 5,
             "new-a (X's vectors, higher bias) in %d of %d lists" % (n_new, len(after)))
    hidden_g = w.metric("halflife_items_hidden")
    added_g = w.metric("halflife_items_added", 'source="topic"')
    ck.check("gauges", hidden_g == 2 and added_g == 1,
             "halflife_items_hidden %s (want 2), halflife_items_added %s (want 1)" % (hidden_g, added_g))
    reasons = dlq_reasons(ctx["bootstrap"], "behaviour-events.dlq")
    ck.check("bad_updates_dead_lettered", sorted(reasons) == ["bad_dim", "bad_key"],
             "dead letters from items: %s" % reasons)
    return expiry


def phase3(ck, ctx):
    """X available again."""
    with open(ctx["cat"], "a") as f:
        f.write("%s,true\n" % ctx["x"])
    unhide = os.path.join(ctx["tmp"], "unhide.csv")
    with open(unhide, "w") as f:
        f.write("%s,true\n" % ctx["x"])
    rc = run_items(ctx["bootstrap"], unhide, ctx["log"])
    n = wait_metric(ctx["w"], "halflife_item_updates_total", 5)
    high = watermarks(ctx["bootstrap"], "behaviour-events")
    U.produce_events(ctx["bootstrap"], "behaviour-events", ctx["events"][2 * PHASE:3 * PHASE])
    wait_settled(ctx["w"], 3 * PHASE)
    after = lists_after(ctx["bootstrap"], high)
    back = sum(any(i["item_id"] == ctx["x"] for i in d["items"]) for d in after)
    ck.check("unhide_brings_back", rc == 0 and n == 5 and back > 0,
             "items exit %s, updates %s, X in %d of %d lists after unhide" % (rc, n, back, len(after)))


def phase4(ck, ctx, expiry):
    """Restart; the catalogue is re-read; lists equal the offline reference."""
    rc = ctx["w"].stop()
    w = ctx["w"] = U.Worker(ctx["bootstrap"], ctx["model_path"], os.path.join(ctx["tmp"], "w2.log"),
                            extra=ctx["common"])
    loaded = wait_metric(w, "halflife_items_loaded", 1)
    wait_metric(w, "halflife_assigned_partitions", 4)
    w3 = U.Worker(ctx["bootstrap"], ctx["model_path"], os.path.join(ctx["tmp"], "w3.log"),
                  extra=ctx["common"])
    # Up to 60 s: the mock's group coordinator takes rounds of up to
    # session.timeout.ms - 1 s (5 s here) for a cooperative rebalance, and
    # on a loaded machine (make test runs five programs at once) a member
    # missing a round costs another; once 25 s went by before the joiner
    # got partitions, at the edge of the 30 s this waited before.
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            split = (w.metric("halflife_assigned_partitions"), w3.metric("halflife_assigned_partitions"))
        except OSError:
            split = (0, 0)
        if split[0] > 0 and split[1] > 0 and sum(split) == 4:
            break
        time.sleep(0.3)
    log = w.log_text()
    order_ok = "catalogue_loaded" in log and log.find("catalogue_loaded") < log.find("worker_started")
    high = watermarks(ctx["bootstrap"], "behaviour-events")
    U.produce_events(ctx["bootstrap"], "behaviour-events", ctx["events"][3 * PHASE:])
    deadline = time.time() + 60
    while time.time() < deadline:
        n = w.metric("halflife_events_consumed_total") + w3.metric("halflife_events_consumed_total")
        if n >= PHASE:
            break
        time.sleep(0.3)
    time.sleep(1.5)
    ck.check("rebalanced", split[0] > 0 and split[1] > 0 and n >= PHASE,
             "partitions split %s, consumed %d of %d in phase 4" % (split, n, PHASE))
    w3_rc = w3.stop()
    after = lists_after(ctx["bootstrap"], high)
    items = [[i["item_id"] for i in d["items"]] for d in after]
    bad = [it for it in items if ctx["z"] in it or ctx["y"] in it or len(it) != K]
    ck.check("restart_keeps_catalogue",
             rc == 0 and loaded == 1 and order_ok and after and not bad
             and any("new-a" in it for it in items) and any(ctx["x"] in it for it in items),
             "first exit %s, loaded %s, loaded before joining %s, %d lists, %d hold Z/Y or "
             "are short, new-a in %d, X in %d" % (rc, loaded, order_ok, len(after), len(bad),
                                                 sum("new-a" in it for it in items),
                                                 sum(ctx["x"] in it for it in items)))
    last = {}
    for d in after:
        if d["user_id"] not in last or d["source"]["offset"] > last[d["user_id"]]["source"]["offset"]:
            last[d["user_id"]] = d
    with open(os.path.join(ctx["tmp"], "w1.log")) as f:
        two_stage = "event=scoring mode=two-stage" in f.read()
    ck.check("scores_two_stage", two_stage and "event=scoring mode=two-stage" in log,
             "a worker's log does not say mode=two-stage (see w1.log, w2.log)")
    os.environ["HL_OFFLINE_CATALOGUE"] = ctx["cat"]      # offline_lists passes os.environ on
    offline = U.offline_lists(ctx["events_csv"], ctx["model_path"], K)
    del os.environ["HL_OFFLINE_CATALOGUE"]
    offline = {u: r for u, r in offline.items() if u in last}
    mism = compare(last, offline, ctx["events"])
    with_new = sum(any(x[0] == "new-a" for x in r["items"]) for r in offline.values())
    ck.check("last_lists_match_offline_catalogue", not mism and offline and with_new > 0,
             "%d mismatches of %d users (offline lists with new-a: %d), e.g. %s"
             % (len(mism), len(offline), with_new, mism[:3]))
    fallbacks = w.metric("halflife_rank_fallbacks_total")
    ck.check("two_stage_bounded_every_user", fallbacks == 0,
             "halflife_rank_fallbacks_total %s: some users were rescanned exactly, so the "
             "int8 scan's handling of the catalogue was not what made the lists" % fallbacks)
    rc2 = w.stop()
    ck.check("second_exit_0", rc2 == 0 and w3_rc == 0, "SIGTERM exit status %s, %s" % (rc2, w3_rc))


def broker_said(broker, event, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(broker.log_path) as f:
            if " event=%s " % event in f.read():
                return True
        time.sleep(0.05)
    return False


def refused_copies(ck, tmp, model):
    """Dead-letter copies the broker refuses count as DLQ errors and are said."""
    refuse = os.path.join(tmp, "refuse")
    broker = U.Broker(1, ["behaviour-events", "recommendations", "behaviour-events.dlq", "items"],
                      os.path.join(tmp, "broker-refusing.log"), extra=["--refuse-produce", refuse])
    w = None
    try:
        # the refusal covers every topic: the updates go in first
        produce_raw(broker.bootstrap, "items", [
            ("bad-1", avro_update("bad-1", True, embedding={"e_in": [1.0, 2.0, 3.0],
                                                            "e_out": [1.0] * 16, "bias": 0.0})),
            ("other-key", avro_update("bad-2", False))])
        with open(refuse, "w") as f:
            f.write("TOPIC_AUTHORIZATION_FAILED\n")
        on = broker_said(broker, "refuse_produce_on")
        w = U.Worker(broker.bootstrap, model, os.path.join(tmp, "w-refused.log"),
                     extra=["snapshot.dir=" + os.path.join(tmp, "snap-refused"),
                            "kafka.fetch.wait.max.ms=10"])
        invalid = wait_metric(w, "halflife_item_updates_invalid_total", 2, timeout=15)
        errs = wait_metric(w, "halflife_dlq_errors_total", 2, timeout=10)
        said = [ln for ln in w.log_text().splitlines() if " event=item_dlq_failed " in ln]
        named = [ln for ln in said if "offset=0 " in ln or "offset=1 " in ln]
        ck.check("refused_copies_counted_and_said",
                 on and invalid == 2 and errs == 2 and named and "authorization" in named[0],
                 "refusal on %s, bad updates %s (want 2), halflife_dlq_errors_total %s (want 2), "
                 "event=item_dlq_failed lines %s" % (on, invalid, errs, said[:2]))
    finally:
        if w is not None:
            w.stop()
        broker.stop()


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP items.hide_add_restart: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_items_")
    failed = [0]

    class Ck:
        def check(self, name, ok, why):
            print(("PASS items.%s" % name) if ok else ("FAIL items.%s: %s (logs in %s)" % (name, why, tmp)))
            failed[0] += 0 if ok else 1
    ck = Ck()
    ctx = {"tmp": tmp, "model_path": os.path.join(tmp, "m.hlm"),
           "events_csv": os.path.join(tmp, "e.csv"), "cat": os.path.join(tmp, "catalogue.csv")}
    U.make_model(ctx["model_path"], N_ITEMS, 16)
    U.make_events(ctx["events_csv"], N_EVENTS, N_USERS, N_ITEMS)
    ctx["events"] = U.read_events_csv(ctx["events_csv"])
    ctx["model"] = hlm.read(ctx["model_path"])
    ctx["ids"] = [i.decode() if isinstance(i, bytes) else i for i in ctx["model"].item_ids]
    broker = U.Broker(4, ["behaviour-events", "recommendations", "behaviour-events.dlq", "items"],
                      os.path.join(tmp, "broker.log"))
    ctx["bootstrap"] = broker.bootstrap
    ctx["log"] = open(os.path.join(tmp, "items_cmd.log"), "w")
    # Short sessions, as the other multi-member tests set: a member that
    # joins or leaves while the mock's group is rebalancing otherwise waits
    # out the default 45 s session (seen once: a restart took 44 s to get
    # partitions and its SIGTERM outlived the test's 30 s).
    ctx["common"] = ["worker.threads=2", "batch.max.messages=50", "kafka.fetch.wait.max.ms=10",
                     "kafka.session.timeout.ms=6000", "kafka.heartbeat.interval.ms=500",
                     "snapshot.dir=" + os.path.join(tmp, "snap"), "schemas.dir=" + U.SCHEMAS,
                     "recs.scoring=two-stage", "kafka.message.max.bytes=%d" % MAX_OUT]
    try:
        ctx["w"] = U.Worker(broker.bootstrap, ctx["model_path"], os.path.join(tmp, "w1.log"),
                            extra=ctx["common"])
        U.produce_events(broker.bootstrap, "behaviour-events", ctx["events"][:PHASE])
        wait_settled(ctx["w"], PHASE)
        by_user, _ = read_all(broker.bootstrap, "recommendations")
        freq = collections.Counter(i["item_id"] for ls in by_user.values() for i in ls[-1]["items"])
        (ctx["x"], nx), (ctx["y"], _), (ctx["z"], _) = freq.most_common(3)
        ck.check("popular_item_found", nx >= 10, "most listed item in %d lists" % nx)
        expiry = phase2(ck, ctx)
        phase3(ck, ctx)
        phase4(ck, ctx, expiry)
        ctx["w"].stop()
        refused_copies(ck, tmp, ctx["model_path"])
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
