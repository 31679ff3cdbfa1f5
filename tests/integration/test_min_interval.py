"""test_min_interval.py - recs.min.interval.ms end to end (DESIGN.md section 7).

One `halflife broker`; one stream of events (python3-confluent-kafka +
python3-avro); two `halflife run` workers in two groups read it at the same
time with small batches, one with recs.min.interval.ms=0 (a list after every
batch that touched a user) and one with an interval of 30 minutes of event
time, each into its own output topic. After every event is consumed both get
SIGTERM (the gated one publishes the lists it still held back). Then:
- the gated worker published far fewer lists;
- no user got more lists than the interval allows over the stream's span
  of event time;
- every user's last gated list equals the offline reference
  (build/tests/test_offline), as the ungated one's does.
Along the way, /metrics of the ungated worker: the model's version holds a
quote and a backslash, so halflife_model_info's label must be escaped
(promtool check metrics passes); and when a third worker joins its group
(sharing its snapshot.dir) the partitions it gives up leave its /metrics:
no halflife_users, halflife_state_bytes, halflife_consumer_lag or
halflife_events_consumed_total series for them, even after several
librdkafka statistics rounds. Last, a gated worker killed with SIGKILL
while it holds users back, restarted, then fed events of only half the
users: every user's last list still equals the offline reference.
"""
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402
from test_e2e import compare  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS = 6000, 400, 1000
INTERVAL_MS = 30 * 60 * 1000        # the stream's mean step is 1 s of event time


