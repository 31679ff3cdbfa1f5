"""cluster_util.py - pieces shared by the multi-process worker tests
(test_rebalance.py, test_shutdown.py, test_outage.py): the frame of their
main() (skip without prerequisites, PASS/FAIL lines, a scratch directory kept
when a check fails), processes started in their own process groups and all
killed on the way out, a paced producer, the group's committed offsets, the
newest snapshot of each partition, the final state as `halflife snapshot
dump` prints it, and the two checks every one of them ends with: each user's
last list equals the offline reference, and the final state equals a clean
single-worker run's.

Builds on e2e_util.py (the broker's bootstrap line, the Avro encoding, the
offline reference) and test_e2e.py (reading the lists back, comparing them);
run with /usr/bin/python3.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import e2e_util as U
import test_e2e as E

TOPIC = "behaviour-events"
TOPICS = [TOPIC, "recommendations", TOPIC + ".dlq"]


class Checks:
    """One test file's PASS/FAIL lines, its scratch directory (named in every
    FAIL) and the processes it started."""

    def __init__(self, suite):
        self.suite = suite
        self.tmp = tempfile.mkdtemp(prefix="hl_%s_" % suite)
        self.procs = Procs()
        self.failed = 0
        self.lock = threading.Lock()    # cases may run in threads (test_delivery_refused)

    def check(self, name, ok, why):
        line = (("PASS %s.%s" % (self.suite, name)) if ok else
                ("FAIL %s.%s: %s (logs in %s)" % (self.suite, name, why, self.tmp)))
        with self.lock:                 # one write per line: run.sh greps line starts
            print(line, flush=True)
            self.failed += 0 if ok else 1


def run_main(suite, skip_case, body, prereqs=U.have_prereqs):
    """The main() of a cluster test: prints SKIP suite.skip_case without the
    prerequisites (prereqs() says why not, None when they are there); else
    runs body(ck) with a fresh Checks ck, reports an exception as the FAIL
    of suite.ran, kills every process it started, and removes the scratch
    directory unless a check failed. Returns the exit status."""
    why = prereqs()
    if why:
        print("SKIP %s.%s: %s" % (suite, skip_case, why))
        return 0
    ck = Checks(suite)
    try:
        body(ck)
    except Exception as e:  # noqa: BLE001 - reported as a FAIL line, never silent
        ck.check("ran", False, "%s: %s" % (type(e).__name__, e))
    finally:
        ck.procs.kill_all()
    if not ck.failed:
        shutil.rmtree(ck.tmp, ignore_errors=True)
    else:
        print_log_tails(ck.tmp)
    return 1 if ck.failed else 0


def print_log_tails(tmp, lines=12, width=240):
    """After a failure: the warnings, errors and last lines of every log in
    the scratch directory, indented so that tests/run.sh shows them. CI
    keeps only the output of make test, not /tmp, so a failure seen once
    there must carry what explains it."""
    for name in sorted(os.listdir(tmp)):
        path = os.path.join(tmp, name)
        if not name.endswith(".log") or not os.path.isfile(path):
            continue
        with open(path, errors="replace") as f:
            all_lines = f.read().splitlines()
        bad = [ln for ln in all_lines if "level=warn" in ln or "level=error" in ln]
        tail = all_lines[-lines:]
        shown = [ln for ln in bad[-lines:] if ln not in tail] + tail
        print("    -- %s (%d lines; its warnings and errors, then its end):" %
              (name, len(all_lines)))
        for ln in shown:
            print("    | " + ln[:width])


class Procs:
    """Every process a test starts, each in its own process group, so that
    kill_all() (in the test's finally) leaves nothing behind."""

    def __init__(self):
        self.all = []

    def popen(self, args, **kw):
        p = subprocess.Popen(args, start_new_session=True, **kw)
        self.all.append(p)
        return p

    def kill_all(self):
        for p in self.all:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()


class Broker:
    """`halflife broker`; .bootstrap is the address it printed. down() and
    up() send SIGUSR1 and SIGUSR2 (all brokers down, all back up); extra
    are more arguments (--refuse-produce FILE)."""

    def __init__(self, procs, partitions, log_path, topics=TOPICS, extra=()):
        self.log = open(log_path, "w")
        self.log_path = log_path
        self.p = procs.popen([U.HL, "broker", "--partitions", str(partitions),
                              "--topics", ",".join(topics)] + list(extra),
                             stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.p.stdout.readline().strip()
        if not line:
            raise RuntimeError("halflife broker printed no bootstrap address (see %s)" % log_path)
        self.bootstrap = line.split()[-1].split("=")[-1]

    def down(self):
        self.p.send_signal(signal.SIGUSR1)

    def up(self):
        self.p.send_signal(signal.SIGUSR2)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.log.close()


class Worker(U.Worker):
    """`halflife run` in its own process group (e2e_util.Worker otherwise)."""

    def __init__(self, procs, bootstrap, model, log_path, extra=()):
        self.port = U.free_port()
        self.log_path = log_path
        self.log = open(log_path, "w")
        args = [U.HL, "run", "-X", "kafka.bootstrap.servers=" + bootstrap,
                "-X", "model.path=" + model, "-X", "metrics.port=%d" % self.port,
                "-X", "schemas.dir=" + U.SCHEMAS]
        for kv in extra:
            args += ["-X", kv]
        self.p = procs.popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    def metric_or(self, name, default=-1.0, labels=None):
        try:
            return self.metric(name, labels)
        except OSError:
            return default

    def kill(self):
        os.killpg(self.p.pid, signal.SIGKILL)

    def term(self, timeout):
        """SIGTERM; (exit status or "timeout", seconds it took)."""
        t0 = time.time()
        self.p.send_signal(signal.SIGTERM)
        rc = self.wait(timeout)
        secs = time.time() - t0
        self.log.close()
        return rc, secs

    def events(self, name):
        """[(ts string, {key: value})] of the log lines with event=name."""
        out = []
        for line in self.log_text().splitlines():
            if " event=%s " % name not in line + " ":
                continue
            kv = dict(m.group(1, 2) for m in re.finditer(r'(\w+)=("[^"]*"|\S+)', line))
            out.append((kv.get("ts", ""), kv))
        return out

    def totals(self):
        t = self.events("worker_totals")
        return {k: int(v) for k, v in t[-1][1].items() if v.isdigit()} if t else None

    def wait_event(self, name, timeout, count=1):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.events(name)) >= count:
                return True
            if self.p.poll() is not None:
                return False
            time.sleep(0.05)
        return False


def paced_producer(bootstrap, events, rate, errors):
    """Starts a thread producing events keyed by user at about rate per
    second; returns it (join it; errors collects delivery failures)."""
    def run():
        from confluent_kafka import Producer
        p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                      "linger.ms": 5, "message.timeout.ms": 120000})
        writer = U.avro.io.DatumWriter(U.load_schema("behaviour_event.avsc"))

        def on_delivery(err, _msg):
            if err:
                errors.append(str(err))

        t0 = time.time()
        for n, (u, i, t, ts, w) in enumerate(events):
            v = U.encode_event(writer, 1, u, i, t, ts, w)
            while True:
                try:
                    p.produce(TOPIC, key=u.encode(), value=v, on_delivery=on_delivery)
                    break
                except BufferError:
                    p.poll(0.05)
            if n % 100 == 0:
                p.poll(0)
                ahead = n / rate - (time.time() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        left = p.flush(150)
        if left:
            errors.append("%d events undelivered" % left)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def read_topic(bootstrap, parts, timeout=30):
    """({user: (partition, offset)} of each user's newest event,
    {partition: high watermark}) read back from the input topic."""
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": bootstrap,
                  "group.id": "cluster-reader-%d" % time.time_ns(),
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "enable.partition.eof": True})
    last, high = {}, {}
    deadline = time.time() + timeout
    U.assign_from_start(c, TOPIC, deadline)
    try:
        while len(high) < parts and time.time() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == -191:        # _PARTITION_EOF
                    high[m.partition()] = m.offset()
                continue
            last[m.key().decode()] = (m.partition(), m.offset())
    finally:
        c.close()
    return last, high


