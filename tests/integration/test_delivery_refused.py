"""test_delivery_refused.py - the broker refuses every list for a while,
for good as far as librdkafka is concerned (an ACL mistake: each record's
delivery report fails, no retry), then accepts again. No user may be left
without the list of its last event.

Separate processes over TCP: a `halflife broker --refuse-produce FILE`
(while FILE names an error, every Produce request gets it; every topic, so
the input is produced before FILE is written), one `halflife run`. Three
cases, each on a fresh broker (the second beside the other two):
- refused_then_accepted: the worker consumes events while its lists are
  refused (all, or until every flight is in the air: it then holds the
  rest back); once the refusal ends, every user's newest list comes from
  its last event and equals the offline reference, errors were counted
  (halflife_delivery_errors_total > 0) and the offsets reach the end;
- sigkill_during_refusal: the same, but the worker is killed (SIGKILL)
  during the refusal, after it had the time to commit what it stored and
  to snapshot every second, and a new one finishes after it: the refused
  lists must not have let the committed offsets or a snapshot pass their
  events; before it, still refused, a second worker loses partitions to a
  joining member (its release waits for the refused lists) and gets
  SIGTERM then: it must stop within shutdown.timeout.ms, not be killed by
  the alarm; and before that, its release gives up on the refused lists at
  shutdown.timeout.ms, so the rebalance completes and the joiner gets
  partitions (their events are read again by their next owner);
- gives_up: the broker refuses with INVALID_RECORD, an error retrying can
  never fix, and never stops: the worker gives up on each user's list after
  a bounded number of attempts (halflife_delivery_given_up_total counts
  each list, at least one per user) and its offsets reach the end instead
  of being held for ever. event=list_given_up names refused users, rate-
  limited: at most one line per thread per 5 s, each with suppressed=, so
  lines and suppressed together never exceed the count. Before, a line
  per user: a topic refusing every list logged each user of the input.
"""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402
import test_e2e as E  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, PARTS = 2000, 200, 1000, 4
REFUSE = "TOPIC_AUTHORIZATION_FAILED"     # an ACL mistake: retried until it is fixed
COMMON = ["worker.threads=2", "kafka.fetch.wait.max.ms=10",
          "kafka.session.timeout.ms=6000", "kafka.heartbeat.interval.ms=1000"]


def broker_event(broker, name, timeout=10):
    """Waits for the broker's log to say event=name (the refusal file is
    read every 50 ms); True when it did."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with open(broker.log_path) as f:
            if " event=%s " % name in f.read():
                return True
        time.sleep(0.05)
    return False


def refuse(broker, path, on, err=REFUSE):
    """Starts (on) or ends the refusal and waits until the broker applied it."""
    if on:
        with open(path, "w") as f:
            f.write(err + "\n")
    else:
        os.unlink(path)
    return broker_event(broker, "refuse_produce_on" if on else "refuse_produce_off")


def wait_metric(w, name, timeout):
    """The metric once it is above 0, or its last value at the timeout."""
    deadline, v = time.time() + timeout, -1
    while time.time() < deadline:
        v = w.metric_or(name)
        if v > 0:
            break
        time.sleep(0.2)
    return v


def setup(ck, tag, err=REFUSE):
    """A fresh broker refusing produces, the events in its input topic; the
    case's model and events in a directory of its own (cases run at once)."""
    os.makedirs(os.path.join(ck.tmp, tag))
    model, events_csv, events = C.prepare(os.path.join(ck.tmp, tag), N_EVENTS, N_USERS, N_ITEMS)
    path = os.path.join(ck.tmp, "refuse-%s" % tag)
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker-%s.log" % tag),
                      extra=["--refuse-produce", path])
    U.produce_events(broker.bootstrap, C.TOPIC, events)
    last, high = C.read_topic(broker.bootstrap, PARTS)
    on = refuse(broker, path, True, err)
    return model, events_csv, events, path, broker, last, high, on


def worker(ck, broker, model, tag, group, extra=()):
    return C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "%s.log" % tag),
                    COMMON + ["group.id=" + group,
                              "snapshot.dir=" + os.path.join(ck.tmp, "snap-" + group)] +
                    list(extra))


