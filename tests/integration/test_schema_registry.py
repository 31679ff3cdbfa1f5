"""test_schema_registry.py - the worker and `halflife produce` against a
Schema Registry (issue 13, DESIGN.md section 13), as separate processes over
TCP: registry_standin.py (checked here against the reference client,
python3-confluent-kafka's SchemaRegistryClient), a `halflife broker`, a
`halflife run` with schema.registry.url and an empty schemas.dir.

Cases:
  standin_matches_reference_client  register, fetch by id, look up, latest,
      404 40403, 401: what the API documentation says, through the client
  produce_registers_event_schema    `halflife produce` registers the event
      schema under behaviour-events-value and every record carries its id
  produce_wrong_credentials_refused `halflife produce` with a wrong password
      exits 1 naming the subject and the refusal (and the password nowhere)
  two_versions_decode_the_same      events written with two registered
      versions (the second adds an optional field) all apply, none invalid
  registry_outage_loses_nothing     the stand-in stopped for 10 s mid-stream
      while a third version's id is new to the worker: nothing dead-lettered,
      events of other partitions keep flowing, halflife_schema_registry_up
      reads 0, the id is fetched once it is back, consumed == produced
  lists_equal_offline               every user's last list equals what core/
      computes offline from the same events (so every event decoded to the
      same event whatever its writer version)
  list_schema_registered_once       recommendations-value holds one version
      and every list carries its id; python3-avro decodes every list with the
      schema fetched from the registry by that id
  wrong_credentials_refused_at_start / password_in_no_log_line
  start_waits_for_registry          a worker started while the registry is
      away waits for it, starts once it is back (looking the lists' id up
      with auto.register=false), stops cleanly on SIGTERM
  lookup_only_refuses_unregistered  auto.register=false and a subject without
      the lists' schema: refused at start, naming the subject
  404_fallback_file_or_dead_letter  an id the registry lacks comes from
      schema.registry.fallback.dir when there, else is dead-lettered
      (unknown_schema); URLs are tried in turn (the first one is dead)
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

HERE = os.path.dirname(os.path.abspath(__file__))
PY = "/usr/bin/python3"
USER, PASSWORD = "halflife", "pw-Zq81-never-logged"
N_EVENTS, N_USERS, N_ITEMS = 3000, 150, 1000
FAILED = []


def check(name, ok, why):
    if ok:
        print("PASS schema_registry.%s" % name)
    else:
        print("FAIL schema_registry.%s: %s" % (name, why))
        FAILED.append(name)


class Standin:
    """registry_standin.py as a process; stop() and start() keep its port
    and its state file, so ids survive an outage."""

    def __init__(self, tmp, user=None, extra=()):
        self.tmp, self.user, self.port, self.extra = tmp, user, 0, list(extra)
        os.makedirs(tmp, exist_ok=True)
        self.state = os.path.join(tmp, "registry.json")
        self.n = 0
        self.start()

    def start(self):
        self.n += 1
        self.log = open(os.path.join(self.tmp, "registry%d.log" % self.n), "w")
        args = [PY, os.path.join(HERE, "registry_standin.py"), "--port", str(self.port),
                "--state", self.state] + (["--user", self.user] if self.user else []) + \
            self.extra
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.port = int(self.p.stdout.readline().strip().split("=")[1])
        self.url = "http://127.0.0.1:%d" % self.port

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.log.close()


def client(url, user_info=None):
    from confluent_kafka.schema_registry import SchemaRegistryClient
    conf = {"url": url}
    if user_info:
        conf["basic.auth.user.info"] = user_info
    return SchemaRegistryClient(conf)


def event_schema_text(extra_fields=()):
    with open(os.path.join(U.SCHEMAS, "behaviour_event.avsc")) as f:
        d = json.load(f)
    d["fields"] += list(extra_fields)
    return json.dumps(d)


V2_FIELD = {"name": "session_id", "type": ["null", "string"], "default": None}
V3_FIELD = {"name": "referrer", "type": ["null", "string"], "default": None}


def check_standin(tmp):
    """The stand-in, through the reference client."""
    from confluent_kafka.schema_registry import Schema
    from confluent_kafka.schema_registry.error import SchemaRegistryError
    import urllib.request
    reg = Standin(os.path.join(tmp, "faithful"), user="a:b")
    why = []
    try:
        c = client(reg.url, "a:b")
        s1 = Schema(event_schema_text(), "AVRO")
        i1 = c.register_schema("t-value", s1)
        i1b = c.register_schema("t-value", s1)
        i2 = c.register_schema("t-value", Schema(event_schema_text([V2_FIELD]), "AVRO"))
        if not (i1 == i1b and i2 != i1):
            why.append("register ids %s %s %s" % (i1, i1b, i2))
        got = c.get_schema(i1)
        if json.loads(got.schema_str) != json.loads(s1.schema_str) or got.schema_type != "AVRO":
            why.append("get_schema(%d) gave another schema" % i1)
        rs = c.lookup_schema("t-value", s1)
        if (rs.schema_id, rs.version, rs.subject) != (i1, 1, "t-value"):
            why.append("lookup %s" % ((rs.schema_id, rs.version, rs.subject),))
        lv = c.get_latest_version("t-value")
        if (lv.schema_id, lv.version) != (i2, 2):
            why.append("latest %s" % ((lv.schema_id, lv.version),))
        for call, code in ((lambda: c.get_schema(999), 40403),
                           (lambda: c.lookup_schema("nope-value", s1), 40401),
                           (lambda: client(reg.url, "a:wrong").get_schema(i1), 401)):
            try:
                call()
                why.append("no error where %d was due" % code)
            except SchemaRegistryError as e:
                if e.error_code != code:
                    why.append("error_code %s, want %d" % (e.error_code, code))
        req = urllib.request.Request(reg.url + "/schemas/ids/%d" % i1,
                                     headers={"Authorization": "Basic YTpi"})
        with urllib.request.urlopen(req, timeout=5) as r:
            if r.headers["Content-Type"] != "application/vnd.schemaregistry.v1+json":
                why.append("content type %s" % r.headers["Content-Type"])
    finally:
        reg.stop()
    check("standin_matches_reference_client", not why, why)


def encode(schema, schema_id, ev, extra):
    import avro.io
    (u, i, t, ts, w) = ev
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", schema_id))
    rec = {"user_id": u, "item_id": i, "event_type": t, "timestamp": U.ms_to_dt(ts),
           "weight": w, "context": None}
    rec.update(extra)
    avro.io.DatumWriter(schema).write(rec, avro.io.BinaryEncoder(buf))
    return buf.getvalue()


class Producer:
    """Keyed by user with librdkafka's murmur2_random, the partitioner
    `halflife produce` uses, so a user stays on one partition."""

    def __init__(self, bootstrap):
        from confluent_kafka import Producer as P
        self.p = P({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                    "partitioner": "murmur2_random", "linger.ms": 5})
        self.part = {}

    def send(self, value, user):
        def done(err, msg):
            if err is None:
                self.part[msg.key().decode()] = msg.partition()
        self.p.produce("behaviour-events", key=user.encode(), value=value, on_delivery=done)
        self.p.poll(0)

    def flush(self):
        self.p.flush(30)


def halflife_produce(tmp, bootstrap, url, events):
    path = os.path.join(tmp, "part_a.csv")
    with open(path, "w") as f:
        f.write("user_id,item_id,event_type,timestamp_ms,weight\n")
        for (u, i, t, ts, w) in events:
            f.write("%s,%s,%s,%d,%s\n" % (u, i, t, ts, "" if w is None else repr(w)))
    r = subprocess.run([U.HL, "produce", "--input", path, "--format", "events-csv",
                        "-X", "kafka.bootstrap.servers=" + bootstrap,
                        "-X", "schema.registry.url=" + url,
                        "-X", "schema.registry.basic.auth.user.info=%s:%s" % (USER, PASSWORD)],
                       capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr


def read_all(bootstrap, topic, deadline, want=None):
    """[(key, value)] of topic until deadline or want records."""
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "sr-%d" % time.time_ns(),
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    U.assign_from_start(c, topic, deadline)
    out = []
    try:
        while time.time() < deadline and (want is None or len(out) < want):
            m = c.poll(0.3)
            if m is not None and not m.error():
                out.append((m.key(), m.value()))
    finally:
        c.close()
    return out


def wait_metric(worker, name, want, timeout):
    deadline = time.time() + timeout
    v = -1
    while time.time() < deadline:
        try:
            v = worker.metric(name)
        except OSError:                 # not listening yet
            v = -1
        if v >= want:
            break
        time.sleep(0.3)
    return v


def undoc(x):
    """A schema's JSON without its "doc" strings (they do not change it)."""
    if isinstance(x, dict):
        return {k: undoc(v) for k, v in x.items() if k != "doc"}
    if isinstance(x, list):
        return [undoc(v) for v in x]
    return x


