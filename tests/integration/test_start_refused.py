"""test_start_refused.py - `halflife run` refuses files it cannot use at
start, quickly and with a clear message (issue 16, "Hardening", item 12).

- snapshot.dir that is a regular file used to be accepted at start and then
  fail every snapshot, interval after interval, and the final one; now the
  worker refuses it before joining the group: exit 1, "not a directory".
- model.path that is a FIFO used to hang startup with no log line (opening
  a FIFO for reading waits for a writer); now it is refused at once:
  exit 1, "not a regular file (a FIFO)". A directory is refused the same
  way.

Each run has a 10 s limit: a hang is a FAIL, not a stuck test. No broker is
needed: both refusals come before Kafka is touched (the bootstrap address
points at a closed port, so reaching Kafka would also show as a hang).
"""
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402

failed = 0


def check(name, ok, why):
    global failed
    print(("PASS start_refused.%s" % name) if ok else ("FAIL start_refused.%s: %s" % (name, why)))
    failed += 0 if ok else 1


def run(tmp, extra):
    """(exit status or "hang", seconds, output) of `halflife run` with extra."""
    args = [U.HL, "run", "-X", "kafka.bootstrap.servers=127.0.0.1:9", "-X", "metrics.port=0",
            "-X", "schemas.dir=" + U.SCHEMAS]
    for kv in extra:
        args += ["-X", kv]
    t0 = time.time()
    with open(os.path.join(tmp, "out.log"), "w+") as log:
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = "hang"
        log.seek(0)
        return rc, time.time() - t0, log.read()


def main():
    if not U.HL or not os.access(U.HL, os.X_OK):
        print("SKIP start_refused.snapshot_dir_file: HL_HALFLIFE is not an executable")
        return 0
    if not os.access(os.path.join(U.BUILD, "tests", "test_offline"), os.X_OK):
        print("SKIP start_refused.snapshot_dir_file: build/tests/test_offline is missing")
        return 0
    with tempfile.TemporaryDirectory(prefix="hl_start_refused_") as tmp:
        model = os.path.join(tmp, "m.hlm")
        U.make_model(model, 50, 8)

        not_dir = os.path.join(tmp, "snapshots")
        with open(not_dir, "w") as f:
            f.write("a file, not a directory\n")
        rc, secs, out = run(tmp, ["model.path=" + model, "snapshot.dir=" + not_dir])
        check("snapshot_dir_file", rc == 1 and "event=worker_create_failed" in out and
              "snapshot.dir %s: not a directory (a regular file)" % not_dir in out,
              "exit %s after %.1f s: %s" % (rc, secs, out.strip()[-400:]))

        fifo = os.path.join(tmp, "model.fifo")
        os.mkfifo(fifo)
        rc, secs, out = run(tmp, ["model.path=" + fifo, "snapshot.dir=" + os.path.join(tmp, "s")])
        check("model_fifo", rc == 1 and "event=model_open_failed" in out and
              "not a regular file (a FIFO)" in out,
              "exit %s after %.1f s: %s" % (rc, secs, out.strip()[-400:]))

        rc, secs, out = run(tmp, ["model.path=" + tmp, "snapshot.dir=" + os.path.join(tmp, "s")])
        check("model_directory", rc == 1 and "not a regular file (a directory)" in out,
              "exit %s after %.1f s: %s" % (rc, secs, out.strip()[-400:]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
