"""test_metrics_truth.py - /metrics against counts known by construction,
across a live model swap and a rebalance (a second member joins, then
leaves).

A `halflife broker` with 4 partitions; python3-confluent-kafka produces
known events: good ones, ones naming items no model knows, ones dated
before event.min.ts.ms or days ahead (bad_timestamp), and truncated Avro.
Worker 1 consumes them all, a new model is renamed over model.path (one
swap), worker 2 joins (it restores two partitions from worker 1's
snapshots), more events arrive for new users, worker 2 leaves (worker 1
restores them back). Checks, summed over both workers where a figure is
per process:
- consumed, applied, invalid and dead letters by reason, unknown items,
  swaps, migrated users equal what was produced;
- halflife_users{partition} equals the distinct users of the partition's
  valid events, and halflife_snapshot_bytes{partition} the size of the
  partition's newest snapshot file, on each owner right after it restored
  the partition (no event since) and at the end: a restore must not leave
  0, or the value of the worker's earlier ownership, until the next batch;
- halflife_consumer_lag of every partition reaches 0 once all is
  consumed, those back from worker 2 too (its value was this worker's
  earlier committed offset's lag until a record came);
- lists published equal the lists on the output topic, each histogram's
  _count equals its counter, and promtool accepts the text;
- help_is_readme: every HELP line says what README's metric table says of
  that metric, word for word (a HELP changed without its row, or the
  reverse, fails here; test_config_docs checks only the names).
"""
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402

PARTS, ITEMS = 4, 200
N_GOOD, N_UNKNOWN, N_PAST, N_FUTURE, N_TRUNC, N_LATE = 800, 30, 7, 11, 13, 120
SLOW = 3 if os.environ.get("HL_SAN") == "1" else 1
COMMON = ["worker.threads=1", "kafka.fetch.wait.max.ms=10", "model.check.ms=200",
          "snapshot.interval.ms=500", "group.id=truth", "event.min.ts.ms=1",
          "kafka.session.timeout.ms=6000", "kafka.heartbeat.interval.ms=1000",
          "kafka.statistics.interval.ms=200", "kafka.auto.commit.interval.ms=1000"]


