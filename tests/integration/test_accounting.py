"""test_accounting.py - throughput does not hide loss (issue 4).

A million synthetic events (100,000 users) go into a `halflife broker` with
`halflife produce`, plus bad records of several kinds written with
python3-confluent-kafka. The mock broker silently drops data beyond 5 MiB
or 100,000 message sets per partition (DESIGN.md section 9), so the stream
is spread over 32 partitions and the watermarks are checked before the
worker starts: the broker must still hold every record. Then `halflife run`
consumes it all; every record must be accounted for: consumed = produced,
applied + invalid = consumed, invalid = the bad records sent, no
duplicates, one list per user at least, and the numbers agree between
/metrics and the worker's final totals line.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, PARTS = 1000000, 100000, 1000, 32


def bad_records():
    """(key, value) pairs the codec must refuse, several reasons."""
    out = []
    for k in range(300):
        out.append((b"bad-%d" % k, b"\x00"))                                  # too_short
        out.append((b"bad-%d" % k, b"\x07\x00\x00\x00\x01abcdef"))            # bad_magic
        out.append((b"bad-%d" % k, b"\x00\x00\x00\x03\xe7\x02a\x02b"))         # unknown schema 999
        out.append((b"bad-%d" % k, b"\x00\x00\x00\x00\x01\x0au000"))           # truncated
    return out


def produce_bad(bootstrap, recs):
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, val in recs:
        p.produce("behaviour-events", key=key, value=val)
    p.flush(30)


def watermarks(bootstrap):
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "acct-wm-%d" % os.getpid()})
    lows = highs = 0
    for p in range(PARTS):
        lo, hi = c.get_watermark_offsets(TopicPartition("behaviour-events", p), timeout=10)
        lows += lo
        highs += hi
    c.close()
    return lows, highs


def totals(log):
    m = re.findall(r"event=worker_totals (.*)", log)
    return dict(kv.split("=") for kv in m[-1].split()) if m else None


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP accounting.million_events_accounted: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_acct_")
    model, events_csv = os.path.join(tmp, "m.hlm"), os.path.join(tmp, "e.csv")
    U.make_model(model, N_ITEMS, 16)
    U.make_events(events_csv, N_EVENTS, N_USERS, N_ITEMS)
    broker = U.Broker(PARTS, ["behaviour-events", "recommendations", "behaviour-events.dlq"],
                      os.path.join(tmp, "broker.log"))
    worker = None
    failed = []
    try:
        subprocess.run([U.HL, "produce", "--input", events_csv, "--format", "events-csv",
                        "-X", "kafka.bootstrap.servers=" + broker.bootstrap],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bad = bad_records()
        produce_bad(broker.bootstrap, bad)
        total = N_EVENTS + len(bad)
        lows, highs = watermarks(broker.bootstrap)
        if lows != 0 or highs != total:
            print("FAIL accounting.broker_holds_everything: low %d high %d, want 0 and %d"
                  % (lows, highs, total))
            return 1
        print("PASS accounting.broker_holds_everything")
        t0 = time.time()
        worker = U.Worker(broker.bootstrap, model, os.path.join(tmp, "worker.log"),
                          extra=["kafka.fetch.wait.max.ms=10", "dlq.topic=",
                                 "snapshot.dir=" + os.path.join(tmp, "snapshots")])
        consumed = 0
        while time.time() - t0 < 50:
            time.sleep(1)
            try:
                consumed = worker.metric("halflife_events_consumed_total")
            except OSError:
                continue
            if consumed >= total:
                break
        secs = time.time() - t0
        invalid = worker.metric("halflife_events_invalid_total")
        lists = worker.metric("halflife_lists_published_total")
        users = worker.metric("halflife_users")
        rc = worker.stop()
        worker_log = worker.log_text()
        worker = None
        t = totals(worker_log)
        if t is None or rc != 0:
            failed.append("worker exit %s, totals line %s" % (rc, t))
        else:
            c, a, i, d = (int(t[k]) for k in ("consumed", "applied", "invalid", "duplicates"))
            if not (c == consumed == total and a + i == c and i == invalid == len(bad)
                    and d == 0 and int(t["failed"]) == 0):
                failed.append("consumed %d/%d (metrics %d), applied %d, invalid %d (metrics %d, "
                              "sent %d), duplicates %d" % (c, total, consumed, a, i, invalid,
                                                           len(bad), d))
            if users != N_USERS and users != int(t["users"]):
                failed.append("users %d, totals %s" % (users, t["users"]))
            if lists < users:
                failed.append("%d lists for %d users" % (lists, users))
        if failed:
            print("FAIL accounting.million_events_accounted: %s (log in %s)" % (failed, tmp))
            return 1
        print("PASS accounting.million_events_accounted (%d records, %d users, %.1f s, "
              "%.0f records/s with lists)" % (total, users, secs, total / secs))
    finally:
        if worker:
            worker.stop()
        broker.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
