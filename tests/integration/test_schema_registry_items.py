"""test_schema_registry_items.py - the live catalogue's item updates read
through a Schema Registry (issue 13, DESIGN.md sections 11 and 13), as
separate processes over TCP: registry_standin.py, a `halflife broker`, a
`halflife run` with schema.registry.url, an empty schemas.dir and
items.schema.id=77 (an id nothing uses: only the registry can make an
update readable), item updates written by python3-avro (the reference
implementation) and by `halflife items`.

Cases:
  foldin_schema_registered    the worker registers the ItemUpdate schema
      under items-value for fold-in's own publications (not items.schema.id)
  items_outage_loses_nothing  the stand-in stopped for 4 s while updates
      with an id the worker has not seen yet arrive: none is applied, none
      is refused or dead-lettered, the log says the partition waits, the
      events keep flowing; once the registry is back every update applies
  registry_id_hides_item      an item hidden by such an update is in no list
      published afterwards, and the lists stay k long
  items_cmd_registers         `halflife items` registers the ItemUpdate
      schema under items-value, its records carry that id (our schema, as
      the registry holds it), and the item it hides leaves the lists
  unknown_id_dead_lettered    an update whose id the registry lacks (404),
      and one whose id names another schema (the events'), are refused as
      unknown_schema, counted and dead-lettered with the item topic named
"""
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402
from test_items import avro_update, dlq_reasons, lists_after, produce_raw, watermarks  # noqa: E402
from test_min_interval import read_all, wait_settled  # noqa: E402
from test_schema_registry import Standin, client, undoc, wait_metric  # noqa: E402

N_EVENTS, N_USERS, N_ITEMS, K = 2000, 100, 1000, 20
PHASE = N_EVENTS // 4
FAILED = []


def check(name, ok, why):
    print(("PASS schema_registry_items.%s" % name) if ok else
          ("FAIL schema_registry_items.%s: %s" % (name, why)))
    if not ok:
        FAILED.append(name)


def popular(bootstrap, n):
    import collections
    by_user, _ = read_all(bootstrap, "recommendations")
    freq = collections.Counter(i["item_id"] for ls in by_user.values() for i in ls[-1]["items"])
    return [i for i, _ in freq.most_common(n)]


def produce_phase(ctx, k):
    """Phase k's events; the lists they caused."""
    high = watermarks(ctx["bootstrap"], "behaviour-events")
    U.produce_events(ctx["bootstrap"], "behaviour-events",
                     ctx["events"][k * PHASE:(k + 1) * PHASE], schema_id=ctx["event_id"])
    wait_settled(ctx["w"], (k + 1) * PHASE)
    return [[i["item_id"] for i in d["items"]] for d in lists_after(ctx["bootstrap"], high)]


def outage(ctx, reg, item_id, x, quiet):
    """Stops the registry, writes 11 updates under item_id (new to the
    worker), produces phase 1 meanwhile, then starts the registry again."""
    w = ctx["w"]
    reg.stop()
    t0 = time.time()
    recs = [(q, avro_update(q, False, schema_id=item_id)) for q in quiet] + \
        [(x, avro_update(x, False, schema_id=item_id))]
    produce_raw(ctx["bootstrap"], "items", recs)
    produce_phase(ctx, 1)
    time.sleep(max(0, 4 - (time.time() - t0)))
    seen = {"applied": w.metric("halflife_item_updates_total"),
            "invalid": w.metric("halflife_item_updates_invalid_total"),
            "consumed": w.metric("halflife_events_consumed_total"),
            # park.c once lost records as re-delivered here ("976 < 1000")
            "redelivered": w.metric("halflife_input_redelivered_total"),
            "up": w.metric("halflife_schema_registry_up"),
            "waits": "event=item_update_waits" in w.log_text()}
    reg.start()
    applied = wait_metric(w, "halflife_item_updates_total", len(recs), 30)
    invalid = w.metric("halflife_item_updates_invalid_total")
    dlq = [r for r in dlq_reasons(ctx["bootstrap"], "behaviour-events.dlq") if r != "other"]
    check("items_outage_loses_nothing",
          seen["applied"] == 0 and seen["invalid"] == 0 and seen["waits"] and
          seen["consumed"] >= 2 * PHASE and seen["up"] == 0 and
          applied == len(recs) and invalid == 0 and not dlq,
          "during: %s; after: applied %d of %d, invalid %d, dead letters %s"
          % (seen, applied, len(recs), invalid, dlq))


def hidden_check(name, lists, item, extra=""):
    holding = sum(item in it for it in lists)
    short = [len(it) for it in lists if len(it) != K]
    check(name, lists and not holding and not short,
          "%d lists after, %d hold %s, lengths off k: %s%s"
          % (len(lists), holding, item, short[:5], extra))


