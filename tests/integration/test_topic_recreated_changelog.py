"""test_topic_recreated_changelog.py - test_topic_recreated.py's cases
with state.store=kafka: the restarted broker empties the state topic as
well as the input topic, so the local snapshot (the cache) is the only
state left (changelog_recreated), and its input offset lies beyond the new
input topic's end (input_topic_recreated). The users must be kept, the
new topic read from its start, and the restart must resume at the new
topic's offset: the changelog rewritten with every row and a checkpoint
at the new offsets, the old topic's cache files renamed aside.

Then killed_before_flush, from a copy of the first topic's files: the
worker is killed once the recreation is handled, before any flush of the
changelog, and the new topic grows past the old offset (300) before the
restart. The restart must read the new topic from its start: every one
of its 400 events applied. Before the fix the kept users' file was
written before the shard's changelog cover was set, so it named
changelog offset 0: the restart read the changelog from its start, took
the claim checkpoint's input offset (the old topic's 300) as where to
resume, found it within the grown topic, and silently skipped the new
topic's first 300 events.

other_member, in the same run before that restart: a member with no
local files (its own empty snapshot.dir) restores the partition from the
changelog alone after the kill, the topic grown to 400. It must resume at
the new topic's start and apply all 400. Before the fix the changelog
held, after the kill, the old topic's rows (each naming its last old
offset as applied) and the claim checkpoint at the old offset 300: the
member resumed at 300 and skipped the new topic's first 300 events. The
recreation is now flushed to the changelog (every row, a checkpoint at
the new start) before the partition is served. That member is killed
before any flush of its own (its claim names the new start), so the
restart from the local files after it still tests what it did.

killed_in_rewrite, from another copy of the first topic's files, on a
fourth broker that answers each Produce 2 s late (--delay-produce): the
worker is killed once its claim is in the changelog, before its rewrite
of every row (checked: the claim is the only record in the state topic
when it dies); a restart from the same files must hold every user,
resume the new topic at its start and apply its 100 events, and set the
old topic's files aside. Before the fix the restart refused its files
(their changelog offset beyond the state topic's end, no longer empty),
read the claim and the rows written before the kill alone, and lost
every other user.
"""
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402
import test_changelog_recreated as R  # noqa: E402
import test_topic_recreated as T  # noqa: E402

STATE = "recreated-state"
T.EXTRA = ["state.store=kafka", "state.topic=" + STATE, "state.flush.ms=300"]
T.TOPICS = C.TOPICS + [STATE]
N_GROWN = 300


def killed_before_flush(ck, model, snapdir, events):
    shutil.copytree(snapdir, snapdir + ".second")
    b3 = C.Broker(ck.procs, 1, os.path.join(ck.tmp, "broker3.log"), topics=T.TOPICS)
    U.produce_events(b3.bootstrap, C.TOPIC, events[T.N_OLD:])
    # no changelog flush in this life (a later -X wins): only the claim
    # and the kept users' file
    w = C.Worker(ck.procs, b3.bootstrap, model, os.path.join(ck.tmp, "w4.log"),
                 ["snapshot.dir=" + snapdir, "snapshot.interval.ms=0", "group.id=w4",
                  "kafka.fetch.wait.max.ms=10"] + T.EXTRA + ["state.flush.ms=600000"])
    set_aside = w.wait_event("snapshots_set_aside", 30 * T.SLOW)
    w.kill()
    w.wait(10)
    U.produce_events(b3.bootstrap, C.TOPIC, events[:N_GROWN])
    want = T.N_NEW + N_GROWN
    other_member(ck, b3, model, want)
    w = T.worker(ck, b3, model, snapdir, "w5")
    C.wait_consumed([w], want, 20 * T.SLOW)
    consumed = w.metric_or("halflife_events_consumed_total")
    restored = [kv.get("next_offset") for _t, kv in w.events("restored")]
    ck.check("killed_before_flush", set_aside and consumed == want and restored == ["0"],
             "set aside %s; after a kill before any flush and the topic grown to %d, the "
             "restart resumed at %s and consumed %s of its %d events" %
             (set_aside, want, restored, consumed, want))
    w.term(30)
    b3.stop()
    killed_in_rewrite(ck, model, snapdir + ".second", events)


def killed_in_rewrite(ck, model, snapdir, events):
    delay = os.path.join(ck.tmp, "delay-produce")
    b4 = C.Broker(ck.procs, 1, os.path.join(ck.tmp, "broker4.log"), topics=T.TOPICS,
                  extra=["--delay-produce", delay])
    U.produce_events(b4.bootstrap, C.TOPIC, events[T.N_OLD:])
    with open(delay, "w") as f:
        f.write("%d\n" % R.DELAY_MS)
    w = T.worker(ck, b4, model, snapdir, "w6")
    seen = w.wait_event("input_topic_recreated", 30 * T.SLOW)
    claimed, in_window = R.kill_after_claim(w, b4.bootstrap, STATE, 0)
    os.unlink(delay)
    w = T.worker(ck, b4, model, snapdir, "w7")
    C.wait_consumed([w], T.N_NEW, 20 * T.SLOW)
    users = w.metric_or("halflife_users")
    consumed = w.metric_or("halflife_events_consumed_total")
    restored = [kv.get("next_offset") for _t, kv in w.events("restored")]
    aside = bool(w.events("snapshots_set_aside"))
    n_users = len({e[0] for e in events})
    ck.check("killed_in_rewrite", seen and claimed and in_window and users == n_users and
             consumed == T.N_NEW and restored == ["0"] and aside,
             "recreation seen %s, claim in %s, killed before the rewrite's first record %s; "
             "after a kill during the rewrite, the restart from the same files held %s users "
             "(want %d), resumed at %s, consumed %s (want %d), old files set aside %s" %
             (seen, claimed, in_window, users, n_users, restored, consumed, T.N_NEW, aside))
    w.term(30)
    b4.stop()


def other_member(ck, b3, model, want):
    w = C.Worker(ck.procs, b3.bootstrap, model, os.path.join(ck.tmp, "w4o.log"),
                 ["snapshot.dir=" + os.path.join(ck.tmp, "snap.other"),
                  "snapshot.interval.ms=0", "group.id=w4o", "kafka.fetch.wait.max.ms=10"] +
                 T.EXTRA + ["state.flush.ms=600000"])
    C.wait_consumed([w], want, 10 * T.SLOW)
    consumed = w.metric_or("halflife_events_consumed_total")
    applied = w.metric_or("halflife_events_applied_total")
    restored = [kv.get("next_offset") for _t, kv in w.events("restored")]
    ck.check("other_member", consumed == want and applied == want and restored == ["0"],
             "a member without local files restored the partition at %s and applied %s "
             "(consumed %s) of the grown topic's %d events" %
             (restored, applied, consumed, want))
    w.kill()
    w.wait(10)


T.THEN = killed_before_flush

if __name__ == "__main__":
    sys.exit(C.run_main("test_topic_recreated_changelog", "ran", T.run))
