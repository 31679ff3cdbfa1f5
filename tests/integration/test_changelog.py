"""test_changelog.py - state.store=kafka (issue 12; DESIGN.md sections 6
and 12): a partition's state travels through a changelog topic, so workers
with private snapshot directories (as on separate machines) hand partitions
over, survive kill -9 with an empty disk, and fence a paused owner.

Separate processes over TCP: a `halflife broker` whose --topics include the
changelog (librdkafka's mock cluster answers no CreateTopics and has no
compaction: every record stays, so the restores here read whole histories),
events produced at a steady rate by python3-confluent-kafka +
python3-avro, `halflife run` workers. Every case ends the same way: once
its workers are gone, a fresh worker with an empty snapshot.dir joins the
same group, restores every partition from the changelog alone (it must
consume no input event), and is stopped; its snapshots must equal a clean
uninterrupted run's (cluster_util.check_final_state), at the high
watermarks. The changelog's low watermarks must still be 0: the mock keeps
5 MiB per partition and drops older data silently (DESIGN.md section 9).

Cases:
- crash:     kill -9 at random points five times, each life with a new
             empty snapshot.dir;
- rebalance: 2 -> 3 -> 2 workers, private snapshot dirs; nothing lost,
             nothing applied twice, last lists equal offline;
- zombie:    a worker SIGSTOPped past its session timeout while another
             takes its partitions, then SIGCONT: its late writes, if any,
             are fenced (refused, or ignored by the restorer); then late
             writes forged from its own records must be ignored;
- tombstones: users evicted by state.evict.mass are deleted from the
             changelog: a restore from it equals the writer's final state;
- refused:   no usable changelog topic: the worker refuses to start;
- cache:     a worker killed and restarted on the same snapshot.dir loads
             its local snapshot and reads only the changelog after the
             offset the snapshot records (records read counted);
- model:     a changelog written under model A restored by a worker serving
             B (a restart with a retrained model): every user is migrated
             (A kept in model.dir), never refused; that worker's flushes
             rewrite every row in B, so the next restore under B reads rows
             of B only (nothing migrated or rebuilt) and equals its state.
"""
import subprocess
import os
import random
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import test_e2e as E  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, PARTS = 9000, 300, 1000, 6
RATE = 450
CLEAN = ["worker.threads=1", "kafka.fetch.wait.max.ms=10",
         "kafka.session.timeout.ms=3000", "kafka.heartbeat.interval.ms=1000"]
COMMON = CLEAN + ["state.store=kafka", "state.flush.ms=300", "snapshot.interval.ms=1000"]


def state_topic(group):
    return group + "-state"


def watermarks(bootstrap, topic):
    """{partition: (low, high)} of topic."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "wm-%d" % time.time_ns()})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                for p in range(PARTS)}
    finally:
        c.close()


def replay_stale(bootstrap, topic, per_part=20):
    """A zombie's late writes, forged from the changelog itself: the first
    rows and checkpoint each partition's first owner wrote (epoch 1), and
    tombstones for those users under that epoch, produced again at the end
    of the partition with their old epoch. Later-wins alone would take each
    of those users back to an old state (or delete it); the fence must
    ignore them. Returns how many were written."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    wm = watermarks(bootstrap, topic)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "zr-%d" % time.time_ns(),
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTS)])
    old, seen = {p: [] for p in range(PARTS)}, {}
    deadline = time.time() + 60
    while sum(seen.values()) < sum(hi for _lo, hi in wm.values()) and time.time() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        seen[m.partition()] = m.offset() + 1
        epoch = dict(m.headers() or []).get("halflife.epoch", b"").decode()
        if epoch == "1" and len(old[m.partition()]) < per_part:
            old[m.partition()].append((m.key(), m.value(), m.headers()))
    c.close()
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    n = 0
    for part, recs in old.items():
        for key, value, headers in recs:
            p.produce(topic, key=key, value=value, partition=part, headers=headers)
            if value is not None and len(key) <= 256:
                p.produce(topic, key=key, value=None, partition=part, headers=headers)
                n += 1
            n += 1
    p.flush(30)
    return n


def worker(ck, broker, model, name, group, extra=()):
    snap = os.path.join(ck.tmp, "snap-" + name)
    return C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, name + ".log"),
                    COMMON + ["group.id=" + group, "snapshot.dir=" + snap] + list(extra)), snap


