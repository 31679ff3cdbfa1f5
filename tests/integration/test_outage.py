"""test_outage.py - the broker goes away for 10 seconds and comes back
while a stream flows (issue 5, "A broker that goes away"; DESIGN.md
section 2).

Separate processes over TCP: a `halflife broker` (SIGUSR1 takes its brokers
down, SIGUSR2 brings them up, librdkafka's mock controls), events produced
at a steady rate by python3-confluent-kafka + python3-avro (which buffers
through the outage), one `halflife run` with a session timeout shorter than
the outage, so it also loses and regains its group membership. Checks:
- the worker waits: it is still running through the outage and after;
- it reports it: halflife_broker_up on /metrics reads 0 during the outage
  and 1 again after, and its log says event=broker_down from the outage on
  and, last, event=broker_up;
- it resumes without loss: every event produced is applied exactly once
  (applied = produced, nothing invalid or failed; at least once when the
  revocation was lost, whose partitions are read again from their last
  delivered offsets), every user's last list
  equals the offline reference, and the final snapshots equal an
  uninterrupted run's (`halflife snapshot dump` of every partition).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import test_e2e as E  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, PARTS = 8000, 400, 1000, 4
RATE = 500              # events/s: the stream flows about 16 s plus the outage
OUTAGE_S = 10
COMMON = ["worker.threads=2", "kafka.fetch.wait.max.ms=10",
          "kafka.session.timeout.ms=6000", "kafka.heartbeat.interval.ms=1000"]


def ts_iso(t):
    """A time as the worker's log writes it (UTC, ms), for comparisons."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (int(t * 1000) % 1000)


def watch_up(w, seconds, until=None):
    """Samples halflife_broker_up for up to seconds (or until it reads
    until); returns the values seen (-1: /metrics did not answer)."""
    seen, deadline = [], time.time() + seconds
    while time.time() < deadline:
        v = w.metric_or("halflife_broker_up")
        seen.append(v)
        if until is not None and v == until:
            break
        time.sleep(0.2)
    return seen


def run(ck):
    model, events_csv, events = C.prepare(ck.tmp, N_EVENTS, N_USERS, N_ITEMS)
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker.log"))
    snapdir = os.path.join(ck.tmp, "snapshots")
    w = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "worker.log"),
                 COMMON + ["snapshot.dir=" + snapdir, "snapshot.interval.ms=2000",
                           "group.id=outage"])
    errors = []
    t0 = time.time()
    prod = C.paced_producer(broker.bootstrap, events, RATE, errors)
    assigned = w.wait_event("partition_assigned", 20, count=PARTS)
    time.sleep(max(0.0, t0 + 5 - time.time()))
    before = w.metric_or("halflife_events_consumed_total")
    before_up = w.metric_or("halflife_broker_up")
    t_down = time.time()
    broker.down()
    during = watch_up(w, OUTAGE_S - 0.3)
    time.sleep(max(0.0, t_down + OUTAGE_S - time.time()))
    broker.up()
    t_up = time.time()
    alive = w.p.poll() is None
    after = watch_up(w, 30, until=1.0)  # reconnect backoff (max 10 s) + a 5 s stats period
    back_s = time.time() - t_up
    ck.check("worker_waits", assigned and alive and w.p.poll() is None and before > 0,
             "assigned %s, alive through the outage %s, consumed %d before it"
             % (assigned, alive, before))
    ck.check("broker_up_metric_0_then_1",
             before_up == 1 and 0 in during and after and after[-1] == 1,
             "before %s, during %s, after %s" % (before_up, sorted(set(during)), after[-5:]))
    downs, ups = w.events("broker_down"), w.events("broker_up")
    ck.check("outage_logged", bool(downs) and bool(ups) and downs[0][0] <= ups[0][0] and
             ups[-1][0] >= downs[-1][0] and downs[0][0] >= ts_iso(t_down - 1),
             "want event=broker_down lines from the outage on, the last transition "
             "event=broker_up; got down at %s, up at %s"
             % ([d[0] for d in downs], [u[0] for u in ups]))

    prod.join(90)
    ck.check("stream_produced", not prod.is_alive() and not errors, "producer: %s" % errors[:3])
    last, high = C.read_topic(broker.bootstrap, PARTS)
    lists, got = E.read_lists(broker.bootstrap, last, time.time() + 40)
    C.wait_committed(broker.bootstrap, "outage", high, 60)
    rc, _secs = w.term(30)
    t = w.totals() or {}
    # A revocation librdkafka marks lost (the session ran out during the
    # outage) lets its partitions go at once, at their last delivered
    # offsets, with the producer purged (a list of ours must not land after
    # the next owner's): their owner, this worker again, reads the events
    # after those offsets once more, from the snapshot there. Then applied
    # counts them twice; the state and lists are still checked exact below.
    lost = bool(w.events("release_lost_purged"))
    applied_ok = (t.get("applied", 0) >= len(events) if lost
                  else t.get("applied") == len(events))
    ck.check("every_event_applied_once",
             rc == 0 and applied_ok and len(events) == sum(high.values()) and
             t.get("invalid") == 0 and t.get("failed") == 0 and
             t.get("consumed") == t.get("applied", 0) + t.get("duplicates", 0),
             "exit %s, totals %s, produced %d (high watermarks %s)" % (rc, t, len(events), high))

    C.check_last_lists(ck, lists, got, last, events_csv, model, events)
    C.check_final_state(ck, "final_state_equals_uninterrupted", broker.bootstrap, model,
                        snapdir, len(events), N_USERS, high, COMMON)
    print("    (%d events; %d consumed before the %d s outage; broker_up back to 1 "
          "%.1f s after it; %d duplicates; %.0f s in all)"
          % (len(events), before, OUTAGE_S, back_s,
             t.get("duplicates", -1), time.time() - t0))


def main():
    return C.run_main("outage", "resumes_without_loss", run)


if __name__ == "__main__":
    sys.exit(main())
