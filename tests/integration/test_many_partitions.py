"""test_many_partitions.py - one worker thread given more partitions than any
fixed table would hold (issue "worker/ layout", Fix: a thread's partition
arrays had room for 4096 and were written without bounds checks, so a 5,000
partition assignment overflowed the heap).

A `halflife broker` with a 5,000-partition input topic, one `halflife run`
with worker.threads=1 (so one thread owns every shard), a few hundred
events produced by python3-confluent-kafka. Checks, under AddressSanitizer
when make test runs with SAN=1:
- every partition is assigned and the worker reports ready;
- every event is consumed and applied, each user gets a list;
- SIGTERM exits 0 with a snapshot of every partition that holds users, and
  the final totals account for every event.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402

PARTS = 5000
N_EVENTS, N_USERS, N_ITEMS = 600, 150, 200
SLOW = 3 if os.environ.get("HL_SAN") == "1" else 1


def run(ck):
    model, _csv, events = C.prepare(ck.tmp, N_EVENTS, N_USERS, N_ITEMS)
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker.log"), topics=[C.TOPIC])
    snapdir = os.path.join(ck.tmp, "snapshots")
    w = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "w.log"),
                 ["worker.threads=1", "group.id=many", "snapshot.dir=" + snapdir,
                  "snapshot.interval.ms=0", "kafka.fetch.wait.max.ms=10",
                  "shutdown.timeout.ms=60000"])
    assigned = w.wait_event("partition_assigned", 120 * SLOW, count=PARTS)
    ready = False
    deadline = time.time() + 60 * SLOW
    while assigned and not ready and time.time() < deadline:
        ready = w.metric_or("halflife_ready") == 1
        time.sleep(0.2)
    ck.check("thread_takes_5000_partitions", assigned and ready and w.p.poll() is None,
             "assigned %s, ready %s, worker exit %s" % (assigned, ready, w.p.poll()))

    users = len({e[0] for e in events})
    last = U.produce_events(broker.bootstrap, C.TOPIC, events)
    consumed = C.wait_consumed([w], N_EVENTS, 120 * SLOW)
    lists = w.metric_or("halflife_lists_published_total")
    ck.check("every_event_consumed",
             len(last) == users and consumed == N_EVENTS and lists >= users,
             "%d of %d users produced, consumed %d of %d, %d lists"
             % (len(last), users, consumed, N_EVENTS, lists))

    rc, secs = w.term(90 * SLOW)
    tot = w.totals() or {}
    parts = {p for (p, _off) in last.values()}
    snaps = C.newest_snapshots(snapdir)
    missing = [p for p in parts if p not in snaps]
    ck.check("sigterm_snapshots_every_shard",
             rc == 0 and not missing and tot.get("consumed") == N_EVENTS and
             tot.get("applied") == N_EVENTS and tot.get("users") == users,
             "exit %s after %.1f s, %d of %d partitions with users lack a snapshot (e.g. %s), "
             "totals %s" % (rc, secs, len(missing), len(parts), missing[:3], tot))


if __name__ == "__main__":
    sys.exit(C.run_main("many_partitions", "thread_takes_5000_partitions", run))