def read_all(bootstrap, topic):
    """Every list in topic up to its high watermarks, in partition order:
    {user: [list, ...]} in the order published."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap,
                  "group.id": "mi-reader-%d-%d" % (os.getpid(), time.time_ns()),
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    meta = c.list_topics(topic, timeout=10)
    parts = sorted(meta.topics[topic].partitions)
    high = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    reader = U.avro.io.DatumReader(U.load_schema("recommendation_list.avsc"))
    by_user, pos = {}, {p: 0 for p in parts}
    deadline = time.time() + 30
    try:
        while time.time() < deadline and any(pos[p] < high[p] for p in parts):
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            pos[msg.partition()] = msg.offset() + 1
            d = U.decode_list(reader, msg.value())
            by_user.setdefault(d["user_id"], []).append(d)
    finally:
        c.close()
    return by_user, sum(high.values())


def wait_consumed(workers, n, deadline):
    while time.time() < deadline:
        if all(w.metric("halflife_events_consumed_total") >= n for w in workers):
            return True
        time.sleep(0.3)
    return False


SERIES = ("halflife_users", "halflife_state_bytes", "halflife_consumer_lag",
          "halflife_events_consumed_total")


def partitions_shown(text):
    """{series name: set of partition labels shown} for SERIES."""
    out = {n: set() for n in SERIES}
    for line in text.splitlines():
        name = line.split("{")[0]
        if name in out and 'partition="' in line:
            out[name].add(int(line.split('partition="')[1].split('"')[0]))
    return out


def check_metrics(w, check, tmp, common, bootstrap, model):
    text = w.metrics()
    info = [l for l in text.splitlines() if l.startswith("halflife_model_info{")]
    check("model_version_label_escaped",
          info and 'version="o\\"fl\\\\ne-random-1000-16"' in info[0],
          "halflife_model_info is %s" % info)
    why = U.promtool_check(text)
    check("promtool_check_metrics", why in (None, "absent"), why)
    # A third member takes some of the group's partitions.
    third = U.Worker(bootstrap, model, os.path.join(tmp, "third.log"),
                     extra=common + ["group.id=mi-every", "output.topic=recs-every",
                                     "snapshot.dir=" + os.path.join(tmp, "every")])
    deadline, revoked = time.time() + 30, set()
    while time.time() < deadline and not revoked:
        time.sleep(0.3)
        revoked = {int(l.split("partition=")[1].split()[0])
                   for l in open(w.log_path).read().splitlines() if "partition_revoked" in l}
    time.sleep(1.5)                     # five statistics rounds
    shown = partitions_shown(w.metrics())
    stale = {n: sorted(shown[n] & revoked) for n in SERIES if shown[n] & revoked}
    check("revoked_partitions_leave_metrics", revoked and not stale and shown["halflife_users"],
          "revoked %s, still shown %s (users shown for %s)"
          % (sorted(revoked), stale, sorted(shown["halflife_users"])))
    rc = third.stop()
    check("third_member_exits_0", rc == 0, "exit status %s" % rc)


def wait_settled(w, at_least, timeout=60):
    """Waits until w consumed at least at_least events and then nothing more
    for 1.5 s; returns the count."""
    deadline, last, since = time.time() + timeout, -1, time.time()
    n = 0
    while time.time() < deadline:
        try:
            n = w.metric("halflife_events_consumed_total")
        except OSError:
            n = 0                       # /metrics not listening yet
        if n != last:
            last, since = n, time.time()
        elif n >= at_least and time.time() - since >= 1.5:
            break
        time.sleep(0.2)
    return n


def crash_phase(check, tmp, common, bootstrap, model, events):
    """kill -9 while users are held back, then a second half that touches only
    some users: the others' last lists must still come out (their pending
    events are never behind a snapshot's offset)."""
    import signal
    first = events[:3000]
    second = [e for e in events[3000:] if int(e[0][1:]) < N_USERS // 2]
    path = os.path.join(tmp, "crash.csv")
    with open(path, "w") as f:
        f.write("user_id,item_id,event_type,timestamp_ms,weight\n")
        for (u, i, t, ts, w) in first + second:
            f.write("%s,%s,%s,%d,%s\n" % (u, i, t, ts, "" if w is None else repr(w)))
    extra = common + ["group.id=mi-crash", "input.topic=crash-events", "output.topic=recs-crash",
                      "snapshot.dir=" + os.path.join(tmp, "crash"), "snapshot.interval.ms=100",
                      "recs.min.interval.ms=%d" % INTERVAL_MS]
    U.produce_events(bootstrap, "crash-events", first)
    w = U.Worker(bootstrap, model, os.path.join(tmp, "crash1.log"), extra=extra)
    n1 = wait_settled(w, len(first))
    time.sleep(0.5)                                 # a few snapshot rounds
    w.p.send_signal(signal.SIGKILL)
    w.p.wait()
    w.log.close()
    U.produce_events(bootstrap, "crash-events", second)
    w = U.Worker(bootstrap, model, os.path.join(tmp, "crash2.log"), extra=extra)
    n2 = wait_settled(w, 1)
    rc = w.stop()
    check("crash_consumed_and_restarted", n1 == len(first) and n2 >= len(second) and rc == 0,
          "first life consumed %d of %d, second %d (>= %d), exit %s"
          % (n1, len(first), n2, len(second), rc))
    by_user, _ = read_all(bootstrap, "recs-crash")
    last = {u: ls[-1] for u, ls in by_user.items()}
    offline = U.offline_lists(path, model)
    bad = compare(last, offline, first + second)
    check("crash_last_lists_match_offline", not bad and len(last) == len(offline),
          "%d mismatches of %d users (%d published), e.g. %s"
          % (len(bad), len(offline), len(last), bad[:3]))


def main():
    why = U.have_prereqs()
    if not why and os.environ.get("HL_LONG") != "1":
        why = "runs in make test-long (HL_LONG=1), as make test keeps to ten minutes"
    if why:
        print("SKIP min_interval.fewer_lists_same_final: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_mi_")
    model, events_csv = os.path.join(tmp, "m.hlm"), os.path.join(tmp, "e.csv")
    U.make_model(model, N_ITEMS, 16)
    U.set_model_version(model, 'o"fl\\ne-random-1000-16')
    U.make_events(events_csv, N_EVENTS, N_USERS, N_ITEMS)
    events = U.read_events_csv(events_csv)
    broker = U.Broker(4, ["behaviour-events", "recs-every", "recs-gated",
                          "behaviour-events.dlq", "crash-events", "recs-crash"],
                      os.path.join(tmp, "broker.log"))
    common = ["worker.threads=2", "batch.max.messages=50", "kafka.fetch.wait.max.ms=10",
              "kafka.statistics.interval.ms=300", "kafka.heartbeat.interval.ms=500",
              "kafka.session.timeout.ms=6000"]
    workers = []
    failed = 0

    def check(name, ok, why):
        nonlocal failed
        print(("PASS min_interval.%s" % name) if ok else ("FAIL min_interval.%s: %s" % (name, why)))
        failed += 0 if ok else 1

    try:
        for name, interval in (("every", 0), ("gated", INTERVAL_MS)):
            workers.append(U.Worker(broker.bootstrap, model, os.path.join(tmp, name + ".log"),
                                    extra=common + ["group.id=mi-" + name,
                                                    "output.topic=recs-" + name,
                                                    "snapshot.dir=" + os.path.join(tmp, name),
                                                    "recs.min.interval.ms=%d" % interval]))
        U.produce_events(broker.bootstrap, "behaviour-events", events)
        ok = wait_consumed(workers, len(events), time.time() + 60)
        check("both_consume_everything", ok, "not every event consumed within 60 s (logs in %s)" % tmp)
        check_metrics(workers[0], check, tmp, common, broker.bootstrap, model)
        rcs = [w.stop() for w in workers]
        check("sigterm_exits_0", rcs == [0, 0], "exit statuses %s" % rcs)
        gated_log = open(os.path.join(tmp, "gated.log")).read()
        check("not_ignored", "config_ignored" not in gated_log,
              "the worker still warns that the key is ignored")
        workers = []
        every, n_every = read_all(broker.bootstrap, "recs-every")
        gated, n_gated = read_all(broker.bootstrap, "recs-gated")
        print("    (lists published: %d every batch, %d with %d ms)" % (n_every, n_gated, INTERVAL_MS))
        check("fewer_lists", 0 < n_gated < 0.6 * n_every,
              "%d lists with the interval vs %d without" % (n_gated, n_every))
        # A list after the first needs the shard's newest event time to pass
        # the previous list's time + the interval, and (the stream's time
        # only grows) a user's event since the list before: so at most two
        # lists per interval of stream time, plus the first and the flush.
        span = max(e[3] for e in events) - min(e[3] for e in events)
        bound = 2 * span // INTERVAL_MS + 3
        over = ["%s: %d" % (u, len(ls)) for u, ls in gated.items() if len(ls) > bound]
        check("lists_bounded_by_interval", not over,
              "%d users got more than %d lists, e.g. %s" % (len(over), bound, over[:3]))
        crash_phase(check, tmp, common, broker.bootstrap, model, events)
        offline = U.offline_lists(events_csv, model)
        for name, by_user in (("every", every), ("gated", gated)):
            last = {u: max(ls, key=lambda d: d["source"]["offset"]) for u, ls in by_user.items()}
            bad = compare(last, offline, events)
            check("last_lists_match_offline_" + name, not bad and len(last) == len(offline),
                  "%d mismatches of %d users (%d published), e.g. %s"
                  % (len(bad), len(offline), len(last), bad[:3]))
    finally:
        for w in workers:
            w.stop()
        broker.stop()
    if not failed:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
