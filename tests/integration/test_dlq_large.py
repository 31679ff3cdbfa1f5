"""test_dlq_large.py - a large bad record is never lost (issue 16, item 5).

A 3 MB record with valid framing and a bad enum index (reason bad_enum,
the rest of the record never read) goes through a `halflife broker` into
`halflife run`.

1. dlq_reaches_topic: with the default settings (but for a
   kafka.receive.message.max.bytes beyond what a producer may take, which
   the worker's DLQ producer clamps) it reaches the dead-letter topic byte
   for byte with its headers; halflife_dlq_errors_total stays 0.
   Before the fix the producer's message.max.bytes (1000000) refused it:
   dlq_errors 1 and the bytes were gone.
2. dlq_refused_kept_on_disk: with the DLQ made unwritable
   (kafka.message.max.bytes=1000000 forced for the test) and
   snapshot.dir/dead-letters blocked by a plain file, the record cannot be
   kept anywhere: the group's committed offset on its partition must stay
   at or below it while the valid events after it are applied. Once the
   block goes, the record lands in snapshot.dir/dead-letters/ with its
   headers and original bytes, and the committed offset moves past it.
   Before the fix the offset moved on at once and nothing was kept.
   While blocked, the write is tried again after a backoff (0.1 s
   doubling), counted in halflife_dead_letter_write_failures_total: a few
   tries in those seconds, not one per 1 ms poll.

The mock broker drops data beyond 5 MiB per partition (DESIGN.md section 9),
so each part has its own broker.
"""
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402
from test_dlq import HDR, avro_str, zz  # noqa: E402

# A structurally valid event whose context map carries 3 MB and whose
# event_type index is 17 (6 symbols): reason bad_enum.
BIG = (HDR + avro_str(b"u-big") + avro_str(b"i000001") + zz(17) + zz(1767225600000) + b"\x00"
       + b"\x02" + zz(1) + avro_str(b"pad") + avro_str(bytes(range(256)) * 12000) + zz(0))
T0 = 1767225600000


def produce_p0(bootstrap, records):
    """records: (key, value) bytes, all to partition 0, in order; returns
    their offsets."""
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 10000000,
                  "enable.idempotence": True})
    offs = [None] * len(records)

    def done(i):
        def cb(err, msg):
            offs[i] = None if err else msg.offset()
        return cb
    for i, (k, v) in enumerate(records):
        p.produce("behaviour-events", key=k, value=v, partition=0, on_delivery=done(i))
        p.flush(30)
    return offs


def good_records(n, first):
    import avro.io
    w = avro.io.DatumWriter(U.load_schema("behaviour_event.avsc"))
    return [(b"good-%d" % i, U.encode_event(w, 1, "good-%d" % i, "i%06d" % i, "VIEW",
                                            T0 + i * 1000)) for i in range(first, first + n)]


def read_dlq(bootstrap, deadline):
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "dlq-big-%d" % time.time_ns(),
                  "auto.offset.reset": "earliest"})
    U.assign_from_start(c, "behaviour-events.dlq", deadline)
    try:
        while time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                return m.key(), m.value(), dict((k, v.decode()) for k, v in (m.headers() or []))
    finally:
        c.close()
    return None


def committed_p0(bootstrap):
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "halflife"})
    try:
        return c.committed([TopicPartition("behaviour-events", 0)], timeout=10)[0].offset
    finally:
        c.close()


def wait_metric(w, name, want, deadline, labels=None):
    while time.time() < deadline:
        try:
            if w.metric(name, labels) >= want:
                return True
        except OSError:
            pass                        # /metrics is not up yet
        time.sleep(0.3)
    return False


def part_topic(tmp, model, check):
    broker = U.Broker(2, ["behaviour-events", "recommendations", "behaviour-events.dlq"],
                      os.path.join(tmp, "broker1.log"))
    w = None
    try:
        # receive.message.max.bytes above the producer's highest
        # message.max.bytes (10^9): the worker's DLQ producer, which takes
        # the consumer's limit, used to refuse to start on it.
        w = U.Worker(broker.bootstrap, model, os.path.join(tmp, "worker1.log"),
                     extra=["snapshot.dir=" + os.path.join(tmp, "snap1"),
                            "kafka.fetch.wait.max.ms=10",
                            "kafka.receive.message.max.bytes=1500000000"])
        recs = good_records(3, 0) + [(b"bad-big", BIG)] + good_records(3, 3)
        offs = produce_p0(broker.bootstrap, recs)
        got = read_dlq(broker.bootstrap, time.time() + 30)
        wait_metric(w, "halflife_events_consumed_total", len(recs), time.time() + 20)
        errs = w.metric("halflife_dlq_errors_total")
        dlq = w.metric("halflife_dlq_records_total", 'reason="bad_enum"')
        ok = (got is not None and got[0] == b"bad-big" and got[1] == BIG and
              got[2].get("halflife.reason") == "bad_enum" and
              got[2].get("halflife.source.partition") == "0" and
              got[2].get("halflife.source.offset") == str(offs[3]))
        rc = w.stop()
        w = None
        check("dlq_reaches_topic", ok and errs == 0 and dlq == 1 and rc == 0,
              "dlq record %s, dlq_errors %d, dlq{bad_enum} %d, exit %s"
              % (None if got is None else (got[0], len(got[1]), got[1] == BIG, got[2]),
                 errs, dlq, rc))
    finally:
        if w:
            w.stop()
        broker.stop()


