#!/usr/bin/python3
"""test_model_reshape.py - a restart with a model of another state shape
(issue 10: "a snapshot written under model X restores under model Y ...
never refused outright"), against real processes over TCP: `halflife
broker` and `halflife run`.

A worker serving model A (dim 16, heads 1 h, 1 d, 30 d) consumes a stream
and saves its snapshots at exit; it is restarted with model B (dim 8, heads
2 h, 1 d, 10 d, 90 d: another dim, another number of heads, one half-life
in common). Checks: every user is restored and migrated (not refused, not
rebuilt from the topic: halflife_users_migrated_total, one
snapshot_migrated line per partition saying reshaped=1, no
snapshot_rejected), the snapshots written afterwards are of B's shape, and
every user's state equals what core/ computes offline (test_offline's swap
mode: the stream under A, hl_migration_create_any into a table of B's
shape). Without A in model.dir, every user is rebuilt from the ring alone
(halflife_users_rebuilt_total) and equals core/'s rebuild.

With state.store=kafka (issue 10's "a changelog of another shape"): a
worker under A keeps its state in a changelog; one restarted with B and
an empty snapshot.dir (A kept in model.dir) reads A's rows from the
changelog, each decoded in A's shape and migrated into B's as it is read:
every user migrated, none counted bad, each equal to core/'s migration.
One restarted with B over A's whole snapshot.dir first moves the local
snapshots (the changelog's cache, of A's shape) into B's shape, then reads
the changelog after them: again each user equal to core/'s migration.

With recs.min.interval.ms the users' schedules move with them: nothing
held back is lost. Live (no restart): a worker serving A, events flowing, B renamed over
model.path mid-stream. Each shard moves its users into a table of B's
shape while the stream goes on (worker/swap.c): same PID, every event
consumed and applied once, lists after each partition's swap point carry
B's version, halflife_model_swaps_total 1, halflife_users_migrated_total
counts every user seen before the swap, and each user's final state equals
core/'s: the events before the swap point under A, hl_migration_create_any,
the rest under B.

Run: HL_HALFLIFE=build/halflife HL_BUILD=build /usr/bin/python3 tests/integration/test_model_reshape.py
"""
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402
import test_model_swap as S  # noqa: E402

SUITE = "model_reshape"
PARTS = 4
N_EVENTS, N_USERS, N_ITEMS = 12000, 300, 1000
HALF_LIVES_B = "7200000,86400000,864000000,7776000000"
STATE_TOPIC = "reshape-state"
KAFKA = ["state.store=kafka", "state.topic=" + STATE_TOPIC, "state.flush.ms=300"]
# A group whose last member left stays "Joining" in librdkafka 2.0.2's mock
# for the leaver's session timeout less 1 s (rdkafka_mock_cgrp.c,
# rd_kafka_mock_cgrp_rebalance), and a member that joins meanwhile waits
# that out: 44 s with the default 45 s. A real broker empties the group.
# The live Kafka case stops a worker and starts the next in its group.
SHORT_SESSION = ["kafka.session.timeout.ms=6000", "kafka.heartbeat.interval.ms=1000"]


def make_model(path, items, dim, seed, half_lives=""):
    env = dict(os.environ, HL_OFFLINE_MAKE_MODEL=path, HL_OFFLINE_ITEMS=str(items),
               HL_OFFLINE_DIM=str(dim), HL_OFFLINE_SEED=str(seed),
               HL_OFFLINE_HALF_LIVES=half_lives)
    subprocess.run([os.path.join(U.BUILD, "tests", "test_offline")], env=env, check=True)


def dims_of(state):
    """{(len(m), len(s))} over the users of a dump."""
    return {(len(d["m"]), len(d["s"])) for d in state.values()}