def check_event_ids(bootstrap, sr, n_a):
    """produce_registers_event_schema: every record of part A carries the
    id the registry holds for our event schema under behaviour-events-value."""
    recs = read_all(bootstrap, "behaviour-events", time.time() + 20, want=n_a)
    ids = {struct.unpack(">I", v[1:5])[0] for _, v in recs}
    ok = len(recs) >= n_a and len(ids) == 1
    why = "records %d, ids %s" % (len(recs), ids)
    if ok:
        (i,) = ids
        with open(os.path.join(U.SCHEMAS, "behaviour_event.avsc")) as f:
            want = undoc(json.load(f))
        ok = undoc(json.loads(sr.get_schema(i).schema_str)) == want and \
            sr.lookup_schema("behaviour-events-value", sr.get_schema(i)).schema_id == i
        why = "id %d is not our event schema under behaviour-events-value" % i
    check("produce_registers_event_schema", ok, why)


def produce_versions(prod, events, ids, schemas, choose):
    """Each event with the version choose(event) names (1, 2 or 3)."""
    for k, ev in enumerate(events):
        v = choose(k, ev)
        extra = {"session_id": "s-%s" % ev[0]} if v >= 2 else {}
        if v == 3:
            extra["referrer"] = "r"
        prod.send(encode(schemas[v], ids[v], ev, extra), ev[0])
    prod.flush()


