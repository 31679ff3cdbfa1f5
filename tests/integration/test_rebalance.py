"""test_rebalance.py - partitions move between workers with their state
(issue 5, "Rebalance"; DESIGN.md sections 2 and 6).

Separate processes over TCP: a `halflife broker` with 6 partitions, events
produced at a steady rate by python3-confluent-kafka + python3-avro, and
`halflife run` workers in one group sharing one snapshot.dir. Two workers
start; while the stream flows a third joins (cooperative-sticky moves some
partitions to it), then the first leaves on SIGTERM (its partitions move to
the other two). Checks:
- every move carried the state: whenever a partition was revoked from one
  worker, its next owner restored a snapshot whose next offset is the one
  the previous owner wrote when it let go;
- nothing lost, nothing applied twice: over all workers' lives, consumed and
  applied both equal the events produced, no duplicates (a record
  librdkafka 2.0.2 hands over twice around a rebalance is dropped before it
  counts, and reported as redelivered: README.md, "Rebalance and librdkafka
  2.0.2");
- the final snapshots of every partition equal a single uninterrupted
  worker's (`halflife snapshot dump`), at the same offsets (the high
  watermarks), and every user's last list equals the offline reference.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import test_e2e as E  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, PARTS = 9000, 300, 1000, 6
RATE = 450              # events/s: the stream flows about 20 s
COMMON = ["worker.threads=1", "kafka.fetch.wait.max.ms=10",
          "kafka.session.timeout.ms=3000", "kafka.heartbeat.interval.ms=1000"]


def handovers(workers):
    """(moves, problems): a move is a partition revoked by one worker and
    later assigned to another. Every assignment after a revocation must
    restore the offset the last owner wrote when it let go."""
    revokes, assigns, written, restored = [], [], {}, {}
    for wi, w in enumerate(workers):
        for ts, kv in w.events("partition_revoked"):
            revokes.append((ts, int(kv["partition"]), wi))
        for ts, kv in w.events("partition_assigned"):
            assigns.append((ts, int(kv["partition"]), wi))
        for ts, kv in w.events("snapshot_written"):
            written.setdefault((wi, int(kv["partition"])), []).append((ts, int(kv["next_offset"])))
        for ts, kv in w.events("restored"):
            restored.setdefault((wi, int(kv["partition"])), []).append((ts, int(kv["next_offset"])))
    moves, problems = 0, []
    for ts_a, p, wa in assigns:
        before = [r for r in revokes if r[1] == p and r[0] <= ts_a]
        if not before:
            continue
        ts_r, _p, wr = max(before)          # the last owner, possibly wa itself
        snaps = [o for t, o in written.get((wr, p), []) if t <= ts_r]
        rest = [o for t, o in restored.get((wa, p), []) if ts_r <= t <= ts_a]
        moves += wr != wa
        want = max(snaps) if snaps else None
        if want is None or not rest or rest[-1] != want:
            problems.append("partition %d: w%d let go at %s after writing offset %s; w%d "
                            "restored %s" % (p, wr + 1, ts_r, want, wa + 1, rest or "nothing"))
    return moves, problems


def run(ck):
    model, events_csv, events = C.prepare(ck.tmp, N_EVENTS, N_USERS, N_ITEMS)
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker.log"))
    snapdir = os.path.join(ck.tmp, "snapshots")
    group = COMMON + ["snapshot.dir=" + snapdir, "snapshot.interval.ms=1000",
                      "group.id=rebalance"]
    w = [C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "w%d.log" % i), group)
         for i in (1, 2)]
    errors = []
    t0 = time.time()
    prod = C.paced_producer(broker.bootstrap, events, RATE, errors)
    joined = all(x.wait_event("partition_assigned", 20) for x in w)
    time.sleep(max(0.0, t0 + 6 - time.time()))
    w.append(C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "w3.log"), group))
    joined = joined and w[2].wait_event("partition_assigned", 20)
    time.sleep(3)
    mid_stream = prod.is_alive()
    rc1, secs1 = w[0].term(30)
    ck.check("two_then_three_then_two", joined and mid_stream and rc1 == 0,
             "all joined %s, w1 left while the stream flowed %s, its exit status %s"
             % (joined, mid_stream, rc1))
    prod.join(120)
    ck.check("stream_produced", not prod.is_alive() and not errors, "producer: %s" % errors[:3])

    last, high = C.read_topic(broker.bootstrap, PARTS)
    lists, got = E.read_lists(broker.bootstrap, last, time.time() + 40)
    C.wait_committed(broker.bootstrap, "rebalance", high, 60)
    rcs = [x.term(30)[0] for x in w[1:]]
    tot = [x.totals() or {} for x in w]
    consumed = sum(t.get("consumed", 0) for t in tot)
    applied = sum(t.get("applied", 0) for t in tot)
    dup = sum(t.get("duplicates", 0) for t in tot)
    redelivered = sum(t.get("redelivered", 0) for t in tot)
    ck.check("every_worker_exits_0", rcs == [0, 0] and all(tot), "exit %s, totals %s" % (rcs, tot))

    moves, problems = handovers(w)
    ck.check("state_follows_each_partition", moves >= 2 and not problems,
             "%d moves: %s" % (moves, problems[:3]))
    ck.check("nothing_lost_nothing_twice",
             consumed == applied == len(events) and dup == 0 and
             sum(high.values()) == len(events),
             "consumed %d, applied %d, duplicates %d, produced %d (high watermarks %s; "
             "%d re-delivered records dropped)"
             % (consumed, applied, dup, len(events), high, redelivered))

    C.check_last_lists(ck, lists, got, last, events_csv, model, events)
    ref = C.check_final_state(ck, "final_state_equals_single_worker", broker.bootstrap, model,
                              snapdir, len(events), N_USERS, high, COMMON)
    print("    (%d events, %d users, %d partition moves, %d re-delivered records dropped, "
          "w1 stopped in %.1f s, %.0f s in all)"
          % (len(events), len(ref), moves, redelivered, secs1, time.time() - t0))


def main():
    return C.run_main("rebalance", "state_follows_partitions", run)


if __name__ == "__main__":
    sys.exit(main())
