#!/usr/bin/python3
"""test_model_swap.py - a new model goes live in a running worker (DESIGN.md
section 10, issue 10), against real processes over TCP: `halflife broker`,
one `halflife run` serving model A, events produced by confluent-kafka.

Mid-stream, model B (other items, other vectors) is renamed over
model.path. Checks: the same process serves on (one worker_started), every
event produced is consumed and applied exactly once (metrics, and each
user's last applied offset in the final snapshot), lists of events before
the swap point of their partition carry A's version and those after carry
B's, and each user's final state equals what core/ computes offline
(build/tests/test_offline's swap mode: the events before the swap point
under A, every user migrated with the same least-squares map, the rest
under B). Then bad files renamed over model.path (truncated, random bytes,
a finite 3e38 in e_out) are refused and counted while B keeps serving, and
a SIGHUP with the file unchanged does nothing. (A model of another dim is
no bad file: it goes live too, test_model_reshape.py.)

Restarts: a worker that saved its snapshots under A is restarted with B:
every user is migrated (A is kept in <snapshot.dir>/models by
fingerprint), and the state equals core/'s migration of the whole stream;
without A kept, every user is rebuilt from the history ring alone
(halflife_users_rebuilt_total) and equals core/'s rebuild.

Run: HL_HALFLIFE=build/halflife HL_BUILD=build /usr/bin/python3 tests/integration/test_model_swap.py
"""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402

SUITE = "model_swap"
PARTS = 4
N_EVENTS, N_USERS, N_ITEMS = 12000, 300, 1000
# two-stage scoring: a swap must build B's int8 table before B serves
COMMON = ["worker.threads=2", "kafka.fetch.wait.max.ms=10", "model.check.ms=200",
          "snapshot.interval.ms=0", "batch.max.messages=500", "recs.scoring=two-stage"]


def make_model(path, items, dim, seed):
    env = dict(os.environ, HL_OFFLINE_MAKE_MODEL=path, HL_OFFLINE_ITEMS=str(items),
               HL_OFFLINE_DIM=str(dim), HL_OFFLINE_SEED=str(seed))
    subprocess.run([os.path.join(U.BUILD, "tests", "test_offline")], env=env, check=True)


def version_of(path):
    with open(path, "rb") as f:
        d = f.read(224)
    return d[160:224].split(b"\0")[0].decode()


def replace(src, live):
    """What a retrain job does: write beside, rename over model.path."""
    tmp = live + ".tmp"
    shutil.copyfile(src, tmp)
    os.rename(tmp, live)


def produce_paced(bootstrap, events, rate, at_fraction, action):
    """Produces events keyed by user at about rate per second, calling
    action() once at_fraction of them are delivered; returns
    [(partition, offset)] per event."""
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                  "linger.ms": 5})
    writer = U.avro.io.DatumWriter(U.load_schema("behaviour_event.avsc"))
    where = [None] * len(events)

    def cb(i):
        def on_delivery(err, msg):
            if err is None:
                where[i] = (msg.partition(), msg.offset())
        return on_delivery

    t0, fired = time.time(), False
    for n, (u, i, t, ts, w) in enumerate(events):
        p.produce(C.TOPIC, key=u.encode(), value=U.encode_event(writer, 1, u, i, t, ts, w),
                  on_delivery=cb(n))
        if n % 100 == 0:
            p.poll(0)
            ahead = n / rate - (time.time() - t0)
            if ahead > 0:
                time.sleep(ahead)
        if not fired and n >= at_fraction * len(events):
            p.flush(30)
            action()
            fired = True
    p.flush(60)
    return where


def read_lists(bootstrap, timeout=120):
    """Every list on the output topic up to its high watermarks, taken when
    called (the worker has exited, so nothing more is coming): [(user,
    partition, offset of its source, version, [(item, score)])], and
    {partition: (offset reached, high watermark)} of any partition not read
    to its end within timeout. A pause in delivery is not the end: a loaded
    machine can go seconds without a message."""
    from confluent_kafka import Consumer, TopicPartition
    topic = "recommendations"
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "swap-reader-%d" % time.time_ns(),
                  "enable.auto.commit": False})
    reader = U.avro.io.DatumReader(U.load_schema("recommendation_list.avsc"))
    out, deadline = [], time.time() + timeout
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        marks = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in parts}
        pos = {p: marks[p][0] for p in parts}
        c.assign([TopicPartition(topic, p, marks[p][0]) for p in parts])
        while time.time() < deadline and any(pos[p] < marks[p][1] for p in parts):
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            pos[m.partition()] = m.offset() + 1
            d = U.decode_list(reader, m.value())
            out.append((d["user_id"], d["source"]["partition"], d["source"]["offset"],
                        d["model_version"], [(x["item_id"], x["score"]) for x in d["items"]]))
    finally:
        c.close()
    return out, {p: (pos[p], marks[p][1]) for p in parts if pos[p] < marks[p][1]}


