"""test_lost_snapshot_phase.py - a revocation whose membership is lost
while it writes its partitions' snapshots writes no more of them
(test_lost_mid_release.py is the loss while it waits for the lists).

Separate processes over TCP: a `halflife broker --delay-produce FILE`, two
`halflife run` in one group with state.store=kafka (a snapshot is a
changelog flush, rows then a checkpoint, each answered late):
- worker A consumes every event, its lists delivered; then every Produce
  is answered 2 s late;
- worker B joins, and A's revocation of the two partitions B is to get
  begins its snapshots: the first partition's rows are in the air;
- A is stopped (SIGSTOP) past session.timeout.ms (the group forgets it),
  then continues: the first flush ends (its checkpoint takes 2 s more,
  long after A's heartbeat learnt that its member id is gone).
A must not begin the second partition's snapshot: event=
release_lost_not_saved, at most one snapshot written. Before the fix the
release stopped watching the membership once its lists were delivered
and wrote both.
"""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402
import test_delivery_refused as R  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, PARTS = 200, 40, 500, 4
GROUP = "lost-snapshot-phase"
STATE = GROUP + "-state"


def delay(broker, path, ms):
    with open(path, "w") as f:
        f.write("%d\n" % ms)
    return R.broker_event(broker, "delay_produce_on")


def body(ck):
    model, _csv, events = C.prepare(ck.tmp, N_EVENTS, N_USERS, N_ITEMS)
    path = os.path.join(ck.tmp, "delay")
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker.log"),
                      topics=C.TOPICS + [STATE], extra=["--delay-produce", path])
    U.produce_events(broker.bootstrap, C.TOPIC, events)
    common = ["worker.threads=1", "kafka.fetch.wait.max.ms=10",
              "kafka.session.timeout.ms=4000", "kafka.heartbeat.interval.ms=1000",
              "shutdown.timeout.ms=30000", "state.store=kafka", "state.flush.ms=600000",
              "snapshot.interval.ms=0", "group.id=" + GROUP]
    a = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "a.log"),
                 common + ["snapshot.dir=" + os.path.join(ck.tmp, "snap-a")])
    consumed = C.wait_consumed([a], len(events), 30)
    delivered = C.wait_for(lambda: a.metric_or("halflife_lists_published_total") > 0, 10)
    on = delay(broker, path, 2000)
    rows = 'kind="row"'
    C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "b.log"),
             common + ["snapshot.dir=" + os.path.join(ck.tmp, "snap-b")])
    flushing = C.wait_for(
        lambda: a.metric_or("halflife_changelog_records_total", labels=rows) > 0, 15, 0.02)
    os.kill(a.p.pid, signal.SIGSTOP)
    ck.check("setup", consumed >= len(events) and delivered and on and flushing,
             "A consumed %d of %d, lists delivered %s, delay on %s, A's first snapshot "
             "flush in the air %s" % (consumed, len(events), delivered, on, flushing))
    time.sleep(6.5)             # past session.timeout.ms and the mock's 1 s check
    os.kill(a.p.pid, signal.SIGCONT)
    ended = C.wait_for(lambda: len(a.events("partition_revoked")) >= 2, 12, 0.1)
    a.kill()
    stopped = a.events("release_lost_not_saved")
    written = a.log_text().count(" event=snapshot_written ")
    ck.check("snapshot_phase_lost", ended and stopped and written <= 1,
             "A's revocation ended %s; release_lost_not_saved %s; %d snapshots written "
             "(at most the one in progress when the membership went)"
             % (bool(ended), stopped[:1], written))
    broker.stop()


if __name__ == "__main__":
    sys.exit(C.run_main("test_lost_snapshot_phase", "ran", body))
