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

restored_stream_time_bounded: state written before the bound existed.
A worker with event.max.future.ms=0 and no mass eviction reads the same
stream (so its final snapshot holds every user and a 2090 stream time);
a worker with the defaults restores it and reads a marker. Before the
restore bounded the stream time, that marker's sweep evicted every user.
"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402

USERS, T0 = 50, 1767225600000
# The mock holds a group's rebalance after a member leaves for the
# leaver's session timeout: short, so the restart's join is quick.
FAST = ["kafka.fetch.wait.max.ms=10", "kafka.session.timeout.ms=6000",
        "kafka.heartbeat.interval.ms=1000"]
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


def first_stream(broker, worker, failed):
    """USERS users in 2026, then the 2090 event; waits for both."""
    U.produce_events(broker.bootstrap, "behaviour-events",
                     [("u%d" % u, "i%06d" % u, "VIEW", T0 + u * 1000, None)
                      for u in range(USERS)])
    if not wait_for(worker, lambda w: w.metric("halflife_events_consumed_total") >= USERS and
                    w.metric("halflife_users") >= USERS):
        failed.append("the first %d events were not applied" % USERS)
    U.produce_events(broker.bootstrap, "behaviour-events",
                     [("attacker", "i000001", "VIEW", Y2090, None)])
    if not wait_for(worker, lambda w: w.metric("halflife_events_consumed_total") >= USERS + 1):
        failed.append("the 2090 event was not consumed")


def marker(broker, worker, failed, ts):
    """A marker event read in a later batch than everything before it: the
    sweep after the previous batch has run once the marker's list counts."""
    wait_for(worker, lambda w: w.metric("halflife_lists_published_total") >= 0)
    lists = worker.metric("halflife_lists_published_total")
    U.produce_events(broker.bootstrap, "behaviour-events", [("u0", "i000002", "VIEW", ts, None)])
    # A restarted worker first waits out its predecessor's group session.
    if not wait_for(worker, lambda w: w.metric("halflife_lists_published_total") > lists,
                    timeout=120):
        failed.append("no list for the marker event")


def restored_stream_time_bounded():
    tmp = tempfile.mkdtemp(prefix="hl_future_restore_")
    model, snap = os.path.join(tmp, "m.hlm"), os.path.join(tmp, "snap")
    U.make_model(model, 1000, 16)
    broker = U.Broker(1, ["behaviour-events", "recommendations", "behaviour-events.dlq"],
                      os.path.join(tmp, "broker.log"))
    worker = None
    failed = []
    base = FAST + ["snapshot.dir=" + snap]
    try:
        worker = U.Worker(broker.bootstrap, model, os.path.join(tmp, "old.log"),
                          extra=base + ["event.max.future.ms=0", "state.evict.mass=0"])
        first_stream(broker, worker, failed)
        rc = worker.stop()
        worker = None
        if rc != 0:
            failed.append("exit status %s after SIGTERM (old)" % rc)
        worker = U.Worker(broker.bootstrap, model, os.path.join(tmp, "new.log"), extra=base)
        marker(broker, worker, failed, T0 + USERS * 1000)
        mass = worker.metric("halflife_evictions_total", 'reason="mass"')
        users = worker.metric("halflife_users")
        if mass != 0:
            failed.append("evictions{mass} %d after restoring a 2090 stream time, want 0" % mass)
        if users != USERS + 1:
            failed.append("halflife_users %d, want %d" % (users, USERS + 1))
        rc = worker.stop()
        worker = None
        if rc != 0:
            failed.append("exit status %s after SIGTERM (new)" % rc)
        with open(os.path.join(tmp, "new.log")) as f:
            if "event=stream_time_ahead" not in f.read():
                failed.append("no stream_time_ahead line in the new worker's log")
    finally:
        if worker:
            worker.stop()
        broker.stop()
    if failed:
        print("FAIL future_event.restored_stream_time_bounded: %s (logs in %s)" % (failed, tmp))
        return 1
    print("PASS future_event.restored_stream_time_bounded (%d users kept)" % (USERS + 1))
    return 0


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
    try:
        worker = U.Worker(broker.bootstrap, model, os.path.join(tmp, "worker.log"),
                          extra=FAST + ["snapshot.dir=" + os.path.join(tmp, "snap")])
        first_stream(broker, worker, failed)
        marker(broker, worker, failed, T0 + USERS * 1000)
        mass = worker.metric("halflife_evictions_total", 'reason="mass"')
        users = worker.metric("halflife_users")
        bad = worker.metric("halflife_events_invalid_total", 'reason="bad_timestamp"')
        # counted once the DLQ topic acknowledged the copy, not at its send
        wait_for(worker, lambda w: w.metric("halflife_dlq_records_total",
                                            'reason="bad_timestamp"') >= 1, timeout=15)
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
    return restored_stream_time_bounded()


if __name__ == "__main__":
    sys.exit(main())
