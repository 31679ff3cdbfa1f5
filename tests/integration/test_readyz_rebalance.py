"""test_readyz_rebalance.py - /readyz across a rebalance (DESIGN.md section
7: ready means partitions assigned and restored).

Two workers of one group, state.store=kafka (restores read the changelog
from the broker). A starts alone and takes all PARTS partitions, B joins
(cooperative-sticky: half move to B), then B stops and its partitions go
back to A, which restores them inside its rebalance callback. On A's first
event=restored line of that hand-over the broker process is frozen
(SIGSTOP): A's next restore then waits for it, so A is known to be in the
middle of restoring partitions it was given. Checks:
- A's /readyz answers 503 then, with the reason "restoring assigned
  partitions: K of N restored" (before: 200 "ready", since A had held an
  assignment once), and halflife_ready is 0;
- once the broker goes on (SIGCONT), A is ready again (200), waited for
  as a condition;
- A, sent SIGTERM, stops being ready at once, and says "stopping" (its
  stop takes a while: a final snapshot, a commit, leaving the group).
When every partition was restored before the freeze (the race is lost; a
restore takes tens of ms, the freeze a few), the case runs again, at most
TRIES times.
"""
import os
import signal
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, PARTS = 4000, 400, 200, 8
TRIES = 3
COMMON = ["worker.threads=1", "kafka.fetch.wait.max.ms=10", "snapshot.interval.ms=0",
          "shutdown.timeout.ms=10000", "kafka.session.timeout.ms=6000",
          "kafka.heartbeat.interval.ms=1000", "state.store=kafka", "state.flush.ms=200",
          "items.topic="]


def readyz(w):
    """(HTTP status, body) of w's /readyz, or (None, why) when it does not
    answer."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % w.port, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return None, str(e)


def wait_ready(w, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if readyz(w)[0] == 200:
            return True
        time.sleep(0.1)
    return False


def worker(ck, broker, model, name, group):
    return C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, name + ".log"),
                    COMMON + ["group.id=" + group,
                              "snapshot.dir=" + os.path.join(ck.tmp, "snap-" + name)])


def freeze_on_restore(a, broker, count, timeout=60):
    """SIGSTOPs the broker the moment a has count event=restored lines
    (polled tightly). True when frozen with a restore still to come."""
    deadline = time.time() + timeout
    while time.time() < deadline and a.p.poll() is None:
        n = a.log_text().count(" event=restored ")
        if n >= count:
            os.kill(broker.p.pid, signal.SIGSTOP)
            return a.log_text().count(" event=restored ") < count + PARTS // 2 - 1
        time.sleep(0.002)
    return False


def one_try(ck, model, events, k):
    """(under_test, A's /readyz while restoring, its halflife_ready then,
    A ready after, A's /readyz once sent SIGTERM)."""
    group = "readyz-%d" % k
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker%d.log" % k),
                      topics=C.TOPICS + [group + "-state"])
    C.U.produce_events(broker.bootstrap, C.TOPIC, events)
    _last, high = C.read_topic(broker.bootstrap, PARTS)
    a = worker(ck, broker, model, "a%d" % k, group)
    if not (a.wait_event("restored", 60, count=PARTS) and wait_ready(a, 60)):
        raise RuntimeError("worker A never got ready alone")
    C.wait_committed(broker.bootstrap, group, high, 60)
    b = worker(ck, broker, model, "b%d" % k, group)
    if not (wait_ready(b, 90) and wait_ready(a, 60)):
        raise RuntimeError("workers A and B never both ready")
    n_a = a.log_text().count(" event=restored ")
    b.term(30)
    frozen = freeze_on_restore(a, broker, n_a + 1)
    during = readyz(a)
    ready_metric = a.metric_or("halflife_ready")
    os.kill(broker.p.pid, signal.SIGCONT)
    after = wait_ready(a, 60)
    a_stopping = stop_and_probe(a)
    broker.stop()
    return frozen, during, ready_metric, after, a_stopping


def stop_and_probe(w, timeout=30):
    """One SIGTERM, then w's /readyz until it is no longer 200: (status,
    body), or (None, why) when w was gone first."""
    w.p.send_signal(signal.SIGTERM)
    deadline = time.time() + timeout
    got = (None, "never answered other than 200")
    while time.time() < deadline and w.p.poll() is None:
        got = readyz(w)
        if got[0] != 200:
            break
        time.sleep(0.005)
    try:
        w.p.wait(timeout)
    finally:
        w.log.close()
    return got


def run(ck):
    model, _csv, events = C.prepare(ck.tmp, N_EVENTS, N_USERS, N_ITEMS)
    got = None
    for k in range(TRIES):
        got = one_try(ck, model, events, k)
        if got[0]:
            break
        print("    try %d: A restored every partition before the freeze; again" % k)
    frozen, during, ready_metric, after, a_stopping = got
    ck.check("restore_was_under_test", frozen, "no freeze mid-restore in %d tries" % TRIES)
    status, body = during
    ck.check("not_ready_while_restoring_new_partitions", status == 503 and
             "restoring assigned partitions:" in body and ready_metric == 0,
             "A's /readyz answered %s %r (want 503 'restoring assigned partitions: K of N "
             "restored'), halflife_ready %s" % (status, body.strip(), ready_metric))
    ck.check("ready_again_once_restored", after, "A never answered 200 after the restore")
    ck.check("stopping_says_so", a_stopping[0] == 503 and "stopping" in a_stopping[1],
             "A's /readyz after SIGTERM answered %s %r (want 503 'stopping')" % a_stopping)


def main():
    return C.run_main("readyz_rebalance", "not_ready_while_restoring_new_partitions", run)


if __name__ == "__main__":
    sys.exit(main())
