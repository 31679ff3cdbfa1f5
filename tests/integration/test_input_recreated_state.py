"""test_input_recreated_state.py - what a worker leaves in its state store
when it finds the input topic deleted and created again (its offsets start
again at 0, below the state's next offset), and what a later restore makes
of it. One partition; 300 events of 30 users on the first topic.

- kafka_no_rewrite (state.store=kafka): the input topic recreated under
  the old state topic (a second, empty input topic named by input.topic:
  the mock cannot delete one). A member with no local files restores the
  old rows and checkpoint (input offset 300), finds the offset beyond the
  new topic's end and writes the recreation claim: that claim alone must
  be added to the state topic before the partition is served, no rewrite
  of every row (changelog_rewritten). Before the fix the member wrote
  every row and a checkpoint again before serving (about 1.5 s per 70,000
  rows here), though the claim already made the old rows' offsets void
  for every reader; that a member restoring from the old rows and the
  claim alone resumes right is test_changelog_recreated.py's
  killed_in_rewrite.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import e2e_util as U  # noqa: E402

SLOW = 3 if os.environ.get("HL_SAN") == "1" else 1
N_OLD, N_GROWN = 300, 400
STATE = "irs-state"
NEW_INPUT = "behaviour-events-new"


def ready(w):
    return C.wait_for(lambda: w.metric_or("halflife_ready") == 1, 30 * SLOW)


def state_high(bootstrap):
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "irs-watch"})
    try:
        return c.get_watermark_offsets(TopicPartition(STATE, 0), timeout=5)[1]
    finally:
        c.close()


def member(ck, broker, model, name, extra):
    """A worker of its own group (name) with its own snapshot.dir unless
    extra names one: no session of an earlier one holds it up."""
    return C.Worker(ck.procs, broker.bootstrap, model, os.path.join(ck.tmp, name + ".log"),
                    ["snapshot.dir=" + os.path.join(ck.tmp, "snap-" + name),
                     "snapshot.interval.ms=0", "group.id=" + name,
                     "kafka.fetch.wait.max.ms=10"] + extra)


def kafka_no_rewrite(ck, model, events, n_users):
    kafka = ["state.store=kafka", "state.topic=" + STATE]
    broker = C.Broker(ck.procs, 1, os.path.join(ck.tmp, "broker-k.log"),
                      topics=C.TOPICS + [STATE, NEW_INPUT])
    U.produce_events(broker.bootstrap, C.TOPIC, events[:N_OLD])
    w = member(ck, broker, model, "k1", kafka + ["state.flush.ms=300"])
    n = C.wait_consumed([w], N_OLD, 30 * SLOW)
    rc, _ = w.term(30)
    if n != N_OLD or rc != 0:
        raise RuntimeError("first topic: consumed %s of %d, exit %s" % (n, N_OLD, rc))
    before = state_high(broker.bootstrap)
    # no flush of its own in this life: what it wrote is its restore's
    w = member(ck, broker, model, "k2", kafka + ["input.topic=" + NEW_INPUT,
                                                 "state.flush.ms=600000"])
    ok = ready(w) and bool(w.events("input_topic_recreated"))
    added = state_high(broker.bootstrap) - before
    rewritten = len(w.events("changelog_rewritten"))
    w.kill()
    w.wait(10)
    ck.check("kafka_no_rewrite", ok and added == 1 and rewritten == 0,
             "recreation seen and ready %s; the state topic grew by %d records before "
             "serving (want 1: the claim), %d changelog_rewritten lines (want 0)" %
             (ok, added, rewritten))
    broker.stop()


def guarded(ck, case, model, events, n_users):
    """An exception is that case's FAIL."""
    try:
        case(ck, model, events, n_users)
    except Exception as e:  # noqa: BLE001 - reported as a FAIL line, never silent
        ck.check(case.__name__ + "_ran", False, "%s: %s" % (type(e).__name__, e))


def run(ck):
    model, _csv, events = C.prepare(ck.tmp, N_GROWN, 30, 200)
    n_users = len({e[0] for e in events})
    guarded(ck, kafka_no_rewrite, model, events, n_users)


if __name__ == "__main__":
    sys.exit(C.run_main("test_input_recreated_state", "ran", run))