def committed(bootstrap, group, parts):
    """{partition: committed offset (-1001 when none)} of group."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        got = c.committed([TopicPartition(TOPIC, p) for p in range(parts)], timeout=10)
    finally:
        c.close()
    return {tp.partition: tp.offset for tp in got}


def wait_committed(bootstrap, group, high, timeout):
    """Waits until group's committed offset of every partition reaches its
    high watermark in high ({partition: offset}, from read_topic): every
    event consumed, its list delivered and its offset stored and committed
    (auto-commit sends the stored offsets every 5 s). This, not a quiet
    spell, says a worker is done: one that stalls (a restore, a rebalance,
    a loaded machine) looks quiet too. Returns {partition: committed offset}
    as last read; the caller's checks tell what was missing."""
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    got, deadline = {}, time.time() + timeout
    try:
        while time.time() < deadline:
            tps = c.committed([TopicPartition(TOPIC, p) for p in high], timeout=10)
            got = {tp.partition: tp.offset for tp in tps}
            if all(got.get(p, -1) >= h for p, h in high.items()):
                break
            time.sleep(0.5)
    finally:
        c.close()
    return got


def newest_snapshots(snapdir):
    """{partition: (next offset, path)} of the newest snapshot file of each."""
    newest = {}
    if not os.path.isdir(snapdir):
        return newest
    for name in os.listdir(snapdir):
        if not name.endswith(".hls"):
            continue
        _topic, part, off, _ext = name.rsplit(".", 3)
        if int(off) > newest.get(int(part), (-1, ""))[0]:
            newest[int(part)] = (int(off), os.path.join(snapdir, name))
    return newest