def restart(ck, br, model_b, snap, group, metric, events, ref):
    """A worker with B over snap's snapshots (A's); returns the checks'
    figures: exit code, the counter, its log lines, rejected snapshots,
    users that differ from ref, and the shapes of the snapshots after."""
    w = S.run_to_end(ck, br, model_b, snap, group, group, 0, (metric, N_USERS))
    n = w.metric_or(metric)
    kind = "snapshot_migrated" if "migrated" in metric else "snapshot_rebuilt"
    lines = w.events(kind)
    reshaped = sum(1 for _ts, kv in lines if kv.get("reshaped") == "1")
    rejected = len(w.events("snapshot_rejected")) + len(w.events("snapshot_unusable"))
    rc, _s = w.term(30)
    state = S.dump_values(snap)
    return rc, n, len(lines), reshaped, rejected, S.same_state(state, ref), dims_of(state)


def kafka_worker(ck, br, model, snapdir, group):
    w = C.Worker(ck.procs, br.bootstrap, model, os.path.join(ck.tmp, group + ".log"),
                 extra=S.COMMON + KAFKA + SHORT_SESSION +
                 ["snapshot.dir=" + snapdir, "group.id=" + group])
    S.wait_ready(w, 30)
    return w


def changelog_case(ck, br, model_a, model_b, events, ref):
    """A's state in the changelog, B restarted over it with only A's model
    kept (no snapshot file: the changelog alone)."""
    snap_a, snap_b = os.path.join(ck.tmp, "snapk-a"), os.path.join(ck.tmp, "snapk-b")
    w = kafka_worker(ck, br, model_a, snap_a, "reshape-ka")
    C.wait_consumed([w], len(events), 60)
    rc_a, _s = w.term(30)
    shutil.copytree(os.path.join(snap_a, "models"), os.path.join(snap_b, "models"))
    live = os.path.join(ck.tmp, "live-k.hlm")
    shutil.copyfile(model_b, live)
    w = kafka_worker(ck, br, live, snap_b, "reshape-kb")
    S.wait_metric(w, "halflife_users_migrated_total", N_USERS, 120)
    w.wait_event("restored", 30, count=PARTS)
    n = w.metric_or("halflife_users_migrated_total")
    rebuilt = w.metric_or("halflife_users_rebuilt_total", 0)
    bad = sum(int(kv.get("bad", 0)) for _ts, kv in w.events("restored"))
    rows = sum(int(kv.get("rows", 0)) for _ts, kv in w.events("restored"))
    lines = len(w.events("changelog_reshaped"))
    consumed = w.metric_or("halflife_events_consumed_total", 0)
    rc, _s = w.term(30)
    state = S.dump_values(snap_b)
    diff = S.same_state(state, ref)
    ck.check("changelog_other_shape_migrated", rc_a == 0 and rc == 0 and n == N_USERS and
             rebuilt == 0 and bad == 0 and rows >= N_USERS and lines == PARTS and
             consumed == 0 and not diff and dims_of(state) == {(4, 32)},
             "exits %s %s, migrated %s rebuilt %s, changelog rows read %d (bad %d), "
             "changelog_reshaped lines %d, input events consumed %s, shapes after %s, "
             "%d of %d users differ from core/'s migration, e.g. %s"
             % (rc_a, rc, n, rebuilt, rows, bad, lines, consumed, dims_of(state), len(diff),
                len(ref), diff[:3]))
    cache_case(ck, br, model_b, snap_a, ref)


