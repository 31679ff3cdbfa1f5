"""test_registry_stop.py - a SIGTERM while `halflife run` waits for a Schema
Registry that accepted the connection but never answers ends the request at
once: exit 0 within PROMPT_S, one event=worker_stopped_before_start line
with step=worker_create. Before, the worker waited out the whole
schema.registry.timeout.ms (here 60 s) for that one request.

The registry is a socket here that reads the request and then stays silent;
the signal goes out once the request's bytes have arrived, so the stop is
known to land inside the request (no sleep decides it).
"""
import os
import socket
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402

ABSENT = "127.0.0.1:1"          # the worker stops before it needs a broker
PROMPT_S = 2.5
TIMEOUT_MS = 60000


class SilentRegistry:
    """Listens, accepts, reads one request and never answers. .got is set
    once a whole request line and headers have arrived."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.got = threading.Event()
        self.request = b""
        self.conns = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        try:
            conn, _addr = self.sock.accept()
        except OSError:
            return
        self.conns.append(conn)                 # kept open: never answered
        while b"\r\n\r\n" not in self.request:
            data = conn.recv(65536)
            if not data:
                return
            self.request += data
        self.got.set()

    def close(self):
        for c in self.conns + [self.sock]:
            c.close()


def run(ck):
    model, _csv, _events = C.prepare(ck.tmp, 100, 10, 50)
    reg = SilentRegistry()
    try:
        w = C.Worker(ck.procs, ABSENT, model, os.path.join(ck.tmp, "worker.log"),
                     ["schema.registry.url=http://127.0.0.1:%d" % reg.port,
                      "schema.registry.timeout.ms=%d" % TIMEOUT_MS, "items.topic=",
                      "group.id=registry-stop", "worker.threads=1"])
        asked = reg.got.wait(60)
        rc, secs = w.term(TIMEOUT_MS / 1000 + 30)
    finally:
        reg.close()
    lines = w.events("worker_stopped_before_start")
    steps = [kv.get("step") for _ts, kv in lines]
    ck.check("request_was_under_test", asked and b"/subjects/" in reg.request,
             "the registry got no request (%r)" % reg.request[:80])
    ck.check("sigterm_during_registry_request", rc == 0 and secs < PROMPT_S and
             steps == ["worker_create"], "exit %s after %.2f s (want 0 within %.1f s), stop "
             "lines %s (want one, step=worker_create)" % (rc, secs, PROMPT_S, steps))


def main():
    return C.run_main("registry_stop", "sigterm_during_registry_request", run)


if __name__ == "__main__":
    sys.exit(main())
