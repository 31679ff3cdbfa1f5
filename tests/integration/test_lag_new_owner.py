"""test_lag_new_owner.py - halflife_consumer_lag shows for every partition
a worker owns as soon as its consumer knows where it is, not only after
its first commit (README "Metrics").

A `halflife broker` with PARTS partitions, events of one user (one
partition); one `halflife run` with nothing to restore, statistics every
500 ms and auto-commit far beyond the test (kafka.auto.commit.interval.ms),
so nothing is committed while it runs. Check:
- lag_without_commit: every partition it owns, the one with events and
  the empty ones, has a halflife_consumer_lag series, and once it took
  every event each is 0. Before, librdkafka's consumer_lag (end minus the
  committed offset) was -1 until the member's first commit, and the series
  did not exist: within auto.commit.interval.ms for a partition with
  records, never for one without.
"""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402

PARTS = 4
SLOW = 3 if os.environ.get("HL_SAN") == "1" else 1
CONF = ["worker.threads=1", "kafka.fetch.wait.max.ms=10", "snapshot.interval.ms=0",
        "kafka.statistics.interval.ms=500", "kafka.auto.commit.interval.ms=600000",
        "group.id=lag", "items.topic="]


def lags(w):
    """{partition: lag} of w's halflife_consumer_lag series."""
    out = {}
    for line in w.metrics().splitlines():
        m = re.match(r'halflife_consumer_lag\{partition="(\d+)"\} (\S+)$', line)
        if m:
            out[int(m.group(1))] = float(m.group(2))
    return out


def run(ck):
    model, _csv, events = C.prepare(ck.tmp, 200, 40, 100)
    mine = [e for e in events if e[0] == events[0][0]]
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker.log"))
    C.U.produce_events(broker.bootstrap, C.TOPIC, mine)
    w = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "w.log"),
                 CONF + ["snapshot.dir=" + os.path.join(ck.tmp, "snap")])
    consumed = C.wait_consumed([w], len(mine), 60 * SLOW)
    deadline, got = time.time() + 20 * SLOW, {}
    while time.time() < deadline:
        got = lags(w)
        if len(got) == PARTS and not any(got.values()):
            break
        time.sleep(0.2)
    ck.check("lag_without_commit",
             consumed == len(mine) and sorted(got) == list(range(PARTS)) and
             not any(got.values()),
             "consumed %s of %d; halflife_consumer_lag by partition %s, want 0 for each of "
             "%d with no commit yet" % (consumed, len(mine), got, PARTS))
    w.term(30)
    broker.stop()


if __name__ == "__main__":
    sys.exit(C.run_main("lag_new_owner", "lag_without_commit", run))
