#!/usr/bin/python3
"""An idle engramd sleeps.

A server that nobody calls should cost its machine next to nothing: no
thread of engramd's may wake on a short timer of its own while nothing is
due. The job scheduler used to look at every store fifty times a second
(its 20 ms debounce tick), idle or not; it now sleeps until a store's
debounce ends, an add, or a job's end (a store whose new patterns are still
below its threshold is looked at again once a second).

The test counts the voluntary context switches of all engramd's threads
(/proc/PID/task/*/status) while it is idle: after a fit has run and with a
store whose adds are below its threshold, so that every kind of wait the
scheduler has is in play. What is left is gRPC's own timers (a few a
second), the stream guard (4 a second) and the expiry sweeper (1 a
second). It also shows that a fit still starts when its debounce ends,
which the scheduler no longer polls for.

Usage: idle_test.py BIN_DIR
"""
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import OneServerTest  # noqa: E402

import numpy as np  # noqa: E402
from engram_client import pb  # noqa: E402

BIN = sys.argv.pop(1) if len(sys.argv) > 1 else "build/bin"
DIM = 16
# Wake-ups a second allowed to an idle engramd: it measured about 12 (60
# with the 20 ms scheduler tick).
MAX_WAKES_PER_S = 30


def wakes(pid):
    """Each thread's voluntary context switches so far, by thread id."""
    counts = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        counts[tid] = (name, int(line.split()[1]))
        except FileNotFoundError:
            pass  # A thread that ended meanwhile.
    return counts


class IdleTest(OneServerTest):
    BIN = BIN

    def uhop_store(self, name, min_new_patterns, debounce_ms, patterns):
        store = pb.Store(name=name, dimension=DIM)
        store.feature_map.kind = pb.UHOP
        store.feature_map.epochs = 5
        store.feature_map.min_new_patterns = min_new_patterns
        store.feature_map.debounce_ms = debounce_ms
        self.stub.CreateStore(pb.CreateStoreRequest(store=store), timeout=30)
        rng = np.random.default_rng(len(name))
        self.stub.AddPatterns(pb.AddPatternsRequest(store=name, patterns=[
            pb.Pattern(values=rng.standard_normal(DIM).tolist()) for _ in range(patterns)]),
            timeout=30)

    def test_an_idle_server_wakes_only_for_what_is_due(self):
        added = time.monotonic()
        self.uhop_store("due", min_new_patterns=1, debounce_ms=300, patterns=40)
        self.uhop_store("below", min_new_patterns=1000, debounce_ms=1, patterns=40)
        # The fit of "due" starts on its own once its debounce has passed.
        deadline = time.monotonic() + 60
        while True:
            fit = self.stub.GetFitStatus(pb.GetFitStatusRequest(store="due"), timeout=30)
            if fit.state == pb.FitStatus.SUCCEEDED:
                break
            self.assertLess(time.monotonic(), deadline, f"no automatic fit in 60 s: {fit}")
            time.sleep(0.05)
        self.assertGreaterEqual(time.monotonic() - added, 0.3)
        below = self.stub.GetFitStatus(pb.GetFitStatusRequest(store="below"), timeout=30)
        self.assertEqual(below.state, pb.FitStatus.IDLE, below)

        time.sleep(1)  # The fit's calibration and the calls' ends settle.
        seconds = 4
        before = wakes(self.server.proc.pid)
        time.sleep(seconds)
        after = wakes(self.server.proc.pid)
        per_thread = sorted(((after[t][1] - before[t][1]) / seconds, after[t][0], t)
                            for t in after if t in before)
        total = sum(rate for rate, _, _ in per_thread)
        table = "\n".join(f"  {name} ({tid}): {rate:.1f}/s"
                          for rate, name, tid in reversed(per_thread) if rate > 0)
        print(f"idle engramd: {total:.1f} wake-ups a second\n{table}")
        self.assertLess(total, MAX_WAKES_PER_S,
                        f"an idle engramd woke {total:.1f} times a second:\n{table}")


if __name__ == "__main__":
    unittest.main()