def dump_values(snapdir):
    """{user: row} of the newest snapshot of each partition, with values."""
    state = {}
    for _part, (_off, path) in C.newest_snapshots(snapdir).items():
        out = subprocess.run([U.HL, "snapshot", "dump", "--values", path], check=True,
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            d = json.loads(line)
            state[d["user"]] = d
    return state


def offline_swap(tmp, events, where, swap_at, model_a, model_b, rebuild=False, lists=False):
    """{user: {"m", "s"}} as core/ computes the swap (test_offline)."""
    pre, post = os.path.join(tmp, "pre.csv"), os.path.join(tmp, "post.csv")
    with open(pre, "w") as fa, open(post, "w") as fb:
        for f in (fa, fb):
            f.write("user_id,item_id,event_type,timestamp_ms,weight\n")
        for (u, i, t, ts, w), (p, off) in zip(events, where):
            f = fa if off < swap_at.get(p, -1) else fb
            f.write("%s,%s,%s,%d,%s\n" % (u, i, t, ts, "" if w is None else repr(w)))
    env = dict(os.environ, HL_OFFLINE_SWAP_PRE=pre, HL_OFFLINE_SWAP_POST=post,
               HL_OFFLINE_MODEL=model_a, HL_OFFLINE_MODEL_B=model_b,
               HL_OFFLINE_REBUILD="1" if rebuild else "",
               HL_OFFLINE_SWAP_LISTS="1" if lists else "")
    out = subprocess.run([os.path.join(U.BUILD, "tests", "test_offline")], env=env,
                         check=True, capture_output=True, text=True).stdout
    return {d["user"]: d for d in map(json.loads, out.splitlines())}


def close(a, b, tol=1e-4):
    return len(a) == len(b) and all(abs(x - y) <= tol * max(1.0, abs(y)) for x, y in zip(a, b))


def wait_ready(w, timeout):
    import urllib.request
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % w.port, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def wait_metric(w, name, want, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if w.metric_or(name) >= want:
            return True
        time.sleep(0.1)
    return False


def offline_fit(model_a, model_b):
    """{"shared", "residual"} of the map a swap from model_a to model_b fits
    (test_offline's fit mode: core/'s hl_migration, as worker/models.c)."""
    env = dict(os.environ, HL_OFFLINE_FIT="1", HL_OFFLINE_MODEL=model_a,
               HL_OFFLINE_MODEL_B=model_b)
    out = subprocess.run([os.path.join(U.BUILD, "tests", "test_offline")], env=env,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


FIT_GAUGES = ("halflife_model_migration_residual", "halflife_model_migration_shared_items",
              "halflife_model_migration_shared_ratio")


def check_fit_gauges(ck, w, name, want):
    """The worker's migration-map gauges equal want (residual, shared, ratio)."""
    got = [w.metric_or(g, None) for g in FIT_GAUGES]
    ok = (None not in got and abs(got[0] - want[0]) <= 1e-4 and got[1] == want[1] and
          abs(got[2] - want[2]) <= 1e-6)
    ck.check(name, ok, "gauges (residual, shared items, shared ratio) %s, core/'s fit %s"
             % (got, want))


def swap_under_load(ck, br, live, model_a, model_b, events, snapdir, extra=(),
                    log="worker.log"):
    w = C.Worker(ck.procs, br.bootstrap, live, os.path.join(ck.tmp, log),
                 extra=COMMON + ["snapshot.dir=" + snapdir] + list(extra))
    pid = w.p.pid
    wait_ready(w, 30)
    items_a = offline_fit(model_a, model_a)["shared"]
    check_fit_gauges(ck, w, "fit_gauges_before_swap", (0, items_a, 1))

    def swap():
        # mid-stream: events before it are applied under A, the rest flow on
        C.wait_consumed([w], int(0.4 * len(events)), 30)
        replace(model_b, live)
    where = produce_paced(br.bootstrap, events, 3000, 0.45, swap)
    ok_swap = w.wait_event("model_swapped", 20)
    C.wait_consumed([w], len(events), 60)
    ck.check("swap_logged", ok_swap and w.metric_or("halflife_model_swaps_total") == 1,
             "model_swapped %s, swaps_total %s" % (ok_swap, w.metric_or("halflife_model_swaps_total")))
    info = w.metrics()
    vb = version_of(model_b)
    ck.check("model_info_names_b", ('halflife_model_info{version="%s"' % vb) in info and
             info.count("halflife_model_info{") == 1,
             "model_info lines: %s" % [l for l in info.splitlines() if l.startswith("halflife_model_info")])
    fit = offline_fit(model_a, model_b)
    check_fit_gauges(ck, w, "fit_gauges_after_swap",
                     (fit["residual"], fit["shared"], fit["shared"] / items_a))
    return w, pid, where


def check_exactly_once(ck, alive, totals, events, where, state):
    consumed, applied, dups = totals
    ck.check("same_process", alive, "the worker restarted or exited before the end")
    ck.check("consumed_equals_produced", None not in where and consumed == len(events) ==
             applied and dups <= 0, "produced %d (undelivered %d) consumed %s applied %s dup %s"
             % (len(events), where.count(None), consumed, applied, dups))
    last = {}
    for (u, *_r), (p, off) in zip(events, where):
        last[u] = off
    bad = [u for u in last if state.get(u, {}).get("last_offset") != last[u]]
    ck.check("applied_offsets_once", not bad and len(state) == len(last),
             "%d of %d users' last applied offset differs, e.g. %s" % (len(bad), len(last), bad[:3]))


def check_lists(ck, br, swap_at, va, vb):
    lists, short = read_lists(br.bootstrap)
    wrong = [(u, p, off, v) for (u, p, off, v, _i) in lists
             if v != (vb if off >= swap_at.get(p, -1) else va)]
    after = sum(1 for (_u, p, off, _v, _i) in lists if off >= swap_at.get(p, -1))
    ck.check("lists_carry_model_version", lists and not short and not wrong and after > 0,
             "%d lists, %d after the swap, %d with the wrong version, e.g. %s; partitions "
             "not read to their high watermark {partition: (reached, high)}: %s"
             % (len(lists), after, len(wrong), wrong[:3], short))
    return lists


def same_list(got, ref, tol=1e-4):
    """Items in the same order with the same scores, up to the migration's
    float error (final_state_equals_offline's tolerance): two items may
    trade places, or one enter at the tail, only where scores tie within it."""
    def near(x, y):
        return abs(x - y) <= tol * max(1.0, abs(y))
    if len(got) != len(ref) or not all(near(g[1], r[1]) for g, r in zip(got, ref)):
        return False
    kth = ref[-1][1] if ref else 0.0
    only = set(g[0] for g in got) ^ set(r[0] for r in ref)
    score = dict([(g[0], g[1]) for g in got] + [(r[0], r[1]) for r in ref])
    return all(near(score[i], kth) for i in only)


def check_lists_two_stage(ck, lists, swap_at, events, where, model_a, model_b):
    """Each user's last list, published after the swap by a worker scoring
    two-stage, equals the exact fp32 list of B over core/'s swapped state."""
    last_event = {}
    for (u, *_r), (p, off) in zip(events, where):
        last_event[u] = (p, off)
    newest = {}
    for (u, p, off, _v, items) in lists:
        if (p, off) == last_event.get(u) and off >= swap_at.get(p, -1):
            newest[u] = items
    ref = offline_swap(ck.tmp, events, where, swap_at, model_a, model_b, lists=True)
    bad = [u for u in newest if u not in ref or not same_list(newest[u], ref[u]["items"])]
    ck.check("two_stage_lists_after_swap_equal_exact_b", newest and not bad,
             "%d users' last lists after the swap, %d differ from B's exact lists, e.g. %s"
             % (len(newest), len(bad), [(u, newest[u][:3], ref.get(u, {}).get("items", [])[:3])
                                       for u in bad[:2]]))


def check_bad_files(ck, w, live, tmp, model_b):
    vb = version_of(model_b)
    with open(model_b, "rb") as f:
        good = f.read()
    bad = {"truncated": good[:len(good) // 2], "random": os.urandom(len(good))}
    # finite but huge: every list would score inf (schemas/model.md, "Why 256")
    huge = bytearray(good)
    e_out_off = struct.unpack_from("<Q", huge, 224 + 16 * 11)[0]
    struct.pack_into("<f", huge, e_out_off + 4 * 5, 3e38)
    struct.pack_into("<I", huge, 12, zlib.crc32(bytes(huge[16:])))
    bad["huge_value"] = bytes(huge)
    for name, data in bad.items():
        before = w.metric_or("halflife_model_swap_failures_total")
        src = os.path.join(tmp, "bad-" + name)
        with open(src, "wb") as f:
            f.write(data)
        replace(src, live)
        ok = wait_metric(w, "halflife_model_swap_failures_total", before + 1, 10)
        info = w.metrics()
        ck.check("bad_file_refused_" + name, ok and ('version="%s"' % vb) in info and
                 w.metric_or("halflife_model_swaps_total") == 1 and w.p.poll() is None,
                 "failures %s -> %s, swaps %s" % (before, w.metric_or(
                     "halflife_model_swap_failures_total"), w.metric_or("halflife_model_swaps_total")))
    reasons = [kv.get("err", "") for _ts, kv in w.events("model_swap_failed")]
    ck.check("bad_file_reasons_logged", len(reasons) >= 3 and
             any("e_out[0][5] is 3e+38: expected |value| <= 256" in r for r in reasons),
             "reasons: %s" % reasons)


def check_sighup_unchanged(ck, w, live, model_b):
    replace(model_b, live)      # B again: same fingerprint, another inode
    time.sleep(1.0)
    n0 = len(w.events("model_unchanged"))
    swaps = w.metric_or("halflife_model_swaps_total")
    w.p.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while time.time() < deadline and len(w.events("model_unchanged")) <= n0:
        time.sleep(0.1)
    ck.check("sighup_unchanged_does_nothing", len(w.events("model_unchanged")) > n0 and
             w.metric_or("halflife_model_swaps_total") == swaps and w.p.poll() is None,
             "model_unchanged lines %d -> %d, swaps %s -> %s" % (
                 n0, len(w.events("model_unchanged")), swaps,
                 w.metric_or("halflife_model_swaps_total")))


def run_to_end(ck, br, model, snapdir, group, name, n_events, until=None):
    """A worker over the whole topic from its snapshots, returned once it has
    consumed n_events in this life or, when its snapshots are already past
    them (n_events 0), once the metric until = (name, value) reaches value:
    a quiet spell alone would not say the restore is over on a loaded
    machine."""
    w = C.Worker(ck.procs, br.bootstrap, model, os.path.join(ck.tmp, name + ".log"),
                 extra=COMMON + ["snapshot.dir=" + snapdir, "group.id=" + group])
    wait_ready(w, 30)
    if n_events:
        C.wait_consumed([w], n_events, 60)
    else:
        wait_metric(w, until[0], until[1], 120)
    return w


def same_state(state, ref):
    return [u for u in ref if u not in state or not close(state[u]["s"], ref[u]["s"])
            or not close(state[u]["m"], ref[u]["m"])]


def restart_with_other_model(ck, br, model_a, model_b, events, where):
    """Snapshots written under A, the worker restarted with B: migrated with
    A kept in model.dir, rebuilt from the rings without it."""
    snap, snap2 = os.path.join(ck.tmp, "snap-r"), os.path.join(ck.tmp, "snap-r2")
    w = run_to_end(ck, br, model_a, snap, "restart", "restart-a", len(events))
    rc_a, _s = w.term(30)
    shutil.copytree(snap, snap2)
    shutil.rmtree(os.path.join(snap2, "models"), ignore_errors=True)
    kept = os.listdir(os.path.join(snap, "models")) if os.path.isdir(os.path.join(snap, "models")) else []
    # a group of its own per life: the mock broker may hold a left member's
    # slot until its session times out; state comes from the snapshots
    w = run_to_end(ck, br, model_b, snap, "restart-b", "restart-b", 0,
                   ("halflife_users_migrated_total", N_USERS))
    migrated = w.metric_or("halflife_users_migrated_total")
    lines = len(w.events("snapshot_migrated"))
    fit, items_a = offline_fit(model_a, model_b), offline_fit(model_a, model_a)["shared"]
    check_fit_gauges(ck, w, "fit_gauges_after_restore",
                     (fit["residual"], fit["shared"], fit["shared"] / items_a))
    rc_b, _s = w.term(30)
    ref = offline_swap(ck.tmp, events, where, {p: 1 << 62 for p in range(PARTS)}, model_a, model_b)
    diff = same_state(dump_values(snap), ref)
    ck.check("restart_other_model_migrated", rc_a == 0 and rc_b == 0 and len(kept) == 1 and
             migrated == N_USERS and lines == PARTS and not diff and len(ref) == N_USERS,
             "exits %s %s, kept %s, migrated %s, snapshot_migrated lines %d, %d of %d users "
             "differ from core/'s migration, e.g. %s" % (rc_a, rc_b, kept, migrated, lines,
                                                         len(diff), len(ref), diff[:3]))
    w = run_to_end(ck, br, model_b, snap2, "restart-b2", "restart-b2", 0,
                   ("halflife_users_rebuilt_total", N_USERS))
    rebuilt = w.metric_or("halflife_users_rebuilt_total")
    lines = len(w.events("snapshot_rebuilt"))
    check_fit_gauges(ck, w, "fit_gauges_after_rebuild", (1, 0, 0))
    rc, _s = w.term(30)
    ref = offline_swap(ck.tmp, events, where, {p: 1 << 62 for p in range(PARTS)}, model_a,
                       model_b, rebuild=True)
    diff = same_state(dump_values(snap2), ref)
    ck.check("restart_without_old_model_rebuilt", rc == 0 and rebuilt == N_USERS and
             lines == PARTS and not diff, "exit %s, rebuilt %s, snapshot_rebuilt lines %d, "
             "%d of %d users differ from core/'s rebuild, e.g. %s" % (
                 rc, rebuilt, lines, len(diff), len(ref), diff[:3]))


def body(ck):
    tmp = ck.tmp
    model_a, model_b = os.path.join(tmp, "a.hlm"), os.path.join(tmp, "b.hlm")
    make_model(model_a, N_ITEMS, 16, 12345)
    make_model(model_b, N_ITEMS + 200, 16, 777)
    live, snapdir = os.path.join(tmp, "model.hlm"), os.path.join(tmp, "snap")
    shutil.copyfile(model_a, live)
    events_csv = os.path.join(tmp, "e.csv")
    U.make_events(events_csv, N_EVENTS, N_USERS, N_ITEMS)
    events = U.read_events_csv(events_csv)
    br = C.Broker(ck.procs, PARTS, os.path.join(tmp, "broker.log"))
    w, pid, where = swap_under_load(ck, br, live, model_a, model_b, events, snapdir)
    swap_at = {int(kv["partition"]): int(kv["next_offset"])
               for _ts, kv in w.events("migration_started")}
    check_bad_files(ck, w, live, tmp, model_b)
    check_sighup_unchanged(ck, w, live, model_b)
    pre_users = {u for (u, *_r), (p, off) in zip(events, where) if off < swap_at.get(p, -1)}
    migrated = w.metric_or("halflife_users_migrated_total")
    ck.check("every_user_migrated_once", migrated == len(pre_users) and
             len(swap_at) == PARTS, "migrated %s, users before the swap %d, shards %s"
             % (migrated, len(pre_users), swap_at))
    totals = (w.metric_or("halflife_events_consumed_total"),
              w.metric_or("halflife_events_applied_total"),
              w.metric_or("halflife_events_duplicate_total", 0))
    alive = w.p.poll() is None and w.p.pid == pid and len(w.events("worker_started")) == 1
    rc, _secs = w.term(30)
    state = dump_values(snapdir)
    check_exactly_once(ck, alive, totals, events, where, state)
    lists = check_lists(ck, br, swap_at, version_of(model_a), version_of(model_b))
    check_lists_two_stage(ck, lists, swap_at, events, where, model_a, model_b)
    ref = offline_swap(tmp, events, where, swap_at, model_a, model_b)
    diff = same_state(state, ref)
    ck.check("final_state_equals_offline", rc == 0 and ref and not diff and
             len(ref) == len(state), "exit %s, %d of %d users differ, e.g. %s" % (
                 rc, len(diff), len(ref), diff[:3]))
    restart_with_other_model(ck, br, model_a, model_b, events, where)


if __name__ == "__main__":
    sys.exit(C.run_main(SUITE, "all", body))
