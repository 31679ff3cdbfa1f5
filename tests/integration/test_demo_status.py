"""test_demo_status.py - `halflife demo`'s status line tells a newcomer the
truth in its first seconds. The embedded broker holds a new consumer
group's first join about 3 s, so the producer runs ahead of a worker that
has no partition yet; the status line said "the worker is 2.0 s behind the
producer: see halflife_stage_seconds on /metrics for where the time goes"
on every start, while the worker had read nothing and the stage histograms
had nothing to show. Until the worker reads it now says it has not
started reading (and why), and "behind the producer" is left for a worker
that reads.

The demo runs on a small prepared model (no training) for 8 s; the checks
read only the lines it printed, so a slow machine changes which lines
there are, not whether they are right. Run with /usr/bin/python3.
"""
import os
import re
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402

SUITE = "demo_status"
STATUS = re.compile(r"^events/s .*\| lag\s+([0-9.]+) s \|.* consumed (\d+) ")


def run(ck):
    model = os.path.join(ck.tmp, "model.hlm")
    U.make_model(model)
    out = subprocess.run([U.HL, "demo", "--model", model, "--duration", "8",
                          "-X", "metrics.port=0"], cwd=ck.tmp, capture_output=True,
                         text=True, timeout=120)
    ck.check("exits_0", out.returncode == 0, "demo exited %d: %s"
             % (out.returncode, out.stderr[-400:]))
    lines = out.stdout.splitlines()
    waiting = []        # the note under each status line of a worker that read nothing
    for i, line in enumerate(lines):
        m = STATUS.match(line)
        if m and int(m.group(2)) == 0 and float(m.group(1)) > 1.0:
            waiting.append(lines[i + 1] if i + 1 < len(lines) else "")
    ck.check("status_lines", any(STATUS.match(x) for x in lines),
             "no status line in: %r" % out.stdout[:400])
    wrong = [x for x in waiting if "behind the producer" in x]
    ck.check("no_behind_before_reading", not wrong,
             "a worker that has read nothing was called behind: %r" % wrong[:2])
    told = [x for x in waiting if "has not started reading yet" in x]
    ck.check("says_why_not_reading", len(told) == len(waiting),
             "want every such line to say the worker has not started reading: %r" % waiting[:2])

    busy_port(ck, model)


def busy_port(ck, model):
    """A metrics.port another process holds: the demo goes on without
    /metrics, and its warning says what to do (it named only the bind
    error, "Address already in use")."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        out = subprocess.run([U.HL, "demo", "--model", model, "--duration", "1",
                              "-X", "metrics.port=%d" % port, "-X", "metrics.bind=127.0.0.1"],
                             cwd=ck.tmp, capture_output=True, text=True, timeout=120)
    finally:
        holder.close()
    warn = [x for x in out.stderr.splitlines() if "event=demo_no_metrics" in x]
    ck.check("busy_port_goes_on", out.returncode == 0 and len(warn) == 1,
             "exit %d, warnings %r" % (out.returncode, warn))
    ck.check("busy_port_says_what_to_do", any("set metrics.port to a free port" in x
                                              for x in warn), "warning: %r" % warn)


if __name__ == "__main__":
    sys.exit(C.run_main(SUITE, "demo", run))
