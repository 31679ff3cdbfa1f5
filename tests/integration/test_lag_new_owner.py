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
- lag_counts_unapplied: a backlog in every partition, a worker with
  nothing to restore and slow batches (exact scoring of many items),
  statistics every 100 ms, /metrics scraped from the assignment on: at
  every scrape each partition's lag plus the events the worker counted
  consumed there is at least its high watermark, since the next offset to
  apply is never past the events applied. Before, a partition that had
  stored no offset yet read the end minus librdkafka's fetch position
  (ahead by the prefetch) or minus the offset after the last record handed
  to a shard thread (ahead by the batch being applied): lag 0 while the
  first batch, or a registry outage's parked records, was not applied.
- lag_counts_unapplied_latest: the same with auto.offset.reset=latest:
  events before the worker are skipped; once it shows every partition's
  lag it is stopped (SIGSTOP), a backlog is produced and it goes on
  (SIGCONT). At every scrape, a partition's lag that is not 0 plus the
  events consumed there is at least its backlog, and some lag shows. A
  lag of 0 is not judged: statistics from before the backlog came say 0,
  and whether fresh ones reach the gauge before the first batch is
  counted is a race (the statistics are served between batches). Before,
  the end was assigned as librdkafka's logical END, resolved after the
  assignment, and the lag read librdkafka's position until the first
  store, ahead of what was applied: e.g. lag 56 with nothing consumed,
  of a backlog of 531.
"""
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402

PARTS = 4
SLOW = 3 if os.environ.get("HL_SAN") == "1" else 1
CONF = ["worker.threads=1", "kafka.fetch.wait.max.ms=10", "snapshot.interval.ms=0",
        "kafka.statistics.interval.ms=500", "kafka.auto.commit.interval.ms=600000",
        "group.id=lag", "items.topic="]
BACKLOG, SLOW_ITEMS = 2000, 200000
SLOW_CONF = ["worker.threads=1", "recs.scoring=exact", "batch.max.messages=1000",
             "kafka.statistics.interval.ms=100", "kafka.auto.commit.interval.ms=600000",
             "snapshot.interval.ms=0", "group.id=lag-slow", "items.topic="]


def lags(w):
    """{partition: lag} of w's halflife_consumer_lag series."""
    return lags_in(w.metrics())


def lags_or_none(w):
    """lags(w), or {} while w does not answer yet."""
    try:
        return lags(w)
    except OSError:
        return {}


def lags_in(text):
    """{partition: lag} of the halflife_consumer_lag series in a /metrics text."""
    out = {}
    for line in text.splitlines():
        m = re.match(r'halflife_consumer_lag\{partition="(\d+)"\} (\S+)$', line)
        if m:
            out[int(m.group(1))] = float(m.group(2))
    return out


def consumed_by_partition(text):
    """{partition: halflife_events_consumed_total} from a /metrics text."""
    out = {}
    for line in text.splitlines():
        m = re.match(r'halflife_events_consumed_total\{partition="(\d+)"\} (\S+)$', line)
        if m:
            out[int(m.group(1))] = float(m.group(2))
    return out


def high_watermarks(bootstrap):
    """{partition: high watermark} of the input topic."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "lag-reader"})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(C.TOPIC, p), timeout=10)[1]
                for p in range(PARTS)}
    finally:
        c.close()


def unapplied_counted(ck, model, csv):
    """lag_counts_unapplied (the module's docstring)."""
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker-slow.log"))
    C.U.produce_events(broker.bootstrap, C.TOPIC, C.U.read_events_csv(csv))
    high = high_watermarks(broker.bootstrap)
    w = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "w-slow.log"),
                 SLOW_CONF + ["snapshot.dir=" + os.path.join(ck.tmp, "snap-slow")])
    bad, scrapes, deadline = [], 0, time.time() + 30 * SLOW
    while time.time() < deadline and not bad:
        try:
            text = w.metrics()
        except OSError:
            time.sleep(0.05)
            continue
        got, done = lags_in(text), consumed_by_partition(text)
        scrapes += bool(got)
        bad = ["partition %d: lag %d + consumed %d < high watermark %d"
               % (p, got[p], done.get(p, 0), high[p])
               for p in sorted(got) if got[p] + done.get(p, 0) < high[p]]
        if sum(done.values()) >= BACKLOG:
            break
        time.sleep(0.05)
    ck.check("lag_counts_unapplied", scrapes > 0 and not bad and sum(high.values()) == BACKLOG,
             "%d scrapes with lag series; %s (backlog %s)"
             % (scrapes, "; ".join(bad) or "none below", high))
    w.term(30)
    broker.stop()


def latest_counted(ck, model, csv):
    """lag_counts_unapplied_latest (the module's docstring)."""
    events = C.U.read_events_csv(csv)
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker-latest.log"))
    C.U.produce_events(broker.bootstrap, C.TOPIC, events[:300])
    start = high_watermarks(broker.bootstrap)
    w = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "w-latest.log"),
                 SLOW_CONF + ["auto.offset.reset=latest", "group.id=lag-latest",
                              "snapshot.dir=" + os.path.join(ck.tmp, "snap-latest")])
    ready = C.wait_for(lambda: len(lags_or_none(w)) == PARTS, 30 * SLOW)
    os.kill(w.p.pid, signal.SIGSTOP)
    try:
        C.U.produce_events(broker.bootstrap, C.TOPIC, events)
        high = high_watermarks(broker.bootstrap)
    finally:
        os.kill(w.p.pid, signal.SIGCONT)
    want = {p: high[p] - start[p] for p in range(PARTS)}
    bad, shown, deadline = [], 0, time.time() + 30 * SLOW
    while ready and time.time() < deadline and not bad:
        text = w.metrics()
        got, done = lags_in(text), consumed_by_partition(text)
        live = [p for p in got if got[p] > 0]
        shown += bool(live)
        bad = ["partition %d: lag %d + consumed %d < backlog %d"
               % (p, got[p], done.get(p, 0), want[p])
               for p in live if got[p] + done.get(p, 0) < want[p]]
        if sum(done.values()) >= BACKLOG:
            break
        time.sleep(0.05)
    ck.check("lag_counts_unapplied_latest", ready and shown > 0 and not bad,
             "lag series for every partition %s; %d scrapes showed a lag; %s "
             "(backlogs %s)" % (bool(ready), shown, "; ".join(bad) or "none below", want))
    w.term(30)
    broker.stop()


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
    model, csv = os.path.join(ck.tmp, "slow.hlm"), os.path.join(ck.tmp, "slow.csv")
    C.U.make_model(model, SLOW_ITEMS, 64)
    C.U.make_events(csv, BACKLOG, BACKLOG, SLOW_ITEMS)
    unapplied_counted(ck, model, csv)
    latest_counted(ck, model, csv)


if __name__ == "__main__":
    sys.exit(C.run_main("lag_new_owner", "lag_without_commit", run))
