"""test_start_refused.py - `halflife run` refuses files it cannot use at
start, quickly and with a clear message (issue 16, "Hardening", item 12).

- snapshot.dir that is a regular file used to be accepted at start and then
  fail every snapshot, interval after interval, and the final one; now the
  worker refuses it before joining the group: exit 1, "not a directory".
- model.path that is a FIFO used to hang startup with no log line (opening
  a FIFO for reading waits for a writer); now it is refused at once:
  exit 1, "not a regular file (a FIFO)". A directory is refused the same
  way.
- -c naming a FIFO waits for its writer (a process substitution may be
  slow); a SIGTERM there used to exit 2 with "config file ...: Interrupted
  system call", a configuration error to an orchestrator; now it is the
  documented stop during start-up: exit 0, step=configuration.

Each run has a 10 s limit: a hang is a FAIL, not a stuck test. No broker is
needed: both refusals come before Kafka is touched (the bootstrap address
points at a closed port, so reaching Kafka would also show as a hang).
"""
import os
import signal
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
        config_fifo_sigterm(tmp, model)
    return 1 if failed else 0


def blocked_in_open(pid, timeout=10):
    """Waits until pid's main thread sits in openat(2) (x86_64 number 257,
    /proc/PID/syscall): there a FIFO with no writer keeps it. False when it
    never does (or has exited)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open("/proc/%d/syscall" % pid) as f:
                if f.read().split(" ", 1)[0] == "257":
                    return True
        except OSError:
            return False
        time.sleep(0.02)
    return False


def config_fifo_sigterm(tmp, model):
    """-c naming a FIFO (a process substitution, /dev/stdin) waits for its
    writer; a SIGTERM there is a stop during start-up: exit 0 and one
    step=configuration line, not exit 2 with "Interrupted system call"
    reported as a configuration error."""
    fifo = os.path.join(tmp, "config.fifo")
    os.mkfifo(fifo)
    args = [U.HL, "run", "-c", fifo, "-X", "model.path=" + model, "-X", "metrics.port=0"]
    with open(os.path.join(tmp, "fifo.log"), "w+") as log:
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        waiting = blocked_in_open(p.pid)
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = "hang"
        log.seek(0)
        out = log.read()
    check("config_fifo_sigterm", waiting and rc == 0 and
          out.count("event=worker_stopped_before_start step=configuration") == 1 and
          "Interrupted" not in out,
          "blocked in open: %s; exit %s: %s" % (waiting, rc, out.strip()[-400:]))


if __name__ == "__main__":
    sys.exit(main())
