"""test_producer_fatal.py - the broker makes the worker's idempotent
producer fail fatally; the worker must stop and exit 1 promptly, store no
offset past a list it could not deliver, and a restart must deliver them.

librdkafka 2.0.2 raises a fatal error on an idempotent producer when a
ProduceRequest at the head of the line (its base sequence is the next one
the partition expects acknowledged) fails with OUT_OF_ORDER_SEQUENCE_NUMBER
(src/rdkafka_request.c, rd_kafka_handle_idempotent_Produce_error: "sequence
desynchronization with broker"). From then on every produce fails and only
a new handle recovers. Before the fix nothing noticed: each failed list
went down the refused-list path, retried for ever with the process up.

Separate processes over TCP: a `halflife broker --refuse-produce FILE`
(while FILE names an error, every Produce request gets it), events produced
by python3-confluent-kafka + python3-avro, `halflife run` workers.
- one event per user; the first worker delivers their lists and commits;
- a second event per user, stamped within recs.min.interval.ms of the
  first: the worker consumes them and holds their lists back (the gate
  waits the interval on its clock), and meanwhile the broker starts
  answering Produce with OUT_OF_ORDER_SEQUENCE_NUMBER (the input is in
  before: the refusal covers every topic); the held lists then go out,
  the first answer is the head of the line, and librdkafka declares the
  producer fatal.
Checks: the worker logs event=producer_fatal with the cause, exits 1 within
shutdown.timeout.ms plus a margin (it must not wait for lists that cannot
land), the group's committed offsets and its snapshots did not pass the
second events; and once the refusal ends a new worker of the group
publishes every user's list of its second event and commits to the end.
"""
import datetime
import os
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import test_delivery_refused as R  # noqa: E402
import test_e2e as E  # noqa: E402

N_USERS, N_ITEMS, PARTS = 100, 300, 4
FATAL = "OUT_OF_ORDER_SEQUENCE_NUMBER"
INTERVAL_MS = 15000     # recs.min.interval.ms: how long the second lists are held back
TIMEOUT_MS = 4000       # shutdown.timeout.ms
MARGIN_S = 3.0          # the exit after the fatal error: leaving the group, a loaded machine
GROUP = "fatal"
COMMON = ["worker.threads=2", "kafka.fetch.wait.max.ms=10", "kafka.auto.commit.interval.ms=1000",
          "kafka.session.timeout.ms=6000", "kafka.heartbeat.interval.ms=1000",
          "shutdown.timeout.ms=%d" % TIMEOUT_MS, "group.id=" + GROUP]


def two_rounds(pool):
    """Each user's first and second event of pool, restamped 1 ms apart
    from the pool's first time (the second round 1 s later): every second
    event falls within recs.min.interval.ms of its user's first, in event
    time as in the shard's newest time, so its list waits on the clock."""
    seen, first, second = {}, [], []
    for ev in pool:
        n = seen.get(ev[0], 0)
        seen[ev[0]] = n + 1
        if n < 2:
            (first if n == 0 else second).append(ev)
    users = {ev[0] for ev in second}
    base = pool[0][3]
    first = [(u, i, t, base + k, w) for k, (u, i, t, _ts, w) in
             enumerate(ev for ev in first if ev[0] in users)]
    second = [(u, i, t, base + 1000 + k, w) for k, (u, i, t, _ts, w) in enumerate(second)]
    return first, second


def watch_probes(w, seen):
    """Polls /healthz and the fatal counter until the worker exits: what a
    scrape or a probe could have seen meanwhile (the window is short)."""
    def run():
        while w.p.poll() is None:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % w.port,
                                            timeout=1) as r:
                    r.read()
            except urllib.error.HTTPError as e:
                seen.setdefault("healthz", "%d %s" % (e.code, e.read().decode().strip()))
            except OSError:
                pass
            v = w.metric_or("halflife_producer_fatal_total")
            if v > 0:
                seen["counter"] = v
            time.sleep(0.02)
    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def log_time(ts):
    """A log line's ts= (UTC, ms) as seconds since the epoch."""
    d = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ")
    return d.replace(tzinfo=datetime.timezone.utc).timestamp()


