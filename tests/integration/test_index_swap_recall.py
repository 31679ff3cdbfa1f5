"""test_index_swap_recall.py - halflife_index_recall{check="load"} is the
served model's: a model swapped in live has its index's recall measured
at load like the first model's, logged and exported.

One `halflife broker`, one `halflife run` with recs.index=ivf and
recs.index.nprobe=32 serving model A of 64 items (nlist 32: every list
probed, recall 1). Model B, 4,096 items of dim 16 (nlist 256, 32 probed),
is renamed over model.path. Checks:
- before the swap the load gauge is 1 (A probes every list);
- after it the gauge is B's recall, below 1, and the one B's index line
  (swapped_in=1) logs as recall_at_20; a gauge left at A's 1 would tell
  an operator the served index misses nothing;
- a model C of 16 items (nlist 16) swapped in next is served with 16 of
  the 32 lists asked, and a warning (index_settings_reduced) says so.
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
from test_model_swap import make_model, replace  # noqa: E402

N_EVENTS, N_USERS, ITEMS_A, ITEMS_B = 500, 100, 64, 4096
LOAD = 'check="load"'


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP index_swap_recall.swap: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_index_swap_recall_")
    model_b, live, events, broker, extra = swap_setup(
        tmp, ITEMS_A, ITEMS_B, N_EVENTS, N_USERS, ["recs.index.nprobe=32"])
    worker, failed = None, 0

    def check(name, ok, why):
        nonlocal failed
        print(("PASS index_swap_recall.%s" % name) if ok else
              ("FAIL index_swap_recall.%s: %s (logs in %s)" % (name, why, tmp)))
        failed += 0 if ok else 1

    try:
        worker = U.Worker(broker.bootstrap, live, os.path.join(tmp, "worker.log"), extra=extra)
        U.produce_events(broker.bootstrap, "behaviour-events", events)
        wait_settled(worker, N_EVENTS)
        at_a = worker.metric("halflife_index_recall", LOAD)
        check("load_recall_of_a", at_a == 1.0, "gauge %s with every list of A probed" % at_a)
        replace(model_b, live)
        swaps = wait_metric(worker, "halflife_model_swaps_total", 1)
        at_b = worker.metric("halflife_index_recall", LOAD)
        line = [x for x in worker.log_text().splitlines() if "swapped_in=1" in x]
        m = re.search(r"recall_at_20=([0-9.]+)", line[0]) if line else None
        logged = float(m.group(1)) if m else None
        print("    load recall: A %s, B gauge %s, B logged %s" % (at_a, at_b, logged))
        check("load_recall_of_b", swaps == 1 and at_b is not None and 0.0 < at_b < 1.0
              and logged is not None and abs(at_b - logged) < 1e-4,
              "after the swap to B (32 of 256 lists probed) the load gauge is %s and B's "
              "index line logs recall_at_20=%s: want B's recall, below 1, in both"
              % (at_b, logged))
        # C, 16 items (nlist 16): the asked 32 lists cannot be probed. It is
        # served with 16, and the reduction is said, not done silently.
        model_c = os.path.join(tmp, "c.hlm")
        make_model(model_c, 16, 16, 4242)
        replace(model_c, live)
        swaps = wait_metric(worker, "halflife_model_swaps_total", 2)
        said = [x for x in worker.log_text().splitlines() if "event=index_settings_reduced" in x]
        check("nprobe_reduction_said", swaps == 2 and len(said) == 1 and
              "nprobe_asked=32 nprobe=16" in said[0] and "level=warn" in said[0],
              "after the swap to C (16 items, nlist 16, nprobe 32 asked): swaps %s, "
              "index_settings_reduced lines %s" % (swaps, said))
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
    if failed == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
