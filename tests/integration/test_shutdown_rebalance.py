"""test_shutdown_rebalance.py - SIGTERM while the group still waits for dead
members exits cleanly (the issue "Shutdown while a group rebalance is
pending"; DESIGN.md section 2).

With librdkafka 2.0.2 a cooperative-sticky consumer that received a
JoinGroup answer but never a SyncGroup assignment aborts in
rd_kafka_destroy() (rd_kafka_sticky_assignor_state_destroy: Assertion
`assignor_state' failed; librdkafka issue 4312, fixed in 2.3.0).

Separate processes over TCP: a `halflife broker` with 4 partitions holding a
few hundred events, and for each case its own group: two `halflife run`
workers share the partitions; a third starts, and as soon as its JoinGroup is
sent the first two are killed with -9. The mock coordinator then waits
session.timeout.ms - 1 s for members to join, elects one of the dead workers
leader (the first member), so the third worker's SyncGroup waits until the
dead ones time out; that fails the sync, the third rejoins, and only a
further session.timeout.ms - 1 s later does it get every partition. (Killed
before the third starts, as in the report, the two may time out before the
election, and the third is then elected leader at once: no wait at all.
Killed after its JoinGroup, they always outlive the election.) The
session timeout is long enough (6 s) that the group is still pending at
each moment below, and short enough that the four cases, run side by side,
take about 20 s. The third worker logs librdkafka's group debug lines
(kafka.debug=cgrp), and SIGTERM is sent on the line that marks each moment:
- joining: its first JoinGroup was just sent, nothing is answered yet;
- sync_waits_for_dead_leader: JoinGroup answered, SyncGroup pending (the
  state of the abort);
- rejoining: the sync failed and it joins again (the state of the abort);
- owning: it holds all 4 partitions and has consumed every event.
Then a worker gets SIGTERM 0, 20, 150 and 500 ms after its handler is
installed (while it reads its configuration and model and starts): exit 0
as well.
Checks, for each: exit status 0 within shutdown.timeout.ms and no assertion
in its output; before any assignment it owned nothing and wrote no
snapshot; when owning, the newest snapshot of every partition is at the
partition's high watermark.
"""
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, PARTS = 400, 50, 200, 4
SESSION_MS = 6000
TIMEOUT_MS = 10000      # shutdown.timeout.ms
COMMON = ["worker.threads=1", "kafka.fetch.wait.max.ms=10",
          "kafka.session.timeout.ms=%d" % SESSION_MS, "snapshot.interval.ms=0",
          "shutdown.timeout.ms=%d" % TIMEOUT_MS]
# The two that die heartbeat every 200 ms, so their last sign of life is
# at most 200 ms older than the third's JoinGroup: the coordinator's wait
# for joiners (session - 1 s) then always ends before they time out.
DOOMED = ["kafka.heartbeat.interval.ms=200"]
THIRD = ["kafka.heartbeat.interval.ms=1000", "kafka.debug=cgrp"]

JOIN_SENT = "changed join state init -> wait-join"
SYNC_SENT = "changed join state wait-join -> wait-sync"
# case: (log line of the third worker that marks the moment, how many of them)
CASES = {
    "joining": (JOIN_SENT, 1),
    "sync_waits_for_dead_leader": (SYNC_SENT, 1),
    "rejoining": (JOIN_SENT, 2),
    "owning": None,
}


def wait_text(w, text, count, timeout):
    deadline = time.time() + timeout
    while True:
        if w.log_text().count(text) >= count:
            return True
        if w.p.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def held(pair):
    """True when the two share all partitions, so no rebalance is under way."""
    n = [max(w.metric_or("halflife_assigned_partitions"), 0) for w in pair]
    return sum(n) == PARTS and min(n) > 0


def run_case(ck, broker, model, name, out):
    """One case in its own group and snapshot directory; fills out[name]."""
    snapdir = os.path.join(ck.tmp, "snap-" + name)
    conf = COMMON + ["snapshot.dir=" + snapdir, "group.id=" + name]

    def log(who):
        return os.path.join(ck.tmp, "%s-%s.log" % (name, who))
    pair = [C.Worker(ck.procs, broker.bootstrap, model, log(who), conf + DOOMED)
            for who in ("w1", "w2")]
    deadline = time.time() + 30
    while not held(pair) and time.time() < deadline:
        time.sleep(0.1)
    r = out[name] = {"pair_held_all": held(pair)}
    w3 = C.Worker(ck.procs, broker.bootstrap, model, log("w3"), conf + THIRD)
    r["joined"] = wait_text(w3, JOIN_SENT, 1, 20)
    t_join = time.time()
    for w in pair:
        os.killpg(w.p.pid, signal.SIGKILL)
        w.p.wait()
    if CASES[name] is None:
        r["reached"] = (w3.wait_event("partition_assigned", 30, count=PARTS) and
                        C.wait_consumed([w3], N_EVENTS, 20) >= N_EVENTS)
    else:
        r["reached"] = wait_text(w3, CASES[name][0], CASES[name][1], 3 * SESSION_MS / 1000.0)
    r["at_s"] = time.time() - t_join
    r["rc"], r["secs"] = w3.term(TIMEOUT_MS / 1000.0 + 5)
    text = w3.log_text()
    # glibc's assert() (rd_assert) and librdkafka's own rd_kafka_assert()
    r["aborted"] = "Assertion `" in text or ": assert: " in text
    r["assigned"] = len(w3.events("partition_assigned"))
    r["written"] = {int(kv["partition"]): int(kv["next_offset"])
                    for _t, kv in w3.events("snapshot_written")}
    r["snaps"] = {p: o for p, (o, _path) in C.newest_snapshots(snapdir).items()}
    r["crc_ok"] = all(C.inspect(path).get("crc_ok")
                      for _o, path in C.newest_snapshots(snapdir).values())


