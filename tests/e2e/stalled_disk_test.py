#!/usr/bin/python3
"""A disk that stalls stops writes, not reads.

engramd acknowledges a write once the storage has it on disk (--sync=true),
and the write holds one of gRPC's threads until then. On a disk that stalls
(a cloud volume's hiccup, a dying drive), writes pile up: thirty of them
held every thread of a 16-thread engramd, and every call but Retrieve was
refused ("Server Threadpool Exhausted") until the disk came back. Writes
now hold at most half of --rpc_threads; the next is refused at once with
RESOURCE_EXHAUSTED, and reads go on. Streams (idle clients' imports) hold
at most half too; streams and writes together at most all but an eighth
(and at least three),
so a stall while idle streams hold their half still leaves threads for
reads (before, the two halves took all sixteen).

The stall: a library preloaded into engramd (stall_sync.cc) makes fsync and
fdatasync wait while a flag file exists.

Usage: stalled_disk_test.py BIN_DIR STALL_LIBRARY
"""
import collections
import os
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from engram_client import Client, pb  # noqa: E402
from harness import Engramd, IdleCalls, metric, until  # noqa: E402

BIN = sys.argv.pop(1)
STALL = sys.argv.pop(1)


class StalledDiskTest(unittest.TestCase):
    def setUp(self):
        self.imported = 0  # Patterns imported beyond the store's ten.
        self.tmp = tempfile.TemporaryDirectory()
        self.flag = os.path.join(self.tmp.name, "stalled")
        # A sanitizer's runtime would have to come first among the libraries.
        asan = os.environ.get("ASAN_OPTIONS", "")
        self.server = Engramd(
            BIN, self.tmp.name, "--rpc_threads=16", metrics_listen="127.0.0.1:0",
            wrapper=("env", "LD_PRELOAD=" + STALL, "ENGRAM_TEST_STALL_FLAG=" + self.flag,
                     "ASAN_OPTIONS=" + asan + (":" if asan else "") + "verify_asan_link_order=0"))

    def tearDown(self):
        if os.path.exists(self.flag):
            os.remove(self.flag)
        self.server.stop()
        self.tmp.cleanup()

    def until(self, condition, what):
        until(self, condition, what, 30, self.server)

    def store(self):
        """A client, and store "s" of ten patterns."""
        c = Client(self.server.addr, retries=0, timeout=60)
        c.create_store("s", dim=4)
        c.add("s", np.ones((10, 4), dtype=np.float32))
        return c

    def write(self, outcomes, i):
        """One add of a pattern of `i`s: (its id, None) or (None, the error)
        onto `outcomes`."""
        with Client(self.server.addr, retries=0, timeout=60) as w:
            try:
                outcomes.append((w.add("s", np.full((1, 4), i, dtype=np.float32))[0], None))
            except grpc.RpcError as e:
                outcomes.append((None, e))

    def reads(self):
        """Every kind of read answers, on a fresh connection."""
        with Client(self.server.addr, retries=0, timeout=5) as r:
            self.assertEqual(r.get_store("s").pattern_count, 10 + self.imported)
            self.assertEqual(len(list(r.list_patterns("s", values=False))),
                             10 + self.imported)
            self.assertEqual(r.get_pattern("s", 1).id, 1)
            self.assertIsNotNone(r.retrieve("s", np.ones((1, 4), dtype=np.float32)))
            self.assertEqual([st.name for st in r.list_stores()], ["s"])

    def test_reads_go_on_while_the_disk_stalls(self):
        s = self.server
        c = self.store()
        self.assertEqual(metric(s.metrics_port, "engram_write_slots"), 8)

        open(self.flag, "w").close()  # The disk stalls.
        outcomes = []

        def write(i):
            self.write(outcomes, i)
        writers = [threading.Thread(target=write, args=(i,)) for i in range(30)]
        for t in writers:
            t.start()
        try:
            # Eight writes wait on the disk; the other 22 were refused.
            self.until(lambda: len(outcomes) == 22, "the writes past the slots were not refused")
            self.assertEqual(metric(s.metrics_port, "engram_writes_in_flight"), 8)
            # Refused by the writes' share, naming the disk; in a burst (on
            # a slow build), some by the share of writes still waiting for
            # their request, which names that.
            for _, e in outcomes:
                self.assertEqual(e.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
                if "waiting for their request are in flight" not in e.details():
                    self.assertIn("8 writes are in flight", e.details())
                    self.assertIn("is the disk slow?", e.details())
            self.assertTrue(any("is the disk slow?" in e.details() for _, e in outcomes),
                            [e.details() for _, e in outcomes])
            # Every read is answered meanwhile.
            self.reads()
            time.sleep(1)
            self.assertEqual(len(outcomes), 22)  # The eight still wait.
        finally:
            os.remove(self.flag)  # The disk comes back.
            for t in writers:
                t.join()
        print("\n%s" % collections.Counter(
            "acknowledged" if e is None else e.code().name for _, e in outcomes), file=sys.stderr)
        acknowledged = sorted(i for i, e in outcomes if e is None)
        self.assertEqual(len(acknowledged), 8)
        self.assertEqual(metric(s.metrics_port, "engram_writes_in_flight"), 0)
        self.assertEqual(c.get_store("s").pattern_count, 18)
        stored = {p.id for p in c.list_patterns("s", values=False)}
        self.assertTrue(set(acknowledged) <= stored)
        # Writes go on as before.
        c.add("s", np.ones((1, 4), dtype=np.float32))

    def test_reads_go_on_while_the_disk_stalls_and_idle_streams_hold_theirs(self):
        s = self.server
        c = self.store()
        self.assertEqual(metric(s.metrics_port, "engram_held_thread_slots"), 13)
        # Eight idle imports, each after one message, hold the streams' half.
        one = pb.ImportPatternsRequest(store="s", patterns=[pb.Pattern(values=[1] * 4)])
        idle = IdleCalls(s.addr, "ImportPatterns", 8, one.SerializeToString())
        writers = []
        outcomes = []

        def write(i):
            self.write(outcomes, i)
        try:
            self.until(lambda: c.get_store("s").pattern_count == 18,
                       "the idle imports did not commit their message")
            self.assertEqual(metric(s.metrics_port, "engram_streams_in_flight"), 8)
            self.imported = 8
            open(self.flag, "w").close()  # The disk stalls.
            # One at a time, writes take what is left to them: five, not the
            # eight of their own share.
            for i in range(5):
                writers.append(threading.Thread(target=write, args=(i,)))
                writers[-1].start()
                self.until(lambda: metric(s.metrics_port, "engram_writes_in_flight") == i + 1,
                           "write %d does not wait on the disk" % i)
            self.assertEqual(metric(s.metrics_port, "engram_threads_held"), 13)
            # The next ones are refused at once, saying why.
            for i in range(5, 9):
                write(i)
            self.assertEqual(len(outcomes), 4)
            for _, e in outcomes:
                self.assertEqual(e.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
                self.assertIn("13 streams and writes together are in flight", e.details())
                self.assertIn("the rest are kept for reads", e.details())
            # So is the next stream, by the streams' own share.
            with self.assertRaises(grpc.RpcError) as refused:
                c.import_patterns("s", np.ones((1, 4), np.float32))
            self.assertIn("8 streams (imports", refused.exception.details())
            # The three threads left answer every read.
            self.reads()
            time.sleep(1)
            self.assertEqual(len(outcomes), 4)  # The five still wait.
            self.reads()
        finally:
            if os.path.exists(self.flag):
                os.remove(self.flag)  # The disk comes back.
            for t in writers:
                t.join()
            idle.close()
        self.assertEqual(sum(e is None for _, e in outcomes), 5)
        self.until(lambda: metric(s.metrics_port, "engram_threads_held") == 0,
                   "threads still held after the stall")
        self.assertEqual(c.get_store("s").pattern_count, 23)


if __name__ == "__main__":
    unittest.main(verbosity=2)