def items_cmd(ctx, sr, y):
    path = os.path.join(ctx["tmp"], "hide_y.csv")
    with open(path, "w") as f:
        f.write("%s,false\n" % y)
    r = subprocess.run([U.HL, "items", "--input", path, "-X",
                        "kafka.bootstrap.servers=" + ctx["bootstrap"],
                        "-X", "schema.registry.url=" + ctx["url"]],
                       capture_output=True, text=True, timeout=60)
    applied = wait_metric(ctx["w"], "halflife_item_updates_total", 12, 20)
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": ctx["bootstrap"], "group.id": "sri-%d" % time.time_ns()})
    parts = sorted(c.list_topics("items", timeout=10).topics["items"].partitions)
    c.assign([TopicPartition("items", p, 0) for p in parts])
    ids, deadline = {}, time.time() + 10
    while time.time() < deadline and y not in ids:
        m = c.poll(0.3)
        if m is not None and not m.error():
            ids[m.key().decode()] = struct.unpack(">I", m.value()[1:5])[0]
    c.close()
    rid = ids.get(y)
    with open(os.path.join(U.SCHEMAS, "item_update.avsc")) as f:
        ours = undoc(json.load(f))
    same = rid is not None and undoc(json.loads(sr.get_schema(rid).schema_str)) == ours
    listed = rid is not None and rid in [v.schema_id for v in
                                         [sr.get_latest_version("items-value")]]
    out = r.stdout + r.stderr
    check("items_cmd_registers",
          r.returncode == 0 and same and listed and rid != 77 and applied == 12 and
          ("event=item_schema subject=items-value id=%s" % rid) in out,
          "exit %d, record id %s (ours %s, latest under items-value %s), applied %d; %s"
          % (r.returncode, rid, same, listed, applied, out[-300:]))


def unknown_ids(ctx):
    produce_raw(ctx["bootstrap"], "items", [
        ("ghost-1", avro_update("ghost-1", False, schema_id=9999)),
        ("ghost-2", avro_update("ghost-2", False, schema_id=ctx["event_id"]))])
    n = wait_metric(ctx["w"], "halflife_item_updates_invalid_total", 2, 20)
    unknown = ctx["w"].metric("halflife_item_updates_invalid_total", 'reason="unknown_schema"')
    deadline, reasons = time.time() + 20, []
    while time.time() < deadline and len(reasons) < 2:      # until the DLQ has them
        reasons = [r for r in dlq_reasons(ctx["bootstrap"], "behaviour-events.dlq")
                   if r != "other"]
        time.sleep(0.3)
    check("unknown_id_dead_lettered",
          n == 2 and unknown == 2 and reasons == ["unknown_schema", "unknown_schema"],
          "invalid %d (unknown_schema %d), dead letters from items %s" % (n, unknown, reasons))


def fold_schema(ctx, sr):
    """Fold-in publishes ItemUpdates itself: with a registry the worker
    registers their schema under items-value and writes that id, never
    items.schema.id (77 here, which the registry does not have)."""
    m = re.search(r"event=items_schema subject=items-value id=(\d+)", ctx["w"].log_text())
    fid = int(m.group(1)) if m else None
    with open(os.path.join(U.SCHEMAS, "item_update.avsc")) as f:
        ours = undoc(json.load(f))
    same = fid is not None and undoc(json.loads(sr.get_schema(fid).schema_str)) == ours
    check("foldin_schema_registered", fid is not None and fid != 77 and same,
          "fold-in's id %s (its schema ours: %s)" % (fid, same))


def scenario(ctx):
    from confluent_kafka.schema_registry import Schema
    reg = Standin(os.path.join(ctx["tmp"], "registry"))
    broker = U.Broker(4, ["behaviour-events", "recommendations", "behaviour-events.dlq", "items"],
                      os.path.join(ctx["tmp"], "broker.log"))
    ctx["bootstrap"], ctx["url"] = broker.bootstrap, reg.url
    try:
        sr = client(reg.url)
        with open(os.path.join(U.SCHEMAS, "behaviour_event.avsc")) as f:
            ctx["event_id"] = sr.register_schema("behaviour-events-value", Schema(f.read(), "AVRO"))
        with open(os.path.join(U.SCHEMAS, "item_update.avsc")) as f:
            item_id = sr.register_schema("items-value", Schema(f.read(), "AVRO"))
        empty = os.path.join(ctx["tmp"], "no-schemas")
        os.makedirs(empty)
        ctx["w"] = U.Worker(broker.bootstrap, ctx["model"], os.path.join(ctx["tmp"], "w.log"),
                            extra=["schema.registry.url=" + reg.url, "schemas.dir=" + empty,
                                   "items.schema.id=77", "worker.threads=2",
                                   "kafka.fetch.wait.max.ms=10", "batch.max.messages=50",
                                   "snapshot.dir=" + os.path.join(ctx["tmp"], "snap")])
        U.produce_events(broker.bootstrap, "behaviour-events", ctx["events"][:PHASE],
                         schema_id=ctx["event_id"])
        wait_settled(ctx["w"], PHASE)
        fold_schema(ctx, sr)
        x, y = popular(broker.bootstrap, 2)
        quiet = ["i%06d" % (N_ITEMS - 1 - j) for j in range(10)]
        outage(ctx, reg, item_id, x, quiet)
        hidden_check("registry_id_hides_item", produce_phase(ctx, 2), x,
                     " (item updates under registry id %d)" % item_id)
        items_cmd(ctx, sr, y)
        hidden_check("items_cmd_hides_item", produce_phase(ctx, 3), y)
        unknown_ids(ctx)
        rc = ctx["w"].stop()
        ctx["w"] = None
        check("sigterm_exits_0", rc == 0, "exit status %s" % rc)
    finally:
        if ctx.get("w") is not None:
            ctx["w"].stop()
        broker.stop()
        reg.stop()


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP schema_registry_items: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_sri_")
    ctx = {"tmp": tmp, "model": os.path.join(tmp, "m.hlm")}
    events_csv = os.path.join(tmp, "e.csv")
    U.make_model(ctx["model"], N_ITEMS, 16)
    U.make_events(events_csv, N_EVENTS, N_USERS, N_ITEMS)
    ctx["events"] = U.read_events_csv(events_csv)
    U.run_guarded(check, scenario, ctx)
    return U.end_run(tmp, FAILED)


if __name__ == "__main__":
    sys.exit(main())
