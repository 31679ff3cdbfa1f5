"""test_future_event.py - one event dated far ahead of the wall clock
(year 2090, inside event.max.ts.ms) must not move the stream time.

The stream time (the newest event time a shard has read) is the reference
that mass eviction decays every user to, and that the live catalogue
compares expires_at against. Before event.max.future.ms, one such event,
which anyone who can write one record can produce, decayed every other
user of its partition by 64 years, so the next sweep evicted them all
(and every expiring item was hidden for every user, even after a restart,
since snapshots persist the stream time).

A `halflife broker` with one partition; `halflife run` with the default
state.evict.mass. The stream: USERS users with one event each in 2026,
then one event dated 2090, then a marker event. Checks:
- the 2090 event is invalid (bad_timestamp) and dead-lettered;
- halflife_evictions_total{reason="mass"} stays 0 and halflife_users
  holds every user.
"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402

USERS, T0 = 50, 1767225600000
Y2090 = 3786912000000                  # 2090-01-01, inside event.max.ts.ms


def wait_for(worker, want, timeout=60):
    """Waits until want(worker) holds; False on timeout."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if want(worker):
                return True
        except OSError:
            pass                        # /metrics is not up yet
        time.sleep(0.2)
    return False


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP future_event.stream_time_bounded: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_future_")
    model = os.path.join(tmp, "m.hlm")
    U.make_model(model, 1000, 16)
    broker = U.Broker(1, ["behaviour-events", "recommendations", "behaviour-events.dlq"],
                      os.path.join(tmp, "broker.log"))
    worker = None
    failed = []
    consumed = lambda w: w.metric("halflife_events_consumed_total")  # noqa: E731
    try:
        worker = U.Worker(broker.bootstrap, model, os.path.join(tmp, "worker.log"),
                          extra=["kafka.fetch.wait.max.ms=10",
                                 "snapshot.dir=" + os.path.join(tmp, "snap")])
        U.produce_events(broker.bootstrap, "behaviour-events",
                         [("u%d" % u, "i%06d" % u, "VIEW", T0 + u * 1000, None)
                          for u in range(USERS)])
        if not wait_for(worker, lambda w: consumed(w) >= USERS and
                        w.metric("halflife_users") >= USERS):
            failed.append("the first %d events were not applied" % USERS)
        U.produce_events(broker.bootstrap, "behaviour-events",
                         [("attacker", "i000001", "VIEW", Y2090, None)])
        if not wait_for(worker, lambda w: consumed(w) >= USERS + 1):
            failed.append("the 2090 event was not consumed")
        # A marker read in a later batch: the sweep after the 2090 event's
        # batch has run by the time the marker's list is counted.
        lists = worker.metric("halflife_lists_published_total")
        U.produce_events(broker.bootstrap, "behaviour-events",
                         [("u0", "i000002", "VIEW", T0 + USERS * 1000, None)])
        if not wait_for(worker, lambda w: w.metric("halflife_lists_published_total") > lists):
            failed.append("no list for the marker event")
        mass = worker.metric("halflife_evictions_total", 'reason="mass"')
        users = worker.metric("halflife_users")
        bad = worker.metric("halflife_events_invalid_total", 'reason="bad_timestamp"')
        dlq = worker.metric("halflife_dlq_records_total", 'reason="bad_timestamp"')
        if mass != 0:
            failed.append("evictions{mass} %d after one 2090 event, want 0" % mass)
        if users != USERS:
            failed.append("halflife_users %d, want %d" % (users, USERS))
        if bad != 1 or dlq != 1:
            failed.append("the 2090 event: invalid{bad_timestamp} %d, dlq %d, want 1 and 1"
                          % (bad, dlq))
        rc = worker.stop()
        worker = None
        if rc != 0:
            failed.append("exit status %s after SIGTERM" % rc)
    finally:
        if worker:
            worker.stop()
        broker.stop()
    if failed:
        print("FAIL future_event.stream_time_bounded: %s (logs in %s)" % (failed, tmp))
        return 1
    print("PASS future_event.stream_time_bounded (a 2090 event dead-lettered, "
          "%d users kept)" % USERS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
