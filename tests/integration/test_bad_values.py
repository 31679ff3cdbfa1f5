"""test_bad_values.py - well-formed Avro carrying values the state and the
output cannot take (issue 16, "Hardening", items 2 and 4) goes to the
dead-letter topic with its reason, against a real `halflife run` fed by a
`halflife broker`:

- weights of 1e38 (a valid Avro float: four such events made a user's
  decayed mass inf and NaN, "m":[-nan,inf,inf] in `halflife snapshot
  dump`), +inf, NaN, -1 and 2e30 (above event.max.weight, set to 1e30
  here), produced with python3-avro, are bad_weight;
- two VIEW events of weight 9e29 (within event.max.weight, weight.view=1)
  at another user: the first applies, the second would take the user's
  mass past 1e30 and the state table refuses it (the guard behind the
  codec), counted in halflife_events_non_finite_total;
- an item_id and a user_id that are not UTF-8 (written by hand: python3-avro
  will not encode them) are bad_utf8; before, the event was applied and a
  list naming the user was published that python3-avro cannot decode.

Checks: each bad record is in the DLQ with its reason and /metrics counts
it; halflife_dlq_errors_total stays 0; halflife_events_non_finite_total
and halflife_events_failed_total are 1; every valid event is applied; every published list decodes with
python3-avro; after SIGTERM every snapshot dumps (`halflife snapshot dump
--values`) as strict JSON (UTF-8, no NaN or Infinity) with finite state,
including the user the 1e38 events were aimed at.
"""
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402
from test_dlq import HDR, avro_str, read_dlq, zz  # noqa: E402

TS = 1767225600000 + 10**9        # after every generated event


def by_hand(user, item, weight=None):
    """A BehaviourEvent body under schema id 1 with raw id bytes."""
    w = b"\x00" if weight is None else b"\x02" + struct.pack("<f", weight)
    return HDR + avro_str(user) + avro_str(item) + zz(4) + zz(TS) + w + b"\x00"


def bad_records(victim, heavy, item):
    """[(key, payload, reason)]: victim and heavy are users with state, item
    a model item; reason None for the two 9e29 events the codec accepts."""
    writer = U.avro.io.DatumWriter(U.load_schema("behaviour_event.avsc"))
    out = []
    for k, w in enumerate([1e38, 1e38, 1e38, 1e38, float("inf"), float("nan"), -1.0, 2e30]):
        v = U.encode_event(writer, 1, victim, item, "PURCHASE", TS + k, w)
        out.append((victim.encode(), v, "bad_weight"))
    out.append((victim.encode(), by_hand(victim.encode(), b"item\xff"), "bad_utf8"))
    out.append((b"u\xc3\x28", by_hand(b"u\xc3\x28", item.encode()), "bad_utf8"))
    out.append((b"u-surrogate", by_hand(b"u\xed\xa0\x80", item.encode(), 2.0), "bad_utf8"))
    for k in range(2):
        v = U.encode_event(writer, 1, heavy, item, "VIEW", TS + 100 + k, 9e29)
        out.append((heavy.encode(), v, None))
    return out


def read_lists(bootstrap, want, deadline):
    """Every list on the output topic (raw values), until want or the deadline."""
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bv-reader-%d" % time.time_ns(),
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    U.assign_from_start(c, "recommendations", deadline)
    got = []
    try:
        while time.time() < deadline and len(got) < want:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append(m.value())
    finally:
        c.close()
    return got


def strict_json(line):
    def refuse(name):
        raise ValueError("%s is not JSON" % name)
    return json.loads(line, parse_constant=refuse)


