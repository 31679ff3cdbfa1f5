"""test_start_stop.py - a stop at any point of `halflife run`'s start-up is
a clean exit (DESIGN.md section 2, run.c's exit status: 0 when nothing
owned was lost), prompt, and logged once as event=worker_stopped_before_start
with the step it came in; the next start is a normal one.

Each case sends one SIGTERM and checks exit 0, the log line and its step:
- exec (8 times): the moment the process runs a second thread, seen in
  /proc/PID/status: OpenBLAS's constructor starts its threads before main,
  so before `halflife run` can install a handler. SIGTERM must already be
  blocked then (main.c's preinit_array), wait for the handler and stop the
  worker at its first step (step=configuration or later); before, it ended
  the process by the default action (exit -15). Sooner than this is the
  dynamic loader's time (about 25 ms on this machine), where no program
  can act: that stays the default action's.
- broker_changelog: state.store=kafka with no broker at the address: the
  worker waits up to 10 s for the cluster's topics; the stop must end that
  wait at once (step=worker_create, "waiting for the broker").
- broker_items: the item topic's reader with no broker (step=items_topic).
- broker_group: no broker and no item topic: the group is never joined
  (step=group_join).
- restore: a second worker of a group whose 8 partitions live in a Kafka
  changelog (state.store=kafka, no local snapshot) is stopped on its first
  event=restored line: the restore ends after the partition in hand
  (step=restore), it exits 0, commits nothing beyond what the first worker
  committed, and a third worker then restores every partition at its high
  watermark and stops cleanly.
"Prompt" is within PROMPT_S of the signal, far from the 10 s the changelog
waited for the broker before (and the 5 s of the item topic's metadata).
"""
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, PARTS = 4000, 400, 200, 8
ABSENT = "127.0.0.1:1"          # nothing listens there: connections are refused
PROMPT_S = 5.0
COMMON = ["worker.threads=1", "kafka.fetch.wait.max.ms=10", "snapshot.interval.ms=0",
          "shutdown.timeout.ms=10000", "kafka.session.timeout.ms=3000",
          "kafka.heartbeat.interval.ms=1000"]
STATE = ["state.store=kafka", "state.flush.ms=200"]


def proc_status(pid):
    """{field: value} of /proc/PID/status, or None once it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            return dict(ln.split(":", 1) for ln in f if ":" in ln)
    except OSError:
        return None


def first_thread(pid, timeout=10):
    """Waits until pid runs a second thread (OpenBLAS's constructor starts
    them, before main) and says whether SIGTERM was then blocked or caught
    in the main thread: True, False, or None when never seen."""
    bit = 1 << (signal.SIGTERM - 1)
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = proc_status(pid)
        if st is None:
            return None
        if int(st.get("Threads", "1")) > 1:
            return bool((int(st["SigBlk"], 16) | int(st["SigCgt"], 16)) & bit)
    return None


def stopped_step(w):
    """The step= of the worker's worker_stopped_before_start lines."""
    return [kv.get("step") for _ts, kv in w.events("worker_stopped_before_start")]


def term_and_check(ck, name, w, want_steps, why_has=None):
    """SIGTERM now; checks exit 0 within PROMPT_S and one stop line with a
    step of want_steps (and why_has in its why). Returns the exit status."""
    rc, secs = w.term(PROMPT_S + 15)
    steps = stopped_step(w)
    whys = [kv.get("why", "") for _ts, kv in w.events("worker_stopped_before_start")]
    ok = rc == 0 and secs < PROMPT_S and len(steps) == 1 and steps[0] in want_steps and \
        (why_has is None or why_has in whys[0])
    ck.check(name, ok, "exit %s after %.2f s, stop lines %s %s (want one of %s%s)"
             % (rc, secs, steps, whys, want_steps, ", why with '%s'" % why_has if why_has else ""))
    return rc


