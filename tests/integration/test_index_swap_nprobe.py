"""test_index_swap_nprobe.py - recs.index.nprobe=0 (nlist/16) follows each
swapped-in model's own index, not the first model's.

One `halflife broker`, one `halflife run` with recs.index=ivf, the default
nprobe and the shadow check on every refresh, serving model A of 64 items
(nlist 32, so nprobe 2). Model B, 4,096 items of dim 16 (nlist 256), is
renamed over model.path. Its own default is 16 of its 256 lists; the
first model's 2 would probe under 1% of B's catalogue. Checks:
- the index line logged for B (swapped_in=1) says nprobe=16;
- the shadow check's recall over the refreshes after the swap is at least
  0.4 (measured here: 0.70 with nprobe 16, 0.22 with A's 2);
- the shadow gauge is that recall, B's since it went live, not the
  counters' total since the start, which mixes in A's.
"""
import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402
from test_items import wait_metric  # noqa: E402
from test_min_interval import wait_settled  # noqa: E402
from test_index_swap import swap_setup  # noqa: E402
from test_model_swap import replace  # noqa: E402

N_EVENTS, N_USERS, ITEMS_A, ITEMS_B = 2000, 200, 64, 4096


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP index_swap_nprobe.swap: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_index_swap_nprobe_")
    model_b, live, events, broker, extra = swap_setup(
        tmp, ITEMS_A, ITEMS_B, N_EVENTS, N_USERS, ["recs.index.shadow.every=1"])
    half = N_EVENTS // 2
    worker, failed = None, 0

    def check(name, ok, why):
        nonlocal failed
        print(("PASS index_swap_nprobe.%s" % name) if ok else
              ("FAIL index_swap_nprobe.%s: %s (logs in %s)" % (name, why, tmp)))
        failed += 0 if ok else 1

    try:
        worker = U.Worker(broker.bootstrap, live, os.path.join(tmp, "worker.log"), extra=extra)
        U.produce_events(broker.bootstrap, "behaviour-events", events[:half])
        wait_settled(worker, half)
        replace(model_b, live)
        swaps = wait_metric(worker, "halflife_model_swaps_total", 1)
        line = [x for x in worker.log_text().splitlines() if "swapped_in=1" in x]
        m = re.search(r"nlist=(\d+) nprobe=(\d+)", line[0]) if line else None
        check("default_nprobe_of_b", swaps == 1 and m is not None and m.group(1) == "256"
              and m.group(2) == "16",
              "swaps %s; B's index line %s: want nlist=256 nprobe=16 (nlist/16)"
              % (swaps, line[:1]))
        hits0 = worker.metric("halflife_index_shadow_hits_total")
        items0 = worker.metric("halflife_index_shadow_items_total")
        U.produce_events(broker.bootstrap, "behaviour-events", events[half:])
        wait_settled(worker, N_EVENTS)
        hits1 = worker.metric("halflife_index_shadow_hits_total")
        items1 = worker.metric("halflife_index_shadow_items_total")
        since = (hits1 - hits0) / (items1 - items0) if items1 > items0 else 0.0
        print("    shadow recall@20 after the swap %.4f over %d items"
              % (since, items1 - items0))
        check("recall_after_swap", since >= 0.4,
              "shadow recall %.4f after the swap to B: B's lists probed with A's nprobe?"
              % since)
        gauge = worker.metric("halflife_index_recall", 'check="shadow"')
        total = hits1 / items1 if items1 else 0.0
        print("    shadow gauge %s, counters since the swap %.4f, since the start %.4f"
              % (gauge, since, total))
        check("shadow_gauge_is_served_models", gauge is not None and abs(gauge - since) < 1e-3
              and abs(total - since) > 1e-3,
              "gauge %s: want B's recall since it went live, %.4f, not the total %.4f "
              "that mixes in A's" % (gauge, since, total))
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
    if failed == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
