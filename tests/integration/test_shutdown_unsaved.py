"""test_shutdown_unsaved.py - a graceful stop that cannot save what it owns
does not exit 0 (issue 16, "Hardening", item 12).

The final snapshot at shutdown can fail (a full disk, a volume gone), and
the worker used to exit 0 anyway, so an orchestrator's logs looked like a
clean stop. Separate processes over TCP: a `halflife broker`, events
produced by python3-confluent-kafka + python3-avro, one `halflife run` with
snapshots only at shutdown (snapshot.interval.ms=0). Once it has consumed
everything, its snapshot.dir is moved away and a regular file put in its
place (root ignores a directory's mode bits, so chmod cannot make it
fail; a file where the directory was fails the open of the temporary file
as ENOTDIR, like a lost volume). Then SIGTERM. Checks:
- the worker exits 1, within shutdown.timeout.ms (no hang on the failure);
- it logs event=shutdown_unsaved naming exactly the partitions that held
  events, and event=snapshot_failed for each of them;
- it still commits the offsets and leaves the group (worker_totals logged,
  committed offsets equal the high watermarks), so only the snapshot is
  missing and a restart replays from the previous one.
"""
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, PARTS = 600, 60, 200, 3
TIMEOUT_MS = 8000
COMMON = ["worker.threads=2", "kafka.fetch.wait.max.ms=10",
          "kafka.session.timeout.ms=3000", "kafka.heartbeat.interval.ms=1000"]


def run(ck):
    model, _csv, events = C.prepare(ck.tmp, N_EVENTS, N_USERS, N_ITEMS)
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker.log"))
    snapdir = os.path.join(ck.tmp, "snapshots")
    conf = COMMON + ["snapshot.dir=" + snapdir, "snapshot.interval.ms=0",
                     "shutdown.timeout.ms=%d" % TIMEOUT_MS, "group.id=unsaved"]
    w = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "w.log"), conf)
    errors = []
    prod = C.paced_producer(broker.bootstrap, events, 5000, errors)
    assigned = w.wait_event("partition_assigned", 20, count=PARTS)
    prod.join(60)
    consumed = C.wait_consumed([w], len(events), 30)
    C.wait_idle([w], 10)
    _last, high = C.read_topic(broker.bootstrap, PARTS)
    held = sorted(p for p, n in high.items() if n > 0)

    shutil.move(snapdir, snapdir + ".moved")
    with open(snapdir, "w") as f:
        f.write("not a directory\n")
    rc, secs = w.term(TIMEOUT_MS / 1000.0 + 5)
    ck.check("stop_that_cannot_snapshot_exits_1",
             assigned and not errors and consumed == len(events) and rc == 1 and
             secs * 1000 < TIMEOUT_MS,
             "assigned %s, producer errors %s, consumed %s of %d, exit status %s after %.2f s "
             "(timeout %d ms)" % (assigned, errors[:3], consumed, len(events), rc, secs,
                                  TIMEOUT_MS))

    unsaved = w.events("shutdown_unsaved")
    named = sorted(int(p) for p in unsaved[-1][1].get("partitions", "").split(",")
                   if p.isdigit()) if unsaved else []
    failed = sorted(int(kv["partition"]) for _t, kv in w.events("snapshot_failed"))
    ck.check("unsaved_partitions_named",
             len(unsaved) == 1 and named == held and failed == held and len(held) > 1,
             "shutdown_unsaved lines %s (partitions %s), snapshot_failed for %s; "
             "partitions with events %s" % (len(unsaved), named, failed, held))

    comm = C.committed(broker.bootstrap, "unsaved", PARTS)
    ck.check("offsets_still_committed",
             w.totals() is not None and all(comm.get(p) == high[p] for p in held),
             "totals %s, committed %s, high watermarks %s" % (w.totals(), comm, high))


def main():
    return C.run_main("shutdown_unsaved", "stop_that_cannot_snapshot_exits_1", run)


if __name__ == "__main__":
    sys.exit(main())