def check_case(ck, name, r, err, high):
    setup = [r.get(k) for k in ("pair_held_all", "joined", "reached")]
    clean = r.get("rc") == 0 and r.get("secs", 1e9) * 1000 < TIMEOUT_MS and not r.get("aborted")
    if CASES[name] is None:
        owned = r.get("assigned") == PARTS and r.get("snaps") == high and r.get("crc_ok")
    else:
        owned = r.get("assigned") == 0 and not r.get("written") and not r.get("snaps")
    ck.check("sigterm_" + name, not err and all(setup) and clean and owned,
             "%s; setup (pair held all, third joined, moment reached) %s; SIGTERM %.1f s "
             "after its JoinGroup; exit status %s after %.2f s (timeout %d ms); assertion "
             "%s; partitions assigned %s; snapshots written %s, newest %s (crc ok %s), "
             "high watermarks %s"
             % (err or "ran", setup, r.get("at_s", -1), r.get("rc"), r.get("secs", -1),
                TIMEOUT_MS, r.get("aborted"), r.get("assigned"), r.get("written"),
                r.get("snaps"), r.get("crc_ok"), high))


def run(ck):
    t0 = time.time()
    model, _csv, events = C.prepare(ck.tmp, N_EVENTS, N_USERS, N_ITEMS)
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker.log"))
    C.U.produce_events(broker.bootstrap, C.TOPIC, events)
    _last, high = C.read_topic(broker.bootstrap, PARTS)
    out, errors = {}, {}

    def case(name):
        try:
            run_case(ck, broker, model, name, out)
        except Exception as e:  # noqa: BLE001 - reported as the case's FAIL line
            errors[name] = "%s: %s" % (type(e).__name__, e)

    threads = [threading.Thread(target=case, args=(n,)) for n in CASES]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for name in CASES:
        check_case(ck, name, out.get(name, {}), errors.get(name), high)
    print("    (%s; %.0f s in all)" % (", ".join(
        "%s: SIGTERM at +%.1f s, exit %s in %.2f s"
        % (n, out.get(n, {}).get("at_s", -1), out.get(n, {}).get("rc"),
           out.get(n, {}).get("secs", -1)) for n in CASES), time.time() - t0))

    sigterm_at_start(ck, broker, model)


def sigterm_handled(pid, timeout=10):
    """Waits until pid catches SIGTERM (its handler is installed: the first
    thing `halflife run` does); before that the signal's default action
    ends any process, which no program can help."""
    deadline = time.time() + timeout
    while True:
        try:
            with open("/proc/%d/status" % pid) as f:
                cgt = [ln for ln in f if ln.startswith("SigCgt:")]
            if cgt and int(cgt[0].split()[1], 16) & (1 << (signal.SIGTERM - 1)):
                return True
        except OSError:
            return False
        if time.time() >= deadline:
            return False
        time.sleep(0.002)


def sigterm_at_start(ck, broker, model):
    """A SIGTERM while the configuration is read, the model loads or the
    worker starts is a clean stop too, not the default action's exit 143:
    exit 0, nothing owned, no snapshot."""
    bad = []
    for i, delay in enumerate((0.0, 0.02, 0.15, 0.5)):
        snapdir = os.path.join(ck.tmp, "snap-start-%d" % i)
        w = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "start%d.log" % i),
                     COMMON + ["group.id=start-%d" % i, "snapshot.dir=" + snapdir])
        handled = sigterm_handled(w.p.pid)
        time.sleep(delay)
        rc, secs = w.term(TIMEOUT_MS / 1000.0 + 5)
        if not handled or rc != 0 or C.newest_snapshots(snapdir) or "Assertion" in w.log_text():
            bad.append("SIGTERM %.2f s after the handler (seen: %s): exit %s after %.2f s"
                       % (delay, handled, rc, secs))
    # The handler must come first, not after the model and the worker:
    # while the properties file (a FIFO nobody writes yet) is being opened,
    # SIGTERM must already be caught. Then the file is given (empty) and the
    # SIGTERM that follows is a clean stop.
    fifo = os.path.join(ck.tmp, "props.fifo")
    os.mkfifo(fifo)
    log = open(os.path.join(ck.tmp, "start-fifo.log"), "w")
    p = ck.procs.popen([C.U.HL, "run", "-c", fifo, "-X", "kafka.bootstrap.servers=" +
                        broker.bootstrap, "-X", "model.path=" + model, "-X", "metrics.port=0",
                        "-X", "schemas.dir=" + C.U.SCHEMAS, "-X", "group.id=start-fifo",
                        "-X", "snapshot.dir=" + os.path.join(ck.tmp, "sf")],
                       stdout=log, stderr=subprocess.STDOUT)
    handled = sigterm_handled(p.pid, timeout=5)
    with open(fifo, "w"):
        pass                            # an empty properties file
    time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(TIMEOUT_MS / 1000.0 + 5)
    except subprocess.TimeoutExpired:
        rc = "timeout"
    log.close()
    if not handled or rc != 0:
        bad.append("while reading its properties file the SIGTERM handler was %sinstalled; "
                   "exit %s" % ("" if handled else "not ", rc))
    ck.check("sigterm_at_start", not bad, "; ".join(bad))


def main():
    return C.run_main("shutdown_rebalance", "sigterm_while_group_pending", run)


if __name__ == "__main__":
    sys.exit(main())