def read_dead_letter(path):
    with open(path, "rb") as f:
        data = f.read()
    head, _, body = data.partition(b"\n\n")
    fields = dict(l.split(": ", 1) for l in head.decode().splitlines()[1:])
    k = int(fields["key.bytes"])
    return fields, body[:k], body[k:]


def part_disk(tmp, model, check):
    broker = U.Broker(2, ["behaviour-events", "recommendations", "behaviour-events.dlq"],
                      os.path.join(tmp, "broker2.log"))
    snap = os.path.join(tmp, "snap2")
    dl_dir = os.path.join(snap, "dead-letters")
    os.makedirs(snap)
    with open(dl_dir, "w") as f:
        f.write("a file where the directory should be: the write fails\n")
    w = None
    try:
        w = U.Worker(broker.bootstrap, model, os.path.join(tmp, "worker2.log"),
                     extra=["snapshot.dir=" + snap, "kafka.fetch.wait.max.ms=10",
                            "kafka.message.max.bytes=1000000",
                            "kafka.auto.commit.interval.ms=200"])
        recs = good_records(3, 0) + [(b"bad-big", BIG)] + good_records(3, 3)
        offs = produce_p0(broker.bootstrap, recs)
        bad_off, end = offs[3], offs[-1] + 1
        wait_metric(w, "halflife_events_consumed_total", len(recs), time.time() + 20)
        time.sleep(2.0)                 # several commit intervals
        held = committed_p0(broker.bootstrap)
        applied = w.metric("halflife_events_applied_total")
        log = w.log_text()
        named = [l for l in log.splitlines() if "event=dlq_failed" in l and
                 "partition=0 offset=%d " % bad_off in l]
        check("dlq_refused_offset_held", held <= bad_off and applied == 6 and named and
              "event=dead_letter_not_kept" in log,
              "committed %s (bad record at %d), applied %d, dlq_failed line naming it %s, "
              "not_kept logged %s" % (held, bad_off, applied, bool(named),
                                      "event=dead_letter_not_kept" in log))
        # About 2.5 s blocked: a backoff from 0.1 s gives 5 or so attempts;
        # a retry at each 1 ms poll gave thousands.
        tries = w.metric("halflife_dead_letter_write_failures_total")
        print("    (%d failed dead-letter writes while blocked)" % tries)
        check("dlq_disk_retries_backed_off", 1 <= tries <= 20,
              "%s failed writes while the directory was blocked for about 2.5 s" % tries)
        os.remove(dl_dir)
        kept = os.path.join(dl_dir, "behaviour-events.0.%020d.dead" % bad_off)
        deadline = time.time() + 20
        while time.time() < deadline and not os.path.exists(kept):
            time.sleep(0.2)
        moved = None
        while time.time() < deadline:
            moved = committed_p0(broker.bootstrap)
            if moved >= end:
                break
            time.sleep(0.3)
        n_kept = w.metric("halflife_dead_letters_kept_total")
        rc = w.stop()
        w = None
        ok = os.path.exists(kept)
        fields, key, value = read_dead_letter(kept) if ok else ({}, None, None)
        check("dlq_refused_kept_on_disk",
              ok and key == b"bad-big" and value == BIG and
              fields.get("halflife.reason") == "bad_enum" and
              fields.get("halflife.source.topic") == "behaviour-events" and
              fields.get("halflife.source.partition") == "0" and
              fields.get("halflife.source.offset") == str(bad_off) and
              moved is not None and moved >= end and n_kept == 1 and rc == 0,
              "file %s, key %r, value intact %s, fields %s, committed %s (end %d), "
              "kept metric %d, exit %s" % (ok, key, value == BIG, fields, moved, end,
                                           n_kept, rc))
    finally:
        if w:
            w.stop()
        broker.stop()


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP dlq_large.dlq_reaches_topic: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_dlqbig_")
    model = os.path.join(tmp, "m.hlm")
    U.make_model(model, 1000, 16)
    failed = []

    def check(name, ok, why):
        if ok:
            print("PASS dlq_large.%s" % name)
        else:
            print("FAIL dlq_large.%s: %s (logs in %s)" % (name, why, tmp))
            failed.append(name)
    part_topic(tmp, model, check)
    part_disk(tmp, model, check)
    if not failed:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
