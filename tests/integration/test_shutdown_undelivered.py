"""test_shutdown_undelivered.py - a graceful stop while no list can be
delivered ends within shutdown.timeout.ms (DESIGN.md section 2).

A shard thread keeps at most eight batches whose lists are undelivered
(flight.c); it reads no ninth before the oldest lands. That wait used to
end only on a stop-now, so with the output unreachable and records still
coming in, SIGTERM never reached the graceful stop: the process hung
joining the thread until run.c's last-resort alarm (shutdown.timeout.ms
plus 5 s) killed it, with no commit and no group leave. (The thread now
waits in its loop, between looks at its mailbox, and a stop ends the
loop; the graceful stop's drain then gives up at shutdown.timeout.ms.)

Separate processes over TCP: a `halflife broker`, events produced by
python3-confluent-kafka + python3-avro, one `halflife run` whose lists'
producer holds every list for 15 minutes (kafka.linger.ms=900000, its
maximum): to the worker that reads as an output topic that cannot be
reached, while the input topic stays readable. Small batches fill the
eight flights long before the input ends. Checks:
- the worker is stuck behind its undelivered lists before the signal (it
  stopped consuming with records left);
- SIGTERM: it exits by itself (not by the alarm's SIGALRM) within
  shutdown.timeout.ms plus a margin shorter than the alarm's 5 s (a
  sanitizer build on a loaded machine needs most of it), and
  logs event=drain_abandoned or delivery_wait_abandoned (it gave up
  waiting for deliveries);
- no offset is committed: none of its lists was delivered before the stop,
  so a restart reads every event again (at-least-once output).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, PARTS = 3000, 200, 300, 2
TIMEOUT_MS = 4000
MARGIN_S = 4.0          # run.c's alarm fires 5 s past shutdown.timeout.ms; rc >= 0 rules it out too
COMMON = ["worker.threads=1", "kafka.fetch.wait.max.ms=10", "batch.max.messages=20",
          "kafka.session.timeout.ms=3000", "kafka.heartbeat.interval.ms=1000"]


def run(ck):
    model, _csv, events = C.prepare(ck.tmp, N_EVENTS, N_USERS, N_ITEMS)
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker.log"))
    conf = COMMON + ["kafka.linger.ms=900000",
                     "snapshot.dir=" + os.path.join(ck.tmp, "snapshots"),
                     "snapshot.interval.ms=0", "shutdown.timeout.ms=%d" % TIMEOUT_MS,
                     "group.id=undelivered"]
    w = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "w.log"), conf)
    errors = []
    prod = C.paced_producer(broker.bootstrap, events, 5000, errors)
    assigned = w.wait_event("partition_assigned", 20, count=PARTS)
    prod.join(60)
    C.wait_idle([w], 20)
    consumed = w.metric_or("halflife_events_consumed_total")
    ck.check("stuck_behind_undelivered_lists",
             assigned and not errors and 0 < consumed < len(events),
             "assigned %s, producer errors %s, consumed %s of %d (want some, not all)"
             % (assigned, errors[:3], consumed, len(events)))

    rc, secs = w.term(TIMEOUT_MS / 1000.0 + 10)
    gave_up = w.events("drain_abandoned") + w.events("delivery_wait_abandoned")
    ck.check("sigterm_exits_within_timeout",
             rc != "timeout" and rc >= 0 and secs < TIMEOUT_MS / 1000.0 + MARGIN_S and
             len(gave_up) > 0,
             "exit status %s after %.2f s (timeout %d ms, margin %.1f s), "
             "event=drain_abandoned or delivery_wait_abandoned lines %d"
             % (rc, secs, TIMEOUT_MS, MARGIN_S, len(gave_up)))

    comm = C.committed(broker.bootstrap, "undelivered", PARTS)
    ck.check("no_offset_past_undelivered_lists", all(o < 0 for o in comm.values()),
             "committed %s; no list was delivered before the stop" % comm)
    print("    (consumed %d of %d before the stop; exit %s after %.2f s)"
          % (consumed, len(events), rc, secs))


def main():
    return C.run_main("shutdown_undelivered", "stop_gives_up_on_deliveries", run)


if __name__ == "__main__":
    sys.exit(main())
