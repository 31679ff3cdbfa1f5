"""test_demo_stop.py - a second Ctrl-C ends `halflife demo` at once and
leaves no scratch files. The first signal starts a clean stop (which may
wait seconds on the embedded broker); the second quit with _exit and left
the demo's snapshot directory, /tmp/halflife-demo-snap-XXXXXX with its
snapshots in it, behind on every double Ctrl-C.

The demo runs on a small prepared model with a snapshot every 300 ms; once
one is written (read from its log: the directory's name and a file in it),
SIGINT is sent twice, 20 ms apart, so the second lands in the first's stop.
Run with /usr/bin/python3.
"""
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402

SUITE = "demo_stop"


def wait_log(path, pattern, proc, timeout):
    """The first match of pattern in the log at path, or None."""
    until = time.time() + timeout
    while time.time() < until and proc.poll() is None:
        with open(path) as f:
            m = re.search(pattern, f.read())
        if m:
            return m
        time.sleep(0.1)
    return None


def run(ck):
    model = os.path.join(ck.tmp, "model.hlm")
    U.make_model(model)
    err_path = os.path.join(ck.tmp, "demo.err")
    with open(os.path.join(ck.tmp, "demo.out"), "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen([U.HL, "demo", "--model", model, "-X", "metrics.port=0",
                                 "-X", "snapshot.interval.ms=300"], stdout=out, stderr=err)
    try:
        m = wait_log(err_path, r"event=snapshot_none partition=\d+ dir=(\S+)", proc, 25)
        ck.check("snapshot_dir_logged", m is not None, "no snapshot_none line in " + err_path)
        if m is None:
            return
        snapdir = m.group(1)
        wrote = wait_log(err_path, r"event=snapshot_written", proc, 20)
        ck.check("snapshot_written", wrote is not None and os.listdir(snapdir),
                 "no snapshot written in %s" % snapdir)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    ck.check("stopped", rc in (0, 128 + signal.SIGINT), "demo exited %d" % rc)
    left = os.listdir(snapdir) if os.path.isdir(snapdir) else None
    ck.check("no_scratch_left", left is None,
             "%s is still there after the demo ended, holding %r" % (snapdir, left))


if __name__ == "__main__":
    sys.exit(C.run_main(SUITE, "demo", run))
