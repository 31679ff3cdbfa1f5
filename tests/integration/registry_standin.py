"""registry_standin.py - a stand-in Schema Registry for the tests (no registry
can be installed here: DESIGN.md section 9). It speaks exactly the subset of
Confluent's Schema Registry REST API that halflife uses, as its API
reference documents it:

  GET  /schemas/ids/{id}               200 {"schema": "..."}
  POST /subjects/{subject}/versions    200 {"id": N}      (register; same schema -> same id)
  POST /subjects/{subject}             200 {"subject", "id", "version", "schema"} (lookup)
  GET  /subjects/{subject}/versions/latest   the same four fields

Errors are HTTP statuses with the body {"error_code": N, "message": "..."}:
404 + 40401 subject not found, 404 + 40403 schema not found, 422 + 42201
invalid schema, 401 + 401 without the right Basic credentials (when started
with --user). Every answer has Content-Type
application/vnd.schemaregistry.v1+json. Ids are global: one id per distinct
schema (compared as parsed JSON), shared across subjects, as Confluent's
registry assigns them; versions count per subject from 1.

SIGUSR1 makes every GET /schemas/ids/{id} answer 503 + 50001 (the error of
a registry whose backing store is away) until SIGUSR2; registration still
works, so a test can play a registry that half fails. With --slow ID MS,
GET /schemas/ids/{id} for an id of ID or more answers after MS ms (a
registry under load).

State (schemas, subjects) lives in --state FILE, rewritten after each
registration, so a stopped and restarted stand-in keeps its ids (tests stop
it to play an outage). It prints "port=N" on stdout once it listens.

With --tls CERT KEY it serves HTTPS, and with --client-ca CA it also
requires a client certificate signed by CA (mutual TLS).

Run: /usr/bin/python3 registry_standin.py --port 0 --state FILE [--user u:pw]
         [--tls CERT KEY [--client-ca CA]] [--slow ID MS]
"""
import argparse
import base64
import json
import os
import signal
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import avro.schema

MEDIA = "application/vnd.schemaregistry.v1+json"


class State:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.schemas = []          # index + 1 is the id
        self.subjects = {}         # subject -> [id of version 1, 2, ...]
        if path and os.path.exists(path):
            with open(path) as f:
                d = json.load(f)
            self.schemas, self.subjects = d["schemas"], d["subjects"]

    def save(self):
        if not self.path:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"schemas": self.schemas, "subjects": self.subjects}, f)
        os.replace(tmp, self.path)

    def id_of(self, text):
        want = json.loads(text)
        for i, s in enumerate(self.schemas):
            if json.loads(s) == want:
                return i + 1
        return None


FAILING = threading.Event()     # set: schema reads answer 503
SLOW = [0, 0]                   # ids from SLOW[0] (0: none) answer after SLOW[1] ms


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one segment: written apart on a kept-alive
    # connection, Nagle's algorithm held the body until the client's
    # delayed ACK, 40 ms per request (a real registry does not do that).
    disable_nagle_algorithm = True
    wbufsize = 1 << 16
    state = None
    user = None                    # "user:password" or None

    def log_message(self, fmt, *args):
        sys.stderr.write("standin: %.3f %s %s\n" % (time.time(), self.address_string(), fmt % args))

    def answer(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", MEDIA)
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="SchemaRegistry"')
        self.end_headers()
        self.wfile.write(body)

    def error(self, status, code, message):
        self.answer(status, {"error_code": code, "message": message})

    def authorised(self):
        if self.user is None:
            return True
        want = "Basic " + base64.b64encode(self.user.encode()).decode()
        if self.headers.get("Authorization") == want:
            return True
        self.error(401, 401, "Unauthorized")
        return False

    def path_parts(self):
        path = urllib.parse.urlsplit(self.path).path
        return [urllib.parse.unquote(p) for p in path.strip("/").split("/")]

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def do_GET(self):
        if not self.authorised():
            return
        p = self.path_parts()
        st = self.state
        if len(p) == 3 and p[:2] == ["schemas", "ids"] and p[2].isdigit() and \
                0 < SLOW[0] <= int(p[2]):
            time.sleep(SLOW[1] / 1000.0)    # outside the lock: the others answer meanwhile
        with st.lock:
            if len(p) == 3 and p[:2] == ["schemas", "ids"] and p[2].isdigit():
                if FAILING.is_set():
                    return self.error(503, 50001, "Error in the backend data store")
                i = int(p[2])
                if 1 <= i <= len(st.schemas):
                    return self.answer(200, {"schema": st.schemas[i - 1]})
                return self.error(404, 40403, "Schema %d not found" % i)
            if len(p) == 4 and p[0] == "subjects" and p[2:] == ["versions", "latest"]:
                vs = st.subjects.get(p[1])
                if not vs:
                    return self.error(404, 40401, "Subject '%s' not found." % p[1])
                return self.answer(200, {"subject": p[1], "id": vs[-1], "version": len(vs),
                                         "schema": st.schemas[vs[-1] - 1]})
        self.error(404, 404, "HTTP 404 Not Found")

    def do_POST(self):
        if not self.authorised():
            return
        p = self.path_parts()
        try:
            req = self.read_body()
            text = req["schema"]
            if req.get("schemaType", "AVRO") != "AVRO":
                raise ValueError("only AVRO here")
            avro.schema.parse(text)
        except Exception as e:           # noqa: BLE001 - any bad body is 422
            return self.error(422, 42201, "Invalid schema: %s" % e)
        if len(p) == 3 and p[0] == "subjects" and p[2] == "versions":
            return self.register(p[1], text)
        if len(p) == 2 and p[0] == "subjects":
            return self.lookup(p[1], text)
        self.error(404, 404, "HTTP 404 Not Found")

    def register(self, subject, text):
        st = self.state
        with st.lock:
            i = st.id_of(text)
            if i is None:
                st.schemas.append(text)
                i = len(st.schemas)
            vs = st.subjects.setdefault(subject, [])
            if i not in vs:
                vs.append(i)
            st.save()
        self.answer(200, {"id": i})

    def lookup(self, subject, text):
        st = self.state
        with st.lock:
            vs = st.subjects.get(subject)
            if not vs:
                return self.error(404, 40401, "Subject '%s' not found." % subject)
            i = st.id_of(text)
            if i is None or i not in vs:
                return self.error(404, 40403, "Schema not found")
            self.answer(200, {"subject": subject, "id": i, "version": vs.index(i) + 1,
                              "schema": st.schemas[i - 1]})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--state", default="")
    ap.add_argument("--user", default=None, help="user:password required (Basic auth)")
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="serve HTTPS")
    ap.add_argument("--client-ca", default=None, help="with --tls: require a client "
                    "certificate signed by this CA")
    ap.add_argument("--slow", nargs=2, type=int, metavar=("ID", "MS"), default=[0, 0],
                    help="schema reads of ids from ID on answer after MS ms")
    a = ap.parse_args()
    SLOW[:] = a.slow
    Handler.state = State(a.state)
    Handler.user = a.user
    signal.signal(signal.SIGUSR1, lambda *_: FAILING.set())
    signal.signal(signal.SIGUSR2, lambda *_: FAILING.clear())
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    if a.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls[0], a.tls[1])
        if a.client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(a.client_ca)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("port=%d" % srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
