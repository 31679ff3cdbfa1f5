"""test_lost_changelog_rows.py - a member that loses its partitions by
session timeout with no list in the air, but a changelog flush still
queued in its producer (state.store=kafka), must not let those rows land
after the new owner's claim: its lost revocation purges the producer
whenever the assignment is lost, not only when lists are undelivered
(test_stale_lists_lost.py is the loss with lists in the air).

Separate processes over TCP: a `halflife broker --refuse-produce FILE`
whose topics include the changelog, two `halflife run` in one group with
private snapshot dirs:
- worker A consumes every event and delivers every list; then the broker
  refuses every Produce with NOT_ENOUGH_REPLICAS (retriable: librdkafka
  keeps the records) and A's next changelog flush is produced: its rows
  stay queued, and no batch of lists is in the air;
- A is stopped (SIGSTOP) for longer than session.timeout.ms; worker B
  joins, gets every partition and begins restoring them (its claims wait
  for the refusal to end);
- A continues: its consumer finds the assignment lost and its revocation
  runs; once it has let go A is stopped again, so its connection stays
  away while B's comes back;
- the refusal ends, B's claims land and B restores every partition; A
  continues for a while, then is killed.
Then, read in log order, no changelog record may carry a lower
halflife.epoch than one before it in its partition (a zombie's record
after a claim; the restorer would count it stale, and compaction keeps
it over the new owner's older record of the same key). Before the fix
A's lost revocation purged only with lists in the air, and its rows
landed after B's claims.
"""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402
import test_delivery_refused as R  # noqa: E402
import test_e2e as E  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, PARTS = 400, 40, 500, 4
GROUP = "lost-rows"
STATE = GROUP + "-state"


def late_records(bootstrap, topic=STATE):
    """(records read, [(partition, offset, epoch, the highest epoch before
    it)] of every record of changelog topic whose epoch is below one before
    it)."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "lr-%d" % time.time_ns(),
                  "enable.auto.commit": False, "enable.partition.eof": True})
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTS)])
    top, late, eof, n = {}, [], set(), 0
    deadline = time.time() + 15
    try:
        while len(eof) < PARTS and time.time() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == -191:        # _PARTITION_EOF
                    eof.add(m.partition())
                continue
            n += 1
            epoch = int(dict(m.headers() or []).get("halflife.epoch", b"0"))
            if epoch < top.get(m.partition(), 0):
                late.append((m.partition(), m.offset(), epoch, top[m.partition()]))
            top[m.partition()] = max(epoch, top.get(m.partition(), 0))
    finally:
        c.close()
    return n, late


def body(ck):
    model, _csv, events = C.prepare(ck.tmp, N_EVENTS, N_USERS, N_ITEMS)
    path = os.path.join(ck.tmp, "refuse")
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker.log"),
                      topics=C.TOPICS + [STATE], extra=["--refuse-produce", path])
    last = U.produce_events(broker.bootstrap, C.TOPIC, events)
    # The first flush is due state.flush.ms after the assignment: time to
    # see every list delivered and start the refusal before it.
    common = ["worker.threads=1", "kafka.fetch.wait.max.ms=10",
              "kafka.session.timeout.ms=5000", "kafka.heartbeat.interval.ms=1000",
              "state.store=kafka", "state.flush.ms=4000", "group.id=" + GROUP]
    a = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "a.log"),
                 common + ["snapshot.dir=" + os.path.join(ck.tmp, "snap-a")])
    _lists, fresh = E.read_lists(broker.bootstrap, last, time.time() + 20)
    rows = 'kind="row"'
    early = a.metric_or("halflife_changelog_records_total", labels=rows)
    on = R.refuse(broker, path, True, "NOT_ENOUGH_REPLICAS")
    queued = C.wait_for(
        lambda: a.metric_or("halflife_changelog_records_total", labels=rows) > 0, 10, 0.05)
    os.kill(a.p.pid, signal.SIGSTOP)
    try:
        b = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "b.log"),
                     common + ["snapshot.dir=" + os.path.join(ck.tmp, "snap-b")])
        restoring = b.wait_event("snapshot_none", 30)
    finally:
        os.kill(a.p.pid, signal.SIGCONT)
    revoked = a.wait_event("partition_revoked", 10, count=PARTS)
    os.kill(a.p.pid, signal.SIGSTOP)
    ck.check("setup", len(fresh) == len(last) and early == 0 and on and queued and restoring
             and revoked, "A delivered %d of %d users' last lists, wrote %s rows before the "
             "refusal (want 0), refusal %s, A's flush queued %s, B restoring %s, A's lost "
             "revocation ended %s" % (len(fresh), len(last), early, on, queued, restoring,
                                      revoked))
    try:
        off = R.refuse(broker, path, False)
        took = b.wait_event("restored", 20, count=PARTS)
    finally:
        os.kill(a.p.pid, signal.SIGCONT)
    time.sleep(1.5)             # room for what A still holds to land
    a.kill()
    ck.check("b_restored", off and took, "refusal off %s, B restored every partition %s"
             % (off, took))
    n, late = late_records(broker.bootstrap)
    released = [kv for _ts, kv in a.events("release_lost_purged")]
    ck.check("no_late_changelog_record", n > 0 and not late,
             "%d of %d changelog records landed after a higher epoch's (a zombie's after "
             "the claim), e.g. (partition, offset, epoch, above) %s; A's release: %s"
             % (len(late), n, late[:3], released[:1]))
    rc, _secs = b.term(30)
    ck.check("b_clean_exit", rc == 0, "exit %s" % rc)
    broker.stop()


if __name__ == "__main__":
    sys.exit(C.run_main("test_lost_changelog_rows", "ran", body))
