"""test_snapshot_age.py - halflife_snapshot_last_success_timestamp_seconds
tells the HalflifeSnapshotStale alert (time() - it > 3 snapshot intervals)
whether a shard holds state no snapshot has saved, on a quiet worker too.

A `halflife broker` with 4 partitions and one `halflife run`
(snapshot.interval.ms=1000); the events of one user go to one partition,
the other three get none. Checks:
- quiet_shards_not_stale: once the worker is idle, every partition's
  gauge is within 3 intervals of the scrape's time: the partition that
  took events (its snapshot holds them all) and the three that never took
  any. Before the fix a due snapshot of an unchanged shard was skipped
  without touching the gauge, so a quiet partition's stayed at its last
  snapshot and an untouched one's at 0 (age: 56 years), and the critical
  alert fired on a healthy idle worker.
- unsaved_shard_stale: new events whose snapshots fail (snapshot.dir
  replaced by a file) leave the gauge where it was, so its age passes 3
  intervals and the alert still fires for unsaved state.
"""
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402

INTERVAL_S = 1.0
STALE_S = 3 * INTERVAL_S            # the alert's 90 s is 3 x 30 s
SLOW = 3 if os.environ.get("HL_SAN") == "1" else 1
GAUGE = "halflife_snapshot_last_success_timestamp_seconds"


def gauges(w):
    """(scrape wall time, {partition: gauge value}) from one scrape."""
    t = time.time()
    out = {}
    for line in w.metrics().splitlines():
        if line.startswith(GAUGE + "{"):
            key, _, val = line.rpartition(" ")
            out[key.split('partition="')[1].split('"')[0]] = float(val)
    return t, out


def run(ck):
    model, _csv, events = C.prepare(ck.tmp, 400, 40, 200)
    user = events[0][0]
    mine = [e for e in events if e[0] == user]
    broker = C.Broker(ck.procs, 4, os.path.join(ck.tmp, "broker.log"))
    snapdir = os.path.join(ck.tmp, "snap")
    w = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "w.log"),
                 ["snapshot.dir=" + snapdir, "snapshot.interval.ms=%d" % (INTERVAL_S * 1000),
                  "kafka.fetch.wait.max.ms=10"])
    ready = C.wait_for(lambda: w.metric_or("halflife_ready") == 1, 60 * SLOW)
    U.produce_events(broker.bootstrap, C.TOPIC, mine)
    consumed = C.wait_consumed([w], len(mine), 60 * SLOW)
    saved = C.wait_for(lambda: w.metric_or("halflife_snapshots_total", labels="ok") >= 1,
                     30 * SLOW)

    def fresh():
        t, g = gauges(w)
        old = {p: round(t - v, 1) for p, v in g.items() if t - v > STALE_S}
        return (len(g) == 4 and not old), g, old, t

    def fresh_or_none():
        r = fresh()
        return r if r[0] else None
    last = C.wait_for(fresh_or_none, 30 * SLOW) or fresh()
    ck.check("quiet_shards_not_stale", ready and consumed == len(mine) and saved and last[0],
             "ready %s, consumed %d of %d, snapshot %s; partitions older than %.0f s at the "
             "last scrape: %s" % (ready, consumed, len(mine), saved, STALE_S, last[2]))

    # Snapshots now fail: the directory becomes a file.
    _t, before = gauges(w)
    busy = [p for p in before if w.metric_or("halflife_events_consumed_total",
                                             labels='partition="%s"' % p) > 0]
    shutil.rmtree(snapdir)
    open(snapdir, "w").close()
    failed0 = w.metric_or("halflife_snapshots_total", labels="failed")
    U.produce_events(broker.bootstrap, C.TOPIC, mine)
    C.wait_consumed([w], 2 * len(mine), 60 * SLOW)

    def stale():
        t, g = gauges(w)
        failing = w.metric_or("halflife_snapshots_total", labels="failed") > failed0
        return failing and busy and all(t - g[p] > STALE_S for p in busy)
    ok = C.wait_for(stale, 30 * SLOW)
    _t, after = gauges(w)
    ck.check("unsaved_shard_stale", bool(ok),
             "partition %s with unsaved events: gauge %s then %s, snapshots failed %s -> %s"
             % (busy, [before.get(p) for p in busy], [after.get(p) for p in busy], failed0,
                w.metric_or("halflife_snapshots_total", labels="failed")))
    w.term(30 * SLOW)
    broker.stop()


if __name__ == "__main__":
    sys.exit(C.run_main("snapshot_age", "quiet_shards_not_stale", run))