def restored_records(w):
    """Changelog records read by each of the worker's restores."""
    return [int(kv.get("records", 0)) for _ts, kv in w.events("restored")
            if kv.get("source") == "changelog"]


def verify_from_changelog(ck, case, broker, model, group, n_events, high):
    """A fresh worker of group with an empty snapshot.dir restores every
    partition from the changelog alone; its state must equal a clean run's."""
    r, snap = worker(ck, broker, model, case + "-reader", group)
    ok = r.wait_event("restored", 40, count=PARTS)
    C.wait_idle([r], 10)
    consumed = r.metric_or("halflife_events_consumed_total", 0)
    stale = sum(int(kv.get("stale", 0)) for _ts, kv in r.events("restored"))
    rc, _secs = r.term(30)
    ck.check(case + ".reader_reads_changelog_only", ok and consumed == 0 and rc == 0,
             "restored %d partitions, consumed %d input events, exit %s"
             % (len(r.events("restored")), consumed, rc))
    wm = watermarks(broker.bootstrap, state_topic(group))
    ck.check(case + ".changelog_fits_the_mock", all(lo == 0 and hi > 0 for lo, hi in wm.values()),
             "changelog watermarks %s (a low above 0: the mock dropped records)" % wm)
    C.check_final_state(ck, case + ".state_from_changelog_equals_uninterrupted",
                        broker.bootstrap, model, snap, n_events, N_USERS, high, CLEAN)
    return stale, sum(hi for _lo, hi in wm.values())


def setup(ck, case):
    model, events_csv, events = C.prepare(ck.tmp, N_EVENTS, N_USERS, N_ITEMS)
    group = case + "-group"
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, case + "-broker.log"),
                      topics=C.TOPICS + [state_topic(group)])
    return model, events_csv, events, group, broker


def case_crash(ck):
    model, _csv, events, group, broker = setup(ck, "crash")
    seed = int(os.environ.get("HL_CRASH_SEED", str(int(time.time()) % 1000)))
    rng = random.Random(seed)
    errors = []
    prod = C.paced_producer(broker.bootstrap, events, RATE, errors)
    lives, reads = [], []
    for k in range(5):
        w, _snap = worker(ck, broker, model, "crash-w%d" % k, group)
        w.wait_event("partition_assigned", 20)
        time.sleep(rng.uniform(0.5, 2.5))        # mid-batch, mid-flush, anywhere
        w.p.send_signal(signal.SIGKILL)
        w.p.wait()
        w.log.close()
        lives.append(w)
        reads.append(sum(restored_records(w)))
    prod.join(120)
    ck.check("crash.stream_produced", not prod.is_alive() and not errors,
             "producer: %s" % errors[:3])
    last, high = C.read_topic(broker.bootstrap, PARTS)
    w, _snap = worker(ck, broker, model, "crash-final", group)
    w.wait_event("restored", 40, count=PARTS)
    # A partition restored at its high watermark has nothing left to consume,
    # so nothing to commit (a killed life may not have committed its offsets).
    at = {int(kv["partition"]): int(kv["next_offset"]) for _ts, kv in w.events("restored")}
    C.wait_committed(broker.bootstrap, group,
                     {p: h for p, h in high.items() if at.get(p, -1) < h}, 60)
    rc, _secs = w.term(30)
    ck.check("crash.restarts_restore_from_changelog",
             rc == 0 and all(n > 0 for n in reads[1:]) and sum(restored_records(w)) > 0,
             "records read by each life %s, final life exit %s (seed %d)" % (reads, rc, seed))
    verify_from_changelog(ck, "crash", broker, model, group, len(events), high)


