"""test_broker_produce.py - `halflife broker` and `halflife produce` over TCP,
checked by independent clients: python3-confluent-kafka reads the topic back
and python3-avro (the reference implementation) decodes every value.

Cases: every produced event is in the topic, keyed by its user, each user on
one partition in file order; raw framing; the --port relay; SIGUSR1/SIGUSR2
take the brokers down and up (a produce started while they are down finishes
once they are back); SIGTERM stops the broker; --delay-produce FILE answers
Produce late while FILE is there and not once it is gone (before, up to 8
requests per broker were still answered late after it went).

Run with /usr/bin/python3 (Debian's python3-avro and python3-confluent-kafka).
"""
import datetime
import io
import os
import random
import signal
import socket
import subprocess
import sys
import time

SUITE = "broker_produce"


try:
    import avro.io
    import avro.schema
    from confluent_kafka import Consumer, KafkaError, TopicPartition, OFFSET_BEGINNING
except ImportError as e:
    print("SKIP %s.all: needs python3-avro and python3-confluent-kafka (%s)" % (SUITE, e))
    sys.exit(0)

HALFLIFE = os.environ.get("HL_HALFLIFE")
TOP = os.environ.get("HL_TOP", os.path.join(os.path.dirname(__file__), "..", ".."))
if not HALFLIFE or not os.access(HALFLIFE, os.X_OK):
    print("SKIP %s.all: HL_HALFLIFE is not set to the built binary" % SUITE)
    sys.exit(0)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
TYPES = ["VIEW", "CLICK", "FAVORITE", "ADD_TO_CART", "PURCHASE", "RATE"]


def load_schema():
    with open(os.path.join(TOP, "schemas", "behaviour_event.avsc")) as f:
        return avro.schema.parse(f.read())


SCHEMA = load_schema()