def fatal_stop(ck, broker, w, high_a):
    """The worker's side of the fatal error: logged with its cause, a
    prompt exit 1, nothing stored past the undelivered lists."""
    deadline = INTERVAL_MS / 1000.0 + 15
    logged = w.wait_event("producer_fatal", deadline)
    rc, t_exit = w.wait(TIMEOUT_MS / 1000.0 + 10 if logged else 1), time.time()
    w.log.close()
    ts, kv = w.events("producer_fatal")[-1] if w.events("producer_fatal") else ("", {})
    t_seen = log_time(ts) if ts else t_exit
    raised = "Fatal error" in w.log_text()
    ck.check("librdkafka_raised_fatal", raised,
             "no 'Fatal error' from librdkafka in the worker's log: the broker's %s did "
             "not make the producer fatal" % FATAL)
    ck.check("producer_fatal_logged",
             logged and kv.get("cause") == FATAL and kv.get("producer") == "lists" and
             "sequence desynchronization" in kv.get("reason", "") and
             "committed offsets" in kv.get("action", ""),
             "event=producer_fatal %s: %s" % ("logged" if logged else "never logged", kv))
    secs = t_exit - t_seen
    ck.check("exits_1_promptly", logged and rc == 1 and secs < TIMEOUT_MS / 1000.0 + MARGIN_S,
             ("exit status %s %.1f s after event=producer_fatal (shutdown.timeout.ms=%d, "
              "margin %.1f s)" % (rc, secs, TIMEOUT_MS, MARGIN_S)) if logged else
             ("still running %.0f s after the refusal began, with no event=producer_fatal "
              "(killed)" % deadline))
    comm = C.committed(broker.bootstrap, GROUP, PARTS)
    ck.check("offsets_not_past_undelivered",
             all(0 <= comm.get(p, -1) <= h for p, h in high_a.items()),
             "committed %s; the first round ends at %s and no list of the second was "
             "delivered" % (comm, high_a))
    snaps = C.newest_snapshots(os.path.join(ck.tmp, "snap"))
    ck.check("snapshots_not_past_undelivered",
             snaps and all(o <= high_a[p] for p, (o, _path) in snaps.items()),
             "newest snapshots at %s; the first round ends at %s"
             % ({p: o for p, (o, _path) in snaps.items()}, high_a))
    return rc, secs


def run(ck):
    model, _csv, pool = C.prepare(ck.tmp, 6 * N_USERS, N_USERS, N_ITEMS)
    first, second = two_rounds(pool)
    path = os.path.join(ck.tmp, "refuse")
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker.log"),
                      extra=["--refuse-produce", path])
    snap = "snapshot.dir=" + os.path.join(ck.tmp, "snap")
    U = C.U
    U.produce_events(broker.bootstrap, C.TOPIC, first)
    _last_a, high_a = C.read_topic(broker.bootstrap, PARTS)
    w1 = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "w1.log"),
                  COMMON + [snap, "snapshot.interval.ms=1000",
                            "recs.min.interval.ms=%d" % INTERVAL_MS])
    comm_a = C.wait_committed(broker.bootstrap, GROUP, high_a, 40)
    ck.check("first_round_delivered", all(comm_a.get(p, -1) >= h for p, h in high_a.items()),
             "committed %s, first round's high watermarks %s" % (comm_a, high_a))

    U.produce_events(broker.bootstrap, C.TOPIC, second)
    last_b, high_b = C.read_topic(broker.bootstrap, PARTS)
    consumed = C.wait_consumed([w1], len(first) + len(second), 10)
    lists = w1.metric_or("halflife_lists_published_total")
    on = R.refuse(broker, path, True, FATAL)
    ck.check("second_round_held", on and consumed >= len(first) + len(second) and
             lists == len(first),
             "refusal on %s; consumed %s of %d; lists published %s (want the first "
             "round's %d only)" % (on, consumed, len(first) + len(second), lists, len(first)))
    seen = {}
    watch_probes(w1, seen)
    rc, secs = fatal_stop(ck, broker, w1, high_a)
    if rc != "timeout":
        print("    (exit %s %.2f s after event=producer_fatal; seen meanwhile: %s)"
              % (rc, secs, seen or "nothing"))

    off = R.refuse(broker, path, False)
    w2 = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "w2.log"),
                  COMMON + [snap])
    _lists, got = E.read_lists(broker.bootstrap, last_b, time.time() + 40)
    comm_b = C.wait_committed(broker.bootstrap, GROUP, high_b, 30)
    ck.check("restart_delivers_every_list",
             off and len(got) == len(last_b) and
             all(comm_b.get(p, -1) >= h for p, h in high_b.items()),
             "refusal off %s; %d of %d users got the list of their second event (e.g. "
             "missing %s); committed %s, high watermarks %s"
             % (off, len(got), len(last_b), sorted(set(last_b) - got)[:5], comm_b, high_b))
    rc2, _secs = w2.term(30)
    ck.check("restart_clean_exit", rc2 == 0, "exit %s" % rc2)
    broker.stop()


def main():
    return C.run_main("producer_fatal", "exits_1_promptly", run)


if __name__ == "__main__":
    sys.exit(main())
