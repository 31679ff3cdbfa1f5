#!/usr/bin/python3
"""test_list_shapes.py - the lists a running worker publishes, as their
consumers read them: every list on the output topic decodes with
python3-avro (the reference implementation) against
schemas/recommendation_list.avsc with no byte left over, for the shapes
the unit tests do not reach through the whole worker:

- user and item ids in many scripts, of exactly 256 bytes (the bound),
  multi-byte characters included; because_item_id naming them;
- recs.k (50) larger than the catalogue (8 items): at most 8 items;
- a user who saw every item: an empty list (recs.exclude.seen);
- scores of -0, a denormal and a huge bias (+-256, the model bound).

After a swap to a model of another dim, the lists of later events carry
the new version. With worker.threads=4 over 2 partitions (threads owning nothing) as
with 2; and recs.enabled=false publishes nothing and consumes everything.

And per list: the Kafka key is the user_id's bytes, generated_at is the
user's newest event time, model_version the model's, source its newest
event's partition and offset, every because_item_id one of its history's
items.

Run: HL_HALFLIFE=build/halflife HL_BUILD=build /usr/bin/python3 tests/integration/test_list_shapes.py
"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "schemas"))
import e2e_util as U  # noqa: E402

SUITE = "list_shapes"
VERSION = "shapes-版本-1"
ITEMS = ["商品-0", "x" * 256, "é" * 128, "🎧" * 64, "item-4", "ελληνικά-5",
         "a\"b\\c\n6", "ид-7"]
K = 50
T0 = 1767225600000
failed = 0


def check(name, ok, why=""):
    global failed
    if ok:
        print("PASS %s.%s" % (SUITE, name))
    else:
        failed += 1
        print("FAIL %s.%s: %s" % (SUITE, name, why))
    sys.stdout.flush()


def write_model(path, dim=8, version=VERSION):
    import hlm
    import numpy as np
    m = hlm.random_model(len(ITEMS), dim, seed=3, version=version)
    m.item_ids = list(ITEMS)
    # scores: a huge bias either way, one item scoring exactly -0 for any
    # user (no embedding, bias -0), one a denormal bias
    m.bias = np.array([256.0, -256.0, -0.0, 1e-40, 0.5, -0.5, 0.0, 1.0], dtype=np.float32)
    m.e_out[2, :] = 0.0
    m.e_out[3, :] = 0.0
    hlm.write(path, m)


def events():
    """(user, item, type, ts, weight): users in several scripts, one of
    256 bytes, one who saw every item."""
    users = ["用户-1", "u" * 256, "ü" * 128, "plain"]
    out = []
    ts = T0
    for n, u in enumerate(users):
        for j in range(3):
            ts += 1000
            out.append((u, ITEMS[(n + 2 * j) % len(ITEMS)], "CLICK", ts, None))
    for it in ITEMS:                        # every item: nothing left to list
        ts += 1000
        out.append(("saw-all", it, "VIEW", ts, None))
    out.append(("plain", "not-in-model-ü", "VIEW", ts + 5, None))
    return out


def read_lists(bootstrap, want_last, deadline):
    """Every list until each user's list of its last event came (or the
    deadline): [(key, value)]."""
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": bootstrap,
                  "group.id": "shapes-%d-%d" % (os.getpid(), time.time_ns()),
                  "enable.auto.commit": False})
    U.assign_from_start(c, "recommendations", deadline)
    reader = U.avro.io.DatumReader(U.load_schema("recommendation_list.avsc"))
    got, done = [], set()
    try:
        while time.time() < deadline and len(done) < len(want_last):
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            got.append((msg.key(), msg.value()))
            try:
                d = U.decode_list(reader, msg.value())
            except Exception:               # noqa: BLE001 - checked below
                continue
            u = d["user_id"]
            if want_last.get(u) == (d["source"]["partition"], d["source"]["offset"]):
                done.add(u)
    finally:
        c.close()
    return got


def decode_exact(reader, value):
    """The list, or the reason python3-avro cannot read it whole."""
    import io
    try:
        buf = io.BytesIO(value[5:])
        d = reader.read(U.avro.io.BinaryDecoder(buf))
    except Exception as e:                  # noqa: BLE001 - the finding
        return None, "python3-avro: %r" % e
    if value[0] != 0 or buf.tell() != len(value) - 5:
        return None, "framing or %d trailing bytes" % (len(value) - 5 - buf.tell())
    d["generated_at"] = U.dt_to_ms(d["generated_at"])
    return d, None


def check_list(d, key, evs, last, version=VERSION):
    """Why list d (under key) is wrong, or None."""
    u = d["user_id"]
    mine = [e for e in evs if e[0] == u]
    if key != u.encode():
        return "key %r is not user_id %r's bytes" % (key[:20], u[:20])
    # after a swap, only the list of the user's last event must be the new one's
    if d["model_version"] != version and \
            (version == VERSION or (d["source"]["partition"], d["source"]["offset"]) == last[u]):
        return "model_version %r" % d["model_version"]
    if len(d["items"]) > len(ITEMS):
        return "%d items from a catalogue of %d" % (len(d["items"]), len(ITEMS))
    # what the user had seen when this list was made: a list of an earlier
    # event may hold an item of a later one (the events' times increase)
    seen = {e[1] for e in mine if e[3] <= d["generated_at"]}
    for x in d["items"]:
        if x["item_id"] not in ITEMS or x["item_id"] in seen:
            return "item %r listed" % x["item_id"][:20]
        if x["because_item_id"] is not None and x["because_item_id"] not in seen:
            return "because %r not in the history" % x["because_item_id"][:20]
    if (d["source"]["partition"], d["source"]["offset"]) == last[u] and \
            d["generated_at"] != max(e[3] for e in mine):
        return "generated_at %d" % d["generated_at"]
    return None


def start(tmp, tag, extra):
    model = os.path.join(tmp, "m.hlm")
    write_model(model)
    broker = U.Broker(2, ["behaviour-events", "recommendations", "behaviour-events.dlq"],
                      os.path.join(tmp, tag + "-broker.log"))
    try:
        worker = U.Worker(broker.bootstrap, model, os.path.join(tmp, tag + "-worker.log"),
                          extra=["recs.k=%d" % K, "kafka.fetch.wait.max.ms=10",
                                 "snapshot.dir=" + os.path.join(tmp, tag + "-snap")] + extra)
    except BaseException:
        broker.stop()
        raise
    return broker, worker


def run(tmp, tag, extra):
    """The lists of one worker configuration (tag names the checks)."""
    evs = events()
    broker, worker = start(tmp, tag, extra)
    try:
        last = U.produce_events(broker.bootstrap, "behaviour-events", evs)
        got = read_lists(broker.bootstrap, last, time.time() + 60)
        reader = U.avro.io.DatumReader(U.load_schema("recommendation_list.avsc"))
        bad, users, empty = [], {}, False
        for key, value in got:
            d, why = decode_exact(reader, value)
            if d is not None:
                why = check_list(d, key, evs, last)
                users[d["user_id"]] = d
                empty |= d["user_id"] == "saw-all" and \
                    (d["source"]["partition"], d["source"]["offset"]) == last["saw-all"] and \
                    d["items"] == []
            if why:
                bad.append(why)
        check(tag + ".every_list_decodes_and_says_the_truth", got and not bad,
              "%d of %d lists wrong, e.g. %s" % (len(bad), len(got), bad[:3]))
        check(tag + ".every_user_listed", set(users) == set(last),
              "users without a list: %s" % sorted(set(last) - set(users))[:3])
        check(tag + ".saw_all_gets_an_empty_list", empty,
              "saw-all's last list: %r" % (users.get("saw-all"),))
        because = {x["because_item_id"] for d in users.values() for x in d["items"]} - {None}
        check(tag + ".because_names_long_and_unicode_ids", ITEMS[1] in because or
              ITEMS[3] in because, "because_item_ids listed: %r" % sorted(because))
        full = users.get("plain")
        check(tag + ".k_beyond_catalogue", full is not None and 0 < len(full["items"]) <= len(ITEMS) - 3,
              "plain's list %r" % (full,))
        rc = worker.stop()
        worker = None
        check(tag + ".sigterm_exits_0", rc == 0, "exit status %s" % rc)
    finally:
        if worker:
            worker.stop()
        broker.stop()


def run_swap(tmp):
    """A model of another dim and version renamed over model.path, then one
    more event per user: each user's list of that event carries the new
    version, its newest event time and its position."""
    evs = events()
    broker, worker = start(tmp, "swap", ["model.check.ms=100"])
    try:
        first = U.produce_events(broker.bootstrap, "behaviour-events", evs)
        read_lists(broker.bootstrap, first, time.time() + 60)
        model = os.path.join(tmp, "m.hlm")
        write_model(model + ".b", dim=12, version="shapes-B-ü")
        os.rename(model + ".b", model)
        deadline = time.time() + 60
        while time.time() < deadline and "event=model_swapped" not in worker.log_text():
            time.sleep(0.1)
        ts = max(e[3] for e in evs)
        more = [(u, ITEMS[0] if u == "saw-all" else ITEMS[7], "PURCHASE", ts - 60000, None)
                for u in sorted(first)]         # late: generated_at stays the newest
        last = U.produce_events(broker.bootstrap, "behaviour-events", more)
        got = read_lists(broker.bootstrap, last, time.time() + 60)
        reader = U.avro.io.DatumReader(U.load_schema("recommendation_list.avsc"))
        bad, seen = [], set()
        for key, value in got:
            d, why = decode_exact(reader, value)
            if d is not None and \
                    (d["source"]["partition"], d["source"]["offset"]) == last[d["user_id"]]:
                seen.add(d["user_id"])
                why = check_list(d, key, evs + more, last, "shapes-B-ü")
            if why:
                bad.append(why)
        check("swap.lists_say_the_new_model", not bad and seen == set(last),
              "%d wrong, e.g. %s; users with their last list %d of %d"
              % (len(bad), bad[:3], len(seen), len(last)))
        rc = worker.stop()
        worker = None
        check("swap.sigterm_exits_0", rc == 0, "exit status %s" % rc)
    finally:
        if worker:
            worker.stop()
        broker.stop()


def run_disabled(tmp):
    """recs.enabled=false: state only, every event consumed, no list."""
    from confluent_kafka import Consumer, TopicPartition
    evs = events()
    broker, worker = start(tmp, "disabled", ["recs.enabled=false"])
    try:
        U.produce_events(broker.bootstrap, "behaviour-events", evs)
        deadline, consumed = time.time() + 60, 0
        while time.time() < deadline and consumed < len(evs):
            try:
                consumed = worker.metric("halflife_events_consumed_total")
            except OSError:
                pass                        # not listening yet
            time.sleep(0.2)
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "shapes-wm"})
        high = sum(c.get_watermark_offsets(TopicPartition("recommendations", p), 10)[1]
                   for p in range(2))
        c.close()
        check("disabled.state_only", consumed == len(evs) and high == 0,
              "consumed %d of %d, %d lists on the output topic" % (consumed, len(evs), high))
        rc = worker.stop()
        worker = None
        check("disabled.sigterm_exits_0", rc == 0, "exit status %s" % rc)
    finally:
        if worker:
            worker.stop()
        broker.stop()


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP %s.all: %s" % (SUITE, why))
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_shapes_")
    U.run_guarded(check, run, tmp, "threads2", ["worker.threads=2"])
    # more threads than partitions: two own nothing
    U.run_guarded(check, run, tmp, "threads4", ["worker.threads=4"])
    U.run_guarded(check, run_swap, tmp)
    U.run_guarded(check, run_disabled, tmp)
    return U.end_run(tmp, failed)


if __name__ == "__main__":
    sys.exit(main())