def start_broker(*args):
    p = subprocess.Popen([HALFLIFE, "broker"] + list(args), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    if not line:
        raise RuntimeError("broker printed no address: %s" % p.stderr.read())
    return p, line


def stop_broker(p, timeout=10):
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return None, p.stderr.read()
    return rc, p.stderr.read()


def write_events(path, n, n_users, seed):
    """An events-csv file; returns the events as tuples in file order."""
    rnd = random.Random(seed)
    events = []
    with open(path, "w") as f:
        f.write("user_id,item_id,event_type,timestamp_ms,weight\n")
        for i in range(n):
            u = "user-%d" % rnd.randrange(n_users)
            it = "item-%d" % rnd.randrange(1000)
            t = TYPES[rnd.randrange(len(TYPES))]
            ts = 1700000000000 + i * 1000 + rnd.randrange(1000)
            w = None
            if i % 3 == 0:
                w = rnd.randrange(1, 50) / 4.0       # exact in float32
                f.write("%s,%s,%s,%d,%s\n" % (u, it, t, ts, w))
            else:
                f.write("%s,%s,%s,%d\n" % (u, it, t, ts))
            events.append((u, it, t, ts, w))
    return events


def produce(bootstrap, path, *extra, timeout=60):
    cmd = [HALFLIFE, "produce", "--input", path, "--format", "events-csv",
           "-X", "kafka.bootstrap.servers=" + bootstrap] + list(extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def read_topic(bootstrap, topic, partitions, timeout=20):
    """All records of topic as (partition, offset, key, value), by partition
    and offset: every partition is read up to its high watermark, taken
    before reading, so an extra (duplicate) record is seen wherever it sits
    in the log, not only if it comes within a grace period."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    high = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)}
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    out, pos = [], {p: 0 for p in range(partitions)}
    deadline = time.time() + timeout
    while any(pos[p] < high[p] for p in pos) and time.time() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                pos[m.partition()] = max(pos[m.partition()], m.offset())
            continue
        out.append((m.partition(), m.offset(), m.key(), m.value()))
        pos[m.partition()] = m.offset() + 1
    c.close()
    if any(pos[p] < high[p] for p in pos):
        raise RuntimeError("%s read up to %s in %d s, high watermarks %s"
                           % (topic, pos, timeout, high))
    out.sort()
    return out


def decode(value, framing):
    if framing == "confluent":
        if len(value) < 5 or value[0] != 0:
            raise ValueError("bad Confluent header")
        schema_id = int.from_bytes(value[1:5], "big")
        if schema_id != 1:
            raise ValueError("schema id %d, want 1" % schema_id)
        value = value[5:]
    buf = io.BytesIO(value)
    rec = avro.io.DatumReader(SCHEMA).read(avro.io.BinaryDecoder(buf))
    if buf.tell() != len(value):
        raise ValueError("%d trailing bytes" % (len(value) - buf.tell()))
    ts = rec["timestamp"]
    if isinstance(ts, datetime.datetime):
        ts = (ts - EPOCH) // datetime.timedelta(milliseconds=1)
    return (rec["user_id"], rec["item_id"], rec["event_type"], ts, rec["weight"])


def check_topic(ck, name, bootstrap, topic, partitions, events, framing):
    try:
        recs = read_topic(bootstrap, topic, partitions)
    except RuntimeError as e:
        return ck.check(name, False, str(e))
    if len(recs) != len(events):
        return ck.check(name, False, "%d records in %s, %d produced" %
                        (len(recs), topic, len(events)))
    got, where, why = [], {}, None
    for part, off, key, value in recs:
        try:
            ev = decode(value, framing)
        except Exception as e:            # noqa: BLE001 - report any decode failure
            why = "partition %d offset %d: %s" % (part, off, e)
            break
        if key != ev[0].encode():
            why = "key %r is not the user %r" % (key, ev[0])
            break
        if where.setdefault(ev[0], part) != part:
            why = "user %s in partitions %d and %d" % (ev[0], where[ev[0]], part)
            break
        got.append(ev)
    if why is None and sorted(got, key=repr) != sorted(events, key=repr):
        why = "the events read back differ from the file's"
    if why is None:
        # recs are sorted by (partition, offset): each user's subsequence is
        # its order in the topic, which must be its order in the file.
        by_user_file, by_user_topic = {}, {}
        for ev in events:
            by_user_file.setdefault(ev[0], []).append(ev)
        for ev in got:
            by_user_topic.setdefault(ev[0], []).append(ev)
        bad = [u for u in by_user_file if by_user_file[u] != by_user_topic.get(u)]
        if bad:
            why = "per-user order differs for %d users, e.g. %s" % (len(bad), bad[0])
    if why is None and len(set(where.values())) < 2:
        why = "all users on one partition: keys are not partitioning"
    ck.check(name, why is None, why or "")


def produce_seconds(p, n):
    """Seconds each of n produce-and-flush rounds of one record took."""
    took = []
    for i in range(n):
        t0 = time.time()
        p.produce("behaviour-events", key=b"k", value=b"%d" % i)
        p.flush(30)
        took.append(round(time.time() - t0, 2))
    return took


def delay_produce(ck, tmp):
    """--delay-produce: each Produce answered 500 ms late while the file is
    there; once it is gone (the broker looks every 50 ms), none."""
    from confluent_kafka import Producer
    path = os.path.join(tmp, "delay")
    broker, bootstrap = start_broker("--partitions", "1", "--delay-produce", path)
    try:
        p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0,
                      "log.connection.close": False})
        produce_seconds(p, 1)               # connected before the delay starts
        with open(path, "w") as f:
            f.write("500\n")
        time.sleep(0.3)
        on = produce_seconds(p, 2)
        os.unlink(path)
        time.sleep(0.3)
        off = produce_seconds(p, 8)
    finally:
        rc, err = stop_broker(broker)
    ck.check("delay_produce_while_file", all(t >= 0.45 for t in on),
             "with the file there, produce rounds took %s s (want >= 0.45 each)" % on)
    ck.check("delay_produce_stops_with_file", all(t < 0.3 for t in off) and
             "event=delay_produce_off" in err,
             "after the file went, produce rounds took %s s (want < 0.3 each); broker log: %s" %
             (off, err[-300:]))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main(ck):
    tmp = ck.tmp
    path = os.path.join(tmp, "events.csv")
    events = write_events(path, 600, 40, 1)
    broker, bootstrap = start_broker("--partitions", "3", "--topics", "behaviour-events,raw-events")
    try:
        r = produce(bootstrap, path)
        ok = r.returncode == 0 and "delivered=600 failed=0" in r.stderr
        ck.check("produce_reports_delivery", ok, "rc %d: %s" % (r.returncode, r.stderr[-500:]))
        check_topic(ck, "events_keyed_ordered_decodable", bootstrap, "behaviour-events", 3, events,
                    "confluent")

        r = produce(bootstrap, path, "--topic", "raw-events", "-X", "input.format=raw",
                    "--limit", "200", "--rate", "2000")
        ok = r.returncode == 0 and "delivered=200" in r.stderr
        ck.check("produce_raw_limit_rate", ok, "rc %d: %s" % (r.returncode, r.stderr[-500:]))
        check_topic(ck, "raw_framing_decodable", bootstrap, "raw-events", 3, events[:200], "raw")

        r = produce(bootstrap, path, "--format", "nonsense")
        ck.check("produce_refuses_bad_format", r.returncode != 0 and "nonsense" in r.stderr,
                 r.stderr[-300:])
        r = produce(bootstrap, path, "-X", "recs.kk=1")
        ck.check("produce_refuses_unknown_key", r.returncode != 0 and "recs.kk" in r.stderr,
                 r.stderr[-300:])

        # Outage: brokers down, a produce waits, brokers up, it completes.
        small = os.path.join(tmp, "small.csv")
        small_events = write_events(small, 50, 5, 2)
        broker.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        p = subprocess.Popen([HALFLIFE, "produce", "--input", small, "--format", "events-csv",
                              "--topic", "raw-events", "-X", "kafka.bootstrap.servers=" + bootstrap],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        waiting = p.poll() is None
        broker.send_signal(signal.SIGUSR2)
        try:
            out, err = p.communicate(timeout=30)
            done = p.returncode == 0 and "delivered=50 failed=0" in err
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            done = False
        ck.check("outage_then_recovery", waiting and done,
                 "waiting while down: %s, rc %s: %s" % (waiting, p.returncode, err[-300:]))
        del small_events
    finally:
        rc, err = stop_broker(broker)
    ck.check("sigterm_stops_broker", rc == 0, "rc %s" % rc)
    ck.check("outage_signals_logged", "event=brokers_down" in err and "event=brokers_up" in err,
             err[-500:])

    delay_produce(ck, tmp)
    port = free_port()
    broker, bootstrap = start_broker("--port", str(port), "--partitions", "2")
    try:
        ok = bootstrap == "127.0.0.1:%d" % port
        few = os.path.join(tmp, "few.csv")
        few_events = write_events(few, 30, 6, 3)
        r = produce(bootstrap, few)
        ok = ok and r.returncode == 0
        ck.check("port_relay_bootstrap", ok, "address %s, rc %d: %s" % (bootstrap, r.returncode,
                                                                        r.stderr[-300:]))
        check_topic(ck, "port_relay_events", bootstrap, "behaviour-events", 2, few_events,
                    "confluent")
    finally:
        stop_broker(broker)


if __name__ == "__main__":
    # The SKIPs are above: this test needs the binary and both Python packages.
    sys.exit(C.run_main(SUITE, "all", main, prereqs=lambda: None))
