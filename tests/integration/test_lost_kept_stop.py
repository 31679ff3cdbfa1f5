"""test_lost_kept_stop.py - a member stopped (SIGTERM) after its session
ran out inside a revocation writes no snapshot of the partitions it kept
outside that revocation: the coordinator may have given them to another
member meanwhile (test_lost_mid_release.py is the same loss followed by
the kept partitions' revocation instead of a stop).

The setup and the first revocation are test_lost_mid_release.py's: A's
revocation waits for refused lists, A is stopped (SIGSTOP) until B owns
all four partitions, A continues and lets the two it was revoking go as
lost, and the refusal ends. librdkafka does not mark the two A kept lost
(it skips that while a rebalance is in progress, and rejoins as a new
member), so nothing told A's stop that B had been serving them. A gets
SIGTERM at once, before its rejoin is answered: its stop must let them go
as lost (event=stop_lost), with no snapshot written. Before the fix it
published their lists, waited for them and wrote a snapshot of each into
the shared snapshot.dir, at offsets B had read past.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import test_lost_mid_release as L  # noqa: E402


def body(ck):
    broker, a, _b = L.lost_mid_release(ck, "lost-kept-stop")
    rc = a.stop(20)
    lost = a.events("stop_lost")
    written = a.log_text().count(" event=snapshot_written ")
    ck.check("kept_stop_lost", rc == 0 and lost and written == 0,
             "A exited %s; stop_lost %s; %d snapshots written of partitions another "
             "member owns" % (rc, lost[:1], written))
    broker.stop()


if __name__ == "__main__":
    sys.exit(C.run_main("test_lost_kept_stop", "ran", body))
