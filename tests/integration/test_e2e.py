"""test_e2e.py - the worker end to end, as separate processes over TCP.

A `halflife broker`; events produced by python3-confluent-kafka with
python3-avro in Confluent framing (schema id 1); `halflife run` with a small
random model; the lists read back and decoded with python3-avro. Every
user's last list must equal what core/ computes offline from the same events
with the same model (build/tests/test_offline): same items in the same
order, same `because` items, and the same float scores to the bit: the
worker scores two-stage (recs.scoring=two-stage: int8 candidates, exact
fp32 rescoring), the offline reference scores exact fp32 over every item. Also: the list's
generated_at is the user's newest event time and its source is the user's
newest event; /metrics accounts for every event; SIGTERM exits 0.

The worker keeps a longer history than its lists leave out
(state.history=64, recs.exclude.seen.events=8: the configuration a model
swap wants, README "Daily retrain"): the offline reference ranks with the same
window, no list holds an item of its user's last 8 events, and some lists
hold items the user saw only before them (the window was exercised: with
the whole ring left out they could not be listed).
"""
import os
import shutil
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS = 6000, 400, 1000
HISTORY, WINDOW = 64, 8     # state.history, recs.exclude.seen.events


def read_lists(bootstrap, want_last, deadline):
    """Consumes recommendations until every user's newest list comes from
    its last event (or the deadline); returns {user: list}."""
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": bootstrap,
                  "group.id": "e2e-reader-%d-%d" % (os.getpid(), time.time_ns()),
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    U.assign_from_start(c, "recommendations", deadline)
    reader = U.avro.io.DatumReader(U.load_schema("recommendation_list.avsc"))
    lists = {}
    done = set()
    try:
        while time.time() < deadline and len(done) < len(want_last):
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            d = U.decode_list(reader, msg.value())
            u = d["user_id"]
            prev = lists.get(u)
            if prev is None or prev["source"]["offset"] <= d["source"]["offset"]:
                lists[u] = d
            want = want_last.get(u)
            if want and (d["source"]["partition"], d["source"]["offset"]) == want:
                done.add(u)
    finally:
        c.close()
    return lists, done


