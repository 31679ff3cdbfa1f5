#!/usr/bin/python3
"""test_dead_letter_large.py - one bad record larger than
deadletter.max.bytes, during a dead-letter-topic outage, is kept on disk
and its partition moves on; the directory still stops at the cap.

A `halflife broker --refuse-produce FILE` answers every Produce with
INVALID_RECORD, so the DLQ copies of three malformed records (small,
LARGE bytes, small) fail and the worker keeps them in
snapshot.dir/dead-letters under a CAP far below LARGE. Before the fix a
record was written only if it fit under the cap, so the large one never
did: its partition's offset stayed held until an operator raised the cap
(anyone able to write one large record to the input could stall a
partition for the length of an outage). Now a record goes in while the
directory is below the cap, so the overshoot is one record (the consumer
takes none above receive.message.max.bytes). Checks: the large record is
kept at once; the directory passes the cap by at most that one record
(test_dead_letter_cap checks that records are then held at the cap);
once an operator moves the files out, all are kept and the worker stops
cleanly.

Run: HL_HALFLIFE=build/halflife HL_BUILD=build /usr/bin/python3 tests/integration/test_dead_letter_large.py
"""
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402
from test_delivery_refused import refuse  # noqa: E402
from test_dlq import bad_records  # noqa: E402
from test_dlq_large import read_dead_letter  # noqa: E402

SUITE = "dead_letter_large"
CAP = 3000
LARGE = 20000
HEAD = 1024             # a file's text head, per record, generously


def produce(bootstrap, values):
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i, v in enumerate(values):
        p.produce(C.TOPIC, key=b"u%d" % i, value=v, partition=0)
    if p.flush(20) != 0:
        raise RuntimeError("bad records not delivered to the input topic")


def kept_files(dl):
    return [os.path.join(dl, f) for f in os.listdir(dl) if f.endswith(".dead")] \
        if os.path.isdir(dl) else []


def move_out(w, dl, side):
    """The operator: moves the kept files out; the count of records kept."""
    for f in kept_files(dl):
        shutil.move(f, side)
    return w.metric_or("halflife_dead_letters_kept_total")


def wait_for(w, cond, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline and w.p.poll() is None:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def run(ck):
    model = os.path.join(ck.tmp, "model.hlm")
    U.make_model(model)
    path = os.path.join(ck.tmp, "refuse")
    broker = C.Broker(ck.procs, 1, os.path.join(ck.tmp, "broker.log"),
                      extra=["--refuse-produce", path])
    small = bad_records()["bad_magic"]
    produce(broker.bootstrap, [small, b"\x05" + b"x" * LARGE, small])
    if not refuse(broker, path, True, "INVALID_RECORD"):
        raise RuntimeError("the broker never started refusing (see broker.log)")
    snap = os.path.join(ck.tmp, "snap")
    dl, side = os.path.join(snap, "dead-letters"), os.path.join(ck.tmp, "moved")
    os.makedirs(side)
    w = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "worker.log"),
                 ["kafka.fetch.wait.max.ms=10", "snapshot.dir=" + snap,
                  "deadletter.max.bytes=%d" % CAP])
    big = lambda: [f for f in kept_files(dl) if len(read_dead_letter(f)[2]) > LARGE]  # noqa: E731
    ck.check("large_kept", wait_for(w, lambda: big(), 20),
             "no file in %s holds the %d-byte record under deadletter.max.bytes=%d; "
             "dead_letter_not_kept: %s" % (dl, LARGE, CAP,
                                           [kv.get("err") for _t, kv in w.events("dead_letter_not_kept")][:1]))
    # The large one went in below the cap, so at most one small one more.
    used = sum(os.path.getsize(f) for f in kept_files(dl))
    ck.check("bounded", used <= CAP + LARGE + 2 * HEAD,
             "%d files, %d bytes in %s (cap %d)" % (len(kept_files(dl)), used, dl, CAP))
    ck.check("all_kept_after_move", wait_for(w, lambda: move_out(w, dl, side) == 3, 20),
             "halflife_dead_letters_kept_total %s of 3"
             % w.metric_or("halflife_dead_letters_kept_total"))
    rc, _secs = w.term(30)
    ck.check("clean_exit", rc == 0, "exit %s" % rc)


if __name__ == "__main__":
    sys.exit(C.run_main(SUITE, "ran", run))
