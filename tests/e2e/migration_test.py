#!/usr/bin/python3
"""A data directory written by engram 0.1.0 loads and answers as it did.

tests/fixtures/datadir-v1 was written by the 0.1.0 release (one key space for
all stores, recent writes only in the write-ahead log); datadir-v1.json holds
what that server answered. engramd must migrate it at start, then answer every
store, pattern and retrieval the same, before and after a restart.

Usage: migration_test.py BIN_DIR FIXTURES_DIR
"""
import json
import os
import shutil
import sys
import tempfile
import unittest

BIN, FIXTURES = sys.argv[1:3]
del sys.argv[1:3]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from google.protobuf import json_format  # noqa: E402
import grpc  # noqa: E402
from engram_client import Client, pb, pb_grpc  # noqa: E402
from harness import Engramd  # noqa: E402

# What a store answers that is kept by the process, not stored: its change
# counter and the state of the fit job that process ran.
VOLATILE = {("fit", "durationSeconds"), ("fit", "epoch"), ("fit", "totalEpochs"), ("fit", "state"),
            ("version",)}


def assert_close(test, got, want, where):
    """Equal structure and strings; numbers equal to float32 rounding, to 1e-4
    relative: the fixture came from one build on one CPU, and another build
    or CPU sums the same products in another order (sanitizer builds, AVX2
    against AVX-512 kernels, blocked against pairwise dot products), which
    an l2 score amplifies where ||q||^2 + ||x||^2 - 2 q.x cancels (1.0e-5
    relative seen on the calibrated store). Lost or damaged data differs by
    far more."""
    if isinstance(want, dict):
        test.assertEqual(sorted(got), sorted(want), where)
        for key in want:
            assert_close(test, got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        test.assertEqual(len(got), len(want), where)
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(test, g, w, f"{where}[{i}]")
    elif isinstance(want, float) or isinstance(got, float):
        test.assertAlmostEqual(got, want, delta=1e-4 * max(1.0, abs(want)), msg=where)
    else:
        test.assertEqual(got, want, where)


def strip(store):
    store = json.loads(json.dumps(store))
    for path in VOLATILE:
        node = store
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return store


class MigrationTest(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.data = os.path.join(cls.tmp.name, "data")
        shutil.copytree(os.path.join(FIXTURES, "datadir-v1"), cls.data)
        with open(os.path.join(FIXTURES, "datadir-v1.json")) as f:
            cls.expected = json.load(f)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def check(self, addr):
        # The raw messages, compared field by field with what 0.1 answered.
        with Client(addr) as c, grpc.insecure_channel(addr) as channel:
            stub = pb_grpc.EngramStub(channel)
            stores = {s.name: json_format.MessageToDict(s) for s in c.list_stores()}
            self.assertEqual(sorted(stores), sorted(self.expected["stores"]))
            for name, want in self.expected["stores"].items():
                got = strip(stores[name])
                # Added since 0.1: a migrated store keeps float32 values,
                # and says what memory they take.
                self.assertEqual(got.pop("precision"), "FLOAT32", name)
                memory = int(got.pop("memoryBytes", "0"))
                self.assertEqual(memory > 0, int(got.get("patternCount", "0")) > 0, name)
                assert_close(self, got, strip(want), name)
                r = stub.ListPatterns(pb.ListPatternsRequest(store=name, page_size=1000))
                # Stored values come back bit for bit.
                self.assertEqual([json_format.MessageToDict(p) for p in r.patterns],
                                 self.expected["patterns"][name], name)
            for name, want in self.expected["retrieve"].items():
                response = stub.Retrieve(pb.RetrieveRequest(
                    store=name, queries=[pb.Query(values=q) for q in want["queries"]]))
                got = json_format.MessageToDict(response)
                got.pop("storeVersion", None)
                want = dict(want["response"])
                want.pop("storeVersion", None)
                assert_close(self, got, want, name)

    def test_loads_migrates_and_answers_the_same(self):
        server = Engramd(BIN, self.tmp.name, data_dir=self.data)
        try:
            self.assertIn("migrated 5 stores (101 patterns) from the engram 0.1 layout",
                          server.startup)
            self.check(server.addr)
        finally:
            self.assertEqual(server.stop(), 0)
        # Migrated once: the second start reads the new layout as it is.
        server = Engramd(BIN, self.tmp.name, data_dir=self.data)
        try:
            self.assertNotIn("migrated", server.startup)
            self.check(server.addr)
        finally:
            self.assertEqual(server.stop(), 0)


if __name__ == "__main__":
    unittest.main()
