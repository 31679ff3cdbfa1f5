#!/usr/bin/python3
"""test_model_reshape_rebalance.py - a partition handed to a worker AFTER
that worker's live reshape (issue 10; worker/worker_rebalance.c), against
real processes over TCP: `halflife broker` and two `halflife run` in one
group sharing one snapshot.dir (so one model.dir).

Both workers serve model A (dim 16, heads 1 h, 1 d, 30 d) and split the
partitions. Model B (dim 8, four heads, one half-life in common) is renamed
over the first worker's model.path only: its shards move their users into
tables of B's shape while the stream goes on; the second worker stays on A
(a rolling deploy half done). Then the second worker leaves: it writes its
partitions' snapshots under A, and the first one is handed them. The table
it makes for each must be of B's shape (w->ctx.topts follows the serving
model: worker.c's check_model), and the users restored from A's snapshots
migrated into it (A is kept in model.dir), not refused, not rebuilt, not
lost. Checks: one snapshot_migrated line with reshaped=1 per partition
handed over, halflife_users_migrated_total counts every user moved (by the
live swap and by the handover), every event consumed and applied once over
both workers, lists carry A's version before each partition's switch point
(the live swap's, or the handover's) and B's after, and each user's final
state equals what core/ computes offline (test_offline's swap mode: the
events before the switch point under A, hl_migration_create_any, the rest
under B). With state.store=kafka the same, the second worker's state read
back from its changelog (rows of A's shape) and its local cache files.

Run: HL_HALFLIFE=build/halflife HL_BUILD=build /usr/bin/python3 tests/integration/test_model_reshape_rebalance.py
"""
import os
import re
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402
import test_model_reshape as R  # noqa: E402
import test_model_swap as S  # noqa: E402

SUITE = "model_reshape_rebalance"
PARTS = 4
N_EVENTS, N_USERS, N_ITEMS = 6000, 300, 1000
GROUP = ["kafka.session.timeout.ms=3000", "kafka.heartbeat.interval.ms=1000"]


def owned(w):
    """The partitions w holds now, from its log in order."""
    own = set()
    for line in w.log_text().splitlines():
        m = re.search(r" event=partition_(assigned|revoked) partition=(\d+)", line)
        if m:
            (own.add if m.group(1) == "assigned" else own.discard)(int(m.group(2)))
    return own


