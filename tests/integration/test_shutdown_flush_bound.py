"""test_shutdown_flush_bound.py - a clean stop whose last records are not
delivered still ends within shutdown.timeout.ms (DESIGN.md section 2).

A `halflife broker --refuse-produce FILE` answers every Produce with
NOT_ENOUGH_REPLICAS (retriable: librdkafka keeps the records and retries)
once the input is written; one `halflife run` with recs.enabled=false (no
list holds an offset back, so every shard is saved and the stop is clean)
and fold-in (catalogue.foldin.min.events=2): users buying an item the
model does not know make it publish the item, a record no offset waits
for, which stays in the producer. Check:
- clean_stop_within_timeout: SIGTERM, exit 0 (nothing unsaved) within
  shutdown.timeout.ms plus a margin, and the record is given up
  (event=producer_purged). Before, the final flush waited until the stop's
  deadline, then hl_worker_destroy waited a whole shutdown.timeout.ms more
  for the same record (and run.c's last-resort alarm was already off):
  twice the bound, past a pod's grace period with the defaults.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402

TIMEOUT_MS = 5000
MARGIN_S = 3.5          # the stop itself takes TIMEOUT_MS (its flush waits); twice it is 5 s more
SLOW = 3 if os.environ.get("HL_SAN") == "1" else 1


def run(ck):
    model, _csv, events = C.prepare(ck.tmp, 200, 40, 100)
    last = events[-1]
    events += [(u, "new-1", last[2], last[3], last[4])
               for u in sorted({e[0] for e in events})[:6]]
    refuse = os.path.join(ck.tmp, "refuse")
    broker = C.Broker(ck.procs, 2, os.path.join(ck.tmp, "broker.log"),
                      topics=C.TOPICS + ["items"], extra=["--refuse-produce", refuse])
    C.U.produce_events(broker.bootstrap, C.TOPIC, events)
    with open(refuse, "w") as f:
        f.write("NOT_ENOUGH_REPLICAS\n")
    if not C.wait_for(lambda: "refuse_produce_on" in open(broker.log_path).read(), 20,
                      period=0.1):
        raise RuntimeError("the broker never started refusing Produce")
    w = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "w.log"),
                 ["worker.threads=1", "kafka.fetch.wait.max.ms=10", "group.id=flushbound",
                  "shutdown.timeout.ms=%d" % TIMEOUT_MS, "recs.enabled=false",
                  "snapshot.dir=" + os.path.join(ck.tmp, "snap"), "items.topic=items",
                  "catalogue.foldin.min.events=2"])
    if not (C.wait_consumed([w], len(events), 60 * SLOW) == len(events) and
            C.wait_for(lambda: w.metric_or("halflife_foldin_published_total") >= 1,
                       30 * SLOW, period=0.1)):
        raise RuntimeError("the worker never consumed every event and published new-1")
    rc, secs = w.term(2 * TIMEOUT_MS / 1000.0 + 10)
    purged = w.events("producer_purged")
    ck.check("clean_stop_within_timeout",
             rc == 0 and secs < TIMEOUT_MS / 1000.0 + MARGIN_S * SLOW and purged,
             "exit status %s after %.2f s (shutdown.timeout.ms=%d, margin %.1f s), "
             "event=producer_purged lines %d" % (rc, secs, TIMEOUT_MS, MARGIN_S, len(purged)))
    print("    (exit %s after %.2f s)" % (rc, secs))
    broker.stop()


if __name__ == "__main__":
    sys.exit(C.run_main("shutdown_flush_bound", "clean_stop_within_timeout", run))
