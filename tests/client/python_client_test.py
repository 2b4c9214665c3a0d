#!/usr/bin/env python3
"""The Python client package against a real engramd: every RPC, numpy in and
out, retries, TLS and mutual TLS, tokens, the example script, and a fresh
`pip install` of the package as the README gives it.

Usage (with the Python of build/venv, where engram_client is installed):
    python_client_test.py BIN_DIR
"""
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from unittest import mock

BIN = sys.argv.pop(1)
HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from engram_client import Client, IncompleteImport, pb  # noqa: E402
from harness import Engramd, garbled_message, make_certs  # noqa: E402


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
            ids = c.add("py", x, labels=[f"r{i}" for i in range(50)], batch=20,
                        metadata=[{"row": str(i)} for i in range(50)])
            self.assertEqual(ids.dtype, np.uint64)
            self.assertEqual(ids.tolist(), list(range(1, 51)))
            np.testing.assert_array_equal(c.get("py", 7), x[6])
            p = c.get_pattern("py", 7)
            self.assertEqual((p.id, p.label, p.metadata), (7, "r6", {"row": "6"}))
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
            self.assertEqual(c.delete("py", [1, 2]), 48)
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

    def test_import_list_and_update(self):
        rng = np.random.default_rng(4)
        x = rng.normal(size=(2500, 8)).astype(np.float32)
        with Client(self.addr) as c:
            created = c.create_store("imp", dim=8, separation="sparsemax", top_k=2)
            self.assertEqual(created.retrieval.separation, pb.SPARSEMAX)
            self.assertEqual(created.retrieval.beta, 1)  # Not given: the server's.
            done = c.import_patterns("imp", x, labels=[str(i % 7) for i in range(2500)],
                                     batch=1000)
            self.assertEqual((done.patterns_added, done.first_id, done.last_id), (2500, 1, 2500))
            # A message the server cannot read: among others it is refused,
            # naming what came before; as the last one it looks like the
            # stream's end to the server, and the client says the import is
            # incomplete.
            with garbled_message(c, 2), self.assertRaises(grpc.RpcError) as refused:
                c.import_patterns("imp", x[:30], batch=10)
            self.assertEqual(refused.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("message 1: its bytes are not an engram.v1.ImportPatternsRequest",
                          refused.exception.details())
            self.assertIn("10 patterns of earlier messages were committed",
                          refused.exception.details())
            with garbled_message(c, 2), self.assertRaises(IncompleteImport) as e:
                c.import_patterns("imp", x[:20], batch=10)
            self.assertIn("read 1 of the 2 messages and added 10 of the 20", str(e.exception))
            self.assertEqual(e.exception.response.patterns_added, 10)
            self.assertEqual(c.delete("imp", range(2501, 2521)), 2500)
            listed = list(c.list_patterns("imp", page_size=1000))
            self.assertEqual([p.id for p in listed], list(range(1, 2501)))
            np.testing.assert_array_equal(np.stack([p.values for p in listed]), x)
            bare = next(c.list_patterns("imp", values=False))
            self.assertEqual((bare.id, bare.values.size, bare.label), (1, 0, "0"))
            updated = c.update_store("imp", beta=4, top_k=5,
                                     calibration={"sample_size": 100, "corruption": "mask"})
            self.assertEqual((updated.retrieval.beta, updated.retrieval.top_k), (4, 5))
            self.assertEqual(updated.retrieval.separation, pb.SPARSEMAX)  # Kept.
            self.assertEqual(updated.calibration.sample_size, 100)
            self.assertEqual(updated.calibration.corruption, pb.MASK)
            with self.assertRaises(grpc.RpcError) as e:
                c.update_store("imp", fit_epochs=3)
            self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("not an updatable field", e.exception.details())
            with self.assertRaises(ValueError) as v:
                c.update_store("imp", separation="sideways")
            self.assertIn("softmax, sparsemax, entmax15", str(v.exception))
            with self.assertRaises(TypeError):
                c.update_store("imp", betta=3)
            self.assertEqual(c.get_store("imp").retrieval.beta, 4)

    def test_a_backup_that_fails_leaves_no_directory(self):
        d = os.path.join(self.tmp.name, "failed-backup")
        with Client(self.addr) as c:
            with self.assertRaises(grpc.RpcError) as e:
                c.create_backup(d, store="no-such-store")
            self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertFalse(os.path.exists(d))
        self.assertFalse(os.path.exists(d + ".partial"))

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

    def test_filtered_recall_runs_among_the_matches_only(self):
        rng = np.random.default_rng(4)
        x = rng.normal(size=(600, 8)).astype(np.float32)
        labels = [f"c{i % 3}" for i in range(600)]
        metadata = [{"tenant": f"t{i % 2}"} for i in range(600)]
        with Client(self.addr) as c:
            c.create_store("pyf", dim=8, beta=8, top_k=5)
            ids = c.add("pyf", x, labels=labels, metadata=metadata)
            keep = [i for i in range(600) if labels[i] == "c1" and metadata[i]["tenant"] == "t0"]
            c.create_store("pyf-only", dim=8, beta=8, top_k=5)
            only_ids = c.add("pyf-only", x[keep])
            q = x[:4] + 0.1
            r = c.retrieve("pyf", q, where_label=["c1"], where={"tenant": "t0"})
            ref = c.retrieve("pyf-only", q)
            np.testing.assert_array_equal(r.vectors, ref.vectors)
            np.testing.assert_array_equal(r.energy, ref.energy)
            to_original = {int(o): int(ids[k]) for o, k in zip(only_ids, keep)}
            self.assertEqual([[to_original[int(i)] for i in row] for row in ref.ids],
                             r.ids.astype(int).tolist())
            self.assertIn("filtered to 100 of 600", r.reason)
            anyof = c.retrieve("pyf", q, where={"tenant": "t1", "nope": "x"}, where_any=True)
            self.assertTrue(all(int(i) % 2 == 0 for i in anyof.ids.ravel()))  # t1: odd rows
            with self.assertRaises(grpc.RpcError) as e:
                c.retrieve("pyf", q, where_label=["none"])
            self.assertEqual(e.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)

    def test_half_precision_stores(self):
        rng = np.random.default_rng(5)
        x = rng.normal(size=(64, 32)).astype(np.float32)
        with Client(self.addr) as c:
            full = c.create_store("pyp32", dim=32, beta=4)
            self.assertEqual(full.precision, pb.FLOAT32)
            c.add("pyp32", x)
            for name, precision, keep in (("pypb", "bfloat16", 8), ("pyph", "float16", 11)):
                store = c.create_store(name, dim=32, beta=4, precision=precision)
                self.assertEqual(pb.Precision.Name(store.precision), precision.upper())
                ids = c.add(name, x)
                # Kept at the precision: the value back is x rounded to `keep`
                # significant bits.
                got = c.get_pattern(name, int(ids[3])).values
                np.testing.assert_allclose(got, x[3], rtol=2.0 ** -keep)
                self.assertFalse(np.array_equal(got, x[3]))
                info = c.get_store(name)
                self.assertLess(info.memory_bytes, 0.7 * c.get_store("pyp32").memory_bytes)
                r = c.retrieve(name, x[:5] * 0.9)
                ref = c.retrieve("pyp32", x[:5] * 0.9)
                np.testing.assert_array_equal(r.ids[:, 0], ref.ids[:, 0])
                np.testing.assert_allclose(r.vectors, ref.vectors, atol=0.02)
                with self.assertRaises(grpc.RpcError) as e:
                    c.update_store(name, precision="float32")
                self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
                self.assertIn("precision", e.exception.details())
            with self.assertRaises(grpc.RpcError) as e:
                c.add("pyph", np.full((1, 32), 1e5, dtype=np.float32))
            self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("patterns[0].values[0]", e.exception.details())
            self.assertIn("65504", e.exception.details())
            self.assertEqual(c.get_store("pyph").pattern_count, 64)

    def test_expired_patterns_leave_every_answer_then_storage(self):
        x = np.eye(8, dtype=np.float32)
        with Client(self.addr) as c:
            c.create_store("pyttl", dim=8, beta=20, top_k=8, default_ttl=3600)
            keep = c.add("pyttl", x[:4])
            short = c.add("pyttl", x[4:], ttl=2.0)  # Room for the reads below.
            expires = time.time() + 2.0
            self.assertAlmostEqual(c.get_pattern("pyttl", int(keep[0])).expire_time,
                                   time.time() + 3600, delta=60)
            self.assertEqual(c.get_store("pyttl").pattern_count, 8)
            self.assertIn(int(short[0]), c.retrieve("pyttl", x[4]).ids[0].astype(int).tolist())
            time.sleep(max(0.0, expires - time.time()) + 0.1)  # Expired; swept or not.
            self.assertEqual(c.get_store("pyttl").pattern_count, 4)
            r = c.retrieve("pyttl", x[4])
            self.assertEqual(sorted(r.ids[0][:4].astype(int).tolist()),
                             sorted(keep.astype(int).tolist()))
            with self.assertRaises(grpc.RpcError) as e:
                c.get_pattern("pyttl", int(short[0]))
            self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
            self.assertEqual(len(list(c.list_patterns("pyttl"))), 4)
            deadline = time.time() + 10
            while c.get_store("pyttl").expired_count < 4 and time.time() < deadline:
                time.sleep(0.1)
            self.assertEqual(c.get_store("pyttl").expired_count, 4)
            with self.assertRaises(grpc.RpcError) as e:
                c.add("pyttl", x[:1], ttl=-1)
            self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("patterns[0].ttl", e.exception.details())

    def test_uhop_fit_watch_and_cancel(self):
        rng = np.random.default_rng(2)
        with Client(self.addr) as c:
            c.create_store("pyu", dim=8, similarity="kernel_l2", feature_map="uhop",
                           fit_epochs=20, fit_debounce_ms=600000)
            c.add("pyu", rng.normal(size=(30, 8)))
            self.assertEqual(c.fit_status("pyu").state, pb.FitStatus.IDLE)
            status = c.fit("pyu")
            self.assertEqual(status.state, pb.FitStatus.SUCCEEDED)
            self.assertEqual((status.map_version, status.epoch), (1, 20))
            # A long fit, watched and cancelled from another thread.
            c.create_store("pyu2", dim=64, similarity="kernel_l2", feature_map="uhop",
                           fit_epochs=100000, fit_debounce_ms=600000)
            c.add("pyu2", rng.normal(size=(400, 64)))
            c.start_fit("pyu2")
            seen = []
            watcher = threading.Thread(
                target=lambda: seen.extend(s.state for s in c.watch_fit("pyu2")))
            watcher.start()
            time.sleep(0.3)
            c.cancel_fit("pyu2")
            watcher.join(30)
            self.assertFalse(watcher.is_alive())
            self.assertEqual(seen[-1], pb.FitStatus.CANCELLED, seen)
            self.assertEqual(c.fit_status("pyu2").state, pb.FitStatus.CANCELLED)

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
            self.assertEqual(c.calibration("pycal").state, pb.CalibrationStatus.SUCCEEDED)
            states = [s.state for s in c.watch_calibration("pycal")]
            self.assertEqual(states[-1], pb.CalibrationStatus.SUCCEEDED)
            queued = c.start_calibration("pycal")
            after = c.cancel_calibration("pycal")
            self.assertIn(queued.state, (pb.CalibrationStatus.PENDING,
                                         pb.CalibrationStatus.RUNNING))
            self.assertIn(after.state, (pb.CalibrationStatus.CANCELLED,
                                        pb.CalibrationStatus.RUNNING,
                                        pb.CalibrationStatus.SUCCEEDED))
            # beta="auto" turns on automatic calibration that applies its result.
            c.create_store("pyauto", dim=16, similarity="l2", beta="auto",
                           calibration={"corruption": "mask", "level": 0.3})
            auto = c.get_store("pyauto").calibration
            self.assertTrue(auto.automatic and auto.apply)
            self.assertEqual(auto.corruption, pb.MASK)

    def test_reads_are_retried_until_the_server_is_back(self):
        with Engramd(BIN, self.tmp.name) as first:
            addr = first.addr
            first.stop()
        c = Client(addr, retries=6, timeout=5)  # 50 ms doubling: ~3 s.
        later = []
        starter = threading.Timer(0.3, lambda: later.append(
            Engramd(BIN, self.tmp.name, "--listen=" + addr)))
        starter.start()
        try:
            self.assertEqual(c.list_stores(), [])
        finally:
            starter.join()
            c.close()
            for s in later:
                s.stop()
        with self.assertRaises(grpc.RpcError) as e:
            Client(addr, retries=0, timeout=2).create_store("x", dim=2)
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)

    def test_tls_mutual_tls_and_tokens(self):
        d = tempfile.mkdtemp(dir=self.tmp.name)
        p = make_certs(d)
        tokens = os.path.join(d, "tokens")
        with open(tokens, "w") as f:
            f.write("write writer-0123456789abcdef\n")
        with Engramd(BIN, d, "--tls_cert=" + p("server.pem"), "--tls_key=" + p("server.key"),
                     "--tls_client_ca=" + p("ca.pem"), "--token_file=" + tokens) as s:
            with Client(s.addr, tls_ca=p("ca.pem"), tls_cert=p("client.pem"),
                        tls_key=p("client.key"), token="writer-0123456789abcdef") as c:
                c.create_store("tls", dim=2)
                self.assertEqual([x.name for x in c.list_stores()], ["tls"])
            with open(p("ca.pem"), "rb") as f:
                ca = f.read()
            with Client(s.addr, tls_ca=ca, tls_cert=p("client.pem"), tls_key=p("client.key"),
                        retries=0) as anonymous:
                with self.assertRaises(grpc.RpcError) as e:
                    anonymous.list_stores()
                self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            # The address and the token from the environment, as the CLI takes them.
            env = {"ENGRAM_ADDR": s.addr, "ENGRAM_TOKEN": "writer-0123456789abcdef"}
            with mock.patch.dict(os.environ, env):
                with Client(tls_ca=ca, tls_cert=p("client.pem"), tls_key=p("client.key"),
                            retries=0) as from_env:
                    self.assertEqual([x.name for x in from_env.list_stores()], ["tls"])
                # An explicit empty token sends none, whatever the environment.
                with Client(tls_ca=ca, tls_cert=p("client.pem"), tls_key=p("client.key"),
                            token="", retries=0) as explicit:
                    with self.assertRaises(grpc.RpcError) as e:
                        explicit.list_stores()
                    self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            with Client(s.addr, tls_ca=ca, token="writer-0123456789abcdef", retries=0) as no_cert:
                with self.assertRaises(grpc.RpcError) as e:
                    no_cert.list_stores()
                self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)
        with self.assertRaises(ValueError):
            Client("127.0.0.1:1", tls_cert=p("client.pem"), tls_key=p("client.key"))

    def test_example_script_saves_a_png(self):
        png = os.path.join(self.tmp.name, "recall.png")
        out = subprocess.run([sys.executable,
                              os.path.join(SOURCE, "client", "python", "examples", "fashion_recall.py"),
                              "--addr", self.addr, "--n", "2000", "--show", "6", "--png", png],
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("recalled 6/6 exactly", out.stdout)
        self.assertGreater(os.path.getsize(png), 10000)

    def test_pip_installs_the_package_into_a_fresh_environment(self):
        venv = os.path.join(self.tmp.name, "fresh-venv")
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", venv],
                       check=True, capture_output=True, timeout=120)
        source = os.path.join(self.tmp.name, "client-python")  # The README's command,
        subprocess.run(["cp", "-r", os.path.join(SOURCE, "client", "python"), source],
                       check=True)  # on a copy so the tree stays clean.
        install = subprocess.run(
            [os.path.join(venv, "bin", "pip"), "install", "--no-build-isolation", "--no-index",
             "--disable-pip-version-check", source],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "ENGRAM_SOURCE_DIR": SOURCE})
        self.assertEqual(install.returncode, 0, install.stdout + install.stderr)
        out = subprocess.run(
            [os.path.join(venv, "bin", "python"), "-c",
             "import engram_client, sys; c = engram_client.Client(sys.argv[1]); "
             "print(engram_client.__version__, engram_client.__file__, c.health())", self.addr],
            capture_output=True, text=True, timeout=60, cwd=self.tmp.name)
        self.assertEqual(out.returncode, 0, out.stderr)
        version, path, health = out.stdout.split()
        self.assertRegex(version, r"^\d+\.\d+\.\d+$")
        self.assertTrue(path.startswith(venv), path)
        self.assertEqual(health, "SERVING")