def wait_split(w1, w2, timeout):
    """Waits until the two workers hold every partition between them, each
    some; returns their sets."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        a, b = owned(w1), owned(w2)
        if a and b and not a & b and len(a | b) == PARTS:
            return a, b
        time.sleep(0.2)
    return owned(w1), owned(w2)


def produce(bootstrap, events):
    """[(partition, offset)] of each event, produced at once."""
    return S.produce_paced(bootstrap, events, 1e9, 2.0, None)


def consumed(*ws):
    return sum(max(0, w.metric_or("halflife_events_consumed_total", 0)) for w in ws)


def wait_consumed(ws, want, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline and consumed(*ws) < want:
        time.sleep(0.1)
    return consumed(*ws) >= want


def handover_case(ck, model_a, model_b, events, kafka):
    """Two workers on A; B live on the first; the second leaves and the
    first is handed its partitions (module docstring); kafka: with
    state.store=kafka."""
    tag = "k" if kafka else "s"
    tmp = ck.tmp
    live1, live2 = (os.path.join(tmp, "live%s%d.hlm" % (tag, i)) for i in (1, 2))
    for live in (live1, live2):
        shutil.copyfile(model_a, live)
    # one snapshot.dir for both, or (state.store=kafka) one each: the
    # second worker's state then reaches the first through the changelog
    # alone, rows of A's shape
    snapdir = os.path.join(tmp, "snap-" + tag)
    snap2 = snapdir + "-2" if kafka else snapdir
    topics = C.TOPICS + ([R.STATE_TOPIC] if kafka else [])
    br = C.Broker(ck.procs, PARTS, os.path.join(tmp, "broker-%s.log" % tag), topics=topics)
    extra = S.COMMON + GROUP + ["group.id=reshape-rb-" + tag] + (R.KAFKA if kafka else [])
    w1 = C.Worker(ck.procs, br.bootstrap, live1, os.path.join(tmp, "w1-%s.log" % tag),
                  extra + ["snapshot.dir=" + snapdir])
    S.wait_ready(w1, 30)
    w2 = C.Worker(ck.procs, br.bootstrap, live2, os.path.join(tmp, "w2-%s.log" % tag),
                  extra + ["snapshot.dir=" + snap2])
    S.wait_ready(w2, 30)
    own1, own2 = wait_split(w1, w2, 30)
    # A on both; then B on the first worker only, live, while the second stays on A
    n1, n2 = int(0.4 * len(events)), int(0.7 * len(events))
    where = produce(br.bootstrap, events[:n1])
    ok1 = wait_consumed([w1, w2], n1, 60)
    S.replace(model_b, live1)
    swapped = w1.wait_event("migration_done", 30, count=len(own1))
    where += produce(br.bootstrap, events[n1:n2])
    ok2 = wait_consumed([w1, w2], n2, 60)
    # the second worker leaves: its partitions, saved under A, go to the first
    by_w2 = consumed(w2)
    rc2, _s = w2.term(30)
    deadline = time.time() + 30
    while time.time() < deadline and owned(w1) != set(range(PARTS)):
        time.sleep(0.2)
    handed = owned(w1) == set(range(PARTS))
    where += produce(br.bootstrap, events[n2:])
    ok3 = wait_consumed([w1], len(events) - by_w2, 60)
    started = w1.events("migration_started")
    swap_at = {int(kv["partition"]): int(kv["next_offset"]) for _ts, kv in started}
    restored = {}
    for _ts, kv in w1.events("restored"):
        if int(kv["partition"]) in own2:
            restored[int(kv["partition"])] = int(kv["next_offset"])
    moved = moved_lines(w1, own2)
    rebuilt = w1.metric_or("halflife_users_rebuilt_total", 0)
    migrated = w1.metric_or("halflife_users_migrated_total", 0)
    refused = sum(len(w1.events(e)) for e in ("snapshot_rejected", "snapshot_unusable",
                                              "snapshot_not_usable", "restore_failed"))
    alive = w1.p.poll() is None
    rc1, _s = w1.term(30)
    t1, t2 = w1.totals() or {}, w2.totals() or {}
    totals = tuple(t1.get(k, -1) + t2.get(k, -1) for k in ("consumed", "applied", "duplicates"))
    # each partition's switch to B: the live swap's point, or the handover's
    switch = dict(swap_at)
    switch.update(restored)
    pre_users = {u for (u, *_r), (p, off) in zip(events, where) if off < switch.get(p, -1)}
    handed_users = {u for (u, *_r), (p, off) in zip(events, where)
                    if p in own2 and off < switch.get(p, -1)}
    ck.check(tag + "_setup", ok1 and ok2 and ok3 and swapped and handed and rc2 == 0 and
             set(swap_at) == own1 and set(restored) == own2,
             "split %s / %s, consumed in phases %s %s %s, first worker's swap done %s "
             "(shards swapped %s), handover %s (restored %s), second worker's exit %s"
             % (own1, own2, ok1, ok2, ok3, swapped, swap_at, handed, restored, rc2))
    ck.check(tag + "_handed_partitions_migrated_into_b", set(moved) == own2 and
             sum(moved.values()) == len(handed_users) and rebuilt == 0 and refused == 0 and
             migrated == len(pre_users),
             "users moved into B's shape per handed partition %s (want partitions %s, "
             "%d users of them before the handover), rebuilt %s, refused or failed "
             "restores %d, migrated in all %s (users before their partition's switch %d)"
             % (moved, own2, len(handed_users), rebuilt, refused, migrated, len(pre_users)))
    state = S.dump_values(snapdir)
    S.check_exactly_once(ck, alive, totals, events, where, state)
    S.check_lists(ck, br, switch, S.version_of(model_a), S.version_of(model_b))
    ref = S.offline_swap(tmp, events, where, switch, model_a, model_b)
    diff = S.same_state(state, ref)
    ck.check(tag + "_final_state_equals_offline", rc1 == 0 and ref and not diff and
             len(ref) == len(state) and R.dims_of(state) == {(4, 32)},
             "exit %s, shapes %s, %d of %d users differ from core/'s swap, e.g. %s"
             % (rc1, R.dims_of(state), len(diff), len(ref), diff[:3]))
    br.stop()


def moved_lines(w, parts):
    """{partition: users} the worker's restores moved into the current
    model's shape, for the partitions parts: a snapshot (or a changelog
    cache file) migrated with reshaped=1, and changelog rows of another
    shape migrated as they were read (changelog_reshaped)."""
    out = {}
    for _ts, kv in w.events("snapshot_migrated"):
        if int(kv["partition"]) in parts and kv.get("reshaped") == "1":
            out[int(kv["partition"])] = out.get(int(kv["partition"]), 0) + int(kv["users"])
    for _ts, kv in w.events("changelog_reshaped"):
        if int(kv["partition"]) in parts:
            out[int(kv["partition"])] = out.get(int(kv["partition"]), 0) + \
                int(kv["users_migrated"]) + int(kv["users_rebuilt"])
    return out


def body(ck):
    tmp = ck.tmp
    model_a, model_b = os.path.join(tmp, "a.hlm"), os.path.join(tmp, "b.hlm")
    R.make_model(model_a, N_ITEMS, 16, 12345)
    R.make_model(model_b, N_ITEMS + 200, 8, 777, R.HALF_LIVES_B)
    events_csv = os.path.join(tmp, "e.csv")
    U.make_events(events_csv, N_EVENTS, N_USERS, N_ITEMS)
    events = U.read_events_csv(events_csv)
    handover_case(ck, model_a, model_b, events, kafka=False)
    handover_case(ck, model_a, model_b, events, kafka=True)


if __name__ == "__main__":
    sys.exit(C.run_main(SUITE, "all", body))
