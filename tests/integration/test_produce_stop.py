"""test_produce_stop.py - SIGTERM or SIGINT in the middle of `halflife
produce` or `halflife items` stops the reading, waits for what was already
sent and says how far into the file it got, with exit status 1. Before,
the signal killed the process outright: records librdkafka still queued
were lost and nothing said how much of the file had gone out.

Cases, against a `halflife broker`:
- produce's progress lines say how far into the file it is (done_pct) and
  the time left at the rate so far (left_s): an hour-long replay said
  neither.
- produce: a paced replay of a file far longer than the test; SIGTERM once
  its first progress line is out. It exits 1 naming SIGTERM and the line
  reached, every event it says it sent is delivered, and the topic holds
  exactly that many records.
- items: --input - with standard input left open after three lines; SIGINT
  once the three records are in the topic (the read of a fourth line is
  under way). It exits 1 naming SIGINT and line 3, 3 of 3 delivered.
- produce: the same with --input -: the interrupted read is the stop, not
  a read error.

Every wait is on a condition (a log line, the topic's watermarks, the exit)
with a generous deadline, not a fixed sleep.
"""
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SUITE = "produce_stop"


try:
    from confluent_kafka import Consumer, TopicPartition
    import e2e_util as U
    import cluster_util as C
except ImportError as e:
    print("SKIP %s.all: needs python3-avro and python3-confluent-kafka (%s)" % (SUITE, e))
    sys.exit(0)

if not U.HL or not os.access(U.HL, os.X_OK):
    print("SKIP %s.all: HL_HALFLIFE is not set to the built binary" % SUITE)
    sys.exit(0)


def records(bootstrap, topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "stop-wm-%d" % time.time_ns()})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    n = sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    c.close()
    return n


def finish(p, timeout=60):
    """Exit status and stderr; None if it did not end within timeout."""
    try:
        _, err = p.communicate(timeout=timeout)
        return p.returncode, err
    except subprocess.TimeoutExpired:
        p.kill()
        return None, p.communicate()[1]


def check_produce(ck, tmp, bootstrap):
    path = os.path.join(tmp, "events.csv")
    with open(path, "w") as f:
        for i in range(50000):
            f.write("u%d,i%d,VIEW,%d\n" % (i % 97, i % 31, 1700000000000 + i))
    p = subprocess.Popen([U.HL, "produce", "--input", path, "--format", "events-csv",
                          "--topic", "stop-events", "--rate", "500",
                          "-X", "kafka.bootstrap.servers=" + bootstrap],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in p.stderr:                       # until the first progress line
        seen.append(line)
        if "event=produce_progress" in line:
            break
    p.send_signal(signal.SIGTERM)
    prog = re.search(r"done_pct=([\d.]+) left_s=(\d+)", seen[-1])
    # 50,000 lines at 500/s: the first progress line is about 1% in, with
    # about 100 s left; generous bounds for a slow machine.
    ck.check("produce_progress_has_time_left",
             prog is not None and 0 < float(prog.group(1)) < 50 and
             10 <= int(prog.group(2)) < 10000,
             "progress line: %s" % seen[-1].strip())
    rc, err = finish(p)
    err = "".join(seen) + err
    m = re.search(r"stopped by SIGTERM after line (\d+) of \S+: (\d+) events sent, "
                  r"(\d+) delivered, 0 failed", err)
    ok = rc == 1 and m is not None and m.group(2) == m.group(3) == m.group(1)
    ck.check("produce_sigterm_says_how_far", ok, "exit %s, stderr tail: %s" % (rc, err[-600:]))
    ck.check("produce_says_second_signal_gives_up",
             "event=produce_stopping signal=SIGTERM" in err and "signal again" in err,
             "stderr tail: %s" % err[-600:])
    if m is not None:
        n = records(bootstrap, "stop-events")
        ck.check("produce_sigterm_flushes", n == int(m.group(2)),
                 "topic holds %d records, produce said %s sent" % (n, m.group(2)))
    else:
        ck.check("produce_sigterm_flushes", False, "no count to compare")


def check_items(ck, bootstrap):
    p = subprocess.Popen([U.HL, "items", "--input", "-", "--topic", "stop-items",
                          "-X", "kafka.bootstrap.servers=" + bootstrap],
                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    p.stdin.write("a,true\nb,false\nc,delete\n")
    p.stdin.flush()                             # left open: a fourth line may come
    deadline = time.monotonic() + 60
    while records(bootstrap, "stop-items") < 3 and p.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    rc, err = finish(p)
    p.stdin.close()
    ok = rc == 1 and "stopped by SIGINT after line 3 of -: 3 of 3 updates delivered" in err
    ck.check("items_sigint_says_how_far", ok, "exit %s, stderr tail: %s" % (rc, err[-600:]))
    ck.check("items_says_second_signal_gives_up",
             "event=items_stopping signal=SIGINT" in err and "signal again" in err,
             "stderr tail: %s" % err[-600:])


def reading_stdin(pid):
    """Whether the process's main thread waits in read(2) on fd 0: where a
    signal interrupts the read (x86-64: system call 0; other machines are
    taken as reading, the case then races as it did)."""
    try:
        with open("/proc/%d/syscall" % pid) as f:
            fields = f.read().split()
    except OSError:
        return True
    if os.uname().machine != "x86_64":
        return True
    return len(fields) > 1 and fields[0] == "0" and fields[1] == "0x0"


def check_produce_stdin(ck, bootstrap):
    """--input - left open after three lines: SIGINT lands in the read of a
    fourth, which failed with EINTR and was reported as a read error
    ("read after line 3: Interrupted system call"), not as the stop it is."""
    p = subprocess.Popen([U.HL, "produce", "--input", "-", "--format", "events-csv",
                          "--topic", "stop-stdin",
                          "-X", "kafka.bootstrap.servers=" + bootstrap],
                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    p.stdin.write("u1,i1,VIEW,1700000000000\nu2,i2,VIEW,1700000000001\n"
                  "u3,i3,VIEW,1700000000002\n")
    p.stdin.flush()
    deadline = time.monotonic() + 60
    while (records(bootstrap, "stop-stdin") < 3 or not reading_stdin(p.pid)) \
            and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    rc, err = finish(p)
    p.stdin.close()
    ok = rc == 1 and "stopped by SIGINT after line 3 of -: 3 events sent, 3 delivered" in err
    ck.check("produce_stdin_sigint_says_how_far", ok, "exit %s, stderr tail: %s" % (rc, err[-600:]))


def main(ck):
    broker = U.Broker(2, ["stop-events", "stop-items", "stop-stdin"],
                      os.path.join(ck.tmp, "broker.log"))
    try:
        check_produce(ck, ck.tmp, broker.bootstrap)
        check_items(ck, broker.bootstrap)
        check_produce_stdin(ck, broker.bootstrap)
    finally:
        broker.stop()


if __name__ == "__main__":
    # The SKIPs are above: this test needs the binary and both Python packages.
    sys.exit(C.run_main(SUITE, "all", main, prereqs=lambda: None))
