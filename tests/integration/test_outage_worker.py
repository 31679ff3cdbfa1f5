"""test_outage_worker.py - a broker that goes away for 10 seconds and comes back
(issue 5): `halflife broker` takes its brokers down on SIGUSR1 and up on
SIGUSR2. The worker must wait, report it (halflife_broker_up 0 on /metrics
and a log line), and resume without loss: afterwards every event is
consumed exactly once and every user's last list matches core/ offline.
"""
import os
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402
import test_e2e as E  # noqa: E402


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP outage_worker.waits_and_resumes: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_outage_")
    model, events_csv = os.path.join(tmp, "m.hlm"), os.path.join(tmp, "e.csv")
    U.make_model(model, 1000, 16)
    U.make_events(events_csv, 4000, 300, 1000)
    events = U.read_events_csv(events_csv)
    broker = U.Broker(4, ["behaviour-events", "recommendations", "behaviour-events.dlq"],
                      os.path.join(tmp, "broker.log"))
    worker = None
    failed = []
    try:
        worker = U.Worker(broker.bootstrap, model, os.path.join(tmp, "worker.log"),
                          extra=["snapshot.dir=" + os.path.join(tmp, "snap"),
                                 "kafka.fetch.wait.max.ms=10", "kafka.statistics.interval.ms=1000"])
        last = U.produce_events(broker.bootstrap, "behaviour-events", events[:2000])
        deadline = time.time() + 30
        while time.time() < deadline and worker.metric("halflife_events_consumed_total") < 2000:
            time.sleep(0.3)
        broker.p.send_signal(signal.SIGUSR1)
        down_seen = False
        t_down = time.time()
        while time.time() - t_down < 10:
            down_seen = down_seen or worker.metric("halflife_broker_up") == 0
            time.sleep(0.5)
        if worker.p.poll() is not None:
            failed.append("the worker exited during the outage (%s)" % worker.p.returncode)
        broker.p.send_signal(signal.SIGUSR2)
        last.update(U.produce_events(broker.bootstrap, "behaviour-events", events[2000:]))
        lists, done = E.read_lists(broker.bootstrap, last, time.time() + 40)
        consumed = worker.metric("halflife_events_consumed_total")
        up = worker.metric("halflife_broker_up")
        rc = worker.stop()
        log = worker.log_text()
        worker = None
        if not down_seen:
            failed.append("halflife_broker_up never read 0 during the outage")
        if up != 1:
            failed.append("halflife_broker_up %s after the outage" % up)
        if "broker_down" not in log and "ALL_BROKERS_DOWN" not in log:
            failed.append("no log line about the outage")
        if consumed != len(events):
            failed.append("consumed %d of %d" % (consumed, len(events)))
        if len(done) != len(last):
            failed.append("%d of %d users got the list of their last event" % (len(done), len(last)))
        else:
            bad = E.compare(lists, U.offline_lists(events_csv, model), events)
            if bad:
                failed.append("%d lists differ from offline, e.g. %s" % (len(bad), bad[:2]))
        if rc != 0:
            failed.append("exit status %s after SIGTERM" % rc)
    finally:
        if worker:
            worker.stop()
        broker.stop()
    if failed:
        print("FAIL outage_worker.waits_and_resumes: %s (logs in %s)" % (failed, tmp))
        return 1
    print("PASS outage_worker.waits_and_resumes")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
