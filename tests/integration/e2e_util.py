"""e2e_util.py - shared pieces of the worker's end-to-end tests: start a
`halflife broker` and a `halflife run` as processes, produce events with
python3-confluent-kafka + python3-avro (the reference implementation, not our
codec), read lists back, scrape /metrics.

Run with /usr/bin/python3 (Debian's python3-avro and python3-confluent-kafka).
"""
import datetime
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import shutil
import tempfile
import time
import traceback

import avro.io
import avro.schema

HL = os.environ.get("HL_HALFLIFE", "")
TOP = os.environ.get("HL_TOP", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BUILD = os.environ.get("HL_BUILD", os.path.join(TOP, "build"))
SCHEMAS = os.path.join(TOP, "schemas")

TYPES = ["VIEW", "CLICK", "FAVORITE", "ADD_TO_CART", "PURCHASE", "RATE"]


def load_schema(name):
    with open(os.path.join(SCHEMAS, name)) as f:
        return avro.schema.parse(f.read())


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Broker:
    """`halflife broker` as a process; .bootstrap is what it printed. extra
    are more arguments (--refuse-produce FILE)."""

    def __init__(self, partitions, topics, log_path, extra=()):
        self.log = open(log_path, "w")
        self.log_path = log_path
        self.p = subprocess.Popen([HL, "broker", "--partitions", str(partitions),
                                   "--topics", ",".join(topics)] + list(extra),
                                  stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.p.stdout.readline().strip()
        if not line:
            raise RuntimeError("halflife broker printed no bootstrap address (see %s)" % log_path)
        self.bootstrap = line.split()[-1].split("=")[-1]

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
        self.log.close()


class Worker:
    """`halflife run` as a process, logging to a file."""

    def __init__(self, bootstrap, model, log_path, extra=(), port=None):
        self.port = port or free_port()
        self.log_path = log_path
        self.log = open(log_path, "w")
        args = [HL, "run", "-X", "kafka.bootstrap.servers=" + bootstrap,
                "-X", "model.path=" + model, "-X", "metrics.port=%d" % self.port,
                "-X", "schemas.dir=" + SCHEMAS]
        for kv in extra:
            args += ["-X", kv]
        self.p = subprocess.Popen(args, stdout=self.log, stderr=self.log)

    def metrics(self):
        import urllib.request
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.port, timeout=5) as r:
            return r.read().decode()

    def metric(self, name, labels=None):
        """Sum of the samples of name (optionally with a label substring)."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            key, _, val = line.rpartition(" ")
            base = key.split("{")[0]
            if base == name and (labels is None or labels in key):
                total += float(val)
        return total

    def kill(self):
        self.p.kill()

    def wait(self, timeout):
        """Its exit status once it exits by itself, or "timeout" (it is
        then killed)."""
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.p.wait()
            return "timeout"

    def stop(self, timeout=30):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            rc = self.wait(timeout)
        else:
            rc = self.p.returncode
        self.log.close()
        return rc

    def log_text(self):
        with open(self.log_path) as f:
            return f.read()


EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def ms_to_dt(ms):
    """python3-avro maps timestamp-millis to aware datetimes."""
    return EPOCH + datetime.timedelta(milliseconds=ms)


def dt_to_ms(dt):
    if isinstance(dt, int):
        return dt
    d = dt - EPOCH
    return (d.days * 86400 + d.seconds) * 1000 + d.microseconds // 1000


def encode_event(writer, schema_id, user, item, etype, ts, weight=None):
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", schema_id))
    writer.write({"user_id": user, "item_id": item, "event_type": etype,
                  "timestamp": ms_to_dt(ts), "weight": weight, "context": None},
                 avro.io.BinaryEncoder(buf))
    return buf.getvalue()


def decode_list(reader, value):
    """A RecommendationList as a dict; generated_at in ms."""
    if len(value) < 5 or value[0] != 0:
        raise ValueError("list without Confluent framing")
    d = reader.read(avro.io.BinaryDecoder(io.BytesIO(value[5:])))
    d["generated_at"] = dt_to_ms(d["generated_at"])
    return d


def read_events_csv(path):
    """[(user, item, type, ts, weight or None)] in file order."""
    out = []
    with open(path) as f:
        next(f)
        for line in f:
            p = line.rstrip("\n").split(",")
            w = float(p[4]) if len(p) > 4 and p[4] else None
            out.append((p[0], p[1], p[2], int(p[3]), w))
    return out


def assign_from_start(c, topic, deadline):
    """Assigns consumer c every partition of topic from its first offset,
    once the topic exists (a worker creates its output topics at its first
    write). Readers assign rather than subscribe: a subscription joins a
    group first, and the broker holds a new group's first join for its
    initial rebalance delay (3 s on librdkafka's mock), in every reader of
    every test. False if the topic did not appear by the deadline."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition
    while time.time() < deadline:
        from confluent_kafka import KafkaException
        try:
            md = c.list_topics(topic, timeout=max(0.1, min(5.0, deadline - time.time())))
        except KafkaException:
            continue                    # the broker did not answer in time: ask again
        t = md.topics.get(topic)
        if t is not None and t.error is None and t.partitions:
            c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(t.partitions)])
            return True
        time.sleep(0.1)
    return False


