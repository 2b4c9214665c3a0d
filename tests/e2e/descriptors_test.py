#!/usr/bin/python3
"""A flood of connections that takes every file descriptor loses nothing.

Every connection costs engramd a file descriptor, and RocksDB needs one for
each log and table file it creates. A client that opens connections until
none is left makes the next new log file fail, and RocksDB then stops every
write until the database is opened again. engramd must:
  - raise its soft limit of open files to the hard limit at start, saying so;
  - refuse writes while no descriptor is left, naming the storage error, and
    keep serving reads;
  - take writes again, without a restart, once the connections are gone;
  - keep every acknowledged pattern, and only those, across a restart.

The hard limit is lowered on the running engramd (prlimit), so that the
flood needs a few hundred connections, not tens of thousands. The flood is
skipped under a sanitizer (ASan, UBSan, TSan): their runtimes open pipes
to check memory, and with no descriptor left UBSan reports a false "invalid
vptr" and stops the process.

Usage: descriptors_test.py BIN_DIR
"""
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import unittest

BIN = sys.argv.pop(1)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from engram_client import Client  # noqa: E402
from harness import Engramd, sanitized  # noqa: E402

DIM = 256
BATCH = 4096  # 4 MiB of values per add: RocksDB's 64 MiB memtable fills in 16.


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class DescriptorsTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.tmp.cleanup()

    def test_1_the_soft_limit_is_raised_to_the_hard_one(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        lower = min(soft, hard, 512) - 1
        resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))
        try:
            e = Engramd(BIN, self.tmp.name)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        try:
            with open("/proc/%d/limits" % e.proc.pid) as f:
                line = next(x for x in f if x.startswith("Max open files"))
            self.assertEqual(line.split()[3], str(hard) if hard != resource.RLIM_INFINITY
                             else "unlimited", line)
            self.assertIn("open files<=%s (raised from %d)" % (line.split()[3], lower), e.log())
        finally:
            e.stop()

    @unittest.skipIf(sanitized(BIN), "a sanitizer's runtime needs descriptors of its own")
    def test_2_a_connection_flood_stops_writes_until_it_ends_and_loses_nothing(self):
        e = Engramd(BIN, self.tmp.name)
        data_dir = e.data_dir
        rng = np.random.default_rng(7)
        acknowledged = set()
        flood = []
        try:
            with Client(e.addr) as c:
                c.create_store("s", dim=DIM)
                first = rng.normal(size=(100, DIM)).astype(np.float32)
                acknowledged.update(c.add("s", first).tolist())
                # Room for the storage's files as they are now and a few
                # connections more; the flood takes the rest.
                limit = open_fds(e.proc.pid) + 64
                subprocess.run(["prlimit", "--pid", str(e.proc.pid),
                                "--nofile=%d:%d" % (limit, limit)], check=True)
                host, port = e.addr.rsplit(":", 1)
                for _ in range(limit + 64):  # The last ones wait in the backlog.
                    s = socket.socket()
                    s.settimeout(10)
                    s.connect((host, int(port)))
                    flood.append(s)
                deadline = time.time() + 30
                while open_fds(e.proc.pid) < limit and time.time() < deadline:
                    time.sleep(0.05)
                self.assertEqual(open_fds(e.proc.pid), limit)

                # Writes go on until RocksDB needs a new file, then stop.
                refused = None
                for _ in range(64):
                    batch = rng.normal(size=(BATCH, DIM)).astype(np.float32)
                    try:
                        # One call each: a refused add leaves nothing of itself.
                        acknowledged.update(c.add("s", batch, batch=BATCH).tolist())
                    except grpc.RpcError as error:
                        refused = error
                        break
                self.assertIsNotNone(refused, "no write ever needed a descriptor")
                self.assertIn(refused.code(), (grpc.StatusCode.UNAVAILABLE,
                                               grpc.StatusCode.RESOURCE_EXHAUSTED))
                self.assertIn("Too many open files", refused.details())
                # Reads are served meanwhile, and a write retried in the flood
                # is refused again, clearly.
                self.assertEqual(c.get_store("s").pattern_count, len(acknowledged))
                got = c.retrieve("s", first[:2], top_k=1)
                self.assertEqual(got.vectors.shape, (2, DIM))
                time.sleep(1.2)  # Past the storage's retry interval.
                with self.assertRaises(grpc.RpcError) as again:
                    c.add("s", rng.normal(size=(1, DIM)).astype(np.float32))
                self.assertIn(again.exception.code(), (grpc.StatusCode.UNAVAILABLE,
                                                       grpc.StatusCode.RESOURCE_EXHAUSTED))
                self.assertEqual(c.get_store("s").pattern_count, len(acknowledged))

                # The flood ends: writes work again, without a restart.
                for s in flood:
                    s.close()
                flood = []
                deadline = time.time() + 30
                while True:
                    try:
                        acknowledged.update(
                            c.add("s", rng.normal(size=(10, DIM)).astype(np.float32)).tolist())
                        break
                    except grpc.RpcError as error:
                        self.assertLess(time.time(), deadline, error.details())
                        time.sleep(0.25)
                acknowledged.update(
                    c.add("s", rng.normal(size=(BATCH, DIM)).astype(np.float32)).tolist())
                self.assertEqual(c.get_store("s").pattern_count, len(acknowledged))
            self.assertIn("storage: reopened", e.log())
            self.assertEqual(e.stop(), 0)

            # Every acknowledged pattern, and only those, after a restart.
            e = Engramd(BIN, self.tmp.name, data_dir=data_dir)
            with Client(e.addr) as c:
                self.assertEqual(c.get_store("s").pattern_count, len(acknowledged))
                stored = {p.id for p in c.list_patterns("s", values=False)}
                self.assertEqual(stored, acknowledged)
                print("\n%d acknowledged patterns read back" % len(stored), file=sys.stderr)
        finally:
            for s in flood:
                s.close()
            e.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