def finish(ck, case, broker, w, group, last, high, events_csv, model, events, errs):
    """After the refusal: every user's list of its last event, the offline
    one, and every offset committed."""
    lists, got = E.read_lists(broker.bootstrap, last, time.time() + 40)
    committed = C.wait_committed(broker.bootstrap, group, high, 30)
    ck.check(case + "_errors_counted", errs > 0,
             "halflife_delivery_errors_total %s during the refusal" % errs)
    ck.check(case + "_every_user_fresh", len(got) == len(last),
             "%d of %d users got the list of their last event after the refusal; "
             "e.g. missing %s" % (len(got), len(last), sorted(set(last) - got)[:5]))
    C.check_last_lists(ck, lists, got, last, events_csv, model, events)
    ck.check(case + "_offsets_at_end", all(committed.get(p, -1) >= h for p, h in high.items()),
             "committed %s, high watermarks %s" % (committed, high))
    rc, _secs = w.term(30)
    ck.check(case + "_clean_exit", rc == 0, "exit %s" % rc)


def consumed_while_refused(w, n_events, timeout=60):
    """What w consumes while every list is refused: all n_events, or as far
    as its flights let it. A thread reads a batch only with one of its
    N_FLIGHTS flights free (thread.c), and refused ones stay in the air, so
    with small batches (latency-aware batching; under SAN about 74 events)
    the worker holds back the rest until the refusal ends: 16 batches of 2
    threads were 1181 of 2000 events in one run. Waits for the first
    event, then until all are in or the count stays put for 3 s."""
    deadline = time.time() + timeout
    n = C.wait_consumed([w], 1, timeout)
    while n < n_events and time.time() < deadline:
        C.wait_idle([w], deadline - time.time(), quiet=3)
        m = max(w.metric_or("halflife_events_consumed_total"), 0)
        if m == n:
            break
        n = m
    return n


def refused_then_accepted(ck):
    model, events_csv, events, path, broker, last, high, on = setup(ck, "a")
    w = worker(ck, broker, model, "worker-a", "refused")
    consumed = consumed_while_refused(w, len(events))
    errs = wait_metric(w, "halflife_delivery_errors_total", 20)
    retries = wait_metric(w, "halflife_delivery_retries_total", 20)
    off = refuse(broker, path, False)
    ck.check("a_refreshed_again", retries > 0,
             "halflife_delivery_retries_total %s during the refusal" % retries)
    ck.check("a_refusal_applied", on and off and consumed > 0,
             "refusal on %s, off %s; consumed %d of %d meanwhile"
             % (on, off, consumed, len(events)))
    finish(ck, "a", broker, w, "refused", last, high, events_csv, model, events, errs)
    broker.stop()


def sigkill_during_refusal(ck):
    model, events_csv, events, path, broker, last, high, on = setup(ck, "b")
    # Snapshots every second: one that a worker commits past refused lists
    # makes the restart resume after their events (no snapshot would make
    # it replay the whole topic and hide the loss).
    w = worker(ck, broker, model, "worker-b1", "killed", ["snapshot.interval.ms=1000"])
    consumed = consumed_while_refused(w, len(events))
    errs = wait_metric(w, "halflife_delivery_errors_total", 20)
    # Long enough for auto-commit (5 s) to send what was stored: a worker
    # that stores offsets past refused lists has them committed by then.
    held = C.wait_committed(broker.bootstrap, "killed", high, 8)
    ck.check("b_offsets_held_during_refusal",
             all(held.get(p, -1) < h for p, h in high.items()),
             "committed %s during the refusal, high watermarks %s: offsets passed "
             "events whose lists were refused" % (held, high))
    w.p.kill()
    w.p.wait()
    term_during_revocation(ck, broker, model, high)
    off = refuse(broker, path, False)
    ck.check("b_refusal_applied", on and off and consumed > 0,
             "refusal on %s, off %s; consumed %d of %d before the kill"
             % (on, off, consumed, len(events)))
    w3 = worker(ck, broker, model, "worker-b3", "killed")
    finish(ck, "b", broker, w3, "killed", last, high, events_csv, model, events, errs)
    broker.stop()