def produce_events(bootstrap, topic, events, schema_id=1, extra_conf=None):
    """Produces events keyed by user with an idempotent confluent-kafka
    producer; returns {user: (partition, offset)} of each user's last event."""
    from confluent_kafka import Producer
    conf = {"bootstrap.servers": bootstrap, "enable.idempotence": True,
            "linger.ms": 5, "queue.buffering.max.messages": 1000000}
    conf.update(extra_conf or {})
    p = Producer(conf)
    writer = avro.io.DatumWriter(load_schema("behaviour_event.avsc"))
    last = {}
    errors = []

    def on_delivery(err, msg):
        if err:
            errors.append(str(err))
            return
        u = msg.key().decode()
        prev = last.get(u)
        if prev is None or prev[1] < msg.offset():
            last[u] = (msg.partition(), msg.offset())

    for (u, i, t, ts, w) in events:
        v = encode_event(writer, schema_id, u, i, t, ts, w)
        while True:
            try:
                p.produce(topic, key=u.encode(), value=v, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    p.flush(60)
    if errors:
        raise RuntimeError("produce failed: %s" % errors[:3])
    return last


def make_model(path, items=1000, dim=16):
    env = dict(os.environ, HL_OFFLINE_MAKE_MODEL=path, HL_OFFLINE_ITEMS=str(items),
               HL_OFFLINE_DIM=str(dim))
    subprocess.run([os.path.join(BUILD, "tests", "test_offline")], env=env, check=True)


def set_model_version(path, version):
    """Rewrites the version string of an .hlm file in place (same length as
    the old one, so no field moves) and its CRC-32 (bytes 12..15, over
    bytes 16..), e.g. to give it characters a label must escape."""
    import zlib
    with open(path, "rb") as f:
        d = bytearray(f.read())
    at = 160                                    # schemas/model.md: version[64]
    old_len = d[at:at + 64].index(0)
    new = version.encode()
    if len(new) != old_len:
        raise ValueError("version must keep the old length %d" % old_len)
    d[at:at + old_len] = new
    d[12:16] = struct.pack("<I", zlib.crc32(bytes(d[16:])) & 0xffffffff)
    with open(path, "wb") as f:
        f.write(d)


def promtool_check(text):
    """None if `promtool check metrics` accepts text (or promtool is absent:
    then the string 'absent'), else its complaint."""
    import shutil as sh
    if sh.which("promtool") is None:
        return "absent"
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                       text=True)
    return None if r.returncode == 0 else (r.stdout + r.stderr)[:300]


def make_events(path, n, users, items=1000):
    env = dict(os.environ, HL_OFFLINE_MAKE_EVENTS=path, HL_OFFLINE_N=str(n),
               HL_OFFLINE_USERS=str(users), HL_OFFLINE_ITEMS=str(items))
    subprocess.run([os.path.join(BUILD, "tests", "test_offline")], env=env, check=True)


def offline_lists(events_path, model_path, k=20, history=32, seen_events=0):
    """history and seen_events: the worker's state.history and
    recs.exclude.seen.events."""
    import json
    env = dict(os.environ, HL_OFFLINE_EVENTS=events_path, HL_OFFLINE_MODEL=model_path,
               HL_OFFLINE_K=str(k), HL_OFFLINE_HISTORY=str(history),
               HL_OFFLINE_SEEN_EVENTS=str(seen_events))
    out = subprocess.run([os.path.join(BUILD, "tests", "test_offline")], env=env,
                         check=True, capture_output=True, text=True).stdout
    return {d["user"]: d for d in (json.loads(l) for l in out.splitlines() if l)}


def one_worker(tmp, n_events, n_users, n_items=1000):
    """What the single-worker tests start from, in tmp: a model of n_items
    (dim 16), n_events events of n_users, a four-partition `halflife broker`
    with the input, output and dead-letter topics, and one `halflife run`
    over it snapshotting to tmp/snap. Returns (events, broker, worker); the
    caller stops the worker and the broker."""
    model, events_csv = os.path.join(tmp, "m.hlm"), os.path.join(tmp, "e.csv")
    make_model(model, n_items, 16)
    make_events(events_csv, n_events, n_users, n_items)
    events = read_events_csv(events_csv)
    broker = Broker(4, ["behaviour-events", "recommendations", "behaviour-events.dlq"],
                    os.path.join(tmp, "broker.log"))
    try:
        worker = Worker(broker.bootstrap, model, os.path.join(tmp, "worker.log"),
                        extra=["snapshot.dir=" + os.path.join(tmp, "snap"),
                               "kafka.fetch.wait.max.ms=10"])
    except BaseException:
        broker.stop()
        raise
    return events, broker, worker


def have_prereqs():
    """None if the tests can run, else why not."""
    if not HL or not os.access(HL, os.X_OK):
        return "HL_HALFLIFE is not an executable"
    offline = os.path.join(BUILD, "tests", "test_offline")
    if not os.access(offline, os.X_OK):
        # make test builds it; a test run alone needs it built first.
        san = " SAN=1" if os.environ.get("HL_SAN") == "1" else ""
        target = os.path.relpath(offline, TOP)
        if target.startswith(".."):
            return "%s is missing (the offline reference): HL_BUILD is outside %s" % (
                offline, TOP)
        return "%s is missing (the offline reference): run `make%s %s` in %s first" % (
            offline, san, target, TOP)
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return "python3-confluent-kafka is missing (run with /usr/bin/python3)"
    return None


def run_guarded(check, fn, *args):
    """fn(*args); an exception is printed and reported through check as the
    failure "ran", so a test that breaks half-way still says so."""
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - reported as a failure
        traceback.print_exc()
        check("ran", False, repr(e))


def end_run(tmp, failed):
    """A test's exit status: tmp is named and kept when it failed or with
    HL_KEEP_TMP=1 (to read the worker's logs), else removed."""
    keep = os.environ.get("HL_KEEP_TMP") == "1"
    if failed or keep:
        print("    logs in %s" % tmp)
    if not failed and not keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0
