"""test_codec_python.py - worker/codec.c against python3-avro, the reference
implementation: events python3-avro writes decode to the same events through
our codec (fast path, raw framing, and an evolved writer schema resolved by
avro-c), and the lists our codec encodes decode with python3-avro.

The C side is tests/test_codec.c in its file modes (HL_CODEC_DECODE_FILE,
HL_CODEC_ENCODE_LISTS), built as $HL_BUILD/tests/test_codec.
Run with /usr/bin/python3 (Debian's python3-avro).
"""
import datetime
import io
import json
import os
import random
import struct
import subprocess
import sys

SUITE = "codec_python"


try:
    import avro.io
    import avro.schema
except ImportError as e:
    print("SKIP %s.all: needs python3-avro (%s)" % (SUITE, e))
    sys.exit(0)

BUILD = os.environ.get("HL_BUILD", "build")
TOP = os.environ.get("HL_TOP", os.path.join(os.path.dirname(__file__), "..", ".."))
PROG = os.path.join(BUILD, "tests", "test_codec")
if not os.access(PROG, os.X_OK):
    print("SKIP %s.all: %s is not built" % (SUITE, PROG))
    sys.exit(0)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
TYPES = ["VIEW", "CLICK", "FAVORITE", "ADD_TO_CART", "PURCHASE", "RATE"]

# A newer producer's schema: fields reordered, an extra optional field
# (session), and context dropped (the reader's default, null, applies).
EVOLVED = {
    "type": "record", "name": "BehaviourEvent", "namespace": "halflife",
    "fields": [
        {"name": "timestamp", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "session", "type": ["null", "string"], "default": None},
        {"name": "event_type", "type": {"type": "enum", "name": "EventType",
                                        "symbols": TYPES}},
        {"name": "weight", "type": ["null", "float"], "default": None},
        {"name": "item_id", "type": "string"},
        {"name": "user_id", "type": "string"},
    ],
}


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def read_text(path):
    with open(path) as f:
        return f.read()


def make_events(n, seed):
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        user = rnd.choice(["u%d" % rnd.randrange(100), "用户-%d" % i, 'q"uote\\%d' % i,
                           "x" * rnd.randrange(1, 257)])
        ev = {
            "user_id": user,
            "item_id": "item-%d" % rnd.randrange(10 ** 6),
            "event_type": rnd.choice(TYPES),
            "timestamp": EPOCH + datetime.timedelta(milliseconds=1700000000000 + rnd.randrange(10 ** 9)),
            "weight": None if rnd.random() < 0.5 else rnd.uniform(0, 10),
            "context": None if rnd.random() < 0.5 else {"page": "p%d" % i, "ab": "b"},
        }
        out.append(ev)
    return out


def expected(ev):
    ts = (ev["timestamp"] - EPOCH) // datetime.timedelta(milliseconds=1)
    w = None if ev["weight"] is None else f32(ev["weight"])
    return (ev["user_id"], ev["item_id"], ev["event_type"], ts, w)


def encode(schema, datum, framing, schema_id):
    buf = io.BytesIO()
    avro.io.DatumWriter(schema).write(datum, avro.io.BinaryEncoder(buf))
    body = buf.getvalue()
    return (b"\0" + struct.pack(">I", schema_id) + body) if framing == "confluent" else body


def write_payloads(path, payloads):
    with open(path, "wb") as f:
        for p in payloads:
            f.write(struct.pack(">I", len(p)) + p)


