"""test_swap_stop.py - a SIGTERM while a live model swap builds the new
model's recs.index=ivf index (200,000 items, on the main loop: seconds)
gives the swap up at once: event=model_swap_stopped, no event=model_swapped,
and a clean exit 0 within PROMPT_S. Before, the main loop finished the
build and the recall check first (about 23 s at 1M items), swapped the
model in, and only then began the stop, whose shutdown.timeout.ms started
late: run.c's last-resort alarm (5 s past it, counted from the signal)
could end the stop with 142, no commit and no group leave.

One `halflife broker`, one `halflife run` serving a 1,000-item model with
the index. Once it owns its partitions, a 200,000-item model is renamed
over model.path and SIGHUP asks for it; the SIGTERM goes out once the
swap's event=index_building is logged (no sleep decides it).
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402
from test_model_swap import replace  # noqa: E402

PARTS, BIG_ITEMS, DIM = 2, 200000, 16
PROMPT_S = 8.0          # a clean stop (snapshots, commit, leave) on a loaded machine
TIMEOUT_MS = 20000


def run(ck):
    small, big = os.path.join(ck.tmp, "small.hlm"), os.path.join(ck.tmp, "big.hlm")
    live = os.path.join(ck.tmp, "m.hlm")
    U.make_model(small, 1000, DIM)
    U.make_model(big, BIG_ITEMS, DIM)
    replace(small, live)
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker.log"))
    w = C.Worker(ck.procs, broker.bootstrap, live, os.path.join(ck.tmp, "w.log"),
                 ["recs.index=ivf", "items.topic=", "group.id=swap-stop",
                  "worker.threads=1", "model.check.ms=0",
                  "shutdown.timeout.ms=%d" % TIMEOUT_MS,
                  "snapshot.dir=" + os.path.join(ck.tmp, "snap")])
    assigned = w.wait_event("partition_assigned", 20, count=PARTS)
    replace(big, live)
    w.p.send_signal(signal.SIGHUP)
    building = w.wait_event("index_building", 20, count=2)
    rc, secs = w.term(TIMEOUT_MS / 1000 + 10)
    stopped, swapped = w.events("model_swap_stopped"), w.events("model_swapped")
    ck.check("swap_was_under_test", assigned and building,
             "assigned %s, swap's index build logged %s" % (assigned, building))
    ck.check("sigterm_during_swap_index_build",
             rc == 0 and secs < PROMPT_S and len(stopped) == 1 and not swapped,
             "exit %s after %.2f s (want 0 within %.1f s), model_swap_stopped lines %d "
             "(want 1), model_swapped lines %d (want 0)"
             % (rc, secs, PROMPT_S, len(stopped), len(swapped)))


def main():
    return C.run_main("swap_stop", "sigterm_during_swap_index_build", run)


if __name__ == "__main__":
    sys.exit(main())
