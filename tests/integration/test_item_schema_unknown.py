#!/usr/bin/python3
"""test_item_schema_unknown.py - item updates naming schema ids the
registry answers 404 for are dead-lettered at the registry's pace, and a
good update behind them is applied without waiting for a pause each.

Separate processes over TCP: registry_standin.py holding the ItemUpdate
schema under items-value, a `halflife broker`, `halflife run` with
schema.registry.url. N_BAD ItemUpdates on the item topic's one partition,
framed with schema ids 7000, 7001, ... (none registered), then one good
update with the registered id. Before the fix the item reader paused the
partition for each new id (the schema store's first answer for an id is
always "being fetched") and resumed it once the 404 came: the partition
drained at about one update a second, so the good update waited N_BAD
seconds. Now the reader waits briefly for the store's answer without
pausing (a registry that does not answer still pauses it, nothing lost:
test_schema_registry_items's items_outage_loses_nothing). Checks: every
bad update is counted unknown_schema and the good one is applied within
DEADLINE_S, a tenth of the old pace.

The first bad update is framed with ff ff ff ff, a negative id (-1): the
schema store's fetch thread read it as "no id" and never asked for it,
so it stayed "being fetched" for good and held the partition paused
until a restart (and after it); now the store says "no such id" at once.

Run: HL_HALFLIFE=build/halflife HL_BUILD=build /usr/bin/python3 tests/integration/test_item_schema_unknown.py
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402
from test_items import avro_update  # noqa: E402
from test_schema_registry import Standin, client  # noqa: E402

SUITE = "item_schema_unknown"
N_BAD = 40
DEADLINE_S = 15          # the old pace: N_BAD seconds and more


def produce(bootstrap, good_id):
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(N_BAD):
        sid = 0xFFFFFFFF if i == 0 else 7000 + i            # 0xFFFFFFFF: id -1
        p.produce("items", key=b"x%d" % i, value=avro_update("x%d" % i, True, schema_id=sid),
                  partition=0)
    p.produce("items", key=b"good", value=avro_update("good", False, schema_id=good_id),
              partition=0)
    if p.flush(20) != 0:
        raise RuntimeError("item updates not delivered to the item topic")


def run(ck):
    from confluent_kafka.schema_registry import Schema
    model = os.path.join(ck.tmp, "model.hlm")
    U.make_model(model)
    reg = Standin(os.path.join(ck.tmp, "registry"))
    try:
        with open(os.path.join(U.SCHEMAS, "item_update.avsc")) as f:
            good_id = client(reg.url).register_schema("items-value", Schema(f.read(), "AVRO"))
        broker = C.Broker(ck.procs, 1, os.path.join(ck.tmp, "broker.log"),
                          topics=C.TOPICS + ["items"])
        w = C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "worker.log"),
                     ["kafka.fetch.wait.max.ms=10", "schema.registry.url=" + reg.url,
                      "schemas.dir=" + os.path.join(ck.tmp, "none"),
                      "snapshot.dir=" + os.path.join(ck.tmp, "snap")])
        if not w.wait_event("worker_started", 20):
            raise RuntimeError("the worker did not start (see worker.log)")
        t0 = time.time()
        produce(broker.bootstrap, good_id)
        deadline, bad, good = t0 + DEADLINE_S, -1, -1
        while time.time() < deadline and (bad < N_BAD or good < 1) and w.p.poll() is None:
            bad = w.metric_or("halflife_item_updates_invalid_total", labels="unknown_schema")
            good = w.metric_or("halflife_item_updates_total")
            time.sleep(0.1)
        ck.check("drained", bad == N_BAD and good >= 1,
                 "after %.1f s: %s of %d unknown-id updates counted unknown_schema, %s good "
                 "update applied" % (time.time() - t0, bad, N_BAD, good))
        rc, _secs = w.term(30)
        ck.check("clean_exit", rc == 0, "exit %s" % rc)
    finally:
        reg.stop()


if __name__ == "__main__":
    sys.exit(C.run_main(SUITE, "ran", run))
