"""test_multipart.py - a user seen in two partitions is counted and reported
(issue 16, item 6; DESIGN.md section 2).

A `halflife broker` with four partitions and one `halflife run` owning them
all. 400 users are produced keyed by user_id (each stays in one partition);
then the user "split-user" is produced explicitly to partition 1 and to
partition 3, as a producer that keys by something else would. Checks:
halflife_users_multi_partition_total is exactly 1 (the split user, no false
report among the others), the log has one event=user_multi_partition line
naming the user and both partitions, halflife_dlq_errors_total is 0 and
SIGTERM exits 0. Before the fix nothing was counted or logged.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402

T0 = 1767225600000


def produce_split(bootstrap):
    from confluent_kafka import Producer
    import avro.io
    w = avro.io.DatumWriter(U.load_schema("behaviour_event.avsc"))
    p = Producer({"bootstrap.servers": bootstrap})
    for part, k in ((1, 0), (3, 1), (1, 2), (3, 3)):
        v = U.encode_event(w, 1, "split-user", "i%06d" % k, "CLICK", T0 + 10000000 + k * 1000)
        p.produce("behaviour-events", key=b"split-user", value=v, partition=part)
        p.flush(10)


def body(ck):
    tmp = ck.tmp
    events, broker, worker = U.one_worker(tmp, 3000, 400)
    failed = []
    try:
        U.produce_events(broker.bootstrap, "behaviour-events", events)
        produce_split(broker.bootstrap)
        total = len(events) + 4
        # Applied, not consumed: users are checked as their batch is applied,
        # which on a loaded machine can trail consumption by seconds.
        applied, deadline = 0, time.time() + 60
        while time.time() < deadline and applied < total:
            try:
                applied = worker.metric("halflife_events_applied_total")
            except OSError:
                pass                        # /metrics is not up yet
            time.sleep(0.3)
        n = worker.metric("halflife_users_multi_partition_total")
        dlq_err = worker.metric("halflife_dlq_errors_total")
        rc = worker.stop()
        worker = None
        lines = [l for l in open(os.path.join(tmp, "worker.log")).read().splitlines()
                 if "event=user_multi_partition" in l]
        if applied < total:
            failed.append("applied %d of %d events in 60 s" % (applied, total))
        if n != 1:
            failed.append("halflife_users_multi_partition_total %d, want 1" % n)
        if len(lines) != 1 or "split-user" not in lines[0] or not (
                ("partition=1" in lines[0] and "other_partition=3" in lines[0]) or
                ("partition=3" in lines[0] and "other_partition=1" in lines[0])):
            failed.append("log lines %s" % lines[:3])
        if dlq_err != 0:
            failed.append("halflife_dlq_errors_total %d" % dlq_err)
        if rc != 0:
            failed.append("exit status %s after SIGTERM" % rc)
    finally:
        if worker:
            worker.stop()
        broker.stop()
    ck.check("user_in_two_partitions_reported", not failed, "%s" % failed)


if __name__ == "__main__":
    sys.exit(C.run_main("multipart", "user_in_two_partitions_reported", body))
