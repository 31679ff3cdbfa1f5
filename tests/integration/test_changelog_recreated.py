"""test_changelog_recreated.py - state.store=kafka with a state topic that
was deleted and created again (empty) while a worker's local snapshot
(the cache) still holds the partition's users.

The recreation is a second, empty state topic named by state.topic on the
restart (librdkafka 2.0.2's mock cluster answers neither CreateTopics nor
DeleteTopics, and restarting it would empty the input topic too). One
partition; 300 events of 40 users, a clean stop (changelog flushed, cache
written), a restart on the empty state topic, then 20 events of one user.
Checks:
- cache_used: the restart serves the cache's users at its input offset
  (halflife_restore_source is "snapshot", every user held, input read
  from 300 on: exactly the 20 new events consumed). Before the fix the
  cache was refused (its changelog offset lies beyond the empty topic's
  end), the users dropped and the input read again from its start: the
  users came back only because this input topic still holds every event
  (retention would have lost the idle ones for good).
- recreation_reported: event=changelog_recreated is logged and
  halflife_changelog_recreated_total is 1.
- changelog_whole: a worker with an empty snapshot.dir restores every
  user from the new state topic alone, the idle ones too (the restart
  wrote every row again, not only the rows the new events touched), and
  consumes no input.
- killed_before_flush: from a copy of the first life's cache, a restart
  on a third, empty state topic is killed before any flush of its own
  (state.flush.ms=600000), then a member with an empty snapshot.dir
  restores the partition from that topic alone: it must hold every user.
  Before the fix the rows were written again only at the shard's first
  flush: until then the state topic held the claim alone, and that member
  restored no user (the idle ones lost for good).
- killed_in_rewrite: the input topic recreated under the first life's
  state topic (a second input topic, empty, named by input.topic: the
  mock cannot delete one): a member with no local files restores the old
  rows and checkpoint (input offset 300), finds the offset beyond the new
  topic's end and writes its recreation claim; the rows are not written
  again (the state topic still holds them all, and the claim makes every
  reader forget their old applied offsets: the rewrite was dropped on
  2026-12-07, and no changelog_rewritten line may appear). The broker
  answers each Produce 2 s late (--delay-produce), so the worker is
  killed (SIGKILL) once its claim is in the changelog, before anything
  after it (checked: the claim is the only record past the topic's old
  end when it dies; a kill later would pass without testing the claim
  alone). The case keeps its name from when a rewrite followed. The new topic then grows to 400 events and
  another member restores the partition from the changelog: it must
  resume at the new topic's start and apply all 400. Before the fix the
  claim named the old topic's offset 300, written before the recreation
  was known: that member resumed at 300, within the grown topic, and
  skipped its first 300 events.
- rewrite_killed_cache: from another copy of the first life's cache, a
  restart on a fourth, empty state topic is killed the same way, once its
  claim is in and before its rewrite of every row ended; a restart from
  the same cache must hold every user and write them all (a member with
  an empty snapshot.dir then restores every user from that topic). Before
  the fix that restart refused the cache (its changelog offset beyond the
  topic's end, which was no longer empty) and read the topic alone: the
  claim, no row, no user; the next snapshot then replaced the cache.
"""
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402

SLOW = 3 if os.environ.get("HL_SAN") == "1" else 1
N_OLD, N_NEW = 300, 20
GROUP = "clr"
OLD_STATE, NEW_STATE = GROUP + "-state", GROUP + "-state-new"
THIRD_STATE = GROUP + "-state-third"
FOURTH_STATE = GROUP + "-state-fourth"
NEW_INPUT = "behaviour-events-new"
# The window between the claim landing and the rewrite's first record
# (the claim's late answer). It costs no wall time: the worker is killed
# within about 50 ms of its claim, and the broker uses up its leftover
# delays when the file goes. Long, so a loaded machine (make test, SAN=1)
# still kills inside it.
DELAY_MS = 2000


def worker(ck, broker, model, snapdir, state_topic, name):
    """A life of the group: the next one joins the session timeout less
    1 s after this one left (librdkafka 2.0.2's mock holds the emptied
    group that long), so the timeout is short (3 s, as test_rebalance.py's)."""
    return C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, name + ".log"),
                    ["snapshot.dir=" + snapdir, "snapshot.interval.ms=0",
                     "state.store=kafka", "state.topic=" + state_topic,
                     "state.flush.ms=300", "group.id=" + GROUP,
                     "kafka.session.timeout.ms=3000", "kafka.heartbeat.interval.ms=1000",
                     "kafka.fetch.wait.max.ms=10"])


