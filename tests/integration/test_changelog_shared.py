"""test_changelog_shared.py - state.store=kafka: two deployments (two
consumer groups) pointed at one state.topic read each other's users as
their own and fence each other's owners by epoch. Every checkpoint now
names its writer's group.id (header halflife.group), and a restore that
reads another group's checkpoint says so.

One partition, 100 events, a `halflife run` of group deploy-a writing the
changelog, then:
- own_group_quiet: a restart of deploy-a with an empty snapshot.dir (a
  restore from the changelog alone) reports nothing;
- other_group_reported: a worker of group deploy-b on the same state.topic
  logs level=error event=changelog_shared naming deploy-a and counts
  halflife_changelog_foreign_checkpoints_total. Before the fix nothing
  named the writer's group, and the second deployment silently took the
  first one's users (and its epochs) as its own.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402

SLOW = 3 if os.environ.get("HL_SAN") == "1" else 1
N = 100
STATE = "shared-state"
METRIC = "halflife_changelog_foreign_checkpoints_total"


def worker(ck, broker, model, group, name):
    return C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, name + ".log"),
                    ["snapshot.dir=" + os.path.join(ck.tmp, name), "snapshot.interval.ms=0",
                     "state.store=kafka", "state.topic=" + STATE, "state.flush.ms=300",
                     "group.id=" + group, "kafka.session.timeout.ms=6000",
                     "kafka.heartbeat.interval.ms=1000", "kafka.fetch.wait.max.ms=10"])


def restored(ck, broker, model, group, name):
    """A worker of group with an empty snapshot.dir, once ready: (ready,
    foreign checkpoints counted, its changelog_shared lines)."""
    w = worker(ck, broker, model, group, name)
    ok = C.wait_for(lambda: w.metric_or("halflife_ready") == 1, 30 * SLOW)
    n = w.metric_or(METRIC)
    lines = w.events("changelog_shared")
    w.term(30)
    return ok, n, lines


def run(ck):
    model, _csv, events = C.prepare(ck.tmp, N, 20, 200)
    broker = C.Broker(ck.procs, 1, os.path.join(ck.tmp, "broker.log"),
                      topics=C.TOPICS + [STATE])
    U.produce_events(broker.bootstrap, C.TOPIC, events)
    w1 = worker(ck, broker, model, "deploy-a", "a1")
    n = C.wait_consumed([w1], N, 30 * SLOW)
    rc, _ = w1.term(30)
    if n != N or rc != 0:
        raise RuntimeError("deploy-a: consumed %s of %d, exit %s" % (n, N, rc))
    ok, n, lines = restored(ck, broker, model, "deploy-a", "a2")
    ck.check("own_group_quiet", ok and n == 0 and not lines,
             "ready %s, %s=%s, %d changelog_shared lines" % (ok, METRIC, n, len(lines)))
    ok, n, lines = restored(ck, broker, model, "deploy-b", "b1")
    named = [kv.get("other_group") for _t, kv in lines]
    ck.check("other_group_reported", ok and n >= 1 and named == ['"deploy-a"'],
             "ready %s, %s=%s, changelog_shared lines naming %s" % (ok, METRIC, n, named))


if __name__ == "__main__":
    sys.exit(C.run_main("test_changelog_shared", "ran", run))
