"""test_http_attack.py - issue 16: the HTTP endpoint of a real `halflife run`
(embedded broker) keeps answering its probes while one client address,
127.0.0.1 like the probes themselves, attacks it; bounded in count and time,
on 127.0.0.1 only.

- idle: 3,000 TCP connections opened and held without a request (closed
  ones are reopened, at most 2,000 a second; HL_ATTACK_REOPEN_PER_S=50000
  makes it a flood, which passes too), for IDLE_S seconds;
- slowloris: 200 connections trickling request headers a byte at a time,
  each a byte a second (closed ones reopened), for LORIS_S seconds.

Under each, /healthz and /metrics are probed 4 times a second over fresh
connections, and every probe must be answered 200 within 2 s (a liveness
probe that is not answered restarts the pod). Before the fix 64 such
connections filled libmicrohttpd's limit and most probes got nothing.
Then: the http_error and http_connections_closed log lines stay within a
line a second each; POST /metrics with a 5 MB body is answered 405 (it was
a broken connection); metrics.bind=127.0.0.1 listens on 127.0.0.1 only
(/proc/net/tcp), the default on 0.0.0.0.

The worker runs with RLIMIT_NOFILE 1024, the usual default, so the
endpoint's bounds are checked against it; the attacker (a forked process,
so its busy loop does not slow the probes) raises its own limit.

Run with /usr/bin/python3; HL_HALFLIFE and HL_BUILD as the other tests.
"""
import multiprocessing
import os
import resource
import selectors
import socket
import subprocess
import sys
import time

import cluster_util as C
import e2e_util as U

IDLE_N, IDLE_S = 3000, 12
LORIS_N, LORIS_S = 200, 12
PROBE_EVERY_S, PROBE_TIMEOUT_S = 0.25, 2.0
REOPEN_PER_S = int(os.environ.get("HL_ATTACK_REOPEN_PER_S", "2000"))


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def worker_limits():
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def start_worker(ck, name, port, extra=()):
    log_path = os.path.join(ck.tmp, name + ".log")
    log = open(log_path, "w")
    args = [U.HL, "run", "-X", "model.path=" + os.path.join(ck.tmp, "model.hlm"),
            "-X", "metrics.port=%d" % port, "-X", "schemas.dir=" + U.SCHEMAS,
            "-X", "snapshot.dir=" + os.path.join(ck.tmp, name + "-snap"),
            "-X", "embedded.partitions=1", "-X", "worker.threads=1"]
    for kv in extra:
        args += ["-X", kv]
    p = ck.procs.popen(args, stdout=log, stderr=subprocess.STDOUT, preexec_fn=worker_limits)
    return p, log_path


def probe(port, path):
    """(status or None, seconds): one GET over a fresh connection."""
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT_S) as s:
            s.settimeout(max(0.01, PROBE_TIMEOUT_S - (time.monotonic() - t0)))
            s.sendall(("GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" % path).encode())
            data = b""
            while time.monotonic() - t0 < PROBE_TIMEOUT_S:
                s.settimeout(max(0.01, PROBE_TIMEOUT_S - (time.monotonic() - t0)))
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else "closed without an answer"
    except (OSError, ValueError, IndexError) as e:
        status = "%s: %s" % (type(e).__name__, e)
    secs = time.monotonic() - t0
    return (status if secs <= PROBE_TIMEOUT_S else "late"), secs


def wait_up(port, p, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None:
        if probe(port, "/healthz")[0] == 200:
            return True
        time.sleep(0.1)
    return False


def attacker(kind, port, n, secs, out):
    """Child process: hold n connections of kind ("idle" or "loris") to
    port for secs seconds, reopening those the server closes; puts
    (opened, closed_by_server) on out."""
    raise_nofile(n + 256)
    sel = selectors.DefaultSelector()
    socks, sent, opened, closed = [], {}, 0, 0
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: "

    def open_one():
        nonlocal opened
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
        opened += 1

    for _ in range(n):
        try:
            open_one()
        except OSError:
            break
    start = time.monotonic()
    end = start + secs
    tick, turn, next_turn = 0.05, 0, start
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=tick):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                s.close()
                socks.remove(s)
                sent.pop(s, None)
                closed += 1
        budget = int(n + REOPEN_PER_S * (time.monotonic() - start)) - opened
        for _ in range(min(n - len(socks), budget)):
            try:
                open_one()
            except OSError:
                break
        if kind == "loris" and time.monotonic() >= next_turn:
            next_turn += tick
            # Each connection gets a byte a second: 1/20 of them per tick.
            turn = (turn + 1) % 20
            for i in range(turn, len(socks), 20):
                s = socks[i]
                k = sent.get(s, 0)
                try:
                    s.send(head[k:k + 1] if k < len(head) else b"a")
                    sent[s] = k + 1
                except OSError:
                    pass
    for s in socks:
        s.close()
    out.put((opened, closed))