def ready(w):
    return C.wait_for(lambda: w.metric_or("halflife_ready") == 1, 30 * SLOW)


def restart_on_new_topic(ck, broker, model, snapdir, n_users, extra):
    w = worker(ck, broker, model, snapdir, NEW_STATE, "w2")
    ok = ready(w)
    src = w.metric_or("halflife_restore_source", labels='source="snapshot"')
    users = w.metric_or("halflife_users")
    U.produce_events(broker.bootstrap, C.TOPIC, extra)
    n = C.wait_consumed([w], N_NEW, 20 * SLOW)
    ck.check("cache_used", ok and src == 1 and users == n_users and n == N_NEW,
             "ready %s, restore source snapshot %s, %s users at start (want %d), consumed "
             "%s (want %d: the input from the cache's offset)" %
             (ok, src, users, n_users, n, N_NEW))
    counted = w.metric_or("halflife_changelog_recreated_total")
    lines = len(w.events("changelog_recreated"))
    ck.check("recreation_reported", counted == 1 and lines == 1,
             "halflife_changelog_recreated_total=%s, %d changelog_recreated lines" %
             (counted, lines))
    rc, _ = w.term(30)
    ck.check("stopped", rc == 0, "exit %s" % rc)


def killed_before_flush(ck, broker, model, snapdir, n_users):
    """Each member a group of its own: the killed one's session never holds
    up the next."""
    def member(snap, name, extra):
        return C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, name + ".log"),
                        ["snapshot.dir=" + snap, "snapshot.interval.ms=0",
                         "state.store=kafka", "state.topic=" + THIRD_STATE,
                         "group.id=" + name, "kafka.fetch.wait.max.ms=10"] + extra)
    w = member(snapdir, "w4", ["state.flush.ms=600000"])
    ok = ready(w) and w.events("changelog_recreated")
    w.kill()
    w.wait(10)
    w = member(os.path.join(ck.tmp, "snap-empty-k"), "w5", [])
    ok = ok and ready(w)
    users = w.metric_or("halflife_users")
    ck.check("killed_before_flush", ok and users == n_users,
             "ready %s; after a kill before the first flush on the new state topic, a "
             "member without the cache restored %s users (want %d)" % (ok, users, n_users))
    w.term(30)


def state_high(bootstrap, topic):
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "clr-watch"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)[1]
    finally:
        c.close()


def kill_after_claim(w, bootstrap, topic, before):
    """Kills w once its claim (one record) is in topic, whose end was
    before; (claim seen, the kill landed in the window: the claim alone
    after before when w died, none of the rewrite's rows and checkpoint).
    The broker answers Produce late, so w waits that long for the claim's
    answer before it writes the rest: the window."""
    claimed = C.wait_for(lambda: state_high(bootstrap, topic) > before, 10 * SLOW, period=0.02)
    w.kill()
    w.wait(10)
    return claimed, claimed and state_high(bootstrap, topic) == before + 1


def killed_in_rewrite(ck, broker, model, events, delay_file):
    """Each member a group of its own, restoring from the first life's
    state topic alone (its own empty snapshot.dir)."""
    def member(name):
        return C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, name + ".log"),
                        ["snapshot.dir=" + os.path.join(ck.tmp, "snap-" + name),
                         "snapshot.interval.ms=0", "state.store=kafka",
                         "state.topic=" + OLD_STATE, "input.topic=" + NEW_INPUT,
                         "group.id=" + name, "kafka.fetch.wait.max.ms=10"])
    before = state_high(broker.bootstrap, OLD_STATE)
    with open(delay_file, "w") as f:
        f.write("%d\n" % DELAY_MS)
    w = member("w6")
    seen = w.wait_event("input_topic_recreated", 30 * SLOW)
    claimed, in_window = kill_after_claim(w, broker.bootstrap, OLD_STATE, before)
    rewritten = bool(w.events("changelog_rewritten"))
    os.unlink(delay_file)
    grown = events + events[:100]
    U.produce_events(broker.bootstrap, NEW_INPUT, grown)
    w = member("w7")
    C.wait_consumed([w], len(grown), 20 * SLOW)
    consumed = w.metric_or("halflife_events_consumed_total")
    applied = w.metric_or("halflife_events_applied_total")
    restored = [kv.get("next_offset") for _t, kv in w.events("restored")]
    ck.check("killed_in_rewrite", seen and claimed and in_window and not rewritten and
             restored == ["0"] and consumed == len(grown) and applied == len(grown),
             "recreation seen %s, claim in %s, killed before the rewrite's first record %s, "
             "rewrite done before the kill %s; the next member resumed at %s and applied %s "
             "(consumed %s) of the grown topic's %d events" %
             (seen, claimed, in_window, rewritten, restored, applied, consumed, len(grown)))
    w.term(30)