def run_decode(payload_path, schemas_dir, framing):
    env = dict(os.environ, HL_CODEC_DECODE_FILE=payload_path, HL_CODEC_SCHEMAS_DIR=schemas_dir,
               HL_CODEC_INPUT_FORMAT=framing)
    r = subprocess.run([PROG], env=env, capture_output=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError("test_codec exited %d: %s" % (r.returncode, r.stderr[-300:]))
    return [json.loads(line) for line in r.stdout.decode("utf-8").splitlines()]


def as_tuple(d):
    return (d["user"], d["item"], d["type"], d["ts"], d["weight"])


def check_decode(ck, name, tmp, schemas_dir, schema, events, framing, schema_id):
    path = os.path.join(tmp, name + ".bin")
    write_payloads(path, [encode(schema, ev, framing, schema_id) for ev in events])
    try:
        got = run_decode(path, schemas_dir, framing)
    except Exception as e:               # noqa: BLE001
        return ck.check(name, False, str(e))
    if len(got) != len(events):
        return ck.check(name, False, "%d results for %d payloads" % (len(got), len(events)))
    for i, (g, ev) in enumerate(zip(got, events)):
        if not g.get("ok"):
            return ck.check(name, False, "event %d: %s" % (i, g.get("reason")))
        want = expected(ev)
        have = as_tuple(g)
        if have[:4] != want[:4] or (want[4] is None) != (have[4] is None) or \
                (want[4] is not None and f32(have[4]) != want[4]):
            return ck.check(name, False, "event %d: got %r, want %r" % (i, have, want))
    ck.check(name, True, "")


def check_malformed(ck, tmp, schemas_dir, schema):
    good = encode(schema, make_events(1, 9)[0], "confluent", 1)
    cases = [
        ("too_short", b"\0\0\0"),
        ("bad_magic", b"\x01" + good[1:]),
        ("unknown_schema", b"\0" + struct.pack(">I", 99) + good[5:]),
        ("trailing_bytes", good + b"\0"),
        ("truncated", good[:-3]),
    ]
    path = os.path.join(tmp, "bad.bin")
    write_payloads(path, [c[1] for c in cases])
    got = run_decode(path, schemas_dir, "confluent")
    bad = [(c[0], g) for c, g in zip(cases, got) if g.get("reason") != c[0]]
    ck.check("malformed_named_reasons", len(got) == len(cases) and not bad, repr(bad))


LIST_SPECS = [
    ("u1", 1700000000000, "v1", "behaviour-events", 0, 0, [("a", 0.5, "h"), ("b", -1.25, None)]),
    ("用户", 1, "model-2026", "t", 7, 123456789012, [("i%d" % i, i / 3.0, "x%d" % i) for i in range(20)]),
    ("empty", 0, "", "t", 1, 5, []),
]


def check_lists(ck, tmp, framing):
    name = "lists_read_by_python_avro_" + framing
    spec = os.path.join(tmp, "lists.txt")
    out = os.path.join(tmp, "lists.bin")
    with open(spec, "w") as f:
        for user, gen, mv, topic, part, off, items in LIST_SPECS:
            its = ",".join("%s:%r:%s" % (i, s, b if b is not None else "-") for i, s, b in items)
            f.write("\t".join([user, str(gen), mv or "-", topic, str(part), str(off)] +
                              ([its] if its else [])) + "\n")
    env = dict(os.environ, HL_CODEC_ENCODE_LISTS=spec, HL_CODEC_OUT=out,
               HL_CODEC_OUTPUT_FORMAT=framing)
    r = subprocess.run([PROG], env=env, capture_output=True, timeout=60)
    if r.returncode != 0:
        return ck.check(name, False, "test_codec exited %d: %s" % (r.returncode, r.stderr[-300:]))
    schema = avro.schema.parse(read_text(os.path.join(TOP, "schemas", "recommendation_list.avsc")))
    data = open(out, "rb").read()
    pos, got = 0, []
    while pos < len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        payload = data[pos + 4:pos + 4 + n]
        pos += 4 + n
        if framing == "confluent":
            if payload[0] != 0 or struct.unpack(">I", payload[1:5])[0] != 2:
                return ck.check(name, False, "bad Confluent header %r" % payload[:5])
            payload = payload[5:]
        buf = io.BytesIO(payload)
        got.append(avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(buf)))
        if buf.tell() != len(payload):
            return ck.check(name, False, "trailing bytes after list %d" % len(got))
    if len(got) != len(LIST_SPECS):
        return ck.check(name, False, "%d lists for %d" % (len(got), len(LIST_SPECS)))
    for rec, (user, gen, mv, topic, part, off, items) in zip(got, LIST_SPECS):
        ga = rec["generated_at"]
        if isinstance(ga, datetime.datetime):
            ga = (ga - EPOCH) // datetime.timedelta(milliseconds=1)
        want_items = [(i, f32(s), b) for i, s, b in items]
        have_items = [(x["item_id"], x["score"], x["because_item_id"]) for x in rec["items"]]
        want = (user, gen, mv if mv != "" else "-", topic, part, off, want_items)
        have = (rec["user_id"], ga, rec["model_version"], rec["source"]["topic"],
                rec["source"]["partition"], rec["source"]["offset"], have_items)
        if have != want:
            return ck.check(name, False, "got %r, want %r" % (have, want))
    ck.check(name, True, "")


def main(ck):
    tmp = ck.tmp
    schemas_dir = os.path.join(tmp, "schemas")
    os.mkdir(schemas_dir)
    ours = read_text(os.path.join(TOP, "schemas", "behaviour_event.avsc"))
    with open(os.path.join(schemas_dir, "1.avsc"), "w") as f:
        f.write(ours)
    with open(os.path.join(schemas_dir, "7.avsc"), "w") as f:
        json.dump(EVOLVED, f)
    schema = avro.schema.parse(ours)
    evolved = avro.schema.parse(json.dumps(EVOLVED))
    events = make_events(400, 1)
    check_decode(ck, "python_events_decode_fast_path", tmp, schemas_dir, schema, events,
                 "confluent", 1)
    check_decode(ck, "python_events_decode_raw", tmp, schemas_dir, schema, events, "raw", 0)
    evolved_events = [dict(ev, session="s%d" % i if i % 2 else None) for i, ev in enumerate(events)]
    for ev in evolved_events:
        ev.pop("context")
    check_decode(ck, "evolved_writer_schema_resolves", tmp, schemas_dir, evolved, evolved_events,
                 "confluent", 7)
    check_malformed(ck, tmp, schemas_dir, schema)
    check_lists(ck, tmp, "confluent")
    check_lists(ck, tmp, "raw")


if __name__ == "__main__":
    # The SKIPs are above: this test needs python3-avro and test_codec only.
    sys.exit(C.run_main(SUITE, "all", main, prereqs=lambda: None))
