"""test_schema_registry_rebalance.py - partitions that wait for a writer
schema move between workers without loss (issue 13, DESIGN.md sections 6
and 13; worker/park.c).

Separate processes over TCP: registry_standin.py, a `halflife broker` with 4
partitions, `halflife run` workers in one group sharing a snapshot.dir.
Worker A reads events of a known writer version; then the registry stops and
every user writes with a version A has never seen while the registry
answers 503 to every schema read, so A parks every partition (paused,
nothing dead-lettered). Worker B joins while the reads still fail: the partitions it takes are revoked from A while they wait
(A drops what it parked and resumes them, so they can come back to it), and
B parks them in turn. The reads work again; both finish. Then B leaves and
A gets its old partitions back, and must read new events on them (a pause
left behind by the revocation would keep them silent for ever).
Checks: no record dead-lettered or invalid; over both workers applied ==
produced with no duplicates (the state moved with each partition); A logged
the revoked waits; A reads the last events on every partition.
"""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402
import test_schema_registry as S  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, PARTS = 2400, 150, 1000, 4
COMMON = ["worker.threads=1", "kafka.fetch.wait.max.ms=10",
          "kafka.session.timeout.ms=3000", "kafka.heartbeat.interval.ms=1000"]


def wait_until(fn, timeout, step=0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(step)
    return fn()


def applied(w):
    t = w.totals()
    if t is not None:
        return t.get("applied", 0)
    return w.metric_or("halflife_events_applied_total", 0)


def run(ck):
    procs, tmp = ck.procs, ck.tmp
    model, _, events = C.prepare(tmp, N_EVENTS, N_USERS, N_ITEMS)
    reg = S.Standin(tmp)
    try:
        _run(ck, procs, tmp, model, events, reg)
    finally:
        reg.stop()


def _run(ck, procs, tmp, model, events, reg):
    from confluent_kafka.schema_registry import Schema
    broker = C.Broker(procs, PARTS, os.path.join(tmp, "broker.log"))
    sr = S.client(reg.url)
    x_field = S.V3_FIELD
    schemas = {1: U.avro.schema.parse(S.event_schema_text()),
               3: U.avro.schema.parse(S.event_schema_text([S.V2_FIELD, x_field]))}
    ids = {1: sr.register_schema("behaviour-events-value", Schema(S.event_schema_text(), "AVRO")),
           3: sr.register_schema("behaviour-events-value",
                                 Schema(S.event_schema_text([S.V2_FIELD, x_field]), "AVRO"))}
    empty = os.path.join(tmp, "no-schemas")
    os.makedirs(empty, exist_ok=True)
    extra = COMMON + ["schema.registry.url=" + reg.url, "schemas.dir=" + empty,
                      "snapshot.dir=" + os.path.join(tmp, "snap")]
    a = C.Worker(procs, broker.bootstrap, model, os.path.join(tmp, "a.log"), extra)
    b = None
    prod = S.Producer(broker.bootstrap)
    p1, p2, p3 = events[:800], events[800:1600], events[1600:]
    S.produce_versions(prod, p1, ids, schemas, lambda k, ev: 1)
    ok = wait_until(lambda: a.metric_or("halflife_events_applied_total", 0) >= len(p1), 40)
    ck.check("first_part_applied", ok, "A applied %s of %d" %
             (a.metric_or("halflife_events_applied_total"), len(p1)))

    reg.p.send_signal(signal.SIGUSR1)       # schema reads answer 503 from now
    S.produce_versions(prod, p2, ids, schemas, lambda k, ev: 3)
    parts2 = {prod.part[ev[0]] for ev in p2}
    waiting = wait_until(lambda: a.metric_or("halflife_partitions_waiting_schema", 0) >=
                         len(parts2), 20)
    ck.check("a_parks_every_partition", waiting, "A waits on %s partitions of %d" %
             (a.metric_or("halflife_partitions_waiting_schema"), len(parts2)))
    b = C.Worker(procs, broker.bootstrap, model, os.path.join(tmp, "b.log"), extra)
    moved = b.wait_event("partition_assigned", 30) and a.wait_event("partition_revoked", 30)
    b_waits = wait_until(lambda: b.metric_or("halflife_partitions_waiting_schema", 0) >= 1, 20)
    dlq = a.metric_or("halflife_dlq_records_total", 0) + b.metric_or("halflife_dlq_records_total", 0)
    ck.check("revoked_while_waiting", moved and b_waits and dlq == 0 and
             len(a.events("schema_wait_over")) >= 1 and
             any(kv.get("how") == "revoked" for _, kv in a.events("schema_wait_over")),
             "moved %s, B waits %s, dlq %d, A's waits over: %s" %
             (moved, b_waits, dlq, [kv.get("how") for _, kv in a.events("schema_wait_over")]))

    reg.p.send_signal(signal.SIGUSR2)
    done = wait_until(lambda: applied(a) + applied(b) >= len(p1) + len(p2), 40)
    ck.check("registry_back_both_finish", done, "applied A %s + B %s of %d" %
             (applied(a), applied(b), len(p1) + len(p2)))
    rc, _ = b.term(30)
    b_tot = b.totals() or {}
    ok = wait_until(lambda: len(a.events("partition_assigned")) >= 2, 30)
    S.produce_versions(prod, p3, ids, schemas, lambda k, ev: 1)
    total = lambda: a.metric_or("halflife_events_applied_total", 0) + b_tot.get("applied", 0)
    done = wait_until(lambda: total() >= len(events), 40)
    inv = a.metric_or("halflife_events_invalid_total", 0) + b_tot.get("invalid", 0)
    dup = a.metric_or("halflife_events_duplicate_total", 0) + b_tot.get("duplicates", 0)
    dlq = a.metric_or("halflife_dlq_records_total", 0) + b_tot.get("dlq", 0)
    ck.check("partitions_back_to_a_fetch", ok and done and rc == 0,
             "A got them back %s; applied %d of %d; B exit %s" % (ok, total(), len(events), rc))
    ck.check("nothing_lost_or_twice", total() == len(events) and inv == 0 and dup == 0 and dlq == 0,
             "applied %d of %d, invalid %d, duplicates %d, dlq %d"
             % (total(), len(events), inv, dup, dlq))
    rc, _ = a.term(30)
    ck.check("a_exits_0", rc == 0, "exit %s" % rc)


def main():
    return C.run_main("schema_registry_rebalance", "ran", run)


if __name__ == "__main__":
    sys.exit(main())
