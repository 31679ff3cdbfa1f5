#!/usr/bin/python3
"""test_schema_id_flood.py - records naming schema ids the registry never
had, each a different one, write a bounded log, not lines per record.

Separate processes over TCP: registry_standin.py (it has no schema), a
`halflife broker`, `halflife run` with schema.registry.url. N_BAD records,
Confluent-framed with schema ids 5000, 5001, ... (what random bytes
after a 0 byte look like) each park their partition, are asked of the
registry, answered 404 and dead-lettered as unknown_schema. Checks: every
one is counted (halflife_events_invalid_total), and the log holds a few
schema_wait / schema_wait_over / schema_unknown lines, each saying how
many were left out (suppressed=). Before the fix each record logged all
three, unlimited: anyone who can write to the input topic could flood the
worker's log at the registry's pace.

The worker takes one record a batch (batch.max.messages=1), so each
record's wait pauses the partition before the next is taken, and each
resume must fetch the next record again, the mode a CI run once fell
into by itself (29 of 150 counted at 25 s): librdkafka 2.0.2 fetched a
resumed partition up to a second late. The flood's 404s come back
within the fetcher's 10 ms poll, before it notices the pause, so they
rarely show it; resume_prompt does: N_ONE more records, with ids the
registry answers after SLOW_MS, each counted within about SLOW_MS
(check_resume_prompt).

Run: HL_HALFLIFE=build/halflife HL_BUILD=build /usr/bin/python3 tests/integration/test_schema_id_flood.py
"""
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402
from test_dlq import body  # noqa: E402
from test_schema_registry import Standin  # noqa: E402

SUITE = "schema_id_flood"
N_BAD = 150
EVENTS = ("schema_wait", "schema_wait_over", "schema_unknown")
MAX_LINES = 20          # per event: one a 5 s interval (unbounded: N_BAD each)
WAIT_S = 25
# resume_prompt: N_ONE records with ids from SLOW_ID, which the registry
# answers after SLOW_MS
SLOW_ID, SLOW_MS, N_ONE = 9000, 150, 8


def produce_ids(bootstrap, n, first=5000):
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(n):
        p.produce(C.TOPIC, key=b"u%d" % i, value=b"\x00" + struct.pack(">i", first + i) + body())
    if p.flush(20) != 0:
        raise RuntimeError("records not delivered to the input topic")


def check_resume_prompt(ck, w, bootstrap, counted):
    """N_ONE records in the input at once, each with an id the registry
    answers after SLOW_MS (a 404). With batch.max.messages=1 the worker
    takes them one at a time: each waits, its partition (the topic's only
    one) pauses, which drops the records librdkafka had fetched behind
    it, and its resume fetches the next again. Each should cost about
    SLOW_MS. Before the seek after the resume (park.c, seek_resumed)
    librdkafka 2.0.2 fetched a resumed partition only at its broker
    thread's next wake-up, about a second later when nothing else is
    fetched: 1.0-1.2 s each."""
    t0 = time.time()
    produce_ids(bootstrap, N_ONE, SLOW_ID)
    t1, got = time.time(), counted
    while time.time() - t1 < N_ONE * 2 and w.p.poll() is None and got < counted + N_ONE:
        got = w.metric_or("halflife_events_invalid_total", labels="unknown_schema")
        time.sleep(0.02)
    took_ms = int((time.time() - t1) * 1000)
    print("resume_prompt: %d records in %d ms (produce %d ms)" % (N_ONE, took_ms,
                                                               int((t1 - t0) * 1000)))
    ck.check("resume_prompt", got == counted + N_ONE and took_ms <= N_ONE * (SLOW_MS + 150),
             "%s of %d records counted in %d ms, one at a time, the registry answering each "
             "in %d ms (%d ms at most wanted)" % (got - counted, N_ONE, took_ms, SLOW_MS,
                                                  N_ONE * (SLOW_MS + 150)))
    # the seek goes to where the resume would fetch from: nothing twice, nothing skipped
    twice = w.metric_or("halflife_input_redelivered_total")
    skipped = w.metric_or("halflife_input_offsets_skipped_total")
    ck.check("resume_exact", twice == 0 and skipped == 0,
             "records re-delivered %s, offsets skipped %s (0 and 0 wanted)" % (twice, skipped))


def run(ck):
    model = os.path.join(ck.tmp, "model.hlm")
    U.make_model(model)
    reg = Standin(os.path.join(ck.tmp, "registry"), extra=["--slow", str(SLOW_ID), str(SLOW_MS)])
    try:
        broker = C.Broker(ck.procs, 1, os.path.join(ck.tmp, "broker.log"))
        produce_ids(broker.bootstrap, N_BAD)
        w = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "worker.log"),
                     ["kafka.fetch.wait.max.ms=10", "schema.registry.url=" + reg.url,
                      "batch.max.messages=1",     # each record's resume fetches the next
                      "schemas.dir=" + os.path.join(ck.tmp, "none"),
                      "snapshot.dir=" + os.path.join(ck.tmp, "snap")])
        deadline, bad = time.time() + WAIT_S, -1
        while time.time() < deadline and bad < N_BAD and w.p.poll() is None:
            bad = w.metric_or("halflife_events_invalid_total", labels="unknown_schema")
            time.sleep(0.2)
        ck.check("every_record_counted", bad == N_BAD,
                 "halflife_events_invalid_total{reason=unknown_schema} %s of %d" % (bad, N_BAD))
        text = w.log_text().splitlines()
        for ev in EVENTS:
            lines = [ln for ln in text if " event=%s " % ev in ln]
            ck.check(ev + "_bounded", 0 < len(lines) <= MAX_LINES and
                     all("suppressed=" in ln for ln in lines),
                     "%d %s lines for %d records (1..%d wanted, each with suppressed=): %s"
                     % (len(lines), ev, N_BAD, MAX_LINES, lines[:1]))
        check_resume_prompt(ck, w, broker.bootstrap, bad)
        rc, _secs = w.term(30)
        ck.check("clean_exit", rc == 0, "exit %s" % rc)
    finally:
        reg.stop()


if __name__ == "__main__":
    sys.exit(C.run_main(SUITE, "ran", run))