def case_exec(ck, model):
    """SIGTERM the moment the program's first threads exist, 8 times."""
    bad = []
    for i in range(8):
        w = C.Worker(ck.procs, ABSENT, model, os.path.join(ck.tmp, "exec%d.log" % i),
                     COMMON + ["group.id=exec-%d" % i, "items.topic="])
        guarded = first_thread(w.p.pid)
        rc, secs = w.term(PROMPT_S + 15)
        steps = stopped_step(w)
        if not guarded or rc != 0 or len(steps) != 1:
            bad.append("try %d: SIGTERM blocked or caught once threads ran: %s; exit %s "
                       "after %.2f s, stop lines %s" % (i, guarded, rc, secs, steps))
    ck.check("sigterm_right_after_exec", not bad, "; ".join(bad))


# With no broker: (case, keys, the log line that marks the step (None: the
# changelog's wait, which logs nothing: 1.5 s into it), a line that must
# not be there yet, the step, a word of its why)
ABSENT_CASES = [
    ("changelog", STATE + ["items.topic="], None, "scoring", "worker_create",
     "waiting for the broker"),
    ("items", ["items.topic=items"], "scoring", "worker_started", "items_topic", None),
    ("group", ["items.topic="], "worker_started", "partition_assigned", "group_join", None),
]


def at_step(w, marker, not_yet, timeout=20):
    """Waits for the log line event=marker (or 1.5 s without one), then half
    a second more; True when the worker is still at that step: running,
    with no event=not_yet line."""
    if marker is None:
        time.sleep(1.5)
    elif not w.wait_event(marker, timeout):
        return False
    else:
        time.sleep(0.5)
    return not w.events(not_yet) and w.p.poll() is None


def case_absent_broker(ck, model):
    for name, keys, marker, not_yet, step, why in ABSENT_CASES:
        w = C.Worker(ck.procs, ABSENT, model, os.path.join(ck.tmp, name + ".log"),
                     COMMON + keys + ["group.id=absent-" + name])
        waiting = at_step(w, marker, not_yet)
        term_and_check(ck, "sigterm_waiting_for_broker_" + name, w, [step], why)
        ck.check(name + "_wait_was_under_test", waiting, "no event=%s, or event=%s already, "
                 "or the worker was gone" % (marker, not_yet))


def state_worker(ck, broker, model, name, group):
    return C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, name + ".log"),
                    COMMON + STATE + ["items.topic=", "group.id=" + group,
                                      "snapshot.dir=" + os.path.join(ck.tmp, "snap-" + name)])


def case_restore(ck, model, events):
    group = "restore-group"
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker.log"),
                      topics=C.TOPICS + [group + "-state"])
    C.U.produce_events(broker.bootstrap, C.TOPIC, events)
    _last, high = C.read_topic(broker.bootstrap, PARTS)
    first = state_worker(ck, broker, model, "restore-first", group)
    done = C.wait_committed(broker.bootstrap, group, high, 60)
    rc_first, _s = first.term(30)
    before = C.committed(broker.bootstrap, group, PARTS)
    w = state_worker(ck, broker, model, "restore-stopped", group)
    w.wait_event("restored", 60)
    term_and_check(ck, "sigterm_while_restoring", w, ["restore"])
    after = C.committed(broker.bootstrap, group, PARTS)
    ck.check("restore_stop_commits_nothing_new", after == before and done == high and
             rc_first == 0, "committed %s before, %s after the stopped restore; first "
             "worker committed %s of %s, exit %s" % (before, after, done, high, rc_first))
    again = state_worker(ck, broker, model, "restore-again", group)
    ok = again.wait_event("restored", 60, count=PARTS)
    at = {int(kv["partition"]): int(kv["next_offset"]) for _ts, kv in again.events("restored")}
    rc, _secs = again.term(30)
    ck.check("next_start_restores_everything", ok and at == high and rc == 0 and
             not stopped_step(again), "restored at %s, high %s, exit %s, stop lines %s"
             % (at, high, rc, stopped_step(again)))


def run(ck):
    model, _csv, events = C.prepare(ck.tmp, N_EVENTS, N_USERS, N_ITEMS)
    case_exec(ck, model)
    case_absent_broker(ck, model)
    case_restore(ck, model, events)


def main():
    return C.run_main("start_stop", "sigterm_during_start", run)


if __name__ == "__main__":
    sys.exit(main())