def dump_snapshots(snapdir):
    """[(path, problem or None, rows)] for every snapshot file."""
    out = []
    for name in sorted(os.listdir(snapdir)) if os.path.isdir(snapdir) else []:
        if not name.endswith(".hls"):
            continue
        path = os.path.join(snapdir, name)
        r = subprocess.run([U.HL, "snapshot", "dump", "--values", path], capture_output=True)
        try:
            rows = [strict_json(l) for l in r.stdout.decode("utf-8").splitlines()]
            strict_json(subprocess.run([U.HL, "snapshot", "inspect", path], capture_output=True,
                                       check=True).stdout.decode("utf-8"))
            out.append((path, None if r.returncode == 0 else "exit %d" % r.returncode, rows))
        except (ValueError, UnicodeDecodeError, subprocess.CalledProcessError) as e:
            out.append((path, str(e)[:200], []))
    return out


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP bad_values.dead_lettered: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_badval_")
    model, events_csv = os.path.join(tmp, "m.hlm"), os.path.join(tmp, "e.csv")
    snapdir = os.path.join(tmp, "snap")
    U.make_model(model, 1000, 16)
    U.make_events(events_csv, 1000, 60, 1000)
    events = U.read_events_csv(events_csv)
    victim, item = events[0][0], events[0][1]
    heavy = next(e[0] for e in events if e[0] != victim)
    broker = U.Broker(2, ["behaviour-events", "recommendations", "behaviour-events.dlq"],
                      os.path.join(tmp, "broker.log"))
    worker = None
    failed = []

    def check(name, ok, why):
        print(("PASS bad_values.%s" % name) if ok else ("FAIL bad_values.%s: %s" % (name, why)))
        if not ok:
            failed.append(name)

    try:
        from confluent_kafka import Producer
        worker = U.Worker(broker.bootstrap, model, os.path.join(tmp, "worker.log"),
                          extra=["snapshot.dir=" + snapdir, "kafka.fetch.wait.max.ms=10",
                                 "event.max.weight=1e30", "weight.view=1"])
        U.produce_events(broker.bootstrap, "behaviour-events", events[:500])
        bad = bad_records(victim, heavy, item)
        n_dlq = sum(1 for _k, _v, reason in bad if reason)
        p = Producer({"bootstrap.servers": broker.bootstrap})
        for key, value, _reason in bad:
            p.produce("behaviour-events", key=key, value=value)
        p.flush(10)
        U.produce_events(broker.bootstrap, "behaviour-events", events[500:])
        got = read_dlq(broker.bootstrap, n_dlq, time.time() + 30)
        total = len(events) + len(bad)
        deadline = time.time() + 20
        while time.time() < deadline and worker.metric("halflife_events_consumed_total") < total:
            time.sleep(0.3)
        check("worker_runs", worker.p.poll() is None, "exited %s" % worker.p.returncode)
        sent = {}
        for key, value, reason in bad:
            if reason:
                sent[(key, value)] = reason
        wrong = []
        for key, value, hdr in got:
            reason = sent.pop((key, value), None)
            if reason is None or hdr.get("halflife.reason") != reason:
                wrong.append((key, hdr.get("halflife.reason"), reason))
        check("each_in_dlq_with_reason", not wrong and not sent,
              "wrong %s; missing %s" % (wrong[:3], sorted(set(sent.values()))))
        counts = {"bad_weight": 8, "bad_utf8": 3}
        for reason, n in counts.items():
            inv = worker.metric("halflife_events_invalid_total", 'reason="%s"' % reason)
            dlq = worker.metric("halflife_dlq_records_total", 'reason="%s"' % reason)
            check("counted_" + reason, inv == n and dlq == n,
                  "invalid %d, dlq %d, want %d" % (inv, dlq, n))
        check("dlq_errors_zero", worker.metric("halflife_dlq_errors_total") == 0,
              "halflife_dlq_errors_total %d" % worker.metric("halflife_dlq_errors_total"))
        nf = worker.metric("halflife_events_non_finite_total")
        fl = worker.metric("halflife_events_failed_total")
        check("table_guard_counted", nf == 1 and fl == 1,
              "halflife_events_non_finite_total %d, failed %d, want 1 and 1" % (nf, fl))
        consumed = worker.metric("halflife_events_consumed_total")
        check("all_consumed", consumed == total, "consumed %d of %d" % (consumed, total))
        n_lists = int(worker.metric("halflife_lists_published_total"))
        lists = read_lists(broker.bootstrap, n_lists, time.time() + 20)
        reader = U.avro.io.DatumReader(U.load_schema("recommendation_list.avsc"))
        undecodable = 0
        for v in lists:
            try:
                U.decode_list(reader, v)
            except Exception:        # python3-avro: UnicodeDecodeError and kin
                undecodable += 1
        check("lists_decode", n_lists > 0 and len(lists) == n_lists and undecodable == 0,
              "%d of %d lists read, %d do not decode" % (len(lists), n_lists, undecodable))
        rc = worker.stop()
        worker = None
        check("clean_exit", rc == 0, "exit status %s after SIGTERM" % rc)
        log = open(os.path.join(tmp, "worker.log")).read()
        applied = int(log.rsplit("applied=", 1)[1].split()[0]) if "applied=" in log else -1
        check("table_guard_logged", "event=non_finite_refused" in log,
              "no non_finite_refused line in the worker log")
        check("valid_applied", applied == len(events) + 1,
              "applied %d, want %d valid + the first 9e29" % (applied, len(events)))
        snaps = dump_snapshots(snapdir)
        problems = [(os.path.basename(pth), why) for pth, why, _rows in snaps if why]
        rows = [r for _pth, why, rs in snaps for r in rs]
        nonfinite = [r["user"] for r in rows
                     if any(x is None for x in r["m"] + r.get("s", []))]
        check("snapshots_strict_json", snaps and not problems, "%s" % (problems[:3] or "none"))
        users = set(r["user"] for r in rows)
        check("state_finite", rows and not nonfinite and victim in users and heavy in users,
              "%d rows, non-finite %s, victim %s, heavy %s" % (len(rows), nonfinite[:3],
                                                               victim in users, heavy in users))
    finally:
        if worker:
            worker.stop()
        broker.stop()
    if failed:
        print("FAIL bad_values: %s (logs in %s)" % (failed, tmp))
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
