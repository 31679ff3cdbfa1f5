"""test_stale_lists.py - a partition moves while its old owner's lists are
stuck in librdkafka's queue; none of them may land after the new owner's
newer lists (a compacted output topic would keep the stale one for good).

Separate processes over TCP: a `halflife broker --refuse-produce FILE`,
two `halflife run` in one group. The worker's producer retries for ever
(message.timeout.ms=0), so a list the broker turns away with a retriable
error stays queued in librdkafka, as it does while the broker is away:
- the first half of the events is in the input; the broker refuses every
  Produce with NOT_ENOUGH_REPLICAS (retriable);
- worker A consumes it all: its lists are queued, undelivered;
- worker B joins: A's release waits shutdown.timeout.ms for them, then
  lets its moved partitions go (event=release_undelivered);
- A is stopped (SIGSTOP: its connection to the broker stays away while
  B's comes back, the order a real outage can take), the refusal ends,
  the second half of the events goes in, and B delivers the newer lists
  of the users of its partitions (its committed offsets reach the end);
- A continues (SIGCONT) and finishes: every offset committed.
Then, read in log order as compaction keeps it, every user's last list
in the output topic must come from that user's last event. Before the
fix A's queued lists of the moved partitions landed after B's, so those
users' last list was an older one. And A's purge is no refusal: counted
as purged, logged once (check_purge_wording).
"""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402
import test_delivery_refused as R  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, PARTS = 800, 80, 1000, 4
GROUP = "stale"
# A session long enough that A, stopped for the few seconds B needs, keeps
# its own partitions: only the release moves partitions here, never a
# session timeout. The eager assignor rebalances in one round (the mock
# waits session.timeout.ms - 1 s for each), so the test stays short.
COMMON = ["worker.threads=1", "kafka.fetch.wait.max.ms=10",
          "kafka.session.timeout.ms=10000", "kafka.heartbeat.interval.ms=1000",
          "kafka.partition.assignment.strategy=range",
          "kafka.auto.commit.interval.ms=500", "shutdown.timeout.ms=1500",
          "group.id=" + GROUP]


def last_lists_in_log_order(bootstrap):
    """{user: (partition, offset) of the source of its last list}, the
    output topic read to its end in log order (what compaction keeps)."""
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": bootstrap,
                  "group.id": "stale-reader-%d" % time.time_ns(),
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "enable.partition.eof": True})
    deadline = time.time() + 20
    U.assign_from_start(c, "recommendations", deadline)
    reader = U.avro.io.DatumReader(U.load_schema("recommendation_list.avsc"))
    got, eof = {}, set()
    try:
        while len(eof) < PARTS and time.time() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == -191:        # _PARTITION_EOF
                    eof.add(m.partition())
                continue
            d = U.decode_list(reader, m.value())
            got[d["user_id"]] = (d["source"]["partition"], d["source"]["offset"])
    finally:
        c.close()
    return got


def owned(w):
    """Partitions w was assigned and still holds, from its log."""
    parts = set()
    for line in w.log_text().splitlines():
        for ev, on in (("partition_assigned", True), ("partition_revoked", False)):
            if " event=%s " % ev in line:
                p = int(line.split("partition=")[1].split()[0])
                parts = parts | {p} if on else parts - {p}
    return parts


def check_purge_wording(ck, a):
    """A's purge took back records nobody refused: one summary line with
    the count, halflife_delivery_purged_total, and no delivery error, no
    lists_refused or delivery_failed line naming the purge (before, each
    purged list read as a refusal and counted in
    halflife_delivery_errors_total)."""
    released = [kv for _ts, kv in a.events("release_undelivered")]
    purged_lines = int(released[-1].get("records_purged", "0")) if released else 0
    refusals = [kv for ev in ("delivery_failed", "lists_refused")
                for _ts, kv in a.events(ev) if "Purged" in kv.get("err", "")]
    errors = a.metric_or("halflife_delivery_errors_total")
    purged = a.metric_or("halflife_delivery_purged_total")
    ck.check("purge_not_refusal", purged_lines > 0 and purged > 0 and errors == 0
             and not refusals,
             "release_undelivered records_purged=%d, halflife_delivery_purged_total %s, "
             "halflife_delivery_errors_total %s, purge logged as a refusal %d times, e.g. %s"
             % (purged_lines, purged, errors, len(refusals), refusals[:1]))


def body(ck):
    model, _csv, events = C.prepare(ck.tmp, N_EVENTS, N_USERS, N_ITEMS)
    events = sorted(events, key=lambda e: e[3])
    first, second = events[:N_EVENTS // 2], events[N_EVENTS // 2:]
    path = os.path.join(ck.tmp, "refuse")
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker.log"),
                      extra=["--refuse-produce", path])
    last = U.produce_events(broker.bootstrap, C.TOPIC, first)
    on = R.refuse(broker, path, True, "NOT_ENOUGH_REPLICAS")
    a = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "a.log"),
                 COMMON + ["snapshot.dir=" + os.path.join(ck.tmp, "snap-a")])
    consumed = C.wait_consumed([a], len(first), 30)
    b = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "b.log"),
                 COMMON + ["snapshot.dir=" + os.path.join(ck.tmp, "snap-b")])
    released = a.wait_event("release_undelivered", 30)
    deadline = time.time() + 30
    while time.time() < deadline and not (owned(b) and b.metric_or(
            "halflife_assigned_partitions") == len(owned(b))):
        time.sleep(0.1)
    moved = owned(b)
    ck.check("setup", on and consumed >= len(first) and released and moved,
             "refusal %s, A consumed %d of %d, release_undelivered %s, B owns %s"
             % (on, consumed, len(first), released, sorted(moved)))
    os.kill(a.p.pid, signal.SIGSTOP)
    try:
        off = R.refuse(broker, path, False)
        last.update(U.produce_events(broker.bootstrap, C.TOPIC, second))
        high = {}
        for p, o in last.values():      # a partition's newest record is a user's last
            high[p] = max(high.get(p, 0), o + 1)
        b_high = {p: h for p, h in high.items() if p in moved}
        b_done = C.wait_committed(broker.bootstrap, GROUP, b_high, 6)
    finally:
        os.kill(a.p.pid, signal.SIGCONT)
    ck.check("b_delivered_first", off and all(b_done.get(p, -1) >= h
                                              for p, h in b_high.items()),
             "refusal off %s; B's partitions committed %s, high %s" % (off, b_done, b_high))
    done = C.wait_committed(broker.bootstrap, GROUP, high, 30)
    got = last_lists_in_log_order(broker.bootstrap)
    stale = sorted(u for u in last if got.get(u) != last[u])
    ck.check("no_stale_last_list", not stale and all(done.get(p, -1) >= h
                                                     for p, h in high.items()),
             "%d of %d users' last list in log order is not from their last event, "
             "e.g. %s: last list from %s, last event at %s (B owns %s); committed %s, high %s"
             % (len(stale), len(last), stale[:3], [got.get(u) for u in stale[:3]],
                [last[u] for u in stale[:3]], sorted(moved), done, high))
    check_purge_wording(ck, a)
    for w, name in ((a, "a"), (b, "b")):
        rc, _secs = w.term(30)
        ck.check(name + "_clean_exit", rc == 0, "exit %s" % rc)
    broker.stop()


if __name__ == "__main__":
    sys.exit(C.run_main("test_stale_lists", "ran", body))