def rewrite_killed_cache(ck, broker, model, snapdir, n_users, delay_file):
    def member(snap, name):
        return C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, name + ".log"),
                        ["snapshot.dir=" + snap, "snapshot.interval.ms=0",
                         "state.store=kafka", "state.topic=" + FOURTH_STATE,
                         "group.id=" + name, "kafka.fetch.wait.max.ms=10"])
    with open(delay_file, "w") as f:
        f.write("%d\n" % DELAY_MS)
    w = member(snapdir, "w8")
    seen = w.wait_event("changelog_recreated", 30 * SLOW)
    claimed, in_window = kill_after_claim(w, broker.bootstrap, FOURTH_STATE, 0)
    os.unlink(delay_file)
    w = member(snapdir, "w9")
    ok = ready(w)
    users = w.metric_or("halflife_users")
    rewritten = bool(w.events("changelog_rewritten"))
    w.term(30)
    w = member(os.path.join(ck.tmp, "snap-empty-r"), "w10")
    ok = ready(w) and ok
    alone = w.metric_or("halflife_users")
    ck.check("rewrite_killed_cache", seen and claimed and in_window and ok and
             users == n_users and rewritten and alone == n_users,
             "recreation seen %s, claim in %s, killed before the rewrite's first record %s, "
             "ready %s; after a kill during the rewrite, the restart from the same cache held "
             "%s users (want %d), rewrote them %s; a member without the cache then restored %s" %
             (seen, claimed, in_window, ok, users, n_users, rewritten, alone))
    w.term(30)


def run(ck):
    model, _csv, events = C.prepare(ck.tmp, N_OLD, 40, 200)
    n_users = len({e[0] for e in events})
    one = events[0][0]
    extra = [(one, e[1], e[2], e[3], e[4]) for e in events[:N_NEW]]
    delay_file = os.path.join(ck.tmp, "delay-produce")
    broker = C.Broker(ck.procs, 1, os.path.join(ck.tmp, "broker.log"),
                      topics=C.TOPICS + [OLD_STATE, NEW_STATE, THIRD_STATE, FOURTH_STATE,
                                         NEW_INPUT],
                      extra=["--delay-produce", delay_file])
    snapdir = os.path.join(ck.tmp, "snap")
    U.produce_events(broker.bootstrap, C.TOPIC, events)
    w1 = worker(ck, broker, model, snapdir, OLD_STATE, "w1")
    n = C.wait_consumed([w1], N_OLD, 30 * SLOW)
    rc, _ = w1.term(30)
    if n != N_OLD or rc != 0:
        raise RuntimeError("first life: consumed %s of %d, exit %s" % (n, N_OLD, rc))
    shutil.copytree(snapdir, snapdir + ".first")
    shutil.copytree(snapdir, snapdir + ".second")
    restart_on_new_topic(ck, broker, model, snapdir, n_users, extra)
    w3 = worker(ck, broker, model, os.path.join(ck.tmp, "snap-empty"), NEW_STATE, "w3")
    ok = ready(w3)
    users = w3.metric_or("halflife_users")
    C.wait_idle([w3], 5 * SLOW, quiet=1.0)
    consumed = w3.metric_or("halflife_events_consumed_total")
    ck.check("changelog_whole", ok and users == n_users and consumed == 0,
             "ready %s, %s users from the new state topic alone (want %d), consumed %s "
             "(want 0)" % (ok, users, n_users, consumed))
    w3.term(30)
    killed_before_flush(ck, broker, model, snapdir + ".first", n_users)
    killed_in_rewrite(ck, broker, model, events, delay_file)
    rewrite_killed_cache(ck, broker, model, snapdir + ".second", n_users, delay_file)


if __name__ == "__main__":
    sys.exit(C.run_main("test_changelog_recreated", "ran", run))