def wait_for(cond, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    return cond()


def samples(text):
    """{(name, labels): value} of a /metrics text."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, val = line.rpartition(" ")
            name, _, labels = key.partition("{")
            out[(name, labels.rstrip("}"))] = float(val)
    return out


def by_part(s, name):
    return {int(lab.split('"')[1]): v for (n, lab), v in s.items()
            if n == name and lab.startswith("partition=")}


def total(s, name, labels=None):
    return sum(v for (n, lab), v in s.items() if n == name and (labels is None or labels in lab))


def produce(bootstrap, events, bad=0):
    """Produces events (and bad truncated records); {partition: set of
    users} of the valid ones (ts > 0 and not days ahead)."""
    from confluent_kafka import Producer
    import avro.io
    import io
    import struct
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    writer = avro.io.DatumWriter(U.load_schema("behaviour_event.avsc"))
    users, now = {}, int(time.time() * 1000)

    def noted(valid):
        def cb(err, msg):
            if err is None and valid:
                users.setdefault(msg.partition(), set()).add(msg.key().decode())
        return cb
    for (u, i, ts) in events:
        buf = io.BytesIO()
        buf.write(b"\x00" + struct.pack(">I", 1))
        writer.write({"user_id": u, "item_id": i, "event_type": "CLICK",
                      "timestamp": U.ms_to_dt(ts), "weight": None, "context": None},
                     avro.io.BinaryEncoder(buf))
        p.produce(C.TOPIC, key=u.encode(), value=buf.getvalue(),
                  on_delivery=noted(0 < ts < now + 3600000))
    for k in range(bad):
        p.produce(C.TOPIC, key=b"bad%d" % k, value=b"\x00\x00\x00\x00\x01\x0au000")
    if p.flush(30) != 0:
        raise RuntimeError("events not delivered")
    return users


def count_topic(bootstrap, topic, timeout=20):
    """Records in topic (every partition read to its end)."""
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "truth-%d" % time.time_ns(),
                  "enable.partition.eof": True, "enable.auto.commit": False})
    deadline, n, eof = time.time() + timeout, 0, set()
    if not U.assign_from_start(c, topic, deadline):
        return -1
    parts = len(c.assignment())
    while len(eof) < parts and time.time() < deadline:
        m = c.poll(0.2)
        if m is not None and m.error() is None:
            n += 1
        elif m is not None and m.error().code() == -191:
            eof.add(m.partition())
    c.close()
    return n


def newest_sizes(snapdir):
    """{partition: bytes of its newest snapshot file}."""
    best = {}
    for f in os.listdir(snapdir):
        parts = f.split(".")
        if len(parts) == 4 and parts[3] == "hls":
            p, off = int(parts[1]), int(parts[2])
            if p not in best or off > best[p][0]:
                best[p] = (off, os.path.getsize(os.path.join(snapdir, f)))
    return {p: v[1] for p, v in best.items()}


def shard_gauge(w, name, truth):
    """(ok, detail): w's gauge name has a series for each partition w owns
    and none other, each truth(partition)."""
    s = samples(w.metrics())
    owned = set(by_part(s, "halflife_events_consumed_total"))
    want = {p: truth(p) for p in owned}
    got = by_part(s, name)
    return bool(owned) and got == want, "%s %s, want %s" % (name, got, want)


def check_shards(ck, name, w, users, snapdir):
    """The users and snapshot_bytes gauges reach the truth: no event is
    to come that would refresh them."""
    gauges = (("users", "halflife_users", lambda p: len(users.get(p, ()))),
              ("snapshot_bytes", "halflife_snapshot_bytes",
               lambda p: newest_sizes(snapdir).get(p, 0)))
    for tag, metric, truth in gauges:
        ok = wait_for(lambda: shard_gauge(w, metric, truth)[0], 8 * SLOW)
        ck.check("%s_%s" % (name, tag), bool(ok), shard_gauge(w, metric, truth)[1])


def make_model(path, items, seed):
    env = dict(os.environ, HL_OFFLINE_MAKE_MODEL=path, HL_OFFLINE_ITEMS=str(items),
               HL_OFFLINE_DIM="16", HL_OFFLINE_SEED=str(seed))
    subprocess.run([os.path.join(U.BUILD, "tests", "test_offline")], env=env, check=True)


def first_phase(ck, br, live, snapdir):
    now = int(time.time() * 1000)
    ev = [("u%d" % (k % 50), "i%06d" % (k % ITEMS), now - 100000 + k) for k in range(N_GOOD)]
    ev += [("u%d" % (k % 50), "zz%d" % k, now - 50000 + k) for k in range(N_UNKNOWN)]
    ev += [("u%d" % k, "i000001", -5000) for k in range(N_PAST)]
    ev += [("u%d" % k, "i000001", now + 10 * 86400000) for k in range(N_FUTURE)]
    users = produce(br.bootstrap, ev, N_TRUNC)
    w1 = C.Worker(ck.procs, br.bootstrap, live, os.path.join(ck.tmp, "w1.log"),
                  COMMON + ["snapshot.dir=" + snapdir])
    n = C.wait_consumed([w1], len(ev) + N_TRUNC, 30 * SLOW)
    ck.check("w1_consumed", n == len(ev) + N_TRUNC, "%s of %d" % (n, len(ev) + N_TRUNC))
    return w1, users


def swap(ck, w1, live, tmp):
    make_model(os.path.join(tmp, "b.hlm"), ITEMS + 50, 7)
    os.rename(os.path.join(tmp, "b.hlm"), live)
    # Each shard migrates on its own thread after the swap: the count
    # reaches every user a little later.
    ok = wait_for(lambda: w1.metric_or("halflife_model_swaps_total") == 1 and
                  w1.metric_or("halflife_users_migrated_total") == 50, 20 * SLOW)
    s = samples(w1.metrics())
    ck.check("one_swap_all_migrated", ok and total(s, "halflife_users_migrated_total") == 50,
             "swaps %s migrated %s (want 1, 50)" % (total(s, "halflife_model_swaps_total"),
                                                  total(s, "halflife_users_migrated_total")))


def join_and_leave(ck, br, w1, live, snapdir, users):
    """Worker 2 joins, takes events for new users, leaves; its last
    /metrics samples."""
    w2 = C.Worker(ck.procs, br.bootstrap, live, os.path.join(ck.tmp, "w2.log"),
                  COMMON + ["snapshot.dir=" + snapdir])
    both = lambda: (w1.metric_or("halflife_assigned_partitions") == 2 and  # noqa: E731
                    w2.metric_or("halflife_assigned_partitions") == 2)
    ck.check("w2_joined", bool(wait_for(both, 30 * SLOW)), "assignments not split 2/2")
    check_shards(ck, "w2_gauges_after_restore", w2, users, snapdir)
    # Each partition's consumed series is its owner's: their sum is all
    # the partitions' records, once each.
    base = C.wait_consumed([w1, w2], N_GOOD + N_UNKNOWN + N_PAST + N_FUTURE + N_TRUNC, 1)
    now = int(time.time() * 1000)
    late = [("n%d" % (k % 40), "i%06d" % (k % ITEMS), now + k) for k in range(N_LATE)]
    for p, us in produce(br.bootstrap, late).items():
        users.setdefault(p, set()).update(us)
    got = C.wait_consumed([w1, w2], base + N_LATE, 30 * SLOW)
    ck.check("late_consumed", got == base + N_LATE, "consumed %s, want %s + %d" %
             (got, base, N_LATE))
    check_shards(ck, "w2_gauges_after_events", w2, users, snapdir)
    s2 = samples(w2.metrics())
    rc, _secs = w2.term(30 * SLOW)
    ck.check("w2_left", rc == 0, "exit %s" % rc)
    back = wait_for(lambda: w1.metric_or("halflife_assigned_partitions") == 4, 30 * SLOW)
    ck.check("w1_took_back", bool(back), "w1 never owned 4 partitions again")
    check_shards(ck, "w1_gauges_after_restore", w1, users, snapdir)
    return s2


def check_counts(ck, br, s1, s2):
    both = lambda n, lab=None: total(s1, n, lab) + total(s2, n, lab)  # noqa: E731
    want = {"halflife_events_applied_total": N_GOOD + N_UNKNOWN + N_LATE,
            "halflife_unknown_items_total": N_UNKNOWN,
            "halflife_events_duplicate_total": 0,
            "halflife_model_swaps_total": 1,
            # moved once, at the swap: the hand-overs restore files of the
            # current model and must not count them again
            "halflife_users_migrated_total": 50,
            "halflife_users_rebuilt_total": 0,
            "halflife_snapshots_rejected_total": 0}
    for name, v in want.items():
        ck.check("count_" + name[9:], both(name) == v, "%s = %s, want %s" % (name, both(name), v))
    for name in ("halflife_events_invalid_total", "halflife_dlq_records_total"):
        got = (both(name, '"truncated"'), both(name, '"bad_timestamp"'), both(name))
        ck.check("count_" + name[9:], got == (N_TRUNC, N_PAST + N_FUTURE, N_TRUNC + N_PAST +
                                              N_FUTURE), "%s (truncated, bad_timestamp, all)"
                 " = %s" % (name, got))
    dlq = count_topic(br.bootstrap, C.TOPIC + ".dlq")
    ck.check("dlq_topic", dlq == N_TRUNC + N_PAST + N_FUTURE, "%d dead letters" % dlq)
    lists = count_topic(br.bootstrap, "recommendations")
    ck.check("lists_on_topic", lists == both("halflife_lists_published_total"),
             "topic %d, published %s" % (lists, both("halflife_lists_published_total")))
    for s in (s1, s2):
        pairs = [("halflife_batch_size_count", "halflife_batches_total"),
                 ("halflife_snapshot_duration_seconds_count", "halflife_snapshots_total")]
        bad = [(h, total(s, h), c, total(s, c, "ok")) for h, c in pairs
               if total(s, h) != total(s, c, "ok" if "snapshot" in c else None)]
        ck.check("histogram_counts", not bad, "%s" % bad)


def readme_rows():
    """{metric: its description} from README.md's metric table."""
    rows = {}
    with open(os.path.join(U.TOP, "README.md")) as f:
        for line in f:
            m = re.match(r"\| `(halflife_\w+)` \| \w+ \| [^|]* \| (.*) \|$", line.rstrip("\n"))
            if m:
                rows[m.group(1)] = m.group(2).replace("\\|", "|").strip()
    return rows


def check_help(ck, text):
    rows, bad, n = readme_rows(), [], 0
    for line in text.splitlines():
        if not line.startswith("# HELP "):
            continue
        name, _, help_text = line[7:].partition(" ")
        help_text = help_text.replace("\\n", "\n").replace("\\\\", "\\")
        n += 1
        if rows.get(name) != help_text:
            bad.append("%s: HELP %r, README %r" % (name, help_text, rows.get(name)))
    ck.check("help_is_readme", n > 50 and not bad,
             "%d of %d HELP lines differ from README's metric table, e.g. %s"
             % (len(bad), n, bad[:2]))


def run(ck):
    br = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker.log"))
    live, snapdir = os.path.join(ck.tmp, "live.hlm"), os.path.join(ck.tmp, "snap")
    make_model(live, ITEMS, 1)
    w1, users = first_phase(ck, br, live, snapdir)
    check_shards(ck, "w1_gauges", w1, users, snapdir)
    swap(ck, w1, live, ck.tmp)
    s2 = join_and_leave(ck, br, w1, live, snapdir, users)
    # Caught up: every partition's lag reaches 0 (statistics every 200 ms,
    # commits every second), those worker 2 held meanwhile too.
    lag = lambda: by_part(samples(w1.metrics()), "halflife_consumer_lag")  # noqa: E731
    ok = wait_for(lambda: set(lag()) == set(range(PARTS)) and max(lag().values()) == 0,
                  8 * SLOW)
    ck.check("lag_caught_up", bool(ok), "halflife_consumer_lag %s, want 0 each" % lag())
    text = w1.metrics()
    s1 = samples(text)
    check_counts(ck, br, s1, s2)
    why = U.promtool_check(text)
    ck.check("promtool", why in (None, "absent"), why)
    check_help(ck, text)
    rc, _secs = w1.term(30 * SLOW)
    ck.check("w1_stopped", rc == 0, "exit %s" % rc)


if __name__ == "__main__":
    sys.exit(C.run_main("metrics_truth", "ran", run))
