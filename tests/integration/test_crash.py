"""test_crash.py - crash exactness (issue 5): `kill -9` the worker at random
points while a stream flows, five times, restarting it each time, then let
it finish. Separate processes over TCP: a `halflife broker`, events produced
by python3-confluent-kafka + python3-avro, `halflife run` with frequent
snapshots.

Checks:
- every user's state in the final snapshots equals an uninterrupted run's
  (a second worker, its own group and snapshot.dir, over the same topic),
  compared with `halflife snapshot dump` (vectors by hash, masses, times,
  last offsets, history; row ids and LRU counters are bookkeeping);
- every user's last published list (newest source offset) equals the list
  core/ computes offline from the same events (build/tests/test_offline),
  i.e. the uninterrupted run's last list;
- each restart restored a snapshot and resumed from its offset.
"""
import os
import random
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402
import test_e2e as E  # noqa: E402
import cluster_util as C  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, PARTS = 16000, 600, 1000, 4
RATE = 550            # events/s: the stream flows for about 30 s, across every life
KILLS = 5
TOPICS = ["behaviour-events", "recommendations", "behaviour-events.dlq"]


def has_snapshots(snapdir):
    return os.path.isdir(snapdir) and any(n.endswith(".hls") for n in os.listdir(snapdir))


def wait_assigned(worker, timeout):
    """True once the worker logged a partition assignment."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if "event=partition_assigned" in worker.log_text():
            return True
        if worker.p.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def wait_idle(worker, want=None, timeout=60):
    """Waits until the worker consumed want events, or (want None) until its
    consumed count stays put for 2 s. Returns the count."""
    deadline, last, since = time.time() + timeout, -1, time.time()
    n = 0
    while time.time() < deadline:
        try:
            n = worker.metric("halflife_events_consumed_total")
        except OSError:
            n = -1
        if want is not None and n >= want:
            return n
        if n != last:
            last, since = n, time.time()
        elif want is None and time.time() - since >= 2:
            return n
        time.sleep(0.25)
    return n


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP crash.state_equals_uninterrupted: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_crash_")
    model, events_csv = os.path.join(tmp, "m.hlm"), os.path.join(tmp, "e.csv")
    U.make_model(model, N_ITEMS, 16)
    U.make_events(events_csv, N_EVENTS, N_USERS, N_ITEMS)
    events = U.read_events_csv(events_csv)
    snap_a, snap_b = os.path.join(tmp, "snap-crashed"), os.path.join(tmp, "snap-clean")
    broker = U.Broker(PARTS, TOPICS, os.path.join(tmp, "broker.log"))
    common = ["worker.threads=2", "kafka.fetch.wait.max.ms=10",
              "kafka.session.timeout.ms=3000", "kafka.heartbeat.interval.ms=1000"]
    crashed = common + ["snapshot.dir=" + snap_a, "snapshot.interval.ms=250",
                        "group.id=crashy"]
    seed = int(os.environ.get("HL_CRASH_SEED", str(int(time.time()) % 1000)))
    rng = random.Random(seed)
    failed = 0
    worker = None

    def check(name, ok, why):
        nonlocal failed
        print(("PASS crash.%s" % name) if ok else ("FAIL crash.%s: %s" % (name, why)))
        failed += 0 if ok else 1

    try:
        errors = []
        prod = C.paced_producer(broker.bootstrap, events, RATE, errors)
        kills, restored, in_stream, expect = 0, 0, 0, 0
        for k in range(KILLS):
            expect += has_snapshots(snap_a)
            worker = U.Worker(broker.bootstrap, model, os.path.join(tmp, "w%d.log" % k),
                              extra=crashed)
            wait_assigned(worker, 20)
            if k == 0:                              # so that every later life has one
                t_end = time.time() + 20
                while not has_snapshots(snap_a) and time.time() < t_end:
                    time.sleep(0.05)
            time.sleep(rng.uniform(0.3, 2.0))       # mid-batch, mid-snapshot, anywhere
            in_stream += prod.is_alive()
            worker.p.send_signal(signal.SIGKILL)
            worker.p.wait()
            worker.log.close()
            kills += 1
            restored += "event=restored" in worker.log_text() or \
                "event=snapshot_restored" in worker.log_text()
            worker = None
        prod.join(160)
        check("stream_produced", not prod.is_alive() and not errors, "producer: %s" % errors[:3])

        # The last life: runs to the end of the stream, then SIGTERM.
        want, _high = C.read_topic(broker.bootstrap, PARTS)
        expect += has_snapshots(snap_a)
        worker = U.Worker(broker.bootstrap, model, os.path.join(tmp, "w-final.log"), extra=crashed)
        # Idle means nothing consumed for 2 s, which is also true before the
        # assignment (the group waits out the killed member's session): wait
        # for it first, or the final life may stop before it restored anything.
        wait_assigned(worker, 30)
        lists, got = E.read_lists(broker.bootstrap, want, time.time() + 60)
        wait_idle(worker)                   # caught up: the final snapshots hold everything
        rc = worker.stop()
        restored += "event=restored" in worker.log_text() or \
            "event=snapshot_restored" in worker.log_text()
        worker = None
        check("killed_five_times_and_restored",
              kills == KILLS and restored == expect and expect >= KILLS and
              in_stream >= KILLS - 1,
              "%d kills (%d while the stream flowed), %d lives restored a snapshot, "
              "%d found one" % (kills, in_stream, restored, expect))
        check("final_sigterm_exits_0", rc == 0, "exit status %s" % rc)

        # Every user's last list: the one computed offline from all events.
        offline = U.offline_lists(events_csv, model)
        if len(got) != len(want):
            check("last_lists_equal_uninterrupted", False,
                  "%d of %d users got the list of their last event (logs in %s)"
                  % (len(got), len(want), tmp))
        else:
            bad = E.compare(lists, offline, events)
            check("last_lists_equal_uninterrupted", not bad and len(offline) == len(want),
                  "%d mismatches of %d users, e.g. %s" % (len(bad), len(offline), bad[:3]))

        # The uninterrupted run: its own group and directory, whole topic.
        clean = common + ["snapshot.dir=" + snap_b, "snapshot.interval.ms=0", "group.id=clean"]
        worker = U.Worker(broker.bootstrap, model, os.path.join(tmp, "clean.log"), extra=clean)
        consumed_b = wait_idle(worker, len(events))
        rc = worker.stop()
        worker = None
        state_a, offs_a = C.dump_state(snap_a)
        state_b, offs_b = C.dump_state(snap_b)
        diff = C.state_diff(state_a, state_b)
        check("state_equals_uninterrupted",
              consumed_b == len(events) and offs_a == offs_b and not diff and len(state_b) > 0,
              "clean run consumed %d/%d, offsets %s vs %s, %d of %d users differ, e.g. %s vs %s"
              % (consumed_b, len(events), offs_a, offs_b, len(diff), len(state_b),
                 state_a.get(diff[0]) if diff else None, state_b.get(diff[0]) if diff else None))
        print("    (%d users, %d events, %d kills, %d while the stream flowed, "
              "HL_CRASH_SEED=%d)" % (len(state_b), len(events), kills, in_stream, seed))
    finally:
        if worker:
            worker.stop()
        broker.stop()
    if not failed:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
