"""test_registry_stop.py - a SIGTERM while `halflife run` waits for a Schema
Registry that accepted the connection but never answers ends the request at
once: exit 0 within PROMPT_S, one event=worker_stopped_before_start line
with step=worker_create. Before, the worker waited out the whole
schema.registry.timeout.ms (here 60 s) for that one request.

A registry (or a proxy before it) that answers the lists' registration with
another schema's id: the worker checks the id's schema (GET
/schemas/ids/{id}, compared parsed) and refuses to start, one
event=schema_registry_id_mismatch line naming the id and both schemas; the
same schema rewritten by the registry (canonical form) is taken.

The registry is a socket here that reads the request and then stays silent;
the signal goes out once the request's bytes have arrived, so the stop is
known to land inside the request (no sleep decides it).
"""
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402

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


class LyingRegistry:
    """Answers every registration of a schema with id 7 and GET
    /schemas/ids/7 with the text given (a proxy's stale cache, a registry's
    bug): the worker must check that id 7 is the lists' schema before it
    writes a list under it."""

    def __init__(self, schema_7):
        body7 = json.dumps({"schema": schema_7}).encode()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self, status, body):
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/schemas/ids/7":
                    return self.answer(200, body7)
                self.answer(404, b'{"error_code":40403,"message":"Schema not found"}')

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.answer(200, b'{"id":7}')

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def start_against(ck, name, schema_7):
    """A worker started against a LyingRegistry whose id 7 is schema_7."""
    model = os.path.join(ck.tmp, "m.hlm")
    reg = LyingRegistry(schema_7)
    w = C.Worker(ck.procs, ABSENT, model, os.path.join(ck.tmp, "worker_%s.log" % name),
                 ["schema.registry.url=http://127.0.0.1:%d" % reg.port, "items.topic=",
                  "group.id=registry-id-%s" % name, "worker.threads=1"])
    return w, reg


def run_id_checked(ck):
    """A registration answered with another schema's id: the worker refuses
    to start (exit 1), naming the id and both schemas, and writes nothing
    under it. The lists' own schema as the registry rewrites it (Parsing
    Canonical Form: no docs, full names, other key order) is the same."""
    import avro.schema
    with open(os.path.join(U.SCHEMAS, "behaviour_event.avsc")) as f:
        other = f.read()
    with open(os.path.join(U.SCHEMAS, "recommendation_list.avsc")) as f:
        ours = json.dumps(avro.schema.parse(f.read()).to_canonical_json())
    w, reg = start_against(ck, "other", other)
    try:
        rc = w.wait(20)
    finally:
        reg.close()
    lines = [kv for _ts, kv in w.events("schema_registry_id_mismatch")]
    said = lines[0].get("err", "") if lines else ""
    ck.check("registered_id_of_another_schema_refused",
             rc == 1 and len(lines) == 1 and lines[0].get("id") == "7" and
             lines[0].get("subject") == "recommendations-value" and
             "halflife.RecommendationList" in said and "halflife.BehaviourEvent" in said and
             not w.events("list_schema"),
             "exit %s (want 1), mismatch lines %s, list_schema lines %s"
             % (rc, lines, w.events("list_schema")))
    w, reg = start_against(ck, "same", ours)
    try:
        deadline = time.time() + 20
        while time.time() < deadline and not w.events("list_schema") and w.p.poll() is None:
            time.sleep(0.1)
        rc, _secs = w.term(30)
    finally:
        reg.close()
    got = [kv.get("id") for _ts, kv in w.events("list_schema")]
    ck.check("registered_id_in_canonical_form_taken",
             got == ["7"] and not w.events("schema_registry_id_mismatch") and rc == 0,
             "list_schema ids %s, exit %s" % (got, rc))


def run_all(ck):
    run(ck)
    run_id_checked(ck)


def main():
    return C.run_main("registry_stop", "sigterm_during_registry_request", run_all)


if __name__ == "__main__":
    sys.exit(main())
