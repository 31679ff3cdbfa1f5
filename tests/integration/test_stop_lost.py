"""test_stop_lost.py - a member that is stopping (SIGTERM) when it loses its
partitions by session timeout lets them go as a lost revocation does: the
lists it still waits for may not land after the new owner's newer lists,
and it writes no snapshot of them (test_stale_lists_lost.py and
test_lost_no_snapshot.py are the same loss without a stop under way).

Separate processes over TCP: a `halflife broker --refuse-produce FILE`,
two `halflife run` in one group sharing one snapshot.dir (a shared volume),
snapshot.interval.ms=0 (snapshots on revocation and shutdown only):
- the first half of the events is in the input; the broker refuses every
  Produce with NOT_ENOUGH_REPLICAS (retriable: librdkafka keeps the lists);
- worker A consumes it all, its lists queued, and gets SIGTERM: its stop
  waits for those lists (shutdown.timeout.ms is long), and its main
  thread, joining the shard threads, serves no rebalance meanwhile;
- A is stopped (SIGSTOP) for longer than session.timeout.ms; worker B
  joins and gets every partition;
- A continues: its consumer finds the assignment lost, though the
  revocation waits for the stop; A is stopped again shortly after, so its
  connection stays away while B's comes back;
- the refusal ends, the second half of the events goes in, B delivers
  the newer lists, and A continues until it exits.
Then, read in log order as compaction keeps it, every user's last list
must come from the user's last event, and A must have written no
snapshot. Before the fix the stop asked nobody whether the partitions
were still A's: it waited on, its lists landed after B's, and it wrote a
snapshot of each lost partition into the shared directory.
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
import test_stale_lists as S  # noqa: E402

GROUP = "stop-lost"


def signal_alive(w, sig):
    """sig to w unless it has exited (a stop that let go at once may be
    over by the time the test would stop it again)."""
    if w.p.poll() is None:
        os.kill(w.p.pid, sig)


def body(ck):
    model, _csv, events = C.prepare(ck.tmp, S.N_EVENTS, S.N_USERS, S.N_ITEMS)
    events = sorted(events, key=lambda e: e[3])
    first, second = events[:S.N_EVENTS // 2], events[S.N_EVENTS // 2:]
    path = os.path.join(ck.tmp, "refuse")
    common = ["worker.threads=1", "kafka.fetch.wait.max.ms=10",
              "kafka.session.timeout.ms=6000", "kafka.heartbeat.interval.ms=1000",
              "kafka.auto.commit.interval.ms=500", "shutdown.timeout.ms=30000",
              "snapshot.interval.ms=0", "snapshot.dir=" + os.path.join(ck.tmp, "snap"),
              "group.id=" + GROUP]
    broker = C.Broker(ck.procs, S.PARTS, os.path.join(ck.tmp, "broker.log"),
                      extra=["--refuse-produce", path])
    last = U.produce_events(broker.bootstrap, C.TOPIC, first)
    on = R.refuse(broker, path, True, "NOT_ENOUGH_REPLICAS")
    a = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "a.log"), common)
    consumed = C.wait_consumed([a], len(first), 30)
    a.p.send_signal(signal.SIGTERM)
    stopping = a.wait_event("worker_stopping", 5)
    os.kill(a.p.pid, signal.SIGSTOP)
    try:
        b = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "b.log"),
                     common)
        took = C.wait_for(lambda: b.metric_or("halflife_assigned_partitions") == S.PARTS,
                          30, 0.05)
    finally:
        os.kill(a.p.pid, signal.SIGCONT)
    # A stop that lets go at once has said so by now; one that waits on is
    # stopped inside that wait.
    a.wait_event("stop_lost", 2)
    signal_alive(a, signal.SIGSTOP)
    ck.check("setup", on and consumed >= len(first) and stopping and took,
             "refusal %s, A consumed %d of %d, A's stop began %s, B took every partition %s"
             % (on, consumed, len(first), stopping, took))
    try:
        off = R.refuse(broker, path, False)
        last.update(U.produce_events(broker.bootstrap, C.TOPIC, second))
        _lists, fresh = E.read_lists(broker.bootstrap, last, time.time() + 15)
    finally:
        signal_alive(a, signal.SIGCONT)
    ck.check("b_delivered_first", off and len(fresh) == len(last),
             "refusal off %s; %d of %d users' lists of their last event delivered"
             % (off, len(fresh), len(last)))
    exited = a.wait(20)
    got = S.last_lists_in_log_order(broker.bootstrap)
    stale = sorted(u for u in last if got.get(u) != last[u])
    ck.check("no_stale_last_list", not stale,
             "A exited %s; %d of %d users' last list in log order is not from their last "
             "event, e.g. %s: last list from %s, last event at %s"
             % (exited, len(stale), len(last), stale[:3], [got.get(u) for u in stale[:3]],
                [last[u] for u in stale[:3]]))
    written = len(a.events("snapshot_written"))
    lost = a.events("stop_lost")
    ck.check("lost_not_saved", written == 0 and len(lost) == 1,
             "A wrote %d snapshots of partitions another member owned; stop_lost logged "
             "%d times %s" % (written, len(lost), [kv for _ts, kv in lost][:1]))
    rc, _secs = b.term(30)
    ck.check("b_clean_exit", rc == 0, "exit %s" % rc)
    broker.stop()


if __name__ == "__main__":
    sys.exit(C.run_main("test_stop_lost", "ran", body))