class WireTest(unittest.TestCase):
    """Vectors written and read as wire bytes mean what the generated
    classes would have sent and read."""

    def test_rows_encode_as_the_generated_messages_would(self):
        from engram_client import client as cm
        rng = np.random.default_rng(2)
        for n, d in ((1, 1), (1, 784), (5, 3), (130, 17), (0, 4)):
            q = rng.normal(size=(n, d)).astype(np.float32)
            q.flat[::7] = np.float32(-0.0)
            head = pb.RetrieveRequest(store="s", steps=3, omit_vectors=True)
            sent = pb.RetrieveRequest.FromString(head.SerializeToString() +
                                                 cm._rows_field(2, q, 1))
            built = pb.RetrieveRequest(store="s", steps=3, omit_vectors=True,
                                       queries=[pb.Query(values=row) for row in q])
            self.assertEqual(sent, built, (n, d))
            # Patterns with their other fields, as add() sends them.
            rest = [pb.Pattern(id=i + 1, label=f"l{i}", metadata={"k": str(i)}).SerializeToString()
                    for i in range(n)]
            sent = pb.AddPatternsRequest.FromString(
                pb.AddPatternsRequest(store="s").SerializeToString() +
                cm._rows_field(2, q, 2, rest))
            built = pb.AddPatternsRequest(store="s", patterns=[
                pb.Pattern(id=i + 1, label=f"l{i}", metadata={"k": str(i)}, values=q[i])
                for i in range(n)])
            self.assertEqual(sent, built, (n, d))

    def test_answers_read_as_the_generated_messages_would(self):
        from engram_client import client as cm
        rng = np.random.default_rng(3)
        v = rng.normal(size=(4, 300)).astype(np.float32)
        answer = pb.RetrieveResponse(store_version=1 << 40)
        answer.path.reason = "exact"
        for row in v:
            res = answer.results.add(values=row, energy=-1.5, steps=2, converged=True)
            res.matches.add(id=7, weight=0.5, label="x" * 200)
        raw = answer.SerializeToString()
        np.testing.assert_array_equal(cm._packed_rows(raw, 1, 1, 4, 300), v)
        # Values after the other fields are found too.
        res = pb.QueryResult(energy=2.0, steps=1)
        res.matches.add(id=1)
        moved = (b"\x0a" + cm._varint(len(res.SerializeToString()) + 3 + 4 * 300) +
                 res.SerializeToString() + b"\x0a" + cm._varint(4 * 300) + v[0].tobytes())
        self.assertEqual(len(pb.RetrieveResponse.FromString(moved).results[0].values), 300)
        np.testing.assert_array_equal(cm._packed_rows(moved, 1, 1, 1, 300), v[:1])
        # Not what was expected (a count or a dimension that does not match,
        # a result without values): None, and the caller reads them the
        # general way.
        self.assertIsNone(cm._packed_rows(raw, 1, 1, 3, 300))
        self.assertIsNone(cm._packed_rows(raw, 1, 1, 4, 299))
        bare = pb.RetrieveResponse()
        bare.results.add(energy=1.0)
        self.assertIsNone(cm._packed_rows(bare.SerializeToString(), 1, 1, 1, 300))
        # Listed patterns: the values are their field 2, after the id.
        page = pb.ListPatternsResponse(next_page_token="t")
        for i, row in enumerate(v):
            page.patterns.add(id=i + 1, values=row, label="p", metadata={"a": "b"})
        np.testing.assert_array_equal(
            cm._packed_rows(page.SerializeToString(), 1, 2, 4, 300), v)


if __name__ == "__main__":
    unittest.main(verbosity=2)