def inspect(path):
    out = subprocess.run([U.HL, "snapshot", "inspect", path], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def dump_state(snapdir):
    """({user: state}, {partition: next offset}) from the newest snapshot of
    each partition; row ids and LRU counters are bookkeeping, not state."""
    newest = newest_snapshots(snapdir)
    state = {}
    for part, (_off, path) in newest.items():
        out = subprocess.run([U.HL, "snapshot", "dump", path], check=True,
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            d = json.loads(line)
            d.pop("row", None)
            d.pop("active_seq", None)
            d["partition"] = part
            state[d["user"]] = d
    return state, {p: o for p, (o, _path) in newest.items()}


def state_diff(got, want):
    """Users whose state differs (or is missing on either side)."""
    diff = [u for u in want if got.get(u) != want[u]]
    return diff + [u for u in got if u not in want]


def wait_for(fn, timeout, period=0.2):
    """fn() every period seconds until it returns a true value or timeout
    passes; its last value."""
    deadline, v = time.time() + timeout, None
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(period)
    return v


def wait_consumed(workers, want, timeout):
    """Waits until the workers' halflife_events_consumed_total sum to want
    (plus base, e.g. what earlier lives consumed); returns the sum."""
    deadline = time.time() + timeout
    n = 0
    while time.time() < deadline:
        n = sum(max(w.metric_or("halflife_events_consumed_total"), 0) for w in workers)
        if n >= want:
            break
        time.sleep(0.2)
    return n


def wait_idle(workers, timeout, quiet=1.5):
    """Waits until the workers' consumed counts stay put for quiet seconds.
    Only where nothing more is to come (a reader that consumes nothing, a
    count already reached): a stalled worker is quiet too, so a wait for
    work to finish is wait_committed or wait_consumed."""
    deadline, last, since = time.time() + timeout, None, time.time()
    while time.time() < deadline:
        n = [w.metric_or("halflife_events_consumed_total") for w in workers]
        if n != last:
            last, since = n, time.time()
        elif time.time() - since >= quiet:
            break
        time.sleep(0.2)


def clean_run(procs, bootstrap, model, tmp, n_events, common):
    """A single uninterrupted worker over the whole topic, its own group and
    snapshot directory, stopped once it consumed n_events: (state, offsets,
    totals, exit status)."""
    snapdir = os.path.join(tmp, "snap-clean")
    w = Worker(procs, bootstrap, model, os.path.join(tmp, "clean.log"),
               extra=common + ["snapshot.dir=" + snapdir, "snapshot.interval.ms=0",
                               "group.id=clean-%d" % time.time_ns()])
    wait_consumed([w], n_events, 40)
    rc, _secs = w.term(30)
    state, offs = dump_state(snapdir)
    return state, offs, w.totals(), rc


def prepare(tmp, n_events, n_users, n_items):
    """(model path, events csv path, events) for a run."""
    model, events_csv = os.path.join(tmp, "m.hlm"), os.path.join(tmp, "e.csv")
    U.make_model(model, n_items, 16)
    U.make_events(events_csv, n_events, n_users, n_items)
    return model, events_csv, U.read_events_csv(events_csv)


def check_last_lists(ck, lists, got, last, events_csv, model, events):
    """last_lists_equal_offline: every user got the list of its last event
    (got, from E.read_lists) and each equals the offline reference."""
    offline = U.offline_lists(events_csv, model)
    bad = E.compare(lists, offline, events) if len(got) == len(last) else \
        ["%d of %d users got the list of their last event" % (len(got), len(last))]
    ck.check("last_lists_equal_offline", not bad and len(offline) == len(last),
             "%d mismatches of %d users, e.g. %s" % (len(bad), len(offline), bad[:3]))


def check_final_state(ck, name, bootstrap, model, snapdir, n_events, n_users, high, common):
    """name: the newest snapshots in snapdir hold the state of a clean
    single-worker run over the whole topic (clean_run), at the same offsets,
    the high watermarks. Returns the clean run's state."""
    state, offs = dump_state(snapdir)
    ref, ref_offs, _tot, ref_rc = clean_run(ck.procs, bootstrap, model, ck.tmp, n_events, common)
    diff = state_diff(state, ref)
    ck.check(name, ref_rc == 0 and offs == ref_offs == high and not diff and len(ref) == n_users,
             "uninterrupted exit %s, %d users; offsets %s vs %s (high %s); %d users differ, "
             "e.g. %s vs %s" % (ref_rc, len(ref), offs, ref_offs, high, len(diff),
                                state.get(diff[0]) if diff else None,
                                ref.get(diff[0]) if diff else None))
    return ref
