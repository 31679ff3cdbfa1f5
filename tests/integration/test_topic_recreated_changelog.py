"""test_topic_recreated_changelog.py - test_topic_recreated.py's cases
with state.store=kafka: the restarted broker empties the state topic as
well as the input topic, so the local snapshot (the cache) is the only
state left (changelog_recreated), and its input offset lies beyond the new
input topic's end (input_topic_recreated). The users must be kept, the
new topic read from its start, and the restart must resume at the new
topic's offset: the changelog rewritten with every row and a checkpoint
at the new offsets, the old topic's cache files renamed aside.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_util as C  # noqa: E402
import test_topic_recreated as T  # noqa: E402

STATE = "recreated-state"
T.EXTRA = ["state.store=kafka", "state.topic=" + STATE, "state.flush.ms=300"]
T.TOPICS = C.TOPICS + [STATE]

if __name__ == "__main__":
    sys.exit(C.run_main("test_topic_recreated_changelog", "ran", T.run))
