"""test_partition_metrics.py - a pod's per-partition series describe the
partitions it owns now, as they are now (README "Metrics").

Two workers of one group, state.store=kafka, snapshot.dir, no periodic
snapshot (snapshot.interval.ms=0). A starts alone and takes all PARTS
partitions, B joins (cooperative-sticky: some move to B), then B stops and
they come back to A. Checks:
- revoked_restore_series_hidden: while B owns them, A's /metrics has no
  halflife_restore_source, _records, _seconds or _records_per_second
  series for the partitions it gave away. Before, they stayed: a sum over
  a pod's series counted partitions it no longer owned.
- returned_success_is_current: once they are back, A's
  halflife_snapshot_last_success_timestamp_seconds for each of them is no
  older than the moment B was stopped (the state A restored then was all
  durable). Before, it showed A's earlier ownership's time until the
  partition's first due snapshot (never, with no periodic snapshot).
"""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, PARTS = 400, 60, 100, 4
SLOW = 3 if os.environ.get("HL_SAN") == "1" else 1
COMMON = ["worker.threads=1", "kafka.fetch.wait.max.ms=10", "snapshot.interval.ms=0",
          "shutdown.timeout.ms=10000", "kafka.session.timeout.ms=6000",
          "kafka.heartbeat.interval.ms=1000", "state.store=kafka", "state.flush.ms=200",
          "items.topic="]
RESTORE = ("halflife_restore_source", "halflife_restore_records",
           "halflife_restore_seconds", "halflife_restore_records_per_second")
SUCCESS = "halflife_snapshot_last_success_timestamp_seconds"


def by_partition(w, name):
    """{partition: [value, ...]} of name's series on w's /metrics."""
    out = {}
    for line in w.metrics().splitlines():
        m = re.match(r'%s\{partition="(\d+)"[^}]*\} (\S+)$' % name, line)
        if m:
            out.setdefault(int(m.group(1)), []).append(float(m.group(2)))
    return out


def worker(ck, broker, model, name):
    return C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, name + ".log"),
                    COMMON + ["group.id=pm", "snapshot.dir=" + os.path.join(ck.tmp, "s-" + name)])


def run(ck):
    model, _csv, events = C.prepare(ck.tmp, N_EVENTS, N_USERS, N_ITEMS)
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker.log"),
                      topics=C.TOPICS + ["pm-state"])
    C.U.produce_events(broker.bootstrap, C.TOPIC, events)
    a = worker(ck, broker, model, "a")
    owns = lambda w, n: w.metric_or("halflife_assigned_partitions") == n  # noqa: E731
    if not (C.wait_for(lambda: owns(a, PARTS), 60 * SLOW, period=0.1) and
            C.wait_consumed([a], N_EVENTS, 60 * SLOW) >= N_EVENTS):
        raise RuntimeError("worker A never took every partition and event alone")
    b = worker(ck, broker, model, "b")
    if not C.wait_for(lambda: a.metric_or("halflife_assigned_partitions", 0) +
                      b.metric_or("halflife_assigned_partitions", 0) == PARTS and
                      0 < a.metric_or("halflife_assigned_partitions") < PARTS,
                      90 * SLOW, period=0.1):
        raise RuntimeError("A and B never shared the partitions")
    moved = sorted(int(kv["partition"]) for _t, kv in a.events("partition_revoked"))
    left = {name: sorted(set(by_partition(a, name)) & set(moved)) for name in RESTORE}
    ck.check("revoked_restore_series_hidden", moved and not any(left.values()),
             "A gave away partitions %s but still shows their %s" % (moved, left))
    t_stop = time.time()        # after A let them go (their snapshot then, if any)
    rc, _secs = b.term(30)
    if not C.wait_for(lambda: owns(a, PARTS), 60 * SLOW, period=0.1):
        raise RuntimeError("the partitions never came back to A (B exit %s)" % rc)
    got = by_partition(a, SUCCESS)
    old = {p: round(t_stop - got.get(p, [0])[0], 1) for p in moved
           if got.get(p, [0])[0] < t_stop}
    ck.check("returned_success_is_current", moved and not old,
             "back with A, partitions' %s is older than B's stop by seconds %s"
             % (SUCCESS, old))
    broker.stop()               # A: killed by run_main, nothing of it is checked after


if __name__ == "__main__":
    sys.exit(C.run_main("partition_metrics", "revoked_restore_series_hidden", run))
