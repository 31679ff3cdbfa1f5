"""test_restore_failed_exit.py - a partition assigned to `halflife run` that
it cannot serve stops the worker with exit status 1 and an error line
naming the partition (event=partition_failed), not the exit 0 of a clean
SIGTERM: Kubernetes and an operator must see that the pod failed.

The failing path is a real one, out of memory in a restore: with
state.store=kafka, a changelog restore keeps two maps of one byte per row
id a table of state.max.users may hand out (2 * users + 1024), so
state.max.users=1e9 asks for 2 x 2 GB, and the worker runs under a 3 GB
address-space limit (RLIMIT_AS, set only while it is spawned): every
partition's restore fails with event=restore_failed err="changelog
restore: out of memory", deterministically, while the rest of the worker
(1,024-user tables to start with) fits. Before, the worker logged that,
stopped as on SIGTERM and exited 0. Skipped under HL_SAN=1 (ASan's shadow
memory does not fit any RLIMIT_AS).
"""
import os
import resource
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402

PARTS = 2
AS_LIMIT = 3 << 30
CONF = ["state.store=kafka", "state.max.users=1000000000", "items.topic=", "group.id=g",
        "worker.threads=1", "shutdown.timeout.ms=10000"]


def limited_worker(ck, broker, model):
    """`halflife run` under RLIMIT_AS = AS_LIMIT (the soft limit, put back
    at once: only the child keeps it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, hard))
    try:
        return C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, "w.log"),
                        CONF + ["snapshot.dir=" + os.path.join(ck.tmp, "snap")])
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def run(ck):
    model, _csv, _events = C.prepare(ck.tmp, 200, 20, 50)
    broker = C.Broker(ck.procs, PARTS, os.path.join(ck.tmp, "broker.log"),
                      topics=C.TOPICS + ["g-state"])
    w = limited_worker(ck, broker, model)
    try:
        rc = w.p.wait(120)
    except subprocess.TimeoutExpired:
        rc = "still running after 120 s"
    failed = [kv.get("partition") for _ts, kv in w.events("restore_failed")]
    ck.check("restore_failure_was_under_test", len(failed) >= 1,
             "no event=restore_failed (the limit did not bite?)")
    ck.check("unservable_partition_exits_1", rc == 1,
             "exit %s after partition(s) %s could not be restored (want 1)" % (rc, failed))
    lines = [ln for ln in w.log_text().splitlines() if " event=partition_failed " in ln]
    named = [kv.get("partition") for _ts, kv in w.events("partition_failed")]
    ck.check("partition_failed_logged", len(lines) == 1 and "level=error" in lines[0] and
             named[0] in failed and "could not be restored" in lines[0],
             "partition_failed lines %s (want one, level=error, naming one of %s)"
             % (lines, failed))


def main():
    if os.environ.get("HL_SAN") == "1":
        # AddressSanitizer reserves terabytes of shadow address space: no
        # sanitized binary starts under RLIMIT_AS.
        print("SKIP restore_failed_exit.unservable_partition_exits_1: RLIMIT_AS and "
              "AddressSanitizer do not mix")
        return 0
    return C.run_main("restore_failed_exit", "unservable_partition_exits_1", run)


if __name__ == "__main__":
    sys.exit(main())
