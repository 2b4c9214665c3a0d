#!/usr/bin/python3
"""The Python client against a real engramd, and its example script.

Usage: python_client_test.py BIN_DIR PYTHON_DIR CLIENT_DIR
"""
import os
import subprocess
import sys
import tempfile
import unittest

BIN, PYDIR, CLIENT = sys.argv.pop(1), sys.argv.pop(1), sys.argv.pop(1)
sys.path[:0] = [PYDIR, CLIENT,
                os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e")]
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from engram_client import Client  # noqa: E402
from harness import Engramd  # noqa: E402


class PythonClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.server = Engramd(BIN, cls.tmp.name)
        cls.addr = cls.server.addr

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.tmp.cleanup()

    def test_round_trip_with_numpy(self):
        rng = np.random.default_rng(1)
        x = rng.normal(size=(50, 16)).astype(np.float32)
        with Client(self.addr) as c:
            self.assertEqual(c.health(), "SERVING")
            c.create_store("py", dim=16, similarity="l2", beta=20, top_k=3)
            ids = c.add("py", x, labels=[f"r{i}" for i in range(50)], batch=20)
            self.assertEqual(ids.tolist(), list(range(1, 51)))
            np.testing.assert_array_equal(c.get("py", 7), x[6])
            r = c.retrieve("py", x[[4, 9]] + 0.01, steps=2)
            self.assertEqual(r.ids[:, 0].tolist(), [5, 10])
            self.assertEqual(r.labels[0][0], "r4")
            self.assertEqual(r.vectors.shape, (2, 16))
            np.testing.assert_allclose(r.vectors, x[[4, 9]], atol=1e-3)
            self.assertEqual(r.ids.shape, (2, 3))
            self.assertTrue(np.all(r.steps == 2))
            self.assertEqual(r.path, "exact")
            single = c.retrieve("py", x[0], vectors=False)
            self.assertEqual(single.vectors.shape, (0, 0))
            c.delete("py", [1, 2])
            self.assertEqual(c.get_store("py").pattern_count, 48)
            with self.assertRaises(grpc.RpcError) as e:
                c.retrieve("py", np.ones((1, 3)))
            self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("dimension 16", e.exception.details())
            with self.assertRaises(grpc.RpcError) as e:
                c.get_store("nope")
            self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
            c.delete_store("py")
            self.assertNotIn("py", [s.name for s in c.list_stores()])

    def test_low_rank_path_reports_its_bound(self):
        rng = np.random.default_rng(3)
        x = rng.normal(size=(2000, 8))
        x *= 0.2 / np.linalg.norm(x, axis=1, keepdims=True)
        with Client(self.addr) as c:
            c.create_store("pylr", dim=8, top_k=0)
            c.add("pylr", x)
            low = c.retrieve("pylr", x[:3], path="low_rank", tolerance=1e-4)
            self.assertEqual(low.path, "low_rank")
            self.assertEqual((low.degree, low.rank), (2, 45))
            self.assertGreater(low.error_bound, 0)
            self.assertLessEqual(low.error_bound, 1e-4)
            exact = c.retrieve("pylr", x[:3], path="exact")
            self.assertEqual(exact.reason, "EXACT requested")
            errors = np.linalg.norm(low.vectors - exact.vectors, axis=1)
            self.assertTrue(np.all(errors <= low.error_bound), errors)

    def test_uhop_fit_from_python(self):
        rng = np.random.default_rng(2)
        with Client(self.addr) as c:
            c.create_store("pyu", dim=8, similarity="kernel_l2", uhop=True, fit_epochs=20)
            c.add("pyu", rng.normal(size=(30, 8)))
            status = c.fit("pyu")
            self.assertEqual(status.map_version, 1)
            self.assertEqual(status.epoch, 20)

    def test_calibration_applies_a_better_beta(self):
        rng = np.random.default_rng(3)
        x = rng.uniform(size=(120, 16)).astype(np.float32)
        with Client(self.addr) as c:
            c.create_store("pycal", dim=16, similarity="l2", beta=0.001,
                           calibration={"corruption": "gaussian", "level": 0.1, "seed": 4})
            c.add("pycal", x)
            status = c.calibrate("pycal", apply=True)
            r = status.report
            self.assertTrue(r.applied, status)
            self.assertLess(r.error, r.previous_error)
            self.assertGreaterEqual(r.recall_at_1, r.previous_recall_at_1)
            store = c.get_store("pycal")
            self.assertAlmostEqual(store.retrieval.beta, r.beta, places=6)
            self.assertEqual(store.calibration_report.beta, r.beta)
            # beta="auto" turns on automatic calibration that applies its result.
            c.create_store("pyauto", dim=16, similarity="l2", beta="auto",
                           calibration={"corruption": "mask", "level": 0.3})
            auto = c.get_store("pyauto").calibration
            self.assertTrue(auto.automatic and auto.apply)
            self.assertEqual(auto.corruption, 3)  # MASK

    def test_example_script_saves_a_png(self):
        png = os.path.join(self.tmp.name, "recall.png")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([PYDIR, CLIENT])}
        out = subprocess.run(["/usr/bin/python3", os.path.join(CLIENT, "examples", "fashion_recall.py"),
                              "--addr", self.addr, "--n", "2000", "--show", "6", "--png", png],
                             capture_output=True, text=True, env=env, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("recalled 6/6 exactly", out.stdout)
        self.assertGreater(os.path.getsize(png), 10000)


if __name__ == "__main__":
    unittest.main(verbosity=2)