def f32(x):
    """x rounded to a float32, as the list carries it."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def compare(lists, offline, events):
    """Returns a list of mismatch descriptions (empty when all agree)."""
    bad = []
    newest = {}
    for (u, _i, _t, ts, _w) in events:
        newest[u] = max(newest.get(u, ts), ts)
    for u, ref in offline.items():
        got = lists.get(u)
        if got is None:
            bad.append("%s: no list published" % u)
            continue
        gi = [x["item_id"] for x in got["items"]]
        ri = [x[0] for x in ref["items"]]
        if gi != ri:
            bad.append("%s: items %s.. differ from offline %s.." % (u, gi[:5], ri[:5]))
            continue
        for g, r in zip(got["items"], ref["items"]):
            if f32(g["score"]) != f32(r[1]):
                bad.append("%s: score of %s %.9g vs offline %.9g" % (u, r[0], g["score"], r[1]))
                break
            if g["because_item_id"] != r[2]:
                bad.append("%s: because of %s %s vs offline %s" % (u, r[0], g["because_item_id"], r[2]))
                break
        if got["generated_at"] != newest[u]:
            bad.append("%s: generated_at %d, newest event %d" % (u, got["generated_at"], newest[u]))
    return bad


def window_counts(lists, events):
    """(items listed from the user's last WINDOW events, items listed that
    the user saw only before them), over every user's list."""
    by_user = {}
    for (u, i, _t, _ts, _w) in events:
        by_user.setdefault(u, []).append(i)
    in_window = older = 0
    for u, got in lists.items():
        items = by_user.get(u, [])
        seen = set(items[-WINDOW:])
        old = set(items[-HISTORY:-WINDOW] if len(items) > WINDOW else []) - seen
        for x in got["items"]:
            in_window += x["item_id"] in seen
            older += x["item_id"] in old
    return in_window, older


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP e2e.lists_match_offline: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_e2e_")
    model, events_csv = os.path.join(tmp, "m.hlm"), os.path.join(tmp, "e.csv")
    U.make_model(model, N_ITEMS, 16)
    U.make_events(events_csv, N_EVENTS, N_USERS, N_ITEMS)
    # A few events whose items the model does not know: history only.
    with open(events_csv, "a") as f:
        for k in range(20):
            f.write("u%06d,unknown-%d,VIEW,%d,\n" % (k, k, 1767225600000 + 10**9 + k))
    events = U.read_events_csv(events_csv)
    first, second = events[:4000], events[4000:]
    snapdir = os.path.join(tmp, "snapshots")
    broker = U.Broker(4, ["behaviour-events", "recommendations", "behaviour-events.dlq"],
                      os.path.join(tmp, "broker.log"))
    # The mock broker keeps a group whose last member left rebalancing for
    # session.timeout.ms - 1 s before a new member gets an assignment: keep
    # it short so the restart is quick.
    extra = ["worker.threads=2", "snapshot.dir=" + snapdir, "kafka.fetch.wait.max.ms=10",
             "kafka.session.timeout.ms=6000", "kafka.heartbeat.interval.ms=1000",
             "recs.scoring=two-stage", "state.history=%d" % HISTORY,
             "recs.exclude.seen.events=%d" % WINDOW]
    worker = None
    failed = 0

    def check(name, ok, why):
        nonlocal failed
        if ok:
            print("PASS e2e.%s" % name)
        else:
            print("FAIL e2e.%s: %s" % (name, why))
            failed += 1

    try:
        # Run 1: the first events, then SIGTERM (snapshot on the way out).
        worker = U.Worker(broker.bootstrap, model, os.path.join(tmp, "worker1.log"), extra=extra)
        last1 = U.produce_events(broker.bootstrap, "behaviour-events", first)
        lists, done = read_lists(broker.bootstrap, last1, time.time() + 30)
        check("first_run_publishes", len(done) == len(last1),
              "%d of %d users got their last list" % (len(done), len(last1)))
        consumed = worker.metric("halflife_events_consumed_total")
        unknown = worker.metric("halflife_unknown_items_total")
        invalid = worker.metric("halflife_events_invalid_total")
        check("metrics_account_for_every_event",
              consumed == len(first) and invalid == 0,
              "consumed %d (want %d), unknown %d, invalid %d" % (consumed, len(first), unknown, invalid))
        text = worker.metrics()
        check("two_stage_bounded_every_user", "\nhalflife_rank_fallbacks_total 0\n" in text,
              "halflife_rank_fallbacks_total is missing or not 0: some users' candidates "
              "could not be bounded on a random model")
        rc = worker.stop()
        worker = None
        with open(os.path.join(tmp, "worker1.log")) as f:
            log1 = f.read()
        check("scores_two_stage", "event=scoring mode=two-stage" in log1,
              "the worker's log does not say mode=two-stage (see %s)" % tmp)
        snaps = [f for f in os.listdir(snapdir) if f.endswith(".hls")] if os.path.isdir(snapdir) else []
        check("sigterm_exits_0_with_snapshots", rc == 0 and len(snaps) == 4,
              "exit status %s, snapshots %s" % (rc, snaps))

        # Run 2: restart from the snapshots, then the rest of the stream.
        t0 = time.time()
        worker = U.Worker(broker.bootstrap, model, os.path.join(tmp, "worker2.log"), extra=extra)
        last = U.produce_events(broker.bootstrap, "behaviour-events", second)
        want = dict(last1)
        want.update(last)
        lists, done = read_lists(broker.bootstrap, want, time.time() + 40)
        elapsed = time.time() - t0
        consumed2 = worker.metric("halflife_events_consumed_total")
        unknown2 = worker.metric("halflife_unknown_items_total")
        check("restart_resumes_exactly", consumed2 == len(second) and unknown + unknown2 == 20,
              "second run consumed %d (want %d: resume at the snapshot offset), unknown %d+%d"
              % (consumed2, len(second), unknown, unknown2))
        offline = U.offline_lists(events_csv, model, history=HISTORY, seen_events=WINDOW)
        if len(done) != len(want):
            check("lists_match_offline", False, "%d of %d users got the list of their last "
                  "event within 40 s (logs in %s)" % (len(done), len(want), tmp))
        else:
            bad = compare(lists, offline, events)
            check("lists_match_offline", not bad and len(offline) == len(want),
                  "%d mismatches of %d users, e.g. %s" % (len(bad), len(offline), bad[:3]))
            print("    (%d users, %d events, second run %.1f s)" % (len(offline), len(events), elapsed))
            in_window, older = window_counts(lists, events)
            check("seen_window_applied", in_window == 0 and older > 0,
                  "%d listed items are in their user's last %d events (want 0), %d were "
                  "seen only before them (want > 0)" % (in_window, WINDOW, older))
            print("    (%d listed items seen only before the last %d events)" % (older, WINDOW))
        rc = worker.stop()
        worker = None
        check("second_sigterm_exits_0", rc == 0, "exit status %s" % rc)
    finally:
        if worker:
            worker.stop()
        broker.stop()
    if not failed:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
