"""test_shutdown.py - graceful shutdown (issue 5, "Shutdown"; DESIGN.md
section 2: finish the batch, publish, snapshot every owned shard, commit
offsets, leave the group, within shutdown.timeout.ms).

Separate processes over TCP: a `halflife broker`, events produced at a
steady rate by python3-confluent-kafka + python3-avro, one `halflife run`.
SIGTERM arrives while the stream flows. Checks:
- the worker exits 0 within shutdown.timeout.ms;
- its last snapshot of every partition (checked with `halflife snapshot
  inspect`) and the group's committed offsets (Consumer.committed()) agree,
  and both equal what the worker consumed;
- a restart of the same group restores those snapshots, continues from
  exactly there (it consumes the rest, no event twice), and ends in the
  state of an uninterrupted run (`halflife snapshot dump` of every
  partition) with every user's last list equal to the offline reference.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import test_e2e as E  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, PARTS = 8000, 400, 1000, 4
RATE = 500              # events/s: the stream flows about 16 s
TIMEOUT_MS = 10000      # shutdown.timeout.ms
COMMON = ["worker.threads=2", "kafka.fetch.wait.max.ms=10",
          "kafka.session.timeout.ms=3000", "kafka.heartbeat.interval.ms=1000"]


def run(ck):
    model, events_csv, events = C.prepare(ck.tmp, N_EVENTS, N_USERS, N_ITEMS)
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker.log"))
    snapdir = os.path.join(ck.tmp, "snapshots")
    conf = COMMON + ["snapshot.dir=" + snapdir, "snapshot.interval.ms=2000",
                     "shutdown.timeout.ms=%d" % TIMEOUT_MS, "group.id=shutdown"]
    w1 = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "w1.log"), conf)
    errors = []
    t0 = time.time()
    prod = C.paced_producer(broker.bootstrap, events, RATE, errors)
    assigned = w1.wait_event("partition_assigned", 20, count=PARTS)
    time.sleep(max(0.0, t0 + 7 - time.time()))
    mid_stream = prod.is_alive()
    rc, secs = w1.term(TIMEOUT_MS / 1000.0 + 5)
    ck.check("sigterm_exits_0_within_timeout",
             assigned and mid_stream and rc == 0 and secs * 1000 < TIMEOUT_MS,
             "assigned %s, mid-stream %s, exit status %s after %.2f s (timeout %d ms)"
             % (assigned, mid_stream, rc, secs, TIMEOUT_MS))

    snaps = C.newest_snapshots(snapdir)
    heads = {p: C.inspect(path) for p, (_o, path) in snaps.items()}
    snap_offs = {p: h["next_offset"] for p, h in heads.items()
                 if h.get("crc_ok") and h["next_offset"] == snaps[p][0]}
    comm = C.committed(broker.bootstrap, "shutdown", PARTS)
    consumed1 = (w1.totals() or {}).get("consumed", -1)
    ck.check("snapshot_and_committed_offsets_agree",
             len(snap_offs) == PARTS and snap_offs == comm and
             sum(snap_offs.values()) == consumed1 > 0,
             "snapshots %s (headers %s), committed %s, consumed %d"
             % ({p: o for p, (o, _x) in snaps.items()}, snap_offs, comm, consumed1))

    w2 = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "w2.log"), conf)
    w2.wait_event("partition_assigned", 20, count=PARTS)
    restored = {int(kv["partition"]): int(kv["next_offset"]) for _t, kv in w2.events("restored")}
    ck.check("restart_restores_the_last_snapshots", restored == snap_offs,
             "restored %s, last snapshots %s" % (restored, snap_offs))
    prod.join(60)
    ck.check("stream_produced", not prod.is_alive() and not errors, "producer: %s" % errors[:3])
    last, high = C.read_topic(broker.bootstrap, PARTS)
    lists, got = E.read_lists(broker.bootstrap, last, time.time() + 30)
    C.wait_committed(broker.bootstrap, "shutdown", high, 60)
    rc2, _secs = w2.term(TIMEOUT_MS / 1000.0 + 5)
    t2 = w2.totals() or {}
    ck.check("restart_continues_exactly",
             rc2 == 0 and t2.get("consumed") == t2.get("applied") == len(events) - consumed1
             and t2.get("duplicates") == 0 and sum(high.values()) == len(events),
             "second life exit %s, consumed %s, applied %s, duplicates %s; first life "
             "consumed %d of %d" % (rc2, t2.get("consumed"), t2.get("applied"),
                                    t2.get("duplicates"), consumed1, len(events)))

    C.check_last_lists(ck, lists, got, last, events_csv, model, events)
    C.check_final_state(ck, "final_state_equals_uninterrupted", broker.bootstrap, model,
                        snapdir, len(events), N_USERS, high, COMMON)
    print("    (%d events, first life consumed %d and stopped in %.2f s, %.0f s in all)"
          % (len(events), consumed1, secs, time.time() - t0))


def main():
    return C.run_main("shutdown", "sigterm_snapshot_and_commit_agree", run)


if __name__ == "__main__":
    sys.exit(main())
