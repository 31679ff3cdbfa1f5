"""test_evict_mass.py - eviction by decayed mass end to end (issue 16, item 8;
DESIGN.md section 2: "a user whose decayed mass ... has fallen below
state.evict.mass in every head is dropped ... Both are counted").

A `halflife broker` with two partitions; `halflife run` with
state.evict.mass=100 and a state.max.users far above the stream, so only
the mass rule can drop anyone. The stream: LIGHT users with one VIEW each
(mass 1, below the bar from the start), then HEAVY users with one event of
weight 1000 at the newest event times (mass 1000: they must stay).
Checks:
- halflife_evictions_total{reason="mass"} counts (nearly) every light user
  and never a heavy one; {reason="capacity"} stays 0;
- every user, evicted or not, got its list first (lists >= users): the
  sweep runs after a batch's lists are produced;
- halflife_users agrees with inserted - evicted;
- the final snapshots (SIGTERM) hold every heavy user;
- halflife_dlq_errors_total stays 0 and SIGTERM exits 0.
Before the fix the worker never swept: evict_mass stayed 0 and every light
user stayed in memory.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e_util as U  # noqa: E402

N_LIGHT, N_HEAVY, T0 = 3000, 20, 1767225600000


def events():
    out = [("light-%d" % u, "i%06d" % (u % 1000), "VIEW", T0 + u * 1000, None)
           for u in range(N_LIGHT)]
    t1 = T0 + N_LIGHT * 1000
    out += [("heavy-%d" % u, "i%06d" % u, "PURCHASE", t1 + u * 1000, 1000.0)
            for u in range(N_HEAVY)]
    return out


def snapshot_users(snap_dir):
    """Users in the newest snapshot of each partition."""
    newest = {}
    for path in sorted(glob.glob(os.path.join(snap_dir, "*.hls"))):
        part = int(os.path.basename(path).split(".")[-3])
        newest[part] = path                 # names sort like offsets
    users = set()
    for path in newest.values():
        out = subprocess.run([U.HL, "snapshot", "dump", path], check=True,
                             capture_output=True, text=True).stdout
        users.update(json.loads(l)["user"] for l in out.splitlines() if l)
    return users


def main():
    why = U.have_prereqs()
    if why:
        print("SKIP evict_mass.users_below_mass_evicted: %s" % why)
        return 0
    tmp = tempfile.mkdtemp(prefix="hl_evict_")
    model, snap = os.path.join(tmp, "m.hlm"), os.path.join(tmp, "snap")
    U.make_model(model, 1000, 16)
    broker = U.Broker(2, ["behaviour-events", "recommendations", "behaviour-events.dlq"],
                      os.path.join(tmp, "broker.log"))
    worker = None
    failed = []
    evs = events()
    try:
        worker = U.Worker(broker.bootstrap, model, os.path.join(tmp, "worker.log"),
                          extra=["state.evict.mass=100", "state.max.users=100000",
                                 "batch.max.messages=500", "kafka.fetch.wait.max.ms=10",
                                 "snapshot.dir=" + snap])
        U.produce_events(broker.bootstrap, "behaviour-events", evs)
        deadline = time.time() + 40
        while time.time() < deadline:
            try:
                if worker.metric("halflife_events_consumed_total") >= len(evs):
                    break
            except OSError:
                pass                        # /metrics is not up yet
            time.sleep(0.3)
        time.sleep(1.0)                     # the last batch's counts reach the registry
        mass = worker.metric("halflife_evictions_total", 'reason="mass"')
        cap = worker.metric("halflife_evictions_total", 'reason="capacity"')
        users = worker.metric("halflife_users")
        lists = worker.metric("halflife_lists_published_total")
        dlq_err = worker.metric("halflife_dlq_errors_total")
        consumed = worker.metric("halflife_events_consumed_total")
        if consumed != len(evs):
            failed.append("consumed %d of %d" % (consumed, len(evs)))
        if not (0.9 * N_LIGHT <= mass <= N_LIGHT):
            failed.append("evictions{mass} %d, want %d..%d (light users)"
                          % (mass, int(0.9 * N_LIGHT), N_LIGHT))
        if cap != 0:
            failed.append("evictions{capacity} %d, want 0" % cap)
        if users != N_LIGHT + N_HEAVY - mass:
            failed.append("halflife_users %d, want inserted %d - evicted %d"
                          % (users, N_LIGHT + N_HEAVY, mass))
        if lists < N_LIGHT + N_HEAVY:
            failed.append("%d lists for %d users: an evicted user lost its list"
                          % (lists, N_LIGHT + N_HEAVY))
        if dlq_err != 0:
            failed.append("halflife_dlq_errors_total %d" % dlq_err)
        rc = worker.stop()
        worker = None
        if rc != 0:
            failed.append("exit status %s after SIGTERM" % rc)
        kept = snapshot_users(snap)
        missing = sorted(u for u in ("heavy-%d" % k for k in range(N_HEAVY)) if u not in kept)
        if missing:
            failed.append("heavy users not in the final snapshots: %s" % missing[:5])
        light_kept = sum(1 for u in kept if u.startswith("light-"))
        if light_kept != N_LIGHT - mass:
            failed.append("%d light users in the snapshots, want %d" % (light_kept, N_LIGHT - mass))
    finally:
        if worker:
            worker.stop()
        broker.stop()
    if failed:
        print("FAIL evict_mass.users_below_mass_evicted: %s (logs in %s)" % (failed, tmp))
        return 1
    print("PASS evict_mass.users_below_mass_evicted (%d light users evicted by mass, "
          "%d heavy kept)" % (mass, N_HEAVY))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