def cache_case(ck, br, model_b, snap_a, ref):
    """B restarted over A's whole snapshot.dir: the local snapshots (the
    changelog's cache, in A's shape) are moved into B's shape first
    (restore_cache), then the changelog after them is read in that shape."""
    snap_c = os.path.join(ck.tmp, "snapk-c")
    shutil.copytree(snap_a, snap_c)
    before = dims_of(S.dump_values(snap_c))
    w = kafka_worker(ck, br, model_b, snap_c, "reshape-kc")
    w.wait_event("restored", 60, count=PARTS)
    n = w.metric_or("halflife_users_migrated_total", 0)
    rebuilt = w.metric_or("halflife_users_rebuilt_total", 0)
    lines = w.events("snapshot_migrated")
    reshaped = sum(1 for _ts, kv in lines if kv.get("reshaped") == "1")
    srcs = sorted(kv.get("source", "") for _ts, kv in w.events("restored"))
    consumed = w.metric_or("halflife_events_consumed_total", 0)
    rc, _s = w.term(30)
    state = S.dump_values(snap_c)
    diff = S.same_state(state, ref)
    ck.check("changelog_cache_other_shape_migrated", rc == 0 and before == {(3, 48)} and
             n >= N_USERS and rebuilt == 0 and reshaped == PARTS and
             all(x in ("snapshot", "both") for x in srcs) and len(srcs) == PARTS and
             consumed == 0 and not diff and dims_of(state) == {(4, 32)},
             "exit %s, cache shapes before %s after %s, migrated %s rebuilt %s, "
             "snapshot_migrated lines %d (reshaped %d), restore sources %s, input events "
             "consumed %s, %d of %d users differ from core/'s migration, e.g. %s"
             % (rc, before, dims_of(state), n, rebuilt, len(lines), reshaped, srcs, consumed,
                len(diff), len(ref), diff[:3]))


def live_case(ck, model_a, model_b, events):
    """B (another dim, heads and half-lives) renamed over model.path while
    events flow: a live reshape, on a broker of its own."""
    tmp = ck.tmp
    live, snapdir = os.path.join(tmp, "live.hlm"), os.path.join(tmp, "snap-live")
    shutil.copyfile(model_a, live)
    br = C.Broker(ck.procs, PARTS, os.path.join(tmp, "broker-live.log"))
    w, pid, where = S.swap_under_load(ck, br, live, model_a, model_b, events, snapdir)
    started = w.events("migration_started")
    swap_at = {int(kv["partition"]): int(kv["next_offset"]) for _ts, kv in started}
    reshaped = sum(1 for _ts, kv in started if kv.get("reshaped") == "1")
    w.wait_event("migration_done", 30, count=PARTS)
    pre_users = {u for (u, *_r), (p, off) in zip(events, where) if off < swap_at.get(p, -1)}
    migrated = w.metric_or("halflife_users_migrated_total")
    ck.check("live_reshape_every_user_migrated", migrated == len(pre_users) and
             len(swap_at) == PARTS and reshaped == PARTS and
             len(w.events("migration_done")) == PARTS,
             "migrated %s, users before the swap %d, shards %s, reshaped %d, done %d"
             % (migrated, len(pre_users), swap_at, reshaped, len(w.events("migration_done"))))
    totals = (w.metric_or("halflife_events_consumed_total"),
              w.metric_or("halflife_events_applied_total"),
              w.metric_or("halflife_events_duplicate_total", 0))
    alive = w.p.poll() is None and w.p.pid == pid and len(w.events("worker_started")) == 1
    rc, _secs = w.term(30)
    state = S.dump_values(snapdir)
    S.check_exactly_once(ck, alive, totals, events, where, state)
    S.check_lists(ck, br, swap_at, S.version_of(model_a), S.version_of(model_b))
    ref = S.offline_swap(tmp, events, where, swap_at, model_a, model_b)
    diff = S.same_state(state, ref)
    ck.check("live_reshape_final_state_equals_offline", rc == 0 and ref and not diff and
             len(ref) == len(state) and dims_of(state) == {(4, 32)},
             "exit %s, shapes %s, %d of %d users differ from core/'s swap, e.g. %s"
             % (rc, dims_of(state), len(diff), len(ref), diff[:3]))


def send_items(ck, br, name, lines):
    path = os.path.join(ck.tmp, name)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(ck.tmp, name + ".log"), "w") as log:
        return subprocess.run([U.HL, "items", "--input", path, "-X",
                               "kafka.bootstrap.servers=" + br.bootstrap],
                              stdout=log, stderr=log).returncode