def case_rebalance(ck):
    model, events_csv, events, group, broker = setup(ck, "rebalance")
    w = [worker(ck, broker, model, "reb-w%d" % i, group)[0] for i in (1, 2)]
    errors = []
    t0 = time.time()
    prod = C.paced_producer(broker.bootstrap, events, RATE, errors)
    joined = all(x.wait_event("partition_assigned", 20) for x in w)
    time.sleep(max(0.0, t0 + 6 - time.time()))
    w.append(worker(ck, broker, model, "reb-w3", group)[0])
    joined = joined and w[2].wait_event("partition_assigned", 20)
    time.sleep(3)
    mid_stream = prod.is_alive()
    rc1, _secs = w[0].term(30)
    ck.check("rebalance.two_then_three_then_two", joined and mid_stream and rc1 == 0,
             "all joined %s, w1 left mid-stream %s, exit %s" % (joined, mid_stream, rc1))
    prod.join(120)
    last, high = C.read_topic(broker.bootstrap, PARTS)
    lists, got = E.read_lists(broker.bootstrap, last, time.time() + 40)
    C.wait_committed(broker.bootstrap, group, high, 60)
    rcs = [x.term(30)[0] for x in w[1:]]
    tot = [x.totals() or {} for x in w]
    consumed = sum(t.get("consumed", 0) for t in tot)
    applied = sum(t.get("applied", 0) for t in tot)
    dup = sum(t.get("duplicates", 0) for t in tot)
    redelivered = sum(t.get("redelivered", 0) for t in tot)
    moved = sum(len(restored_records(x)) for x in w[2:])
    ck.check("rebalance.nothing_lost_nothing_twice",
             rcs == [0, 0] and consumed == applied == len(events) and dup == 0 and moved > 0,
             "exits %s, consumed %d, applied %d, duplicates %d, produced %d, restores by w3 %d, "
             "re-delivered records dropped %d"
             % (rcs, consumed, applied, dup, len(events), moved, redelivered))
    C.check_last_lists(ck, lists, got, last, events_csv, model, events)
    verify_from_changelog(ck, "rebalance", broker, model, group, len(events), high)


def case_zombie(ck):
    model, _csv, events, group, broker = setup(ck, "zombie")
    errors = []
    a, _ = worker(ck, broker, model, "zombie-a", group)
    a.wait_event("partition_assigned", 20)
    prod = C.paced_producer(broker.bootstrap, events, RATE, errors)
    time.sleep(3)
    b, _ = worker(ck, broker, model, "zombie-b", group)
    b.wait_event("partition_assigned", 20)
    time.sleep(2)
    a.p.send_signal(signal.SIGSTOP)              # cut off: its session expires
    took = b.wait_event("restored", 30, count=PARTS)
    time.sleep(1.5)
    a.p.send_signal(signal.SIGCONT)              # back, believing it owns its partitions
    prod.join(120)
    last, high = C.read_topic(broker.bootstrap, PARTS)
    C.wait_committed(broker.bootstrap, group, high, 60)
    fenced = a.metric_or("halflife_changelog_fenced_writes_total", 0)
    rcs = [x.term(30)[0] for x in (a, b)]
    ck.check("zombie.other_owner_took_over", took and not errors,
             "w_b restored %d partitions; producer %s" % (len(b.events("restored")), errors[:3]))
    forged = replay_stale(broker.bootstrap, state_topic(group))
    stale, total = verify_from_changelog(ck, "zombie", broker, model, group, len(events), high)
    ck.check("zombie.late_writes_ignored", forged > 0 and stale >= forged,
             "%d late records of epoch 1 written, %d ignored as stale" % (forged, stale))
    print("    (zombie: %d flushes refused by the paused worker, %d stale records ignored by "
          "the reader, %d changelog records, exits %s)" % (fenced, stale, total, rcs))


