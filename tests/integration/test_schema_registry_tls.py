"""test_schema_registry_tls.py - the worker reaches a Schema Registry over
TLS with the three options the anchors name (issue 13):
schema.registry.ssl.ca.location verifies the registry's certificate,
.certificate.location and .key.location present a client certificate.
registry_standin.py serves HTTPS and requires a client certificate
(certificates made here with the openssl command, one CA for both sides);
python3-confluent-kafka's SchemaRegistryClient, with the same three options,
registers the event schema through it.

Cases: tls_registry_works (the worker registers the lists' schema, fetches
the events' writer schema and applies every event); tls_wrong_ca_refused
(refused at start with a message naming the ssl options, not waited for as
if the registry were away); tls_no_client_cert_not_served (TLS 1.3 reports
the server's refusal as a send error, which cannot be told from a network
fault: the worker waits at start, saying why, and a SIGTERM stops it).
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402
import test_schema_registry as S  # noqa: E402


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True)


def make_certs(d):
    """ca.pem, server.pem/.key (for 127.0.0.1), client.pem/.key, and
    other_ca.pem (a CA that signed nothing here)."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=hl-test-ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other-ca",
            "-keyout", "other_ca.key", "-out", "other_ca.pem", cwd=d)
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    for who in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=%s" % who,
                "-keyout", who + ".key", "-out", who + ".csr", cwd=d)
        openssl("x509", "-req", "-in", who + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-out", who + ".pem", "-extfile", "san.ext", cwd=d)


class TlsStandin(S.Standin):
    def __init__(self, tmp, d):
        super().__init__(tmp, extra=["--tls", os.path.join(d, "server.pem"),
                                     os.path.join(d, "server.key"),
                                     "--client-ca", os.path.join(d, "ca.pem")])

    def start(self):
        self.n += 1
        self.log = open(os.path.join(self.tmp, "registry%d.log" % self.n), "w")
        args = [S.PY, os.path.join(S.HERE, "registry_standin.py"), "--port", str(self.port),
                "--state", self.state] + self.extra
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.port = int(self.p.stdout.readline().strip().split("=")[1])
        self.url = "https://127.0.0.1:%d" % self.port


def refused(tmp, bootstrap, model, name, opts):
    w = U.Worker(bootstrap, model, os.path.join(tmp, name + ".log"), extra=opts)
    try:
        rc = w.p.wait(30)
    except subprocess.TimeoutExpired:
        rc = "still running"
    w.stop()
    log = w.log_text()
    S.check(name, rc == 1 and "TLS" in log and "schema.registry.ssl.ca.location" in log,
            "exit %s, log %s" % (rc, log[-300:]))


def no_client_cert(tmp, bootstrap, model, opts):
    """Under TLS 1.3 the server refuses a missing client certificate after
    the client's side of the handshake is done, so libcurl reports a send
    or receive error, which looks like a network fault: the worker does not
    start, says why every few seconds, and stops cleanly on SIGTERM."""
    w = U.Worker(bootstrap, model, os.path.join(tmp, "tls_no_client_cert.log"), extra=opts)
    deadline = time.time() + 15
    while time.time() < deadline and "schema_registry_wait_start" not in w.log_text():
        time.sleep(0.2)
    log = w.log_text()
    running = w.p.poll() is None
    rc = w.stop()
    S.check("tls_no_client_cert_not_served",
            running and "schema_registry_wait_start" in log and "event=list_schema" not in log
            and rc == 0, "running %s, exit %s, log %s" % (running, rc, log[-300:]))


def main():
    why = U.have_prereqs()
    if why or shutil.which("openssl") is None:
        print("SKIP schema_registry_tls: %s" % (why or "no openssl command"))
        return 0
    from confluent_kafka.schema_registry import Schema
    # requests lets these override the client's ssl.ca.location: drop them
    # here, so the reference client trusts exactly the CA made below.
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        os.environ.pop(var, None)
    tmp = tempfile.mkdtemp(prefix="hl_srtls_")
    d = os.path.join(tmp, "certs")
    os.makedirs(d)
    make_certs(d)
    model = os.path.join(tmp, "m.hlm")
    U.make_model(model, 1000, 16)
    reg = TlsStandin(tmp, d)
    broker = U.Broker(4, ["behaviour-events", "recommendations", "behaviour-events.dlq"],
                      os.path.join(tmp, "broker.log"))
    ca, cert, key = (os.path.join(d, f) for f in ("ca.pem", "client.pem", "client.key"))
    base = ["schema.registry.url=" + reg.url, "schemas.dir=" + os.path.join(tmp, "none"),
            "snapshot.dir=" + os.path.join(tmp, "snap"), "kafka.fetch.wait.max.ms=10"]
    tls = ["schema.registry.ssl.ca.location=" + ca,
           "schema.registry.ssl.certificate.location=" + cert,
           "schema.registry.ssl.key.location=" + key]
    worker = None
    try:
        from confluent_kafka.schema_registry import SchemaRegistryClient
        sr = SchemaRegistryClient({"url": reg.url, "ssl.ca.location": ca,
                                   "ssl.certificate.location": cert, "ssl.key.location": key})
        i1 = sr.register_schema("behaviour-events-value", Schema(S.event_schema_text(), "AVRO"))
        worker = U.Worker(broker.bootstrap, model, os.path.join(tmp, "worker.log"), extra=base + tls)
        schema = U.avro.schema.parse(S.event_schema_text())
        prod = S.Producer(broker.bootstrap)
        evs = [("u%03d" % k, "i%06d" % k, "VIEW", 1767225600000 + k, None) for k in range(50)]
        for ev in evs:
            prod.send(S.encode(schema, i1, ev, {}), ev[0])
        prod.flush()
        consumed = S.wait_metric(worker, "halflife_events_applied_total", len(evs), 30)
        log = worker.log_text()
        S.check("tls_registry_works", consumed == len(evs) and "event=list_schema" in log and
                worker.metric("halflife_events_invalid_total") == 0,
                "applied %d of %d; log %s" % (consumed, len(evs), log[-300:]))
        rc = worker.stop()
        worker = None
        S.check("tls_worker_exits_0", rc == 0, "exit %s" % rc)
        refused(tmp, broker.bootstrap, model, "tls_wrong_ca_refused",
                base + ["schema.registry.ssl.ca.location=" + os.path.join(d, "other_ca.pem")] +
                tls[1:])
        no_client_cert(tmp, broker.bootstrap, model, base + tls[:1])
    finally:
        if worker:
            worker.stop()
        broker.stop()
        reg.stop()
    if S.FAILED:
        print("    logs in %s" % tmp)
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