def live_items_case(ck, model_a, model_b):
    """After a live swap to another dim the item topic's embeddings are
    read at the new dim: one of B's dim is added, one of A's is refused
    (bad_dim). The decoder used to keep A's dim, so it refused B's and,
    from a smaller dim to a larger, read an old one past its buffer."""
    live = os.path.join(ck.tmp, "items-live.hlm")
    shutil.copyfile(model_a, live)
    br = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker-items.log"),
                  topics=C.TOPICS + ["items"])
    w = C.Worker(ck.procs, br.bootstrap, live, os.path.join(ck.tmp, "worker-items.log"),
                 extra=S.COMMON + ["items.topic=items"])
    ready = S.wait_ready(w, 30)
    S.replace(model_b, live)
    swapped = w.wait_event("model_swapped", 20)

    def vec(n, x):
        return ",".join("%.3f" % (x + 0.01 * i) for i in range(n))
    rc_b = send_items(ck, br, "dim-b.csv", ["new-b,true,,0.5,%s,%s" % (vec(8, 0.1), vec(8, 0.2))])
    added = S.wait_metric(w, "halflife_item_updates_total", 1, 20)
    bad0 = w.metric_or("halflife_item_updates_invalid_total", 0, 'reason="bad_dim"')
    rc_a = send_items(ck, br, "dim-a.csv", ["new-a,true,,0.5,%s,%s" % (vec(16, 0.1), vec(16, 0.2))])
    deadline = time.time() + 20
    while time.time() < deadline and \
            w.metric_or("halflife_item_updates_invalid_total", 0, 'reason="bad_dim"') < bad0 + 1:
        time.sleep(0.1)
    bad = w.metric_or("halflife_item_updates_invalid_total", 0, 'reason="bad_dim"') - bad0
    ck.check("live_reshape_items_at_new_dim", ready and swapped and rc_b == 0 and rc_a == 0 and
             added and bad == 1 and w.metric_or("halflife_items_added", 0, 'source="topic"') == 1,
             "ready %s, swapped %s, items exits %s %s, B's-dim update applied %s, A's-dim "
             "refused as bad_dim %s, items added %s" % (
                 ready, swapped, rc_b, rc_a, added, bad,
                 w.metric_or("halflife_items_added", 0, 'source="topic"')))
    w.term(30)