def case_cache(ck):
    model, _csv, events, group, broker = setup(ck, "cache")
    errors = []
    prod = C.paced_producer(broker.bootstrap, events, RATE, errors)
    a, snap = worker(ck, broker, model, "cache-a", group)
    a.wait_event("snapshot_written", 30, count=2 * PARTS)
    time.sleep(1.2)
    a.p.send_signal(signal.SIGKILL)              # the pod dies; its volume stays
    a.p.wait()
    a.log.close()
    b = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "cache-b.log"),
                 COMMON + ["group.id=" + group, "snapshot.dir=" + snap])
    ok = b.wait_event("restored", 30, count=PARTS)
    rest = [kv for _ts, kv in b.events("restored")]
    tail = sum(int(kv["records"]) for kv in rest)
    whole = sum(int(kv["high"]) - int(kv["low"]) for kv in rest)
    exact = all(int(kv["records"]) == int(kv["high"]) - int(kv["from"]) for kv in rest)
    sources = sorted(set(kv["source"] for kv in rest))
    # The kill can land between a flush's rows and its checkpoint: the
    # restore must then refuse that partition's cache and read its whole
    # changelog (test_changelog.c test_cache_then_unfinished_flush), which
    # is the one way a partition may come from the changelog alone here.
    unfinished = {kv.get("partition") for _ts, kv in b.events("snapshot_not_usable")
                  if "a flush that never finished" in kv.get("err", "")}
    whole_reads = [kv["partition"] for kv in rest if kv["source"] not in ("both", "snapshot")]
    ck.check("cache.restart_reads_only_the_tail",
             ok and exact and 0 < tail < whole / 2 and set(whole_reads) <= unfinished and
             len(whole_reads) < len(rest),
             "restores %d, sources %s, records read %d of %d in the changelog, exact tail %s, "
             "read whole %s, of which a flush never finished %s"
             % (len(rest), sources, tail, whole, exact, whole_reads, sorted(unfinished)))
    if whole_reads:
        print("    (cache: partitions %s read whole: killed mid-flush)" % whole_reads)
    prod.join(120)
    last, high = C.read_topic(broker.bootstrap, PARTS)
    C.wait_committed(broker.bootstrap, group, high, 60)
    rc, _secs = b.term(30)
    ck.check("cache.stream_produced", not errors and rc == 0, "producer %s, exit %s"
             % (errors[:3], rc))
    print("    (cache: read %d of %d changelog records on restart)" % (tail, whole))
    verify_from_changelog(ck, "cache", broker, model, group, len(events), high)


def case_tombstones(ck):
    """Evicted users leave the changelog too: with state.evict.mass=100,
    light users (one VIEW, mass 1) are swept away and heavy ones (weight
    1000) stay. The state a fresh worker restores from the changelog alone
    equals the writer's own final snapshot, user for user, and its restore
    read tombstones."""
    model, _csv, _events = C.prepare(ck.tmp, 10, 5, N_ITEMS)
    group = "tomb-group"
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "tomb-broker.log"),
                      topics=C.TOPICS + [state_topic(group)])
    t0 = 1767225600000
    evs = [("light-%d" % u, "i%06d" % (u % 1000), "VIEW", t0 + u * 1000, None)
           for u in range(1500)]
    evs += [("heavy-%d" % u, "i%06d" % u, "PURCHASE", t0 + (1500 + u) * 1000, 1000.0)
            for u in range(30)]
    extra = ["state.evict.mass=100"]
    a, snap_a = worker(ck, broker, model, "tomb-a", group, extra)
    a.wait_event("partition_assigned", 20)
    errors = []
    prod = C.paced_producer(broker.bootstrap, evs, 1000, errors)
    prod.join(60)
    C.wait_consumed([a], len(evs), 30)
    C.wait_idle([a], 20)
    evicted = a.metric_or("halflife_evictions_total", 0, 'reason="mass"')
    rc, _secs = a.term(30)
    want, _offs = C.dump_state(snap_a)
    r, snap_r = worker(ck, broker, model, "tomb-reader", group, extra)
    ok = r.wait_event("restored", 40, count=PARTS)
    C.wait_idle([r], 5)
    rc_r, _secs = r.term(30)
    got, _offs = C.dump_state(snap_r)
    tombs = sum(int(kv.get("tombstones", 0)) for _ts, kv in r.events("restored"))
    diff = C.state_diff(got, want)
    ck.check("tombstones.evictions_reach_the_changelog",
             rc == 0 and rc_r == 0 and ok and not errors and evicted > 1000 and tombs > 1000
             and not diff and len(want) < 600,
             "exits %s/%s, %d evicted, %d tombstones read, writer kept %d users, reader %d, "
             "%d differ (e.g. %s)" % (rc, rc_r, evicted, tombs, len(want), len(got), len(diff),
                                       diff[:3]))


