"""test_stale_lists_lost.py - a member loses its partitions by session
timeout while its lists are stuck in librdkafka's queue; none of them may
land after the new owner's newer lists (test_stale_lists.py is the same
race after an ordinary revocation).

Separate processes over TCP: a `halflife broker --refuse-produce FILE`,
two `halflife run` in one group:
- the first half of the events is in the input; the broker refuses every
  Produce with NOT_ENOUGH_REPLICAS (retriable: librdkafka keeps the lists);
- worker A consumes it all, its lists queued, and is stopped (SIGSTOP)
  for longer than session.timeout.ms; worker B joins and gets every
  partition;
- A continues: its consumer finds its assignment lost and revokes it.
  Once that revocation has started (and let go, if it lets go at once) A
  is stopped again: its connection stays away while B's comes back;
- the refusal ends, the second half of the events goes in, B delivers
  the newer lists (every user's list of its last event is in), and A continues
  until its revocation ends (it is then killed, before a rejoin could
  hand it partitions and mask what it sent).
Then, read in log order as compaction keeps it, every user's last list
must come from the user's last event. Before the fix A's revocation
waited shutdown.timeout.ms for its lost partitions' lists, and they
landed after B's. A's release is logged as event=release_lost_purged
(check_lost_release_logged).
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
import test_stale_lists as S  # noqa: E402

GROUP = "stale-lost"
COMMON = ["worker.threads=1", "kafka.fetch.wait.max.ms=10",
          "kafka.session.timeout.ms=6000", "kafka.heartbeat.interval.ms=1000",
          "kafka.auto.commit.interval.ms=500", "shutdown.timeout.ms=10000",
          "group.id=" + GROUP]


def wait_for(cond, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline and not cond():
        time.sleep(0.05)
    return cond()


def check_lost_release_logged(ck, a):
    """A's lost release says what it did under its own event, with what it
    purged. Before, it logged event=release_undelivered lost=1, a line that
    names a wait it never made (batches_in_flight=0 when nothing of its
    own was in the air): only records_purged told what had happened."""
    lost = [kv for _ts, kv in a.events("release_lost_purged")]
    waited = [kv for _ts, kv in a.events("release_undelivered")]
    ck.check("lost_release_logged",
             lost and int(lost[0].get("records_purged", "0")) > 0 and not waited,
             "release_lost_purged %s; release_undelivered %s" % (lost[:1], waited[:1]))


def body(ck):
    model, _csv, events = C.prepare(ck.tmp, S.N_EVENTS, S.N_USERS, S.N_ITEMS)
    events = sorted(events, key=lambda e: e[3])
    first, second = events[:S.N_EVENTS // 2], events[S.N_EVENTS // 2:]
    path = os.path.join(ck.tmp, "refuse")
    broker = C.Broker(ck.procs, S.PARTS, os.path.join(ck.tmp, "broker.log"),
                      extra=["--refuse-produce", path])
    last = U.produce_events(broker.bootstrap, C.TOPIC, first)
    on = R.refuse(broker, path, True, "NOT_ENOUGH_REPLICAS")
    a = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "a.log"),
                 COMMON + ["snapshot.dir=" + os.path.join(ck.tmp, "snap-a")])
    consumed = C.wait_consumed([a], len(first), 30)
    rebalances = a.metric_or("halflife_rebalances_total")
    os.kill(a.p.pid, signal.SIGSTOP)
    b = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "b.log"),
                 COMMON + ["snapshot.dir=" + os.path.join(ck.tmp, "snap-b")])
    took = wait_for(lambda: b.metric_or("halflife_assigned_partitions") == S.PARTS, 30)
    os.kill(a.p.pid, signal.SIGCONT)
    lost = wait_for(lambda: a.metric_or("halflife_rebalances_total") > rebalances, 15)
    # A revocation that lets go at once has logged it by now; one that
    # waits for its lists is stopped inside that wait.
    wait_for(lambda: a.events("release_lost_purged"), 2)
    os.kill(a.p.pid, signal.SIGSTOP)
    ck.check("setup", on and consumed >= len(first) and took and lost,
             "refusal %s, A consumed %d of %d, B took every partition %s, A's "
             "revocation began %s" % (on, consumed, len(first), took, lost))
    try:
        off = R.refuse(broker, path, False)
        last.update(U.produce_events(broker.bootstrap, C.TOPIC, second))
        # Every user's newest list delivered (by B: A is stopped). Not
        # B's commits: A, once it let go, may have rejoined before it was
        # stopped, and the group then rebalances without it for a while.
        _lists, fresh = E.read_lists(broker.bootstrap, last, time.time() + 15)
    finally:
        os.kill(a.p.pid, signal.SIGCONT)
    ck.check("b_delivered_first", off and len(fresh) == len(last),
             "refusal off %s; %d of %d users' lists of their last event delivered"
             % (off, len(fresh), len(last)))
    n_revoked = len(a.events("partition_assigned"))
    revoked = wait_for(lambda: len(a.events("partition_revoked")) >= n_revoked, 20)
    a.kill()
    got = S.last_lists_in_log_order(broker.bootstrap)
    stale = sorted(u for u in last if got.get(u) != last[u])
    ck.check("no_stale_last_list", revoked and not stale,
             "A's revocation ended %s; %d of %d users' last list in log order is not from "
             "their last event, e.g. %s: last list from %s, last event at %s"
             % (revoked, len(stale), len(last), stale[:3], [got.get(u) for u in stale[:3]],
                [last[u] for u in stale[:3]]))
    check_lost_release_logged(ck, a)
    rc, _secs = b.term(30)
    ck.check("b_clean_exit", rc == 0, "exit %s" % rc)
    broker.stop()


if __name__ == "__main__":
    sys.exit(C.run_main("test_stale_lists_lost", "ran", body))