def live_gate_case(ck, model_a, model_b, events):
    """The live reshape with recs.min.interval.ms: the gate keys waiting
    users by row id, which the move changes; each user's schedule moves
    with it. An interval of a quarter of the stream's event time holds
    most lists back at the swap: none may be lost (each user's newest
    list comes from its last event, after the graceful stop publishes
    what is held), and the state is core/'s swap as without the gate."""
    tmp = ck.tmp
    # a sixth of the users go quiet before the swap: a list the gate holds
    # back for one of them can only go out through the move (no later event)
    quiet = set(sorted({e[0] for e in events})[:N_USERS // 6])
    cut = int(0.35 * len(events))
    events = [e for i, e in enumerate(events) if i < cut or e[0] not in quiet]
    ts = [e[3] for e in events]
    interval = max(1, (max(ts) - min(ts)) // 4)
    live, snapdir = os.path.join(tmp, "live-g.hlm"), os.path.join(tmp, "snap-liveg")
    shutil.copyfile(model_a, live)
    br = C.Broker(ck.procs, PARTS, os.path.join(tmp, "broker-liveg.log"))
    w, pid, where = S.swap_under_load(ck, br, live, model_a, model_b, events, snapdir,
                                      extra=["recs.min.interval.ms=%d" % interval,
                                             "group.id=reshape-lg"], log="worker-lg.log")
    started = w.events("migration_started")
    swap_at = {int(kv["partition"]): int(kv["next_offset"]) for _ts, kv in started}
    reshaped = sum(1 for _ts, kv in started if kv.get("reshaped") == "1")
    done = w.wait_event("migration_done", 30, count=PARTS)
    totals = (w.metric_or("halflife_events_consumed_total"),
              w.metric_or("halflife_events_applied_total"),
              w.metric_or("halflife_events_duplicate_total", 0))
    alive = w.p.poll() is None and w.p.pid == pid
    rc, _s = w.term(30)
    state = S.dump_values(snapdir)
    S.check_exactly_once(ck, alive, totals, events, where, state)
    ref = S.offline_swap(tmp, events, where, swap_at, model_a, model_b)
    diff = S.same_state(state, ref)
    lists, short = S.read_lists(br.bootstrap)
    newest, last = {}, {}
    for (u, p, off, _v, _i) in lists:
        newest[u] = max(newest.get(u, -1), off)
    for (u, *_r), (p, off) in zip(events, where):
        last[u] = off
    held = [u for u in last if newest.get(u) != last[u]]
    ck.check("live_reshape_min_interval_nothing_held", rc == 0 and len(swap_at) == PARTS and
             reshaped == PARTS and done and not short and not held and len(lists) < len(events)
             and ref and not diff and dims_of(state) == {(4, 32)},
             "exit %s, shards swapped %s (reshaped %d, done %s), %d lists for %d events "
             "(unread partitions %s), %d users whose newest list is not from their last "
             "event, e.g. %s; %d of %d users differ from core/'s swap, e.g. %s"
             % (rc, swap_at, reshaped, done, len(lists), len(events), short, len(held),
                [(u, newest.get(u), last[u]) for u in held[:3]], len(diff), len(ref), diff[:3]))


def live_kafka_case(ck, model_a, model_b, events):
    """The live reshape with state.store=kafka: the changelog follows the
    new shape (rows written in their table's), so a second worker that
    reads the changelog alone (an empty snapshot.dir, A kept in its
    model.dir) restores every user as the first one left them."""
    tmp = ck.tmp
    live, snapdir = os.path.join(tmp, "live-k2.hlm"), os.path.join(tmp, "snap-livek")
    shutil.copyfile(model_a, live)
    br = C.Broker(ck.procs, PARTS, os.path.join(tmp, "broker-livek.log"),
                  topics=C.TOPICS + [STATE_TOPIC])
    w, _pid, where = S.swap_under_load(ck, br, live, model_a, model_b, events, snapdir,
                                       extra=KAFKA + SHORT_SESSION + ["group.id=reshape-lk"],
                                       log="worker-lk.log")
    started = w.events("migration_started")
    swap_at = {int(kv["partition"]): int(kv["next_offset"]) for _ts, kv in started}
    reshaped = sum(1 for _ts, kv in started if kv.get("reshaped") == "1")
    done = w.wait_event("migration_done", 30, count=PARTS)
    failures = w.metric_or("halflife_model_swap_failures_total", 0)
    rc, _s = w.term(30)
    ref = S.offline_swap(tmp, events, where, swap_at, model_a, model_b)
    first = S.same_state(S.dump_values(snapdir), ref)
    snap2 = os.path.join(tmp, "snap-livek2")
    shutil.copytree(os.path.join(snapdir, "models"), os.path.join(snap2, "models"))
    w2 = kafka_worker(ck, br, live, snap2, "reshape-lk")
    restored = w2.wait_event("restored", 60, count=PARTS)
    consumed = w2.metric_or("halflife_events_consumed_total", 0)
    bad = sum(int(kv.get("bad", 0)) for _ts, kv in w2.events("restored"))
    rc2, _s = w2.term(30)
    state = S.dump_values(snap2)
    diff = S.same_state(state, ref)
    ck.check("live_reshape_kafka_store_restores", rc == 0 and rc2 == 0 and
             len(swap_at) == PARTS and reshaped == PARTS and done and failures == 0 and
             restored and consumed == 0 and bad == 0 and ref and not first and not diff and
             len(state) == len(ref) and dims_of(state) == {(4, 32)},
             "exits %s %s, shards swapped %s (reshaped %d, done %s), swap failures %s, "
             "restored %s, events consumed after the restore %s, bad changelog rows %d, "
             "%d / %d of %d users differ from core/'s swap (first worker / changelog "
             "restore), e.g. %s, shapes %s" % (rc, rc2, swap_at, reshaped, done, failures,
                                               restored, consumed, bad, len(first), len(diff),
                                               len(ref), (first or diff)[:3], dims_of(state)))


def body(ck):
    tmp = ck.tmp
    model_a, model_b = os.path.join(tmp, "a.hlm"), os.path.join(tmp, "b.hlm")
    make_model(model_a, N_ITEMS, 16, 12345)
    make_model(model_b, N_ITEMS + 200, 8, 777, HALF_LIVES_B)
    events_csv = os.path.join(tmp, "e.csv")
    U.make_events(events_csv, N_EVENTS, N_USERS, N_ITEMS)
    events = U.read_events_csv(events_csv)
    live_case(ck, model_a, model_b, events)
    live_items_case(ck, model_a, model_b)
    live_kafka_case(ck, model_a, model_b, events)
    live_gate_case(ck, model_a, model_b, events)
    br = C.Broker(ck.procs, PARTS, os.path.join(tmp, "broker.log"),
                  topics=C.TOPICS + [STATE_TOPIC])
    U.produce_events(br.bootstrap, C.TOPIC, events)
    snap, snap2 = os.path.join(tmp, "snap"), os.path.join(tmp, "snap2")
    w = S.run_to_end(ck, br, model_a, snap, "reshape-a", "reshape-a", len(events))
    rc_a, _s = w.term(30)
    shutil.copytree(snap, snap2)
    shutil.rmtree(os.path.join(snap2, "models"), ignore_errors=True)
    before = dims_of(S.dump_values(snap))
    # every event is before the "swap": the whole stream under A, then B
    allpre = [(0, 0)] * len(events)
    everything = {p: 1 << 62 for p in range(PARTS)}
    ref = S.offline_swap(tmp, events, allpre, everything, model_a, model_b)
    rc, n, lines, reshaped, rejected, diff, after = restart(
        ck, br, model_b, snap, "reshape-b", "halflife_users_migrated_total", events, ref)
    ck.check("restart_other_shape_migrated", rc_a == 0 and rc == 0 and before == {(3, 48)} and
             n == N_USERS and lines == PARTS and reshaped == PARTS and rejected == 0 and
             len(ref) == N_USERS and not diff and after == {(4, 32)},
             "exits %s %s, shapes before %s after %s, migrated %s, snapshot_migrated lines %d "
             "(reshaped %d), rejected %d, %d of %d users differ from core/'s migration, "
             "e.g. %s" % (rc_a, rc, before, after, n, lines, reshaped, rejected, len(diff),
                          len(ref), diff[:3]))
    ref_migrated = ref
    ref = S.offline_swap(tmp, events, allpre, everything, model_a, model_b, rebuild=True)
    rc, n, lines, reshaped, rejected, diff, after = restart(
        ck, br, model_b, snap2, "reshape-b2", "halflife_users_rebuilt_total", events, ref)
    ck.check("restart_other_shape_without_old_model_rebuilt", rc == 0 and n == N_USERS and
             lines == PARTS and reshaped == PARTS and rejected == 0 and not diff and
             after == {(4, 32)}, "exit %s, rebuilt %s, snapshot_rebuilt lines %d (reshaped %d), "
             "rejected %d, shapes after %s, %d of %d users differ from core/'s rebuild, e.g. %s"
             % (rc, n, lines, reshaped, rejected, after, len(diff), len(ref), diff[:3]))
    changelog_case(ck, br, model_a, model_b, events, ref_migrated)


if __name__ == "__main__":
    sys.exit(C.run_main(SUITE, "all", body))