def case_refused(ck):
    """No changelog topic on a broker that cannot create one (the mock
    answers no CreateTopics): the worker refuses to start and says how to
    create it. A changelog with another partition count: refused too."""
    model, _csv, _events = C.prepare(ck.tmp, 10, 5, N_ITEMS)
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "refused-broker.log"),
                      topics=C.TOPICS)
    w, _ = worker(ck, broker, model, "refused-missing", "nostate")
    rc = w.p.wait(30)
    text = w.log_text()
    ck.check("refused.missing_topic", rc != 0 and "kafka-topics.sh --create --topic "
             "nostate-state --partitions %d --config cleanup.policy=compact" % PARTS in text,
             "exit %s, log: %s" % (rc, text[-400:]))
    broker.stop()
    other = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "refused-broker2.log"),
                     topics=C.TOPICS)
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": other.bootstrap})
    p.produce("small-state", value=b"x", partition=0)   # auto-created with the mock's default
    p.flush(10)
    w2, _ = worker(ck, other, model, "refused-count", "small")
    rc2 = w2.p.wait(30)
    ck.check("refused.partition_count", rc2 != 0 and "partitions, the input %d" % PARTS
             in w2.log_text(), "exit %s, log: %s" % (rc2, w2.log_text()[-400:]))


def case_model(ck):
    model, _csv, events = C.prepare(ck.tmp, 3000, 200, N_ITEMS)
    model_b = os.path.join(ck.tmp, "b.hlm")
    subprocess.run([os.path.join(C.U.BUILD, "tests", "test_offline")], check=True,
                   env=dict(os.environ, HL_OFFLINE_MAKE_MODEL=model_b, HL_OFFLINE_SEED="777",
                            HL_OFFLINE_ITEMS=str(N_ITEMS), HL_OFFLINE_DIM="16"))
    group = "model-group"
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "model-broker.log"),
                      topics=C.TOPICS + [state_topic(group)])
    a, snap_a = worker(ck, broker, model, "model-a", group)
    a.wait_event("partition_assigned", 20)
    errors = []
    C.paced_producer(broker.bootstrap, events, 2000, errors).join(60)
    C.wait_consumed([a], len(events), 30)
    C.wait_idle([a], 10)
    rc_a, _secs = a.term(30)
    users = len({e[0] for e in events})
    kept = ["model.dir=" + os.path.join(snap_a, "models")]
    b, snap_b = worker(ck, broker, model_b, "model-b", group, kept)
    ok_b = b.wait_event("restored", 40, count=PARTS)
    C.wait_idle([b], 5)
    migrated = b.metric_or("halflife_users_migrated_total", 0)
    rebuilt = b.metric_or("halflife_users_rebuilt_total", 0)
    rc_b, _secs = b.term(30)
    ck.check("model.other_model_migrated", rc_a == 0 and rc_b == 0 and ok_b and not errors
             and migrated == users and rebuilt == 0,
             "exits %s/%s, restored %s, migrated %s rebuilt %s of %d users" % (
                 rc_a, rc_b, ok_b, migrated, rebuilt, users))
    want, _offs = C.dump_state(snap_b)
    r, snap_r = worker(ck, broker, model_b, "model-r", group)
    ok_r = r.wait_event("restored", 40, count=PARTS)
    C.wait_idle([r], 5)
    moved = (r.metric_or("halflife_users_migrated_total", 0),
             r.metric_or("halflife_users_rebuilt_total", 0))
    rc_r, _secs = r.term(30)
    got, _offs = C.dump_state(snap_r)
    diff = C.state_diff(got, want)
    ck.check("model.rewritten_in_the_new_model", rc_r == 0 and ok_r and moved == (0, 0) and
             not diff and len(want) == users,
             "exit %s, restored %s, migrated/rebuilt %s, %d of %d users differ (e.g. %s)" % (
                 rc_r, ok_r, moved, len(diff), len(want), diff[:3]))


# make test runs the quick cases (each of the others restarts workers or
# waits out session timeouts for over a minute); make test-long (HL_LONG=1,
# also in .ci/run) runs the others. HL_CASE=name runs one case either way.
QUICK = ("tombstones", "refused")


def run(ck):
    only = os.environ.get("HL_CASE")
    long_run = os.environ.get("HL_LONG") == "1"
    for name, fn in (("crash", case_crash), ("rebalance", case_rebalance),
                     ("zombie", case_zombie), ("cache", case_cache),
                     ("tombstones", case_tombstones), ("refused", case_refused),
                     ("model", case_model)):
        if only and only != name:
            continue
        if not only and (name in QUICK) == long_run:
            continue
        t0 = time.time()
        fn(ck)
        ck.procs.kill_all()
        print("    (%s: %.0f s)" % (name, time.time() - t0))


def main():
    return C.run_main("changelog", "state_through_kafka", run)


if __name__ == "__main__":
    sys.exit(main())
