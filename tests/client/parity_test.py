#!/usr/bin/env python3
"""Parity of the clients with the API: walks the service descriptor and fails
when an RPC has no Python client method, or (for user-facing ones) no CLI
command; each call is checked to reach its RPC by the server's own request
counter. Prints the table. (The C++ client has the same check in
client_test.cc.)

Usage (with the Python of build/venv): parity_test.py BIN_DIR
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
import urllib.request

BIN = sys.argv.pop(1)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
import numpy as np  # noqa: E402
from engram_client import RPCS, Client, pb  # noqa: E402
from harness import Engramd  # noqa: E402

ROWS = np.eye(4, dtype=np.float32)[:3]
TMP = tempfile.mkdtemp()  # Backups of the calls below; removed at the end.

# RPC -> a Python call that succeeds, in an order in which each does.
PYTHON = [
    ("CreateStore", lambda c: c.create_store("p", dim=4)),
    ("GetStore", lambda c: c.get_store("p")),
    ("ListStores", lambda c: c.list_stores()),
    ("UpdateStore", lambda c: c.update_store("p", beta=3)),
    ("AddPatterns", lambda c: c.add("p", ROWS)),
    ("ImportPatterns", lambda c: c.import_patterns("p", ROWS)),
    ("GetPattern", lambda c: c.get_pattern("p", 1)),
    ("ListPatterns", lambda c: list(c.list_patterns("p"))),
    ("DeletePatterns", lambda c: c.delete("p", [6])),
    ("Retrieve", lambda c: c.retrieve("p", ROWS[0])),
    ("StartCalibration", lambda c: c.start_calibration("p")),
    ("WatchCalibration", lambda c: list(c.watch_calibration("p"))),
    ("GetCalibrationStatus", lambda c: c.calibration("p")),
    ("CancelCalibration", lambda c: c.cancel_calibration("p")),
    ("StartFit", lambda c: (c.create_store("u", dim=4, similarity="kernel_l2",
                                           feature_map="uhop", fit_epochs=5,
                                           fit_debounce_ms=600000),
                            c.add("u", ROWS), c.start_fit("u"))),
    ("WatchFit", lambda c: list(c.watch_fit("u"))),
    ("GetFitStatus", lambda c: c.fit_status("u")),
    ("CancelFit", lambda c: c.cancel_fit("u")),
    ("CreateBackup", lambda c: c.create_backup(os.path.join(TMP, "py-backup"), store="p")),
    ("RestoreStore", lambda c: c.restore_store(os.path.join(TMP, "py-backup"), name="p2")),
    ("DeleteStore", lambda c: (c.delete_store("p"), c.delete_store("u"))),
]

# RPC -> the CLI command that calls it (None: not a CLI command, and why).
CLI = [
    ("CreateStore", ["store", "create", "c", "--dim=4"]),
    ("GetStore", ["store", "get", "c"]),
    ("ListStores", ["store", "list"]),
    ("UpdateStore", ["store", "update", "c", "--beta=3"]),
    ("AddPatterns", None),
    ("ImportPatterns", ["add", "c", "{rows}"]),
    ("GetPattern", ["patterns", "get", "c", "1"]),
    ("ListPatterns", ["patterns", "list", "c"]),
    ("DeletePatterns", ["patterns", "delete", "c", "3"]),
    ("Retrieve", ["retrieve", "c", "{rows}"]),
    ("StartCalibration", ["calibrate", "c"]),
    ("WatchCalibration", ["calibrate", "c", "--status", "--wait"]),
    ("GetCalibrationStatus", ["calibrate", "c", "--status"]),
    ("CancelCalibration", ["calibrate", "c", "--cancel"]),
    ("StartFit", ["fit", "cu"]),
    ("WatchFit", ["fit", "cu", "--status", "--wait"]),
    ("GetFitStatus", ["fit", "cu", "--status"]),
    ("CancelFit", ["fit", "cu", "--cancel"]),
    ("CreateBackup", ["backup", "create", "{tmp}/cli-backup", "--store=c"]),
    ("RestoreStore", ["backup", "restore", "{tmp}/cli-backup", "--as=c2"]),
    ("DeleteStore", ["store", "delete", "c"]),
]
NOT_IN_CLI = {"AddPatterns": "'add' streams ImportPatterns; AddPatterns is the "
                             "one-message atomic add for programs"}


class ParityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.server = Engramd(BIN, cls.tmp.name, metrics_listen="127.0.0.1:0")
        cls.rpcs = [m.name for m in pb.DESCRIPTOR.services_by_name["Engram"].methods]
        cls.table = {}

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.tmp.cleanup()
        shutil.rmtree(TMP, ignore_errors=True)
        print("\nRPC                    Python client              CLI")
        for rpc in cls.rpcs:
            python, cli = cls.table.get(rpc, ("MISSING", "MISSING"))
            print(f"{rpc:22} {python:26} {cli}")

    def counts(self):
        with urllib.request.urlopen(
                f"http://127.0.0.1:{self.server.metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        out = {}
        for m in re.finditer(r'engram_requests_total\{code="OK",method="(\w+)"\} (\S+)', text):
            out[m.group(1)] = float(m.group(2))
        return out

    def reached(self, before, rpc):
        return self.counts().get(rpc, 0) > before.get(rpc, 0)

    def test_1_python_client_covers_every_rpc(self):
        self.assertEqual(sorted(RPCS), sorted(self.rpcs), "RPCS must name every RPC")
        self.assertEqual([rpc for rpc, _ in PYTHON], [rpc for rpc, _ in PYTHON if rpc in RPCS])
        self.assertEqual(sorted(rpc for rpc, _ in PYTHON), sorted(self.rpcs))
        with Client(self.server.addr) as c:
            for rpc, call in PYTHON:
                self.assertTrue(callable(getattr(c, RPCS[rpc], None)), rpc)
                before = self.counts()
                call(c)
                self.assertTrue(self.reached(before, rpc), f"{RPCS[rpc]} did not reach {rpc}")
                self.table[rpc] = (f"Client.{RPCS[rpc]}", self.table.get(rpc, ("", "MISSING"))[1])

    def test_2_cli_covers_every_user_facing_rpc(self):
        self.assertEqual(sorted(rpc for rpc, _ in CLI), sorted(self.rpcs))
        rows = os.path.join(self.tmp.name, "rows.npy")
        np.save(rows, ROWS)
        engram = os.path.join(BIN, "engram")
        with Client(self.server.addr) as c:  # The U-Hop store the fit commands use.
            c.create_store("cu", dim=4, similarity="kernel_l2", feature_map="uhop",
                           fit_epochs=5, fit_debounce_ms=600000)
            c.add("cu", ROWS)
        for rpc, argv in CLI:
            python = self.table.get(rpc, ("MISSING", ""))[0]
            if argv is None:
                self.assertIn(rpc, NOT_IN_CLI)
                self.table[rpc] = (python, "(none: " + NOT_IN_CLI[rpc] + ")")
                continue
            argv = [a.replace("{rows}", rows).replace("{tmp}", TMP) for a in argv]
            before = self.counts()
            out = subprocess.run([engram, "--addr=" + self.server.addr, *argv],
                                 capture_output=True, text=True, timeout=60)
            self.assertEqual(out.returncode, 0, f"{argv}: {out.stderr}")
            self.assertTrue(self.reached(before, rpc), f"engram {' '.join(argv)} did not reach {rpc}")
            self.table[rpc] = (python, "engram " + " ".join(a for a in argv if a != rows))


if __name__ == "__main__":
    unittest.main(verbosity=2)
