"""test_index_swap.py - recs.index=ivf across a live model swap (issue 14).

One `halflife broker`, one `halflife run` serving model A with the index
(8 of 126 lists probed) and the shadow check on every refresh. After half
of a 3,000-event stream, model B (the same 1,000 item ids, other vectors,
so an index of A would have B's shape and pass every size check) is
renamed over model.path. Checks:
- the swap happens and the worker logs an index built for B before B
  serves (event=index ... swapped_in=1);
- every list produced after the swap carries B's version and is 20 long;
- the shadow counters go on counting across the swap (20 items per list
  published; the new ranker counts from zero, the thread's last-added
  counts must too);
- the shadow check's recall over the refreshes after the swap stays near
  the recall before it (at least 0.6 of it, and above 0.25): a ranker over
  B fed A's index would propose the rows of A's clusters, a near-random
  set under B's vectors, and fall to about the share probed (8/126).
"""
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402
from test_items import wait_metric, watermarks  # noqa: E402
from test_min_interval import wait_settled  # noqa: E402
from test_model_swap import make_model, read_lists, replace, version_of  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, K = 3000, 200, 1000, 20


def swap_setup(tmp, items_a, items_b, n_events, n_users, index_opts):
    """What each live index swap test starts from: models A and B (dim 16,
    items_a and items_b items) in tmp, A copied to the model.path the
    worker serves, n_events events of n_users over A's items, a broker, and
    the worker's options with recs.index=ivf and index_opts.
    (model_b, model.path, events, broker, extra)."""
    model_a, model_b = os.path.join(tmp, "a.hlm"), os.path.join(tmp, "b.hlm")
    live, events_csv = os.path.join(tmp, "live.hlm"), os.path.join(tmp, "e.csv")
    make_model(model_a, items_a, 16, 12345)
    make_model(model_b, items_b, 16, 777)
    shutil.copyfile(model_a, live)
    U.make_events(events_csv, n_events, n_users, items_a)
    events = U.read_events_csv(events_csv)
    broker = U.Broker(4, ["behaviour-events", "recommendations", "behaviour-events.dlq"],
                      os.path.join(tmp, "broker.log"))
    extra = ["worker.threads=2", "snapshot.dir=" + os.path.join(tmp, "snapshots"),
             "kafka.fetch.wait.max.ms=10", "model.check.ms=200", "recs.index=ivf"]
    return model_b, live, events, broker, extra + list(index_opts)


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP index_swap.swap: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_index_swap_")
    model_b, live, events, broker, extra = swap_setup(
        tmp, N_ITEMS, N_ITEMS, N_EVENTS, N_USERS,
        ["recs.index.nprobe=8", "recs.index.shadow.every=1"])
    half = N_EVENTS // 2
    worker, failed = None, 0

    def check(name, ok, why):
        nonlocal failed
        print(("PASS index_swap.%s" % name) if ok else
              ("FAIL index_swap.%s: %s (logs in %s)" % (name, why, tmp)))
        failed += 0 if ok else 1

    try:
        worker = U.Worker(broker.bootstrap, live, os.path.join(tmp, "worker.log"), extra=extra)
        U.produce_events(broker.bootstrap, "behaviour-events", events[:half])
        wait_settled(worker, half)
        pub0 = worker.metric("halflife_lists_published_total")
        hits0 = worker.metric("halflife_index_shadow_hits_total")
        items0 = worker.metric("halflife_index_shadow_items_total")
        replace(model_b, live)
        swaps = wait_metric(worker, "halflife_model_swaps_total", 1)
        log = worker.log_text()
        check("swapped_with_own_index", swaps == 1 and "swapped_in=1" in log
              and log.find("swapped_in=1") < log.find("event=model_swapped"),
              "swaps %s; no index line for B before model_swapped" % swaps)
        high = watermarks(broker.bootstrap, "behaviour-events")
        U.produce_events(broker.bootstrap, "behaviour-events", events[half:])
        wait_settled(worker, N_EVENTS)
        lists, short = read_lists(broker.bootstrap)
        after = [x for x in lists if x[2] >= high.get(x[1], 0)]
        vb = version_of(model_b)
        bad = [(u, v, len(items)) for (u, _p, _o, v, items) in after if v != vb or len(items) != K]
        check("lists_after_swap_from_b", after and not bad and not short,
              "%d lists after the swap, %d not B's or not %d long: %s; partitions not read "
              "to their high watermark {partition: (reached, high)}: %s"
              % (len(after), len(bad), K, bad[:3], short))
        hits1 = worker.metric("halflife_index_shadow_hits_total")
        items1 = worker.metric("halflife_index_shadow_items_total")
        pub1 = worker.metric("halflife_lists_published_total")
        check("shadow_counts_go_on", items1 - items0 == K * (pub1 - pub0) and hits1 >= hits0,
              "shadow items %d -> %d over %d lists (want +%d each); a recreated ranker's "
              "counts must not be taken from the old one's" % (items0, items1, pub1 - pub0, K))
        before = hits0 / items0 if items0 else 0.0
        since = (hits1 - hits0) / (items1 - items0) if items1 > items0 else 0.0
        print("    shadow recall@20 before the swap %.4f, after %.4f" % (before, since))
        check("recall_holds_after_swap", since > 0.25 and since >= 0.6 * before,
              "shadow recall %.4f after the swap, %.4f before" % (since, before))
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
    if failed == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
