#!/usr/bin/python3
"""test_dead_letter_cap.py - snapshot.dir/dead-letters stops at
deadletter.max.bytes while the dead-letter topic refuses copies, and a bad
record it cannot keep holds its partition's offset instead of being passed.

A `halflife broker --refuse-produce FILE` answers every Produce with
INVALID_RECORD, so each DLQ copy of N_BAD malformed records fails and the
worker keeps them on disk. Before the fix nothing bounded that directory
(one file per record: anyone able to write to the input topic during a DLQ
outage could fill the disk, snapshots' included). Checks: the files stop
near the cap; halflife_dead_letter_write_failures_total counts the
refusals and a dead_letter_not_kept line names the cap; no committed
offset passes a record that is on neither the DLQ topic nor disk; once an
operator moves the files out, every record is kept and the worker stops
cleanly.

Run: HL_HALFLIFE=build/halflife HL_BUILD=build /usr/bin/python3 tests/integration/test_dead_letter_cap.py
"""
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402
from test_dead_letter_flood import produce_bad  # noqa: E402
from test_delivery_refused import refuse  # noqa: E402

SUITE = "dead_letter_cap"
N_BAD = 40
PARTS = 2
CAP = 3000              # a handful of ~300-byte files
SLACK = 1024            # one record passes it, however many threads check at once


def dir_bytes(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)) if os.path.isdir(d) else 0


def offsets(names):
    """{partition: set of offsets} of dead-letter file names."""
    got = {}
    for n in names:
        parts = n.split(".")
        if n.endswith(".dead") and len(parts) >= 4:
            got.setdefault(int(parts[-3]), set()).add(int(parts[-2]))
    return got


def wait_metric(w, name, want, timeout):
    deadline, got = time.time() + timeout, -1
    while time.time() < deadline and got < want and w.p.poll() is None:
        got = w.metric_or(name)
        time.sleep(0.1)
    return got


def check_held(ck, broker, dl):
    """No committed offset passes a record that is not on disk."""
    kept = offsets(os.listdir(dl))
    comm = C.committed(broker.bootstrap, "halflife", PARTS)
    for p in range(PARTS):
        high = max(kept.get(p, {-1}) | {comm[p]})
        missing = [o for o in range(high + 1) if o not in kept.get(p, set())]
        ok = comm[p] < 0 or not missing or comm[p] <= missing[0]
        ck.check("offset_held_p%d" % p, ok, "committed %d passes offset %s, on neither "
                 "the DLQ topic nor disk" % (comm[p], missing[:1]))


def drain(w, dl, side, timeout):
    """Moves files out of dl (the operator) until every record was kept."""
    deadline, kept = time.time() + timeout, -1
    while time.time() < deadline and kept < N_BAD:
        for f in os.listdir(dl) if os.path.isdir(dl) else []:
            if f.endswith(".dead"):
                shutil.move(os.path.join(dl, f), os.path.join(side, f))
        kept = w.metric_or("halflife_dead_letters_kept_total")
        time.sleep(0.1)
    return kept


def run(ck):
    model = os.path.join(ck.tmp, "model.hlm")
    U.make_model(model)
    path = os.path.join(ck.tmp, "refuse")
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker.log"),
                      extra=["--refuse-produce", path])
    produce_bad(broker.bootstrap, N_BAD)
    if not refuse(broker, path, True, "INVALID_RECORD"):
        raise RuntimeError("the broker never started refusing (see broker.log)")
    snap = os.path.join(ck.tmp, "snap")
    dl, side = os.path.join(snap, "dead-letters"), os.path.join(ck.tmp, "moved")
    os.makedirs(side)
    w = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "worker.log"),
                 ["worker.threads=2", "kafka.fetch.wait.max.ms=10", "snapshot.dir=" + snap,
                  "deadletter.max.bytes=%d" % CAP])
    fails = wait_metric(w, "halflife_dead_letter_write_failures_total", 1, 20)
    ck.check("cap_refused", fails >= 1, "halflife_dead_letter_write_failures_total %s "
             "(worker exit %s; see worker.log)" % (fails, w.p.poll()))
    used, kept = dir_bytes(dl), w.metric_or("halflife_dead_letters_kept_total")
    ck.check("dir_bounded", used <= CAP + SLACK and 0 <= kept < N_BAD,
             "%d bytes in %s (cap %d), %s of %d records kept" % (used, dl, CAP, kept, N_BAD))
    lines = [kv for _ts, kv in w.events("dead_letter_not_kept")]
    ck.check("logged", any("deadletter.max.bytes" in kv.get("err", "") for kv in lines),
             "no dead_letter_not_kept line names the cap: %s" % lines[:1])
    if os.path.isdir(dl):
        check_held(ck, broker, dl)
    kept = drain(w, dl, side, 20)
    left = os.listdir(dl) if os.path.isdir(dl) else []
    moved = sum(len(s) for s in offsets(os.listdir(side) + left).values())
    ck.check("all_kept_after_move", kept == N_BAD and moved == N_BAD,
             "halflife_dead_letters_kept_total %s, %d files, %d bad records" % (kept, moved, N_BAD))
    rc, _secs = w.term(30)
    ck.check("clean_exit", rc == 0, "exit %s" % rc)


if __name__ == "__main__":
    sys.exit(C.run_main(SUITE, "ran", run))
