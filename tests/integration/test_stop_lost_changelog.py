"""test_stop_lost_changelog.py - a member whose stop (SIGTERM) waits for
its final changelog flush when it loses its partitions by session timeout
must let that flush go, not wait on until its rows land after the new
owner's claim (test_stop_lost.py is the same loss while the stop waits
for lists; test_lost_changelog_rows.py while no stop is under way).

Separate processes over TCP: a `halflife broker --refuse-produce FILE`
whose topics include the changelog, two `halflife run` in one group with
private snapshot dirs, state.store=kafka:
- worker A consumes every event and delivers every list (state.flush.ms
  is long: no flush yet); then the broker refuses every Produce with
  NOT_ENOUGH_REPLICAS (retriable: librdkafka keeps the records) and A
  gets SIGTERM: its stop's final flush is produced, and waits;
- A is stopped (SIGSTOP) for longer than session.timeout.ms; worker B
  joins, gets every partition and begins restoring them (its claims wait
  for the refusal to end);
- A continues: its consumer finds the assignment lost; A is stopped again
  shortly after, so its connection stays away while B's comes back;
- the refusal ends, B's claims land and B restores every partition; A
  continues for a while, then is killed if still there.
Then, read in log order, no changelog record may carry a lower
halflife.epoch than one before it in its partition. Before the fix the
flush waited on (shutdown.timeout.ms) and its rows landed after B's
claims.
"""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402
import test_delivery_refused as R  # noqa: E402
import test_e2e as E  # noqa: E402
import test_lost_changelog_rows as L  # noqa: E402
import test_stop_lost as T  # noqa: E402

GROUP = "stop-lost-rows"
STATE = GROUP + "-state"


def body(ck):
    model, _csv, events = C.prepare(ck.tmp, L.N_EVENTS, L.N_USERS, L.N_ITEMS)
    path = os.path.join(ck.tmp, "refuse")
    broker = C.Broker(ck.procs, L.PARTS, os.path.join(ck.tmp, "broker.log"),
                      topics=C.TOPICS + [STATE], extra=["--refuse-produce", path])
    last = U.produce_events(broker.bootstrap, C.TOPIC, events)
    common = ["worker.threads=1", "kafka.fetch.wait.max.ms=10",
              "kafka.session.timeout.ms=5000", "kafka.heartbeat.interval.ms=1000",
              "shutdown.timeout.ms=30000", "state.store=kafka", "state.flush.ms=600000",
              "group.id=" + GROUP]
    a = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "a.log"),
                 common + ["snapshot.dir=" + os.path.join(ck.tmp, "snap-a")])
    _lists, fresh = E.read_lists(broker.bootstrap, last, time.time() + 20)
    on = R.refuse(broker, path, True, "NOT_ENOUGH_REPLICAS")
    a.p.send_signal(signal.SIGTERM)
    rows = 'kind="row"'
    queued = C.wait_for(
        lambda: a.metric_or("halflife_changelog_records_total", labels=rows) > 0, 10, 0.05)
    os.kill(a.p.pid, signal.SIGSTOP)
    try:
        b = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "b.log"),
                     common + ["snapshot.dir=" + os.path.join(ck.tmp, "snap-b")])
        restoring = b.wait_event("snapshot_none", 30)
    finally:
        os.kill(a.p.pid, signal.SIGCONT)
    # A stop that lets go at once has said so by now; one that waits on is
    # stopped inside that wait.
    a.wait_event("stop_lost", 2)
    T.signal_alive(a, signal.SIGSTOP)
    ck.check("setup", len(fresh) == len(last) and on and queued and restoring,
             "A delivered %d of %d users' last lists, refusal %s, A's final flush queued %s, "
             "B restoring %s" % (len(fresh), len(last), on, queued, restoring))
    try:
        off = R.refuse(broker, path, False)
        took = b.wait_event("restored", 20, count=L.PARTS)
    finally:
        T.signal_alive(a, signal.SIGCONT)
    time.sleep(1.5)             # room for what A still holds to land
    if a.p.poll() is None:
        a.kill()
    ck.check("b_restored", off and took, "refusal off %s, B restored every partition %s"
             % (off, took))
    n, late = L.late_records(broker.bootstrap, STATE)
    lost = [kv for _ts, kv in a.events("stop_lost")]
    ck.check("no_late_changelog_record", n > 0 and not late,
             "%d of %d changelog records landed after a higher epoch's (a zombie's after "
             "the claim), e.g. (partition, offset, epoch, above) %s; A's stop_lost: %s"
             % (len(late), n, late[:3], lost[:1]))
    rc, _secs = b.term(30)
    ck.check("b_clean_exit", rc == 0, "exit %s" % rc)
    broker.stop()


if __name__ == "__main__":
    sys.exit(C.run_main("test_stop_lost_changelog", "ran", body))
