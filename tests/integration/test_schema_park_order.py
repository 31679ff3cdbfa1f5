"""test_schema_park_order.py - records parked while their writer schema is
fetched come back in order and all count, even when more are parked than
one batch takes (worker/park.c, DESIGN.md section 13).

A worker with one thread and batch.max.messages=4 starts while the
registry is up (it registers the lists' schema), then the registry stops
and events arrive under an id the worker has not fetched yet, in rounds a
second apart, each round one partition's: 1 record of partition 0, then
4 of partition 1, 1 of 2, 4 of 3. Each round is a batch and its partition
parks all of it and pauses, so 10 records are parked, and once the
registry is back the first batch takes 4 of them (partition 0's one and
the first 3 of partition 1): partition 1 drains over two batches. The
rest of the events follow in bulk. Before park.c's fix a handed-back record of a draining partition
was parked again behind its partition's later records; the later ones
then counted first and the earlier ones were dropped as re-delivered:
events lost (the load-dependent "976 < 1000 events" of
test_schema_registry_items.py).

Cases:
  parked_in_lag  while the registry is away, each partition's
      halflife_consumer_lag counts every record produced to it, parked
      or not yet fetched (nothing of them is applied). Before 2026-12-07
      the lag was the end minus the offset after the last record handed
      to the shard thread: the parked ones read as done, lag 0 for the
      whole outage. Until 2026-12-07 (later) the end was librdkafka's,
      which it learns only from fetching, and a paused partition is not
      fetched: the lag stood at the parked records (10 in all) while all
      400 events were in the input, so an alert on lag never saw the
      backlog grow during the outage.
  parked_drain_loses_nothing  consumed == applied == produced, none
      invalid (a copy librdkafka hands over twice may be dropped as
      re-delivered: the message names how many were)
"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402
from test_min_interval import wait_settled  # noqa: E402
from test_schema_registry import Standin, client  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS = 400, 40, 200
ROUNDS = (1, 4, 1, 4)                   # records of partitions 0..3, one round each
FAILED = []


def check(name, ok, why):
    print(("PASS schema_park_order.%s" % name) if ok else
          ("FAIL schema_park_order.%s: %s" % (name, why)))
    if not ok:
        FAILED.append(name)


def produce_rounds(bootstrap, w, events, eid):
    """Each user's events go to partition (its first appearance) mod 4.
    The rounds of ROUNDS, one partition's records each, then the rest;
    returns how many partitions logged a wait, and {partition: records
    produced to it}."""
    from confluent_kafka import Producer
    part, by_part = {}, {p: [] for p in range(4)}
    for e in events:
        p = part.setdefault(e[0], len(part) % 4)
        by_part[p].append(e)
    p_ = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
    writer = U.avro.io.DatumWriter(U.load_schema("behaviour_event.avsc"))

    def send(p, evs):
        for (u, i, t, ts, wt) in evs:
            p_.produce("behaviour-events", key=u.encode(), partition=p,
                       value=U.encode_event(writer, eid, u, i, t, ts, wt))
        p_.flush(30)

    for k, n in enumerate(ROUNDS):
        send(k, by_part[k][:n])
        deadline = time.time() + 20     # until its batch parked and paused it
        while time.time() < deadline and \
                ("event=schema_wait partition=%d " % k) not in w.log_text():
            time.sleep(0.1)
        time.sleep(0.5)
    waits = w.log_text().count("event=schema_wait ")
    for k, n in enumerate(ROUNDS):
        send(k, by_part[k][n:])
    return waits, {p: len(evs) for p, evs in by_part.items()}


def lags(w):
    """{partition: halflife_consumer_lag} of w."""
    out = {}
    for line in w.metrics().splitlines():
        if line.startswith("halflife_consumer_lag{"):
            key, _, val = line.rpartition(" ")
            out[int(key.split('"')[1])] = float(val)
    return out


def check_parked_in_lag(w, want):
    """parked_in_lag (the module's docstring): want is {partition: records
    produced to it}, the paused partitions' rest included."""
    deadline, got = time.time() + 5, {}
    while time.time() < deadline:
        got = lags(w)
        if got == want:
            break
        time.sleep(0.1)
    applied = w.metric("halflife_events_applied_total")
    check("parked_in_lag", applied == 0 and got == want,
          "registry away, %d applied: lag by partition %s, want every record produced %s"
          % (applied, got, want))


def scenario(tmp, model, events):
    from confluent_kafka.schema_registry import Schema
    reg = Standin(os.path.join(tmp, "registry"))
    broker = U.Broker(4, ["behaviour-events", "recommendations", "behaviour-events.dlq"],
                      os.path.join(tmp, "broker.log"))
    w = None
    try:
        with open(os.path.join(U.SCHEMAS, "behaviour_event.avsc")) as f:
            eid = client(reg.url).register_schema("behaviour-events-value", Schema(f.read(), "AVRO"))
        empty = os.path.join(tmp, "no-schemas")
        os.makedirs(empty)
        w = U.Worker(broker.bootstrap, model, os.path.join(tmp, "w.log"),
                     extra=["schema.registry.url=" + reg.url, "schemas.dir=" + empty,
                            "worker.threads=1", "batch.max.messages=4",
                            "kafka.fetch.wait.max.ms=10", "kafka.statistics.interval.ms=200",
                            "snapshot.dir=" + os.path.join(tmp, "snap")])
        deadline = time.time() + 30
        while time.time() < deadline and "event=worker_started" not in w.log_text():
            time.sleep(0.2)
        reg.stop()                      # the events' id is new to the worker
        waits, produced = produce_rounds(broker.bootstrap, w, events, eid)
        check_parked_in_lag(w, produced)
        reg.start()
        consumed = wait_settled(w, N_EVENTS, timeout=60)
        applied = w.metric("halflife_events_applied_total")
        redelivered = w.metric("halflife_input_redelivered_total")
        invalid = w.metric("halflife_events_invalid_total")
        check("parked_drain_loses_nothing",
              waits >= 4 and consumed == N_EVENTS and applied == N_EVENTS and invalid == 0,
              "partitions that waited %d; consumed %d, applied %d, dropped as re-delivered %d, "
              "invalid %d of %d produced" % (waits, consumed, applied, redelivered, invalid,
                                             N_EVENTS))
    finally:
        if w is not None:
            w.stop()
        broker.stop()
        reg.stop()


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP schema_park_order: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_spo_")
    model, events_csv = os.path.join(tmp, "m.hlm"), os.path.join(tmp, "e.csv")
    U.make_model(model, N_ITEMS, 16)
    U.make_events(events_csv, N_EVENTS, N_USERS, N_ITEMS)
    U.run_guarded(check, scenario, tmp, model, U.read_events_csv(events_csv))
    return U.end_run(tmp, FAILED)


if __name__ == "__main__":
    sys.exit(main())
