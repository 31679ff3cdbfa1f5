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
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402
import test_e2e as E  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, PARTS = 8000, 400, 1000, 4
RATE = 500              # events/s: the stream flows about 16 s
TIMEOUT_MS = 10000      # shutdown.timeout.ms
COMMON = ["worker.threads=2", "kafka.fetch.wait.max.ms=10",
          "kafka.session.timeout.ms=3000", "kafka.heartbeat.interval.ms=1000"]


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP shutdown.sigterm_snapshot_and_commit_agree: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_shutdown_")
    procs = C.Procs()
    failed = 0

    def check(name, ok, why):
        nonlocal failed
        print(("PASS shutdown.%s" % name) if ok else ("FAIL shutdown.%s: %s (logs in %s)"
                                                       % (name, why, tmp)))
        failed += 0 if ok else 1

    try:
        model, events_csv, events = C.prepare(tmp, N_EVENTS, N_USERS, N_ITEMS)
        broker = C.Broker(procs, PARTS, os.path.join(tmp, "broker.log"))
        snapdir = os.path.join(tmp, "snapshots")
        conf = COMMON + ["snapshot.dir=" + snapdir, "snapshot.interval.ms=2000",
                         "shutdown.timeout.ms=%d" % TIMEOUT_MS, "group.id=shutdown"]
        w1 = C.Worker(procs, broker.bootstrap, model, os.path.join(tmp, "w1.log"), conf)
        errors = []
        t0 = time.time()
        prod = C.paced_producer(broker.bootstrap, events, RATE, errors)
        assigned = w1.wait_event("partition_assigned", 20, count=PARTS)
        time.sleep(max(0.0, t0 + 7 - time.time()))
        mid_stream = prod.is_alive()
        rc, secs = w1.term(TIMEOUT_MS / 1000.0 + 5)
        check("sigterm_exits_0_within_timeout",
              assigned and mid_stream and rc == 0 and secs * 1000 < TIMEOUT_MS,
              "assigned %s, mid-stream %s, exit status %s after %.2f s (timeout %d ms)"
              % (assigned, mid_stream, rc, secs, TIMEOUT_MS))

        snaps = C.newest_snapshots(snapdir)
        heads = {p: C.inspect(path) for p, (_o, path) in snaps.items()}
        snap_offs = {p: h["next_offset"] for p, h in heads.items()
                     if h.get("crc_ok") and h["next_offset"] == snaps[p][0]}
        comm = C.committed(broker.bootstrap, "shutdown", PARTS)
        consumed1 = (w1.totals() or {}).get("consumed", -1)
        check("snapshot_and_committed_offsets_agree",
              len(snap_offs) == PARTS and snap_offs == comm and
              sum(snap_offs.values()) == consumed1 > 0,
              "snapshots %s (headers %s), committed %s, consumed %d"
              % ({p: o for p, (o, _x) in snaps.items()}, snap_offs, comm, consumed1))

        w2 = C.Worker(procs, broker.bootstrap, model, os.path.join(tmp, "w2.log"), conf)
        w2.wait_event("partition_assigned", 20, count=PARTS)
        restored = {int(kv["partition"]): int(kv["next_offset"]) for _t, kv in w2.events("restored")}
        check("restart_restores_the_last_snapshots", restored == snap_offs,
              "restored %s, last snapshots %s" % (restored, snap_offs))
        prod.join(60)
        check("stream_produced", not prod.is_alive() and not errors, "producer: %s" % errors[:3])
        last, high = C.read_topic(broker.bootstrap, PARTS)
        lists, got = E.read_lists(broker.bootstrap, last, time.time() + 30)
        C.wait_idle([w2], 20)
        rc2, _secs = w2.term(TIMEOUT_MS / 1000.0 + 5)
        t2 = w2.totals() or {}
        check("restart_continues_exactly",
              rc2 == 0 and t2.get("consumed") == t2.get("applied") == len(events) - consumed1
              and t2.get("duplicates") == 0 and sum(high.values()) == len(events),
              "second life exit %s, consumed %s, applied %s, duplicates %s; first life "
              "consumed %d of %d" % (rc2, t2.get("consumed"), t2.get("applied"),
                                     t2.get("duplicates"), consumed1, len(events)))

        offline = U.offline_lists(events_csv, model)
        bad = E.compare(lists, offline, events) if len(got) == len(last) else \
            ["%d of %d users got the list of their last event" % (len(got), len(last))]
        check("last_lists_equal_offline", not bad and len(offline) == len(last),
              "%d mismatches of %d users, e.g. %s" % (len(bad), len(offline), bad[:3]))

        state, offs = C.dump_state(snapdir)
        ref, ref_offs, _tot, ref_rc = C.clean_run(procs, broker.bootstrap, model, tmp,
                                                  len(events), COMMON)
        diff = C.state_diff(state, ref)
        check("final_state_equals_uninterrupted",
              ref_rc == 0 and offs == ref_offs == high and not diff and len(ref) == N_USERS,
              "uninterrupted exit %s, %d users; offsets %s vs %s (high %s); %d users differ, "
              "e.g. %s vs %s" % (ref_rc, len(ref), offs, ref_offs, high, len(diff),
                                 state.get(diff[0]) if diff else None,
                                 ref.get(diff[0]) if diff else None))
        print("    (%d events, first life consumed %d and stopped in %.2f s, %.0f s in all)"
              % (len(events), consumed1, secs, time.time() - t0))
    except Exception as e:  # noqa: BLE001 - reported as a FAIL line, never silent
        check("ran", False, "%s: %s" % (type(e).__name__, e))
    finally:
        procs.kill_all()
    if not failed:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