def outage(worker, reg, prod, events, ids, schemas, total_before):
    """Stops the stand-in for 10 s while partition 0's users write with a
    version the worker has not seen; returns what it saw meanwhile."""
    reg.stop()
    t0 = time.time()
    in_p0 = [ev for ev in events if prod.part.get(ev[0]) == 0]
    produce_versions(prod, events, ids, schemas, lambda k, ev: 3 if prod.part.get(ev[0]) == 0 else 1)
    others = len(events) - len(in_p0)
    flowed = wait_metric(worker, "halflife_events_consumed_total", total_before + others,
                         max(1.0, 8 - (time.time() - t0))) - total_before
    seen = {"flowed": flowed, "others": others, "p0": len(in_p0),
            "up": worker.metric("halflife_schema_registry_up"),
            "waiting": worker.metric("halflife_partitions_waiting_schema"),
            "dlq": worker.metric("halflife_dlq_records_total")}
    time.sleep(max(0, 10 - (time.time() - t0)))
    reg.start()
    return seen


def check_lists(bootstrap, sr, events, events_csv, model, want_last):
    import test_e2e as E
    ids = set()
    lv = sr.get_latest_version("recommendations-value")
    reader = U.avro.io.DatumReader(U.avro.schema.parse(sr.get_schema(lv.schema_id).schema_str))
    lists, done = E.read_lists(bootstrap, want_last, time.time() + 40)
    recs = read_all(bootstrap, "recommendations", time.time() + 10)
    bad_decode = 0
    for _, v in recs:
        ids.add(struct.unpack(">I", v[1:5])[0])
        try:
            U.decode_list(reader, v)
        except Exception:                   # noqa: BLE001 - counted and reported
            bad_decode += 1
    check("list_schema_registered_once",
          lv.version == 1 and ids == {lv.schema_id} and bad_decode == 0 and recs,
          "version %d id %d, ids in lists %s, %d of %d lists undecodable"
          % (lv.version, lv.schema_id, ids, bad_decode, len(recs)))
    offline = U.offline_lists(events_csv, model)
    bad = E.compare(lists, offline, events)
    check("lists_equal_offline", not bad and len(done) == len(want_last),
          "%d of %d users done, mismatches %s" % (len(done), len(want_last), bad[:3]))