def term_during_revocation(ck, broker, model, high):
    """Still refused: a worker whose lists are held loses partitions to a
    new member (its release waits for the refused lists up to
    shutdown.timeout.ms, then lets them go undelivered), then gets
    SIGTERM. It must stop by itself within shutdown.timeout.ms (not be
    killed by run's alarm 5 s later), storing no offset past them."""
    # Small batches: each thread has all its flights in the air (refused)
    # long before the revocation, the case that held it (a thread waiting
    # for a free flight never looked at its mailbox).
    w = worker(ck, broker, model, "worker-b2", "killed",
               ["shutdown.timeout.ms=2000", "batch.max.messages=8"])
    retries = wait_metric(w, "halflife_delivery_retries_total", 30)
    joiner = worker(ck, broker, model, "worker-b2j", "killed", ["shutdown.timeout.ms=2000"])
    deadline, rebalances = time.time() + 30, 0
    while time.time() < deadline and rebalances < 2:    # assigned, then revoking
        rebalances = w.metric_or("halflife_rebalances_total")
        time.sleep(0.1)
    # The release gives up on the refused lists at shutdown.timeout.ms, so
    # the group's rebalance completes: the joiner gets partitions. It used
    # to wait for them for ever (until max.poll.interval.ms, 5 minutes).
    t0, got = time.time(), 0
    while time.time() < t0 + 20 and got <= 0:
        got = joiner.metric_or("halflife_assigned_partitions")
        time.sleep(0.1)
    ck.check("b_revocation_not_held", got > 0 and
             "event=release_undelivered" in open(w.log_path).read(),
             "the joiner owns %s partitions %.1f s after the revocation began "
             "(shutdown.timeout.ms=2000); release_undelivered logged: %s"
             % (got, time.time() - t0, "event=release_undelivered" in open(w.log_path).read()))
    rc, secs = w.term(30)
    ck.check("b_term_during_revocation",
             retries > 0 and rebalances >= 2 and rc in (0, 1) and secs < 6,
             "retries %s, rebalances %s before SIGTERM; exit %s after %.1f s "
             "(shutdown.timeout.ms=2000, the alarm at 7 s)" % (retries, rebalances, rc, secs))
    held = C.wait_committed(broker.bootstrap, "killed", high, 1)
    ck.check("b_offsets_held_at_term",
             all(held.get(p, -1) < h for p, h in high.items()),
             "committed %s after SIGTERM, high watermarks %s" % (held, high))
    joiner.term(30)


def gives_up(ck):
    model, _csv, events, _path, broker, last, high, on = setup(ck, "c", "INVALID_RECORD")
    t0 = time.time()
    w = worker(ck, broker, model, "worker-c", "gives-up")
    committed = C.wait_committed(broker.bootstrap, "gives-up", high, 90)
    given_up = w.metric_or("halflife_delivery_given_up_total")
    lines = [kv for _ts, kv in w.events("list_given_up")]
    bound = 2 * (int((time.time() - t0) / 5) + 1)      # worker.threads=2, 5 s each
    named = {kv.get("user", "").strip('"') for kv in lines}
    told = len(lines) + sum(int(kv.get("suppressed", "0")) for kv in lines)
    ck.check("c_gives_up_bounded",
             on and all(committed.get(p, -1) >= h for p, h in high.items()) and
             given_up >= len(last) and w.p.poll() is None,
             "refusal on %s; committed %s, high %s; given up %s of %d users; worker alive %s"
             % (on, committed, high, given_up, len(last), w.p.poll() is None))
    ck.check("c_given_up_logged_bounded",
             1 <= len(lines) <= bound and named <= set(last) and told <= given_up,
             "%d list_given_up lines (at most %d), naming %d users (%d not in the input), "
             "lines and suppressed %d of %s given up"
             % (len(lines), bound, len(named), len(named - set(last)), told, given_up))
    rc, _secs = w.term(30)
    ck.check("c_clean_exit", rc == 0, "exit %s" % rc)
    broker.stop()


def guarded(ck, cases):
    """Runs cases one after another; an exception is that case's FAIL."""
    for case in cases:
        try:
            case(ck)
        except Exception as e:  # noqa: BLE001 - reported as a FAIL line, never silent
            ck.check(case.__name__ + "_ran", False, "%s: %s" % (type(e).__name__, e))


def run(ck):
    """Each case has its own broker, group and files, and mostly waits on
    timers (auto-commit, backoffs, session timeouts), so the longest one runs
    beside the other two: the file takes 50 s instead of 80."""
    th = threading.Thread(target=guarded, args=(ck, [sigkill_during_refusal]))
    th.start()
    guarded(ck, [refused_then_accepted, gives_up])
    th.join()


def main():
    return C.run_main("delivery_refused", "every_user_fresh", run)


if __name__ == "__main__":
    sys.exit(main())
