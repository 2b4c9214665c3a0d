#!/usr/bin/python3
"""Damaged files never lose acknowledged data silently.

Builds a populated data directory (stores in table files from a clean stop,
more writes only in the write-ahead log from a kill -9, a fitted U-Hop map),
keeping a model of every acknowledged pattern. Then, for each file kind (WAL,
table files, MANIFEST, OPTIONS, CURRENT) and several positions in each, it
flips 16 bytes of a fresh copy and starts engramd on it, without and then
with --accept_data_loss. Every start must end in one of:

  refused  - engramd exits with an error naming the damaged file (or the kind
             of file: CURRENT, MANIFEST, table, log);
  served   - every store of the model is either READY with exactly its
             acknowledged patterns (values and labels), or DAMAGED.

A READY store missing an acknowledged pattern, a store that vanished, or a
crash is a failure. The outcomes are printed as a table.

Usage: fault_injection_test.py BIN_DIR [--positions=N]
"""
import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

parser = argparse.ArgumentParser()
parser.add_argument("bin")
parser.add_argument("--positions", type=int, default=6)
ARGS, rest = parser.parse_known_args()
sys.argv[1:] = rest
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from engram_client import Client, pb  # noqa: E402
from harness import Engramd  # noqa: E402

KINDS = {
    "WAL": lambda name: name.endswith(".log"),
    "table": lambda name: name.endswith(".sst"),
    "MANIFEST": lambda name: name.startswith("MANIFEST-"),
    "OPTIONS": lambda name: name.startswith("OPTIONS-"),
    "CURRENT": lambda name: name == "CURRENT",
}
# Words a refusal may use to name the damaged file's kind, besides its name.
KIND_WORDS = {"WAL": ["write-ahead log"], "table": ["table file"],
              "MANIFEST": ["MANIFEST"], "OPTIONS": ["OPTIONS"], "CURRENT": ["CURRENT"]}


def all_patterns(c, store):
    return {p.id: (p.values, p.label) for p in c.list_patterns(store)}


class FaultInjectionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.pristine = os.path.join(cls.tmp.name, "pristine")
        cls.model = collections.defaultdict(dict)  # store -> id -> (values, label)
        rng = np.random.default_rng(5)

        def add(c, store, n, dim):
            x = rng.standard_normal((n, dim)).astype(np.float32)
            labels = [f"{store}{i}" for i in range(n)]
            for i, row, label in zip(c.add(store, x, labels=labels), x, labels):
                cls.model[store][int(i)] = (row, label)

        server = Engramd(ARGS.bin, cls.tmp.name, data_dir=cls.pristine)
        with Client(server.addr) as c:
            for name, dim in (("alpha", 32), ("beta", 64), ("gamma", 16)):
                c.create_store(name, dim)
                add(c, name, 400, dim)
            c.create_store("uhop", 24, similarity="kernel_l2", feature_map="uhop", feature_dim=8,
                           fit_epochs=10)
            add(c, "uhop", 300, 24)
            assert c.fit("uhop").state == pb.FitStatus.SUCCEEDED
        assert server.stop() == 0, server.log()
        # More writes that only the log holds.
        server = Engramd(ARGS.bin, cls.tmp.name, data_dir=cls.pristine)
        with Client(server.addr) as c:
            for name, dim in (("alpha", 32), ("beta", 64), ("gamma", 16)):
                for _ in range(5):
                    add(c, name, 40, dim)
            doomed = list(cls.model["beta"])[:50]
            c.delete("beta", doomed)
            for i in doomed:
                del cls.model["beta"][i]
        server.kill()
        cls.outcomes = collections.Counter()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()
        print("\nfile kind x positions -> outcome (without / with --accept_data_loss):")
        for (kind, accept, outcome), n in sorted(cls.outcomes.items()):
            print(f"  {kind:9s} {'accept' if accept else 'default':8s} {outcome:40s} {n}")

    def damaged_copy(self, name, offset):
        data = os.path.join(self.tmp.name, "run")
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(self.pristine, data)
        path = os.path.join(data, "db", name)
        with open(path, "r+b") as f:
            f.seek(offset)
            chunk = f.read(16)
            f.seek(offset)
            f.write(bytes(b ^ 0xFF for b in chunk))
        return data

    def start(self, data, accept):
        flags = ["--accept_data_loss"] if accept else []
        log = os.path.join(self.tmp.name, "start.log")
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [os.path.join(ARGS.bin, "engramd"), "--listen=127.0.0.1:0", "--metrics_listen=",
                 "--data_dir=" + data, *flags], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            with open(log) as f:
                text = f.read()
            if "; ready" in text:
                port = re.search(r"\(port (\d+)[,)]", text).group(1)
                return proc, "127.0.0.1:" + port, text
            if proc.poll() is not None:
                with open(log) as f:
                    return proc, None, f.read()
            time.sleep(0.02)
        proc.kill()
        with open(log) as f:
            self.fail("engramd neither served nor refused in 30 s:\n" + f.read())

    def check_served(self, addr):
        """The outcome of a start that served; fails on silent loss."""
        damaged = 0
        with Client(addr, timeout=20) as c:
            for store, patterns in self.model.items():
                try:
                    s = c.get_store(store)
                except grpc.RpcError as e:
                    self.fail(f"store {store} is gone: {e.code()} {e.details()}")
                if s.state == pb.Store.DAMAGED:
                    self.assertTrue(s.state_detail, store)
                    damaged += 1
                    continue
                got = all_patterns(c, store)
                self.assertEqual(sorted(got), sorted(patterns),
                                 f"store {store} is READY without every acknowledged pattern")
                for i, (values, label) in patterns.items():
                    np.testing.assert_array_equal(got[i][0], values)
                    self.assertEqual(got[i][1], label)
        return f"served, {damaged} store(s) DAMAGED" if damaged else "served, all intact"

    def run_case(self, kind, name, offset):
        for accept in (False, True):
            data = self.damaged_copy(name, offset)
            proc, addr, log = self.start(data, accept)
            try:
                if addr is None:
                    self.assertNotEqual(proc.returncode, 0)
                    self.assertNotIn("SIG", log, log)  # refused, not crashed
                    words = [name] + KIND_WORDS[kind]
                    self.assertTrue(any(w in log for w in words),
                                    f"refusal does not name {name} ({kind}):\n{log}")
                    outcome = "refused, naming the file"
                    if os.environ.get("SHOW_REFUSALS"):
                        print(f"\n{kind} {name}@{offset} accept={accept}:\n{log[-600:]}")
                else:
                    outcome = self.check_served(addr)
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    self.assertEqual(proc.wait(timeout=30), 0)
            self.outcomes[(kind, accept, outcome)] += 1

    def test_every_file_kind(self):
        files = sorted(os.listdir(os.path.join(self.pristine, "db")))
        tried = collections.Counter()
        for kind, matches in KINDS.items():
            names = [n for n in files if matches(n)]
            self.assertTrue(names, f"no {kind} file in {files}")
            for name in names:
                size = os.path.getsize(os.path.join(self.pristine, "db", name))
                if size == 0:
                    continue
                positions = sorted({max(0, min(size - 16, int(size * k / (ARGS.positions - 1))))
                                    for k in range(ARGS.positions)})
                for offset in positions:
                    with self.subTest(kind=kind, file=name, offset=offset):
                        self.run_case(kind, name, offset)
                        tried[kind] += 1
        print("\npositions tried per kind:", dict(tried))
        for kind in KINDS:
            self.assertGreater(tried[kind], 0, kind)


if __name__ == "__main__":
    unittest.main()
