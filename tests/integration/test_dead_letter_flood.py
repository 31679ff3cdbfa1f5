#!/usr/bin/python3
"""test_dead_letter_flood.py - a flood of bad records while the dead-letter
topic refuses them writes a bounded log, not a line per record.

A `halflife broker --refuse-produce FILE` answers every Produce with
INVALID_RECORD (an error no retry fixes: each DLQ copy fails at once), and
N_BAD malformed records (bad magic byte) wait in the input topic. The
worker keeps each one in snapshot.dir/dead-letters (the metric
halflife_dead_letters_kept_total and the files count them all), and its
log says so in a few lines, each naming how many were left out
(suppressed=), as bad_record does. Before the fix each kept record logged
its own dead_letter_kept line (and a DLQ copy refused at the send, a
dlq_failed line): anyone able to write to the input topic while the DLQ
is down could fill the worker's disk with its log.

The refused copies count as dead-letter errors and nowhere else: each in
halflife_dlq_errors_total, none in halflife_dlq_records_total (copies the
DLQ topic took) nor in halflife_delivery_errors_total (whose alert says
the worker fails to publish lists), and the producer adds no
delivery_failed line: dead_letter_kept names the broker's error. Before,
each counted in all three (copied when queued, and the producer counted
every refusal as a failed delivery).

Run: HL_HALFLIFE=build/halflife HL_BUILD=build /usr/bin/python3 tests/integration/test_dead_letter_flood.py
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402
from test_delivery_refused import refuse  # noqa: E402
from test_dlq import bad_records  # noqa: E402

SUITE = "dead_letter_flood"
N_BAD = 400
MAX_LINES = 20          # one a 5 s interval per thread, a few intervals at most


def produce_bad(bootstrap, n):
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    payload = bad_records()["bad_magic"]
    for i in range(n):
        p.produce(C.TOPIC, key=b"u%d" % i, value=payload)
    if p.flush(20) != 0:
        raise RuntimeError("bad records not delivered to the input topic")


def run(ck):
    model = os.path.join(ck.tmp, "model.hlm")
    U.make_model(model)
    path = os.path.join(ck.tmp, "refuse")
    broker = C.Broker(ck.procs, 2, os.path.join(ck.tmp, "broker.log"),
                      extra=["--refuse-produce", path])
    produce_bad(broker.bootstrap, N_BAD)
    if not refuse(broker, path, True, "INVALID_RECORD"):
        raise RuntimeError("the broker never started refusing (see broker.log)")
    snap = os.path.join(ck.tmp, "snap")
    w = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "worker.log"),
                 ["worker.threads=2", "kafka.fetch.wait.max.ms=10", "snapshot.dir=" + snap])
    deadline, kept = time.time() + 25, -1
    while time.time() < deadline and kept < N_BAD:
        kept = w.metric_or("halflife_dead_letters_kept_total")
        time.sleep(0.2)
    files = os.listdir(os.path.join(snap, "dead-letters")) if kept >= 0 else []
    ck.check("every_record_kept", kept == N_BAD and len(files) >= N_BAD,
             "halflife_dead_letters_kept_total %s, %d files, %d bad records"
             % (kept, len(files), N_BAD))
    counts = {n: w.metric_or(n) for n in ("halflife_dlq_errors_total",
              "halflife_dlq_records_total", "halflife_delivery_errors_total")}
    ck.check("counted_as_dead_letters_only",
             counts == {"halflife_dlq_errors_total": N_BAD, "halflife_dlq_records_total": 0,
                        "halflife_delivery_errors_total": 0},
             "%s for %d refused copies" % (counts, N_BAD))
    text = w.log_text()
    kept_lines = [ln for ln in text.splitlines() if " event=dead_letter_kept " in ln]
    ck.check("said_once_with_cause",
             " event=delivery_failed " not in text and kept_lines and
             all('dlq_err="delivery failed: Broker: ' in ln for ln in kept_lines),
             "delivery_failed lines %d, dead_letter_kept lines: %s"
             % (text.count(" event=delivery_failed "), kept_lines[:2]))
    lines = [ln for ln in text.splitlines()
             if " event=dead_letter_kept " in ln or " event=dlq_failed " in ln]
    ck.check("log_bounded", len(lines) <= MAX_LINES,
             "%d dead_letter_kept/dlq_failed lines for %d records (at most %d wanted)"
             % (len(lines), N_BAD, MAX_LINES))
    ck.check("suppressed_counted", any("suppressed=" in ln for ln in lines),
             "no line says how many were left out: %s" % lines[:2])
    rc, _secs = w.term(30)
    ck.check("clean_exit", rc == 0, "exit %s" % rc)


if __name__ == "__main__":
    sys.exit(C.run_main(SUITE, "ran", run))
