"""test_lost_no_snapshot.py - a member that loses its partitions by session
timeout writes no snapshot of them, even with every list delivered: the
group gave them to another member before the revocation began, and that
member restored them already (test_stale_lists_lost.py is the same loss
with lists undelivered).

Separate processes over TCP: a `halflife broker`, two `halflife run` in one
group sharing one snapshot.dir (a shared volume), snapshot.interval.ms=0
(snapshots on revocation and shutdown only):
- worker A consumes every event and delivers every list (its offsets are
  committed to the end), then is stopped (SIGSTOP) for longer than
  session.timeout.ms; worker B joins, gets every partition and restores
  them from that directory (empty: A never wrote one);
- A continues: its consumer finds its assignment lost and revokes it.
No snapshot_written line may come from A before that revocation ends
(event=release_lost_not_saved instead). Before the fix A wrote one per
lost partition into the shared directory, at an offset above what B had
written: the next restore would take it and skip the events B had replayed
and published lists for, older than A's, so those users' newest lists were
never published again; and its retention deleted B's temporary files at
or below that offset.
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, PARTS = 200, 40, 500, 4
GROUP = "lost-snap"


def written_before_revoked(w, n_parts):
    """(snapshot_written lines, lines of event=release_lost_not_saved) in
    w's log before its n_parts-th partition_revoked line, and whether that
    line came."""
    written = not_saved = revoked = 0
    for line in w.log_text().splitlines():
        if " event=partition_revoked " in line:
            revoked += 1
            if revoked == n_parts:
                return written, not_saved, True
        written += " event=snapshot_written " in line
        not_saved += " event=release_lost_not_saved " in line
    return written, not_saved, False


def body(ck):
    model, _csv, events = C.prepare(ck.tmp, N_EVENTS, N_USERS, N_ITEMS)
    snap = os.path.join(ck.tmp, "snap")
    common = ["worker.threads=1", "kafka.fetch.wait.max.ms=10",
              "kafka.session.timeout.ms=6000", "kafka.heartbeat.interval.ms=1000",
              "kafka.auto.commit.interval.ms=500", "snapshot.interval.ms=0",
              "snapshot.dir=" + snap, "group.id=" + GROUP]
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker.log"))
    last = U.produce_events(broker.bootstrap, C.TOPIC, events)
    high = {}
    for p, o in last.values():
        high[p] = max(high.get(p, 0), o + 1)
    a = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "a.log"), common)
    done = C.wait_committed(broker.bootstrap, GROUP, high, 30)
    delivered = all(done.get(p, -1) >= h for p, h in high.items())
    rebalances = a.metric_or("halflife_rebalances_total")
    os.kill(a.p.pid, signal.SIGSTOP)
    try:
        b = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "b.log"),
                     common)
        took = C.wait_for(lambda: b.metric_or("halflife_assigned_partitions") == PARTS, 30)
    finally:
        os.kill(a.p.pid, signal.SIGCONT)
    lost = C.wait_for(lambda: a.metric_or("halflife_rebalances_total") > rebalances, 15)
    ck.check("setup", delivered and took and lost,
             "A delivered every list %s (committed %s, high %s), B took every partition "
             "%s, A's revocation began %s" % (delivered, done, high, took, lost))
    C.wait_for(lambda: written_before_revoked(a, PARTS)[2], 20, 0.05)
    a.kill()
    written, not_saved, ended = written_before_revoked(a, PARTS)
    ck.check("lost_not_saved", ended and written == 0 and not_saved > 0,
             "A's lost revocation ended %s; it wrote %d snapshots of partitions another "
             "member owned, release_lost_not_saved logged %d times"
             % (ended, written, not_saved))
    rc, _secs = b.term(30)
    ck.check("b_clean_exit", rc == 0, "exit %s" % rc)
    broker.stop()


if __name__ == "__main__":
    sys.exit(C.run_main("test_lost_no_snapshot", "ran", body))
