"""test_dlq.py - bad input never stops the worker and is never silently lost
(issue 5, "Bad input"): a stream mixing valid events with records of each
malformed kind the codec names goes through a `halflife broker` into
`halflife run`. Checks: the worker keeps running; every bad record is in
the dead-letter topic with its original key and bytes and headers naming
the reason and the source topic/partition/offset; /metrics counts each by
reason (invalid and DLQ); every valid event is applied (consumed - invalid).
"""
import io
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402


def zz(n):
    """Avro long: zigzag varint."""
    n = (n << 1) ^ (n >> 63)
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def avro_str(s):
    return zz(len(s)) + s


HDR = b"\x00\x00\x00\x00\x01"     # Confluent framing, schema id 1


def body(user=b"u1", item=b"i000001", etype=0, ts=1767225600000, weight=None, extra=b""):
    w = b"\x00" if weight is None else b"\x02" + struct.pack("<f", weight)
    return avro_str(user) + avro_str(item) + zz(etype) + zz(ts) + w + b"\x00" + extra


def bad_records():
    """reason -> payload, one per kind the codec names."""
    return {
        "too_short": b"\x00\x00",
        "bad_magic": b"\x05" + HDR[1:] + body(),
        "unknown_schema": b"\x00\x00\x00\x03\xe7" + body(),
        "truncated": HDR + body()[:6],
        "bad_varint": HDR + avro_str(b"u1") + avro_str(b"i1") + b"\xff" * 11,
        "negative_length": HDR + zz(-3) + b"abc",
        "string_too_long": HDR + avro_str(b"u" * 300) + avro_str(b"i1") + b"\x00" + zz(1) + b"\x00\x00",
        "bad_timestamp": HDR + body(ts=-5),
        "bad_enum": HDR + body(etype=17),
        "bad_union": HDR + avro_str(b"u1") + avro_str(b"i1") + b"\x00" + zz(1767225600000) + b"\x08",
        "bad_weight": HDR + body(weight=float("nan")),
        "trailing_bytes": HDR + body(extra=b"\x01\x02"),
        "bad_utf8": HDR + body(item=b"i\xff"),
    }


def read_dlq(bootstrap, want, deadline):
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "dlq-reader-%d" % time.time_ns(),
                  "auto.offset.reset": "earliest"})
    U.assign_from_start(c, "behaviour-events.dlq", deadline)
    got = []
    try:
        while time.time() < deadline and len(got) < want:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            got.append((m.key(), m.value(), dict((k, v.decode()) for k, v in (m.headers() or []))))
    finally:
        c.close()
    return got


def run(ck):
    tmp = ck.tmp
    events, broker, worker = U.one_worker(tmp, 2000, 100)
    failed = []
    try:
        from confluent_kafka import Producer
        U.produce_events(broker.bootstrap, "behaviour-events", events[:1000])
        bad = bad_records()
        sent = {}                                  # (key, value) -> reason
        p = Producer({"bootstrap.servers": broker.bootstrap})
        for k, (reason, payload) in enumerate(sorted(bad.items())):
            key = ("bad-%d" % k).encode()
            sent[(key, payload)] = reason
            p.produce("behaviour-events", key=key, value=payload)
        p.flush(10)
        U.produce_events(broker.bootstrap, "behaviour-events", events[1000:])
        got = read_dlq(broker.bootstrap, len(bad), time.time() + 30)
        total = len(events) + len(bad)
        deadline = time.time() + 20
        while time.time() < deadline and worker.metric("halflife_events_consumed_total") < total:
            time.sleep(0.3)
        if worker.p.poll() is not None:
            failed.append("the worker exited (%s)" % worker.p.returncode)
        for key, value, hdr in got:
            reason = sent.pop((key, value), None)
            if reason is None:
                failed.append("DLQ record %r not sent as bad (or bytes changed)" % key)
            elif hdr.get("halflife.reason") != reason:
                failed.append("%r: header reason %s, want %s" % (key, hdr.get("halflife.reason"), reason))
            elif hdr.get("halflife.source.topic") != "behaviour-events" or \
                    "halflife.source.partition" not in hdr or "halflife.source.offset" not in hdr:
                failed.append("%r: source headers %s" % (key, hdr))
        if sent:
            failed.append("not in the DLQ: %s" % sorted(sent.values()))
        for reason in bad:
            inv = worker.metric("halflife_events_invalid_total", 'reason="%s"' % reason)
            dlq = worker.metric("halflife_dlq_records_total", 'reason="%s"' % reason)
            if inv != 1 or dlq != 1:
                failed.append("%s: invalid %d, dlq %d on /metrics, want 1 and 1" % (reason, inv, dlq))
        consumed = worker.metric("halflife_events_consumed_total")
        if consumed != total:
            failed.append("consumed %d of %d" % (consumed, total))
        rc = worker.stop()
        worker = None
        if rc != 0:
            failed.append("exit status %s after SIGTERM" % rc)
        log = open(os.path.join(tmp, "worker.log")).read()
        applied = int(log.rsplit("applied=", 1)[1].split()[0]) if "applied=" in log else -1
        if applied != len(events):
            failed.append("applied %d valid events of %d" % (applied, len(events)))
    finally:
        if worker:
            worker.stop()
        broker.stop()
    ck.check("bad_records_dead_lettered", not failed, "%s" % failed[:5])
    print("    (%d kinds, %d valid events)" % (len(bad), len(events)))


if __name__ == "__main__":
    sys.exit(C.run_main("dlq", "bad_records_dead_lettered", run))
