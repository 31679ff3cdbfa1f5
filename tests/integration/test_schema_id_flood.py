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
N_BAD = 60
EVENTS = ("schema_wait", "schema_wait_over", "schema_unknown")
MAX_LINES = 20          # per event: one a 5 s interval (unbounded: N_BAD each)
# Each record resumes its partition after its id's answer, and librdkafka
# 2.0.2 may take up to a second to fetch a resumed partition (the broker
# thread learns of the resume only at its next wake-up, rd_kafka_max_block_ms):
# usually N_BAD records take 3 s, in that mode N_BAD seconds (seen once in
# about twenty CI runs, 29 of 150 counted at 25 s).
WAIT_S = N_BAD + 30


def produce_ids(bootstrap, n):
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(n):
        p.produce(C.TOPIC, key=b"u%d" % i, value=b"\x00" + struct.pack(">i", 5000 + i) + body())
    if p.flush(20) != 0:
        raise RuntimeError("records not delivered to the input topic")


def run(ck):
    model = os.path.join(ck.tmp, "model.hlm")
    U.make_model(model)
    reg = Standin(os.path.join(ck.tmp, "registry"))
    try:
        broker = C.Broker(ck.procs, 1, os.path.join(ck.tmp, "broker.log"))
        produce_ids(broker.bootstrap, N_BAD)
        w = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "worker.log"),
                     ["kafka.fetch.wait.max.ms=10", "schema.registry.url=" + reg.url,
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
        rc, _secs = w.term(30)
        ck.check("clean_exit", rc == 0, "exit %s" % rc)
    finally:
        reg.stop()


if __name__ == "__main__":
    sys.exit(C.run_main(SUITE, "ran", run))
