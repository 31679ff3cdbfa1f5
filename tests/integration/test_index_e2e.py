"""test_index_e2e.py - recs.index=ivf end to end (issue 14).

One `halflife broker`; a stream of 3,000 events of 200 users over 1,000
items (python3-confluent-kafka + python3-avro); one `halflife run` with
recs.index=ivf, 8 of its 126 lists probed, and the shadow check on every
refresh (recs.index.shadow.every=1). After the first half of the events,
the live catalogue changes through the items topic (`halflife items`):
the item the first half's lists hold most often (X) is hidden
(available=false) and new-a is added with X's vectors and a higher bias
(a side row, which the index built at load does not hold). Then, for
each user's last list of the second half (the one from its last event):
- it is 20 items long, holds neither X nor any item of the user's last 32
  events (the history ring the worker excludes);
- every item it shares with the offline exact reference with the same
  catalogue (build/tests/test_offline, HL_OFFLINE_CATALOGUE) carries the
  reference's score to the float32 bit, new-a included: the index only
  chooses candidates, exact scoring decides;
- new-a is in lists (the side rows are scored);
- recall@20 against the reference is reported, and must be above 0 and
  at most 1.
And /metrics: every refresh was shadow-checked, so
halflife_index_shadow_items_total is 20 per list published, and
halflife_index_recall{check="shadow"} is hits / items, in (0, 1]; the
exposition passes `promtool check metrics` (when promtool is installed).
"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402
from test_e2e import f32, read_lists  # noqa: E402
from test_items import run_items, wait_metric, watermarks  # noqa: E402

sys.path.insert(0, U.SCHEMAS)
import hlm  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, K, RING = 3000, 200, 1000, 20, 32


def seen_items(events):
    """{user: set of the items of its last RING events}."""
    by_user = {}
    for (u, i, _t, _ts, _w) in events:
        by_user.setdefault(u, []).append(i)
    return {u: set(items[-RING:]) for u, items in by_user.items()}


def check_lists(lists, offline, seen, hidden):
    """(problems, recall): lists against the exact reference."""
    bad, hits, total = [], 0, 0
    for u, ref in offline.items():
        got = lists.get(u)
        if got is None:
            bad.append("%s: no list" % u)
            continue
        items = [x["item_id"] for x in got["items"]]
        if len(items) != K:
            bad.append("%s: %d items, want %d" % (u, len(items), K))
        if seen[u] & set(items):
            bad.append("%s: lists seen items %s" % (u, sorted(seen[u] & set(items))[:3]))
        if hidden in items:
            bad.append("%s: lists the hidden item %s" % (u, hidden))
        ref_score = {r[0]: r[1] for r in ref["items"]}
        for x in got["items"]:
            if x["item_id"] in ref_score and f32(x["score"]) != f32(ref_score[x["item_id"]]):
                bad.append("%s: score of %s %.9g, exact %.9g" % (u, x["item_id"], x["score"],
                                                                 ref_score[x["item_id"]]))
        hits += len(set(items) & set(ref_score))
        total += len(ref_score)
    return bad, (hits / total if total else 0.0)


def change_catalogue(bootstrap, tmp, model, lists, worker):
    """Hides the item the lists hold most often and adds new-a with its
    vectors and a higher bias; returns (X, the catalogue file, problem)."""
    count = {}
    for d in lists.values():
        for x in d["items"]:
            count[x["item_id"]] = count.get(x["item_id"], 0) + 1
    x = max(sorted(count), key=lambda i: count[i])
    m = hlm.read(model)
    ids = [i.decode() if isinstance(i, bytes) else i for i in m.item_ids]
    row = ids.index(x)
    cat = os.path.join(tmp, "catalogue.csv")
    with open(cat, "w") as f:
        f.write("item_id,available,expires_at_ms\n%s,false\n" % x)
        f.write("new-a,true,,%.9g,%s,%s\n" % (float(m.bias[row]) + 0.05,
                                              ",".join("%.9g" % v for v in m.e_in[row]),
                                              ",".join("%.9g" % v for v in m.e_out[row])))
    with open(os.path.join(tmp, "items_cmd.log"), "w") as log:
        rc = run_items(bootstrap, cat, log)
    n = wait_metric(worker, "halflife_item_updates_total", 2)
    problem = None if rc == 0 and n == 2 else "halflife items exit %s, updates read %s" % (rc, n)
    return x, cat, problem


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP index_e2e.lists: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_index_e2e_")
    model, events_csv = os.path.join(tmp, "m.hlm"), os.path.join(tmp, "e.csv")
    U.make_model(model, N_ITEMS, 16)
    U.make_events(events_csv, N_EVENTS, N_USERS, N_ITEMS)
    events = U.read_events_csv(events_csv)
    half = N_EVENTS // 2
    broker = U.Broker(4, ["behaviour-events", "recommendations", "behaviour-events.dlq", "items"],
                      os.path.join(tmp, "broker.log"))
    extra = ["worker.threads=2", "snapshot.dir=" + os.path.join(tmp, "snapshots"),
             "kafka.fetch.wait.max.ms=10", "recs.index=ivf", "recs.index.nprobe=8",
             "recs.index.shadow.every=1"]
    worker = None
    failed = 0

    def check(name, ok, why):
        nonlocal failed
        print(("PASS index_e2e.%s" % name) if ok else ("FAIL index_e2e.%s: %s" % (name, why)))
        failed += 0 if ok else 1

    try:
        worker = U.Worker(broker.bootstrap, model, os.path.join(tmp, "worker.log"), extra=extra)
        last = U.produce_events(broker.bootstrap, "behaviour-events", events[:half])
        lists, done = read_lists(broker.bootstrap, last, time.time() + 40)
        x, cat, problem = change_catalogue(broker.bootstrap, tmp, model, lists, worker)
        check("catalogue_updates_read", problem is None, problem)
        high = watermarks(broker.bootstrap, "behaviour-events")
        last2 = U.produce_events(broker.bootstrap, "behaviour-events", events[half:])
        lists2, done2 = read_lists(broker.bootstrap, last2, time.time() + 40)
        check("every_user_listed", len(done) == len(last) and len(done2) == len(last2),
              "%d of %d, then %d of %d users got the list of their last event (logs in %s)"
              % (len(done), len(last), len(done2), len(last2), tmp))
        after = {u: d for u, d in lists2.items() if u in last2
                 and d["source"]["offset"] >= high.get(d["source"]["partition"], 0)}
        os.environ["HL_OFFLINE_CATALOGUE"] = cat        # offline_lists passes os.environ on
        offline = U.offline_lists(events_csv, model, K)
        del os.environ["HL_OFFLINE_CATALOGUE"]
        offline = {u: r for u, r in offline.items() if u in last2}
        bad, recall = check_lists(after, offline, seen_items(events), x)
        check("lists_k_long_unseen_unhidden_exact_scores", not bad and after, "; ".join(bad[:5]))
        n_new = sum(any(i["item_id"] == "new-a" for i in d["items"]) for d in after.values())
        check("added_item_listed", n_new > 0, "new-a in none of %d lists" % len(after))
        print("    recall@20 of the users' last lists against exact: %.4f (new-a in %d of %d, "
              "X hidden: %s)" % (recall, n_new, len(after), x))
        check("recall_in_range", 0.0 < recall <= 1.0, "recall %.4f" % recall)
        published = worker.metric("halflife_lists_published_total")
        items = worker.metric("halflife_index_shadow_items_total")
        hits = worker.metric("halflife_index_shadow_hits_total")
        gauge = worker.metric("halflife_index_recall", 'check="shadow"')
        check("shadow_checks_every_refresh",
              published > 0 and items == K * published and 0 < gauge <= 1
              and abs(gauge - hits / items) < 1e-9,
              "lists %d, shadow items %d (want %d), hits %d, gauge %.4f"
              % (published, items, K * published, hits, gauge))
        problem = U.promtool_check(worker.metrics())
        check("metrics_parse", problem in (None, "absent"),
              "promtool check metrics: %s" % problem)
        log = worker.log_text()
        check("logs_index_at_load", "event=index mode=ivf items=1000 nlist=126 nprobe=8" in log
              and "recall_at_20=" in log, "no index line in %s" % os.path.join(tmp, "worker.log"))
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
    if failed == 0:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
