#!/usr/bin/python3
"""A full disk refuses writes and nothing else, for real.

engramd keeps its data on a small tmpfs (mounted by the test: it needs root)
that a ballast file and engram's own writes fill up. With --sync true and
false:
  - the write that finds the disk full gets RESOURCE_EXHAUSTED naming the
    storage error and changes nothing; reads go on; the process stays up;
  - once the ballast is deleted, writes work again without a restart;
  - stopped and restarted on a disk that is still full, engramd comes up,
    serves every acknowledged pattern read-only, refuses writes with
    RESOURCE_EXHAUSTED, and takes writes again once space is freed.

Usage: disk_full_test.py BIN_DIR
"""
import os
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
from harness import Engramd  # noqa: E402

SIZE_MB = 64
BALLAST_MB = 32
DIM = 256
BATCH = 256  # 256 KiB of floats per add


def can_mount():
    return os.geteuid() == 0


@unittest.skipUnless(can_mount(), "needs root to mount a small tmpfs")
class DiskFullTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.mnt = os.path.join(self.tmp.name, "small")
        os.mkdir(self.mnt)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", self.mnt],
                       check=True)
        self.data = os.path.join(self.mnt, "data")
        self.ballast = os.path.join(self.mnt, "ballast")
        with open(self.ballast, "wb") as f:
            f.write(b"\0" * (BALLAST_MB << 20))
        self.rng = np.random.default_rng(1)
        self.model = {}  # id -> values of every acknowledged pattern

    def tearDown(self):
        subprocess.run(["umount", "-l", self.mnt], check=False)
        self.tmp.cleanup()

    def add(self, c, n=BATCH):
        x = self.rng.random((n, DIM), dtype=np.float32)
        ids = c.add("s", x, batch=n)
        for i, row in zip(ids, x):
            self.model[int(i)] = row

    def fill(self, c):
        """Adds until the disk is full; returns the refusal."""
        for _ in range(2000):
            try:
                self.add(c)
            except grpc.RpcError as e:
                return e
        self.fail("the disk never filled")

    def check_reads(self, c):
        self.assertEqual(c.get_store("s").pattern_count, len(self.model))
        for i in list(self.model)[:: max(1, len(self.model) // 50)]:
            np.testing.assert_array_equal(c.get("s", i), self.model[i])
        some = np.stack(list(self.model.values())[:4])
        r = c.retrieve("s", some, beta=1000.0)
        self.assertEqual(r.ids.shape[0], 4)

    def add_until_accepted(self, c, timeout=20):
        deadline = time.time() + timeout
        while True:
            try:
                self.add(c, 8)
                return
            except grpc.RpcError as e:
                self.assertEqual(e.code(), grpc.StatusCode.RESOURCE_EXHAUSTED, e.details())
                if time.time() > deadline:
                    raise
                time.sleep(0.3)

    def run_with(self, sync):
        flags = [f"--sync={sync}"]
        server = Engramd(BIN, self.tmp.name, *flags, data_dir=self.data)
        try:
            with Client(server.addr, timeout=20) as c:
                c.create_store("s", DIM)
                refused = self.fill(c)
                self.assertEqual(refused.code(), grpc.StatusCode.RESOURCE_EXHAUSTED, refused.details())
                self.assertIn("No space left on device", refused.details())
                self.assertIsNone(server.proc.poll())
                self.check_reads(c)  # nothing of the refused write is there
                with self.assertRaises(grpc.RpcError) as again:
                    self.add(c, 1)
                self.assertEqual(again.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
                # Free space: writes come back without a restart.
                os.remove(self.ballast)
                self.add_until_accepted(c)
                self.check_reads(c)
                # Fill it again (leaving a ballast to free later), then restart
                # on the full disk.
                with open(self.ballast, "wb") as f:
                    f.write(b"\0" * (BALLAST_MB * 3 // 4 << 20))
                refused = self.fill(c)
                self.assertEqual(refused.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        finally:
            self.assertEqual(server.stop(), 0, server.log()[-3000:])
        # Take the last free bytes, so that nothing can be written at start.
        try:
            with open(self.ballast, "ab") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:  # full (perhaps too full to create the file at all)
            pass
        server = Engramd(BIN, self.tmp.name, *flags, data_dir=self.data)
        try:
            self.assertIn("read-only", server.startup)
            with Client(server.addr, timeout=20) as c:
                self.check_reads(c)
                with self.assertRaises(grpc.RpcError) as refused:
                    self.add(c, 1)
                self.assertEqual(refused.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
                self.assertIn("read-only", refused.exception.details())
                os.remove(self.ballast)
                self.add_until_accepted(c)
                self.check_reads(c)
        finally:
            self.assertEqual(server.stop(), 0, server.log()[-3000:])
        # Everything acknowledged is there after a normal restart.
        server = Engramd(BIN, self.tmp.name, *flags, data_dir=self.data)
        try:
            with Client(server.addr, timeout=20) as c:
                self.check_reads(c)
        finally:
            server.stop()
        print(f"sync={sync}: {len(self.model)} acknowledged patterns, all read back", flush=True)

    def test_sync(self):
        self.run_with("true")

    def test_no_sync(self):
        self.run_with("false")


if __name__ == "__main__":
    unittest.main()