def under_attack(ck, name, kind, port, n, secs):
    """Runs the attacker for secs while probing; checks every probe."""
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    child = ctx.Process(target=attacker, args=(kind, port, n, secs, q))
    child.start()
    time.sleep(1.0)                      # let the connections pile up first
    results = []
    end = time.monotonic() + secs - 1.5
    paths = ["/healthz", "/metrics"]
    while time.monotonic() < end:
        t0 = time.monotonic()
        results.append(probe(port, paths[len(results) % 2]))
        time.sleep(max(0.0, PROBE_EVERY_S - (time.monotonic() - t0)))
    try:
        opened, closed = q.get(timeout=secs + 10)
    except Exception:  # noqa: BLE001 - queue.Empty: the attacker died; say so below
        opened, closed = -1, -1
    child.join(10)
    bad = [r for r in results if r[0] != 200]
    worst = max(r[1] for r in results) if results else 0
    ck.check("%s_probes_answered" % name, bool(results) and not bad,
             "%d of %d probes unanswered or not 200 within %.0f s (slowest %.2f s; %s); "
             "attacker opened %d connections, the server closed %d"
             % (len(bad), len(results), PROBE_TIMEOUT_S, worst,
                ", ".join(sorted(set(str(r[0]) for r in bad)))[:200], opened, closed))
    print("# %s: %d probes, %d unanswered, slowest %.3f s; attacker opened %d, server closed %d"
          % (name, len(results), len(bad), worst, opened, closed))


def post_big(port, n=5 << 20):
    """Status of POST /metrics with an n-byte body, or the error text."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % n)
            s.sendall(b"a" * n)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if b"\r\n\r\n" in data:
                    break
        return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else repr(data[:60])
    except OSError as e:
        return "%s: %s" % (type(e).__name__, e)


def listen_addr(port):
    """Local address of the TCP socket listening on port, from /proc/net/tcp."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            addr, hexport = parts[1].split(":")
            if int(hexport, 16) == port and parts[3] == "0A":
                return socket.inet_ntoa(bytes.fromhex(addr)[::-1])
    return None


def log_lines(path, event):
    with open(path) as f:
        return sum(1 for line in f if " event=%s " % event in line)


def body(ck):
    raise_nofile(8192)
    U.make_model(os.path.join(ck.tmp, "model.hlm"), items=200, dim=8)
    port = U.free_port()
    p, log_path = start_worker(ck, "w", port)
    ck.check("worker_up", wait_up(port, p), "no /healthz answer within 20 s")
    if p.poll() is not None:
        return
    t0 = time.monotonic()
    under_attack(ck, "idle", "idle", port, IDLE_N, IDLE_S)
    under_attack(ck, "slowloris", "loris", port, LORIS_N, LORIS_S)
    attack_s = time.monotonic() - t0
    for event in ("http_error", "http_connections_closed"):
        n = log_lines(log_path, event)
        ck.check("%s_lines_bounded" % event, n <= attack_s + 5,
                 "%d %s lines in %.0f s of attack" % (n, event, attack_s))
    st = post_big(port)
    ck.check("post_5mb_405", st == 405, "POST /metrics with 5 MB: %s" % st)
    ck.check("default_bind_any", listen_addr(port) == "0.0.0.0",
             "default listens on %s" % listen_addr(port))
    port2 = U.free_port()
    p2, log2 = start_worker(ck, "w2", port2, ["metrics.bind=127.0.0.1"])
    up = wait_up(port2, p2)
    ck.check("bind_127", up and listen_addr(port2) == "127.0.0.1",
             "metrics.bind=127.0.0.1: up %s, listens on %s (log %s)" % (up, listen_addr(port2), log2))


if __name__ == "__main__":
    sys.exit(C.run_main("http_attack", "ran", body))
