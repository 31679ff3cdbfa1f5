"""test_index_stop.py - a SIGTERM while `halflife run` builds its
recs.index=ivf index at start (200,000 items: seconds of k-means and a
recall check) ends the build at once: exit 0 within PROMPT_S, with one
event=worker_stopped_before_start step=worker_create line whose why names
the index. Before, the stop waited for the whole build and recall check
(about 23 s at 1M items; past run.c's last-resort alarm, shutdown.timeout.ms
plus 5 s, that is an exit 142 with nothing said).

The signal goes out once event=index_building is logged, so it lands in
the build (no sleep decides it). The bootstrap address is a closed port:
the index is built before the worker needs a broker.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402

ABSENT = "127.0.0.1:9"
N_ITEMS, DIM = 200000, 32
PROMPT_S = 2.5
TIMEOUT_MS = 20000


def run(ck):
    model = os.path.join(ck.tmp, "m.hlm")
    U.make_model(model, N_ITEMS, DIM)
    w = C.Worker(ck.procs, ABSENT, model, os.path.join(ck.tmp, "worker.log"),
                 ["recs.index=ivf", "items.topic=", "group.id=index-stop",
                  "worker.threads=1", "shutdown.timeout.ms=%d" % TIMEOUT_MS,
                  "snapshot.dir=" + os.path.join(ck.tmp, "snap")])
    building = w.wait_event("index_building", 20)
    rc, secs = w.term(TIMEOUT_MS / 1000 + 10)
    lines = w.events("worker_stopped_before_start")
    built = w.events("index")
    why = lines[0][1].get("why", "") if lines else ""
    ck.check("build_was_under_test", building, "no event=index_building within 20 s")
    ck.check("sigterm_during_index_build",
             rc == 0 and secs < PROMPT_S and len(lines) == 1 and "index" in why and not built,
             "exit %s after %.2f s (want 0 within %.1f s), stop lines %s (want one whose why "
             "names the index), index built: %d (want 0)"
             % (rc, secs, PROMPT_S, [kv for _ts, kv in lines], len(built)))


def main():
    return C.run_main("index_stop", "sigterm_during_index_build", run)


if __name__ == "__main__":
    sys.exit(main())
