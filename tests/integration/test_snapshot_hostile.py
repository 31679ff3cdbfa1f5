"""test_snapshot_hostile.py - things under a snapshot's name in snapshot.dir
that are not snapshots: the worker refuses each with a log line, counts it,
restores the newest real file and goes on.

A `halflife broker` with 2 partitions; a first `halflife run` takes events
and leaves its final snapshots at SIGTERM. Then, newer by their names than
partition 0's real file: a FIFO, a symlink to a copy of that file kept
outside the directory, and a directory, each named like a snapshot of
partition 0. A second worker on the same snapshot.dir must:
- hostile_files_refused: become ready, log event=snapshot_rejected naming
  all three (a FIFO, a symbolic link, a directory), count 3 in
  halflife_snapshots_rejected_total, and restore partition 0 from the real
  file at its offset (event=snapshot_restored).
Before the fix the restore opened the FIFO blocking, waiting for a writer
that never came: the worker never became ready (and the symlink would have
been followed).
"""
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402

SLOW = 3 if os.environ.get("HL_SAN") == "1" else 1


def plant(snapdir, outside, real_off, real_path):
    """The three impostors of partition 0, newest first; their paths."""
    def name(off):
        return os.path.join(snapdir, "%s.0.%020d.hls" % (C.TOPIC, off))
    fifo, link, sub = name(real_off + 3000), name(real_off + 2000), name(real_off + 1000)
    os.mkfifo(fifo)
    copy = os.path.join(outside, os.path.basename(link))
    shutil.copyfile(real_path, copy)
    os.symlink(copy, link)
    os.mkdir(sub)
    return fifo, link, sub


def run(ck):
    model, _csv, events = C.prepare(ck.tmp, 400, 40, 200)
    broker = C.Broker(ck.procs, 2, os.path.join(ck.tmp, "broker.log"))
    snapdir = os.path.join(ck.tmp, "snap")
    outside = os.path.join(ck.tmp, "outside")
    os.mkdir(outside)
    # A short session: librdkafka 2.0.2's mock holds the rebalance after a
    # member's leave for the leaver's session timeout less 1 s, so the
    # second worker waited 44 s of the default 45 s to be ready.
    common = ["snapshot.dir=" + snapdir, "kafka.fetch.wait.max.ms=10",
              "kafka.session.timeout.ms=6000", "kafka.heartbeat.interval.ms=1000"]
    w1 = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "w1.log"), common)
    U.produce_events(broker.bootstrap, C.TOPIC, events)
    consumed = C.wait_consumed([w1], len(events), 60 * SLOW)
    rc, _secs = w1.term(30 * SLOW)
    newest = C.newest_snapshots(snapdir)
    if 0 not in newest:
        ck.check("hostile_files_refused", False, "no snapshot of partition 0 after the "
                 "first run (consumed %d of %d, exit %s)" % (consumed, len(events), rc))
        broker.stop()
        return
    real_off, real_path = newest[0]
    fifo, link, sub = plant(snapdir, outside, real_off, real_path)

    w2 = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "w2.log"), common)
    ready = C.wait_for(lambda: w2.metric_or("halflife_ready") == 1, 60 * SLOW)
    rejected = w2.metric_or("halflife_snapshots_rejected_total")
    detail = " ".join(kv.get("detail", "") for _ts, kv in w2.events("snapshot_rejected"))
    restored = [kv for _ts, kv in w2.events("snapshot_restored") if kv.get("partition") == "0"]
    said = {"fifo": fifo in detail and "a FIFO, not a regular file" in detail,
            "link": link in detail and "a symbolic link" in detail,
            "dir": sub in detail and "a directory, not a regular file" in detail}
    ok = (ready and rejected == 3 and all(said.values()) and len(restored) == 1
          and restored[0].get("path") == real_path
          and restored[0].get("next_offset") == str(real_off))
    ck.check("hostile_files_refused", ok,
             "ready %s, rejected_total %s, said %s, restored %s (want %s at %d)"
             % (ready, rejected, said, restored, real_path, real_off))
    w2.term(30 * SLOW)
    broker.stop()


if __name__ == "__main__":
    sys.exit(C.run_main("snapshot_hostile", "hostile_files_refused", run))
