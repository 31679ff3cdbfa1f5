"""test_topic_recreated.py - a snapshot directory reused against an input
topic that was deleted and created again under the same name: the new
topic's offsets start again at 0, below the snapshot's next offset.

The recreation is a new `halflife broker` (librdkafka 2.0.2's mock cluster
answers neither CreateTopics nor DeleteTopics): the same topic name, empty,
with offsets from 0 and no committed offsets, which is what a worker sees
of a recreated topic. One partition; 300 events on the first broker, then
100 on the second (fewer, so the snapshot's offset is past its end).
Checks:
- new_topic_consumed: the worker applies the 100 events of the new topic.
  Before the fix it assigned the partition at the snapshot's offset 300,
  librdkafka reset the out-of-range fetch to the log start and the shard
  dropped every record below 300 as "redelivered": nothing consumed, no
  list, and only a misleading input_redelivered warning.
- recreation_reported: event=input_topic_recreated is logged and
  halflife_input_topic_recreated_total is 1.
- users_kept: the first topic's users are still held (the state is kept;
  only the position starts again).
- restart_resumes: a restart on the same topic restores the new position
  (100), with no second report: the old topic's snapshot no longer shadows
  the new ones.
"""
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402

SLOW = 3 if os.environ.get("HL_SAN") == "1" else 1
N_OLD, N_NEW = 300, 100
# test_topic_recreated_changelog.py runs the same with state.store=kafka,
# and THEN(ck, model, snapdir, events) on a copy of the first topic's files
EXTRA, TOPICS, THEN = [], C.TOPICS, None


def worker(ck, broker, model, snapdir, name):
    """A worker of its own group (name): each life joins at once, never
    waiting for an earlier one's session to end; the state is the
    snapshot's either way, not the group's offsets."""
    return C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, name + ".log"),
                    ["snapshot.dir=" + snapdir, "snapshot.interval.ms=0",
                     "kafka.fetch.wait.max.ms=10", "group.id=" + name] + EXTRA)


def first_topic(ck, model, snapdir, events):
    b1 = C.Broker(ck.procs, 1, os.path.join(ck.tmp, "broker1.log"), topics=TOPICS)
    U.produce_events(b1.bootstrap, C.TOPIC, events[:N_OLD])
    w = worker(ck, b1, model, snapdir, "w1")
    n = C.wait_consumed([w], N_OLD, 30 * SLOW)
    rc, _ = w.term(30)
    b1.stop()
    if n != N_OLD or rc != 0:
        raise RuntimeError("first topic: consumed %s of %d, exit %s" % (n, N_OLD, rc))


def second_topic(ck, model, snapdir, events, n_users):
    b2 = C.Broker(ck.procs, 1, os.path.join(ck.tmp, "broker2.log"), topics=TOPICS)
    U.produce_events(b2.bootstrap, C.TOPIC, events[N_OLD:])
    w = worker(ck, b2, model, snapdir, "w2")

    def seen():     # consumed or dropped: either way the records arrived
        return (max(w.metric_or("halflife_events_consumed_total"), 0) +
                max(w.metric_or("halflife_input_redelivered_total"), 0)) >= N_NEW
    C.wait_for(seen, 20 * SLOW)
    consumed = w.metric_or("halflife_events_consumed_total")
    applied = w.metric_or("halflife_events_applied_total")
    ck.check("new_topic_consumed", consumed == N_NEW and applied == N_NEW,
             "consumed %s applied %s of the new topic's %d (redelivered %s)" %
             (consumed, applied, N_NEW, w.metric_or("halflife_input_redelivered_total")))
    counted = w.metric_or("halflife_input_topic_recreated_total")
    ck.check("recreation_reported", counted == 1 and w.events("input_topic_recreated"),
             "halflife_input_topic_recreated_total=%s, %d input_topic_recreated lines" %
             (counted, len(w.events("input_topic_recreated"))))
    users = w.metric_or("halflife_users")
    ck.check("users_kept", users == n_users, "%s users held, want %d" % (users, n_users))
    rc, _ = w.term(30)
    return b2, rc


def restart(ck, b2, model, snapdir, n_users):
    w = worker(ck, b2, model, snapdir, "w3")
    ready = C.wait_for(lambda: w.metric_or("halflife_ready") == 1, 30 * SLOW)
    restored = [kv.get("next_offset") for _t, kv in w.events("restored")]
    again = len(w.events("input_topic_recreated"))
    users = w.metric_or("halflife_users")
    ck.check("restart_resumes", ready and restored == [str(N_NEW)] and again == 0 and
             users == n_users, "ready %s, restored at %s (want %d), %d recreation reports, "
             "%s users (want %d)" % (ready, restored, N_NEW, again, users, n_users))
    w.term(30)


def run(ck):
    model, _csv, events = C.prepare(ck.tmp, N_OLD + N_NEW, 30, 200)
    n_users = len({e[0] for e in events})
    snapdir = os.path.join(ck.tmp, "snap")
    first_topic(ck, model, snapdir, events)
    if THEN is not None:
        shutil.copytree(snapdir, snapdir + ".first")
    b2, rc = second_topic(ck, model, snapdir, events, n_users)
    ck.check("stopped", rc == 0, "second worker exit %s" % rc)
    restart(ck, b2, model, snapdir, n_users)
    if THEN is not None:
        b2.stop()
        THEN(ck, model, snapdir + ".first", events)


if __name__ == "__main__":
    sys.exit(C.run_main("test_topic_recreated", "ran", run))