def check_wrong_credentials(tmp, bootstrap, model, url):
    w = U.Worker(bootstrap, model, os.path.join(tmp, "worker_wrong.log"),
                 extra=["schema.registry.url=" + url, "schemas.dir=" + os.path.join(tmp, "none"),
                        "schema.registry.basic.auth.user.info=%s:%s-wrong" % (USER, PASSWORD),
                        "snapshot.dir=" + os.path.join(tmp, "snap_wrong")])
    try:
        rc = w.p.wait(30)
    except subprocess.TimeoutExpired:
        rc = "still running"
    w.stop()
    log = w.log_text()
    check("wrong_credentials_refused_at_start",
          rc == 1 and "credentials refused" in log and
          "schema.registry.basic.auth.user.info" in log,
          "exit %s, log %s" % (rc, log[-400:]))
    return log


def check_produce_wrong_credentials(tmp, bootstrap, url, events):
    """`halflife produce` with a wrong password sends nothing and says why."""
    path = os.path.join(tmp, "few.csv")
    with open(path, "w") as f:
        f.write("user_id,item_id,event_type,timestamp_ms,weight\n")
        for (u, i, t, ts, w) in events:
            f.write("%s,%s,%s,%d,\n" % (u, i, t, ts))
    r = subprocess.run([U.HL, "produce", "--input", path, "--format", "events-csv",
                        "-X", "kafka.bootstrap.servers=" + bootstrap,
                        "-X", "schema.registry.url=" + url,
                        "-X", "schema.registry.basic.auth.user.info=%s:%s-wrong" % (USER, PASSWORD)],
                       capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    check("produce_wrong_credentials_refused",
          r.returncode == 1 and "credentials refused" in out and "behaviour-events-value" in out,
          "exit %d, output %s" % (r.returncode, out[-300:]))
    return out


def check_not_in_registry(worker, prod, schemas):
    """An id the registry answers 404 for: read from schema.registry.fallback.dir
    when there (9998), else dead-lettered as unknown_schema (9999)."""
    ev = ("fallback-user", "i000001", "VIEW", 1767225600000, None)
    prod.send(encode(schemas[1], 9998, ev, {}), ev[0])
    ev = ("unknown-user", "i000001", "VIEW", 1767225600000, None)
    prod.send(encode(schemas[1], 9999, ev, {}), ev[0])
    prod.flush()
    consumed = wait_metric(worker, "halflife_events_consumed_total", 2002, 30)
    dlq = wait_metric(worker, "halflife_dlq_records_total", 1, 10)
    unknown = worker.metric("halflife_dlq_records_total", 'reason="unknown_schema"')
    log = worker.log_text()
    check("404_fallback_file_or_dead_letter",
          consumed == 2002 and dlq == 1 and unknown == 1 and
          "event=schema_fetched id=9998 source=fallback_dir" in log and
          "event=schema_unknown id=9999" in log,
          "consumed %d of 2002, dlq %d (unknown_schema %d)" % (consumed, dlq, unknown))


def check_start_waits(tmp, bootstrap, model, reg):
    """A worker started while the registry is away waits for it (the lists'
    schema id comes first), then starts; a SIGTERM meanwhile is a clean stop."""
    reg.stop()
    extra = ["schema.registry.url=" + reg.url, "schemas.dir=" + os.path.join(tmp, "none"),
             "schema.registry.basic.auth.user.info=%s:%s" % (USER, PASSWORD),
             "snapshot.dir=" + os.path.join(tmp, "snap_wait")]
    w = U.Worker(bootstrap, model, os.path.join(tmp, "worker_wait.log"),
                 extra=extra + ["schema.registry.auto.register=false"])
    w2 = U.Worker(bootstrap, model, os.path.join(tmp, "worker_wait2.log"), extra=extra)
    # both must be waiting: w2's SIGTERM is meant for a worker in its wait
    # (under SAN, w2 could still be starting when w already waited, and a
    # signal before the handlers are set kills it: exit -15, CI 2026-12-05)
    deadline = time.time() + 40
    while time.time() < deadline and not all("schema_registry_wait_start" in x.log_text()
                                             for x in (w, w2)):
        time.sleep(0.2)
    waiting = (w.p.poll() is None and w2.p.poll() is None and
               all("schema_registry_wait_start" in x.log_text() for x in (w, w2)))
    rc2 = w2.stop()                                 # SIGTERM while it waits
    reg.start()
    deadline = time.time() + 20
    while time.time() < deadline and "event=list_schema" not in w.log_text():
        time.sleep(0.2)
    started = "how=looked_up" in w.log_text() and w.p.poll() is None
    rc = w.stop()
    w3 = U.Worker(bootstrap, model, os.path.join(tmp, "worker_lookup.log"),
                  extra=extra + ["schema.registry.auto.register=false",
                                 "output.topic=never-registered"])
    try:
        rc3 = w3.p.wait(30)
    except subprocess.TimeoutExpired:
        rc3 = "still running"
    w3.stop()
    check("lookup_only_refuses_unregistered",
          rc3 == 1 and "not registered under subject never-registered-value" in w3.log_text(),
          "exit %s, log %s" % (rc3, w3.log_text()[-300:]))
    check("start_waits_for_registry", waiting and started and rc == 0 and rc2 == 0,
          "waited %s, started once back %s, exit %s, exit of the one stopped while "
          "waiting %s" % (waiting, started, rc, rc2))
    return w.log_text() + w2.log_text()


def scenario(tmp, model, events_csv, events):
    reg = Standin(tmp, user="%s:%s" % (USER, PASSWORD))
    broker = U.Broker(4, ["behaviour-events", "recommendations", "behaviour-events.dlq"],
                      os.path.join(tmp, "broker.log"))
    worker, logs = None, []
    try:
        import avro.schema
        sr = client(reg.url, "%s:%s" % (USER, PASSWORD))
        from confluent_kafka.schema_registry import Schema
        schemas = {v: avro.schema.parse(event_schema_text(f)) for v, f in
                   ((1, []), (2, [V2_FIELD]), (3, [V2_FIELD, V3_FIELD]))}
        ids = {1: sr.register_schema("behaviour-events-value", Schema(event_schema_text(), "AVRO")),
               2: sr.register_schema("behaviour-events-value",
                                     Schema(event_schema_text([V2_FIELD]), "AVRO"))}
        empty, fallback = os.path.join(tmp, "no-schemas"), os.path.join(tmp, "fallback")
        os.makedirs(empty)
        os.makedirs(fallback)
        with open(os.path.join(fallback, "9998.avsc"), "w") as f:
            f.write(event_schema_text())
        # The first URL refuses connections: the second must answer.
        worker = U.Worker(broker.bootstrap, model, os.path.join(tmp, "worker.log"),
                          extra=["schema.registry.url=http://127.0.0.1:1," + reg.url,
                                 "schemas.dir=" + empty,
                                 "schema.registry.fallback.dir=" + fallback,
                                 "schema.registry.basic.auth.user.info=%s:%s" % (USER, PASSWORD),
                                 "snapshot.dir=" + os.path.join(tmp, "snap"),
                                 "kafka.fetch.wait.max.ms=10", "worker.threads=2"])
        a, b, c = events[:1000], events[1000:2000], events[2000:]
        rc, out = halflife_produce(tmp, broker.bootstrap, reg.url, a)
        logs.append(out)
        if rc != 0:
            raise RuntimeError("halflife produce failed: %s" % out[-300:])
        check_event_ids(broker.bootstrap, sr, len(a))
        logs.append(check_produce_wrong_credentials(tmp, broker.bootstrap, reg.url, a[:5]))
        prod = Producer(broker.bootstrap)
        produce_versions(prod, b, ids, schemas, lambda k, ev: 1 + (k & 1))
        consumed = wait_metric(worker, "halflife_events_consumed_total", 2000, 30)
        invalid = worker.metric("halflife_events_invalid_total")
        check("two_versions_decode_the_same", consumed == 2000 and invalid == 0,
              "consumed %d of 2000, invalid %d" % (consumed, invalid))
        check_not_in_registry(worker, prod, schemas)
        ids[3] = sr.register_schema("behaviour-events-value",
                                    Schema(event_schema_text([V2_FIELD, V3_FIELD]), "AVRO"))
        seen = outage(worker, reg, prod, c, ids, schemas, 2002)
        consumed = wait_metric(worker, "halflife_events_consumed_total", len(events) + 2, 30) - 2
        invalid = worker.metric("halflife_events_invalid_total")
        dlq = worker.metric("halflife_dlq_records_total")
        check("registry_outage_loses_nothing",
              seen["flowed"] >= seen["others"] and seen["p0"] > 0 and seen["up"] == 0 and
              seen["waiting"] >= 1 and seen["dlq"] == 1 and consumed == len(events) and
              invalid == 1 and dlq == 1 and worker.metric("halflife_schema_registry_up") == 1,
              "during: %s; after: consumed %d of %d, invalid %d, dlq %d"
              % (seen, consumed, len(events), invalid, dlq))
        last = {}
        users = {ev[0] for ev in events}
        for k, v in read_all_last(broker.bootstrap, len(events) + 2).items():
            if k in users:
                last[k] = v
        check_lists(broker.bootstrap, sr, events, events_csv, model, last)
        rc = worker.stop()
        check("sigterm_exits_0", rc == 0, "exit status %s" % rc)
        logs.append(worker.log_text())
        worker = None
        logs.append(check_wrong_credentials(tmp, broker.bootstrap, model, reg.url))
        logs.append(check_start_waits(tmp, broker.bootstrap, model, reg))
    finally:
        if worker:
            worker.stop()
        broker.stop()
        reg.stop()
    return logs


def read_all_last(bootstrap, n):
    """{user: (partition, offset)} of each user's last input record."""
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "sr-last-%d" % time.time_ns(),
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    last, got, deadline = {}, 0, time.time() + 30
    U.assign_from_start(c, "behaviour-events", deadline)
    try:
        while got < n and time.time() < deadline:
            m = c.poll(0.3)
            if m is None or m.error():
                continue
            got += 1
            u = m.key().decode()
            if u not in last or last[u][1] < m.offset():
                last[u] = (m.partition(), m.offset())
    finally:
        c.close()
    return last


def check_secrets(logs):
    r = subprocess.run([U.HL, "run", "--help"], capture_output=True, text=True)
    bad = subprocess.run([U.HL, "run", "-X", "model.path=x", "-X",
                          "schema.registry.basic.auth.user.info=" + "p" * 2000],
                         capture_output=True, text=True)
    texts = logs + [r.stdout + r.stderr, bad.stdout + bad.stderr]
    leaks = [t[max(0, t.find(PASSWORD) - 80):t.find(PASSWORD) + 40] for t in texts if PASSWORD in t]
    check("password_in_no_log_line", not leaks and "p" * 100 not in texts[-1] and bad.returncode == 2,
          "leaks %s; refusal of a bad value: %s" % (leaks[:2], texts[-1][:200]))


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP schema_registry: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_sr_")
    model, events_csv = os.path.join(tmp, "m.hlm"), os.path.join(tmp, "e.csv")
    U.make_model(model, N_ITEMS, 16)
    U.make_events(events_csv, N_EVENTS, N_USERS, N_ITEMS)
    events = U.read_events_csv(events_csv)
    check_standin(tmp)
    logs = scenario(tmp, model, events_csv, events)
    check_secrets(logs)
    if FAILED:
        print("    logs in %s" % tmp)
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
