"""test_prefetch.py - what a catching-up worker holds in librdkafka's
prefetch is bounded per shard thread and shown in /metrics
(halflife_consumer_queued_records; deploy/README.md, Resources).

Every partition's queue is forwarded to its shard thread's queue, and
librdkafka 2.0.2 measures a forwarded queue at its destination, so
kafka.queued.min.messages bounds each thread's queue, whatever the number
of partitions (plus the fetch in flight when the bound was reached). A pod
catching up on a long backlog holds that many records in memory, about
200 B each at this stream's 30 B records; nothing showed it.

Separate processes over TCP: a `halflife broker` with four partitions,
N events produced before the worker starts (a backlog), one `halflife run`
slow enough to lag (one shard thread, exact scoring of 150k items at dim
64 for nearly every event), kafka.queued.min.messages=MIN. The producer
sends small message sets (kafka.batch.size) since the mock answers a fetch
with one set per partition: one fetch then adds at most a set per
partition beyond the bound. Checks:
- prefetch_shown: the gauge rose above 0 while the worker lagged (how far
  depends on librdkafka's fetch pacing: below the bound it fetches again
  only when its broker thread next looks, so the queue swings between 0
  and the bound);
- prefetch_bounded: it never exceeded MIN plus one fetch of every
  partition (four sets of at most BATCH bytes, 25 B per record at least);
  with kafka.queued.min.messages at the worker's default (1,000,000) the
  same run read 37,773.
- every event consumed, and the gauge back to 0 once idle.
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402

N, PARTS, MIN, BATCH = 40000, 4, 2000, 8192
BOUND = MIN + PARTS * BATCH // 25
ITEMS = 150000


def run(ck):
    model, csv = os.path.join(ck.tmp, "m.hlm"), os.path.join(ck.tmp, "e.csv")
    U.make_model(model, ITEMS, 64)
    U.make_events(csv, N, 40000, ITEMS)
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker.log"))
    with open(os.path.join(ck.tmp, "produce.log"), "w") as log:
        subprocess.run([U.HL, "produce", "--input", csv, "--format", "events-csv",
                        "-X", "kafka.bootstrap.servers=" + broker.bootstrap,
                        "-X", "kafka.batch.size=%d" % BATCH], check=True, stderr=log)
    w = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "w.log"),
                 ["worker.threads=1", "recs.scoring=exact", "batch.max.messages=256",
                  "kafka.queued.min.messages=%d" % MIN,
                  "snapshot.dir=" + os.path.join(ck.tmp, "snapshots")])
    seen, consumed, deadline = [], 0, time.time() + 120
    while time.time() < deadline and consumed < N:
        q = w.metric_or("halflife_consumer_queued_records")
        consumed = w.metric_or("halflife_events_consumed_total")
        if q >= 0:
            seen.append(q)
        time.sleep(0.1)
    ck.check("prefetch_shown", seen and max(seen) > 0,
             "largest halflife_consumer_queued_records %s while %s of %d events were "
             "consumed (want above 0)" % (max(seen) if seen else None, consumed, N))
    ck.check("prefetch_bounded", seen and max(seen) <= BOUND,
             "largest halflife_consumer_queued_records %s, want at most %d "
             "(queued.min.messages %d + one fetch of %d partitions)"
             % (max(seen) if seen else None, BOUND, MIN, PARTS))
    idle, t0 = -1, time.time()
    while time.time() < t0 + 10 and idle != 0:
        idle = w.metric_or("halflife_consumer_queued_records")
        time.sleep(0.2)
    ck.check("all_consumed_then_empty", consumed == N and idle == 0,
             "consumed %s of %d; the gauge reads %s once idle (want 0)" % (consumed, N, idle))
    rc, _secs = w.term(30)
    print("    (largest queue %s records, bound %d; exit %s)"
          % (max(seen) if seen else None, BOUND, rc))


def main():
    return C.run_main("prefetch", "prefetch_bounded", run)


if __name__ == "__main__":
    sys.exit(main())
