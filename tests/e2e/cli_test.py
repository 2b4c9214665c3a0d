#!/usr/bin/python3
"""End-to-end: a real engramd on a free loopback port, driven by the engram CLI.

Usage: cli_test.py BIN_DIR
Checks every CLI command, the file formats (npy float32/float64, csv, idx,
gzip), --out, --json, errors on stderr with a non-zero exit, and SIGTERM.
"""
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Engramd  # noqa: E402

import numpy as np

BIN = sys.argv.pop(1) if len(sys.argv) > 1 else "build/bin"


def write_npy(path, array):
    np.save(path, array)


class CliTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.server = Engramd(BIN, cls.tmp.name)
        cls.addr = cls.server.addr

    @classmethod
    def tearDownClass(cls):
        if cls.server.proc.poll() is None:
            cls.server.kill()
        cls.tmp.cleanup()

    def engram(self, *args, ok=True):
        result = subprocess.run(
            [os.path.join(BIN, "engram"), "--addr=" + self.addr, *args],
            capture_output=True, text=True, timeout=60)
        if ok:
            self.assertEqual(result.returncode, 0, result.stderr)
        return result

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def test_01_help_for_every_command(self):
        for command in (["store", "create"], ["store", "list"], ["store", "get"],
                        ["store", "update"], ["store", "delete"], ["add"],
                        ["patterns", "list"], ["patterns", "get"], ["patterns", "delete"],
                        ["retrieve"], ["fit"], ["calibrate"], ["bench"], ["health"],
                        ["version"]):
            out = self.engram(*command, "--help").stdout
            self.assertIn("engram " + " ".join(command), out)
        self.assertIn("Commands:", self.engram("--help").stdout)
        # How to reach a server: in the usage and in each command that talks to one.
        self.assertIn("$ENGRAM_ADDR", self.engram("--help").stdout)
        self.assertIn("--tls_ca=", self.engram("retrieve", "--help").stdout)
        self.assertNotIn("--tls_ca=", self.engram("version", "--help").stdout)

    def test_02_health(self):
        self.assertEqual(self.engram("health").stdout.strip(), "SERVING")
        self.assertEqual(self.engram("health", "engram.v1.Engram").stdout.strip(), "SERVING")

    def test_02b_address_from_the_environment(self):
        def health(*args, addr=None):
            env = dict(os.environ)
            env.pop("ENGRAM_ADDR", None)
            if addr is not None:
                env["ENGRAM_ADDR"] = addr
            return subprocess.run([os.path.join(BIN, "engram"), *args, "health"],
                                  capture_output=True, text=True, timeout=60, env=env)

        self.assertEqual(health(addr=self.addr).stdout.strip(), "SERVING")
        # --addr wins over the environment.
        self.assertEqual(health("--addr=" + self.addr, addr="127.0.0.1:1").stdout.strip(),
                         "SERVING")
        refused = health("--timeout_s=5", addr="127.0.0.1:1")
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("UNAVAILABLE", refused.stderr)
        self.assertIn("127.0.0.1:1", refused.stderr)
        # An empty variable counts as unset: the default address, not "".
        default = health("--timeout_s=5", addr="")
        if default.returncode != 0:  # No engramd on the default port.
            self.assertIn("127.0.0.1:50051", default.stderr)

    def test_03_store_lifecycle_and_formats(self):
        rng = np.random.default_rng(0)
        memories = rng.normal(size=(40, 8)).astype(np.float32)
        self.engram("store", "create", "vec", "--dim=8", "--beta=4", "--similarity=l2",
                    "--separation=sparsemax", "--top_k=3")
        listed = self.engram("store", "list").stdout
        self.assertRegex(listed, r"vec\s+8\s+0\s+l2\s+sparsemax\s+4\s+1")

        write_npy(self.path("a.npy"), memories[:10])
        write_npy(self.path("b.npy"), memories[10:20].astype(np.float64))
        np.savetxt(self.path("c.csv"), memories[20:30], delimiter=",",
                   header=",".join(f"x{i}" for i in range(8)), comments="")
        with gzip.open(self.path("d.npy.gz"), "wb") as f:
            np.save(f, memories[30:40])
        for name in ("a.npy", "b.npy", "c.csv", "d.npy.gz"):
            self.assertIn("added 10 patterns", self.engram("add", "vec", self.path(name)).stdout)
        info = json.loads(self.engram("store", "get", "vec", "--json").stdout)
        self.assertEqual(int(info["pattern_count"]), 40)
        self.assertEqual(info["retrieval"]["separation"], "SPARSEMAX")
        self.assertIn("patterns:      40", self.engram("store", "get", "vec").stdout)

        queries = memories[[3, 17, 25]] + 0.05 * rng.normal(size=(3, 8)).astype(np.float32)
        write_npy(self.path("q.npy"), queries.astype(np.float32))
        out = json.loads(self.engram("retrieve", "vec", self.path("q.npy"), "--json",
                                     "--out=" + self.path("r.npy"), "--steps=3").stdout)
        self.assertEqual(len(out["results"]), 3)
        self.assertEqual([int(r["matches"][0]["id"]) for r in out["results"]], [4, 18, 26])
        self.assertEqual(out["path"]["path"], "EXACT")
        for r in out["results"]:
            self.assertEqual(len(r["matches"]), 3)
            self.assertEqual(r["steps"], 3)
            self.assertIn("energy", r)
        recalled = np.load(self.path("r.npy"))
        self.assertEqual(recalled.dtype, np.float32)
        np.testing.assert_allclose(recalled, memories[[3, 17, 25]], atol=1e-4)

        text = self.engram("retrieve", "vec", self.path("q.npy"), "--offset=1", "--limit=1").stdout
        self.assertIn("query 1:", text)
        self.assertIn("top 18:", text)

        self.engram("store", "delete", "vec")
        self.assertNotIn("vec", self.engram("store", "list").stdout)

    def test_04_idx_gzip_with_labels(self):
        images = np.arange(5 * 4 * 4, dtype=np.uint8).reshape(5, 4, 4)
        header = bytes([0, 0, 8, 3]) + b"".join(int(v).to_bytes(4, "big") for v in (5, 4, 4))
        with gzip.open(self.path("img.idx3.gz"), "wb") as f:
            f.write(header + images.tobytes())
        labels = bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + bytes([3, 1, 4, 1, 5])
        with open(self.path("lab.idx1"), "wb") as f:
            f.write(labels)
        with open(self.path("lab4.idx1"), "wb") as f:
            f.write(bytes([0, 0, 8, 1]) + (4).to_bytes(4, "big") + bytes([1, 2, 3, 4]))
        self.engram("store", "create", "img", "--dim=16")
        mismatch = self.engram("add", "img", self.path("img.idx3.gz"),
                               "--labels=" + self.path("lab4.idx1"), ok=False)
        self.assertNotEqual(mismatch.returncode, 0)
        self.assertIn("one label per row", mismatch.stderr)
        # --offset/--limit slice the labels in step with the rows.
        out = self.engram("add", "img", self.path("img.idx3.gz"), "--offset=1", "--limit=2",
                          "--labels=" + self.path("lab.idx1")).stdout
        self.assertIn("added 2 patterns", out)
        self.assertEqual(self.engram("store", "get", "img", "--json").stdout.count('"pattern_count": "2"'), 1)
        self.engram("store", "delete", "img")
        self.engram("store", "create", "img", "--dim=16")
        out = self.engram("add", "img", self.path("img.idx3.gz"), "--labels=" + self.path("lab.idx1")).stdout
        self.assertIn("added 5 patterns", out)
        out = json.loads(self.engram("retrieve", "img", self.path("img.idx3.gz"), "--limit=1",
                                     "--json", "--beta=50", "--top_k=1").stdout)
        match = out["results"][0]["matches"][0]
        self.assertEqual(match["label"], "5")  # The largest pixels win the dot product.

    def test_05_errors_go_to_stderr_with_nonzero_exit(self):
        self.engram("store", "create", "e", "--dim=3")
        cases = [
            (["store", "create", "e", "--dim=3"], "ALREADY_EXISTS"),
            (["store", "create", "f"], "--dim"),
            (["store", "create", "f", "--dim=3", "--similarity=euclid"], "is not one of"),
            (["store", "get", "missing"], "NOT_FOUND"),
            (["add", "e", self.path("nope.npy")], "cannot open"),
            (["retrieve", "e", self.path("q3.csv")], "FAILED_PRECONDITION"),
            (["bogus"], "Usage"),
            (["store", "create", "f", "--dim=3", "--precision=half"], "is not one of"),
            (["store", "update", "e", "--precision=float16"], "fixed at create"),
        ]
        np.savetxt(self.path("q3.csv"), np.ones((2, 3)), delimiter=",")
        np.savetxt(self.path("q4.csv"), np.ones((2, 4)), delimiter=",")
        cases.append((["add", "e", self.path("q4.csv")], "has rows of 4 values; store 'e' has dimension 3"))
        for args, needle in cases:
            result = self.engram(*args, ok=False)
            self.assertNotEqual(result.returncode, 0, args)
            self.assertIn(needle, result.stderr, args)
            self.assertEqual(result.stdout, "", args)

    def test_05a_out_is_written_whole_or_not_at_all(self):
        self.engram("store", "create", "outs", "--dim=2")
        q = self.path("outs-q.npy")
        write_npy(q, np.eye(2, dtype=np.float32))
        self.engram("add", "outs", q)
        out = self.path("outs-r.npy")
        self.engram("retrieve", "outs", q, "--out=" + out)
        before = np.load(out)
        # Onto a directory, or into one that is not there: the reason, and
        # nothing written.
        os.makedirs(self.path("outs-dir"), exist_ok=True)
        r = self.engram("retrieve", "outs", q, "--out=" + self.path("outs-dir"), ok=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("Is a directory", r.stderr)
        r = self.engram("retrieve", "outs", q, "--out=" + self.path("no/such.npy"), ok=False)
        self.assertIn("No such file or directory", r.stderr)
        self.assertEqual([n for n in os.listdir(self.tmp.name) if "partial" in n], [])
        # Written again: replaced whole.
        self.engram("retrieve", "outs", q, "--out=" + out, "--beta=50")
        self.assertEqual(np.load(out).shape, before.shape)

    def test_05b_half_precision_store(self):
        self.engram("store", "create", "h", "--dim=16", "--precision=float16")
        x = np.linspace(-2, 2, 8 * 16, dtype=np.float32).reshape(8, 16) + 0.001
        write_npy(self.path("h.npy"), x)
        self.engram("add", "h", self.path("h.npy"))
        info = self.engram("store", "get", "h").stdout
        self.assertIn("precision:     float16", info)
        got = json.loads(self.engram("patterns", "get", "h", "3", "--json").stdout)
        np.testing.assert_allclose(got["values"], x[2], rtol=2.0 ** -11)
        big = np.full((1, 16), 70000, dtype=np.float32)
        write_npy(self.path("big.npy"), big)
        result = self.engram("add", "h", self.path("big.npy"), ok=False)
        self.assertIn("float16, whose largest magnitude is 65504", result.stderr)

    def test_06_uhop_fit(self):
        rng = np.random.default_rng(3)
        write_npy(self.path("u.npy"), rng.normal(size=(30, 12)).astype(np.float32))
        self.engram("store", "create", "u", "--dim=12", "--feature_map=uhop",
                    "--similarity=kernel_l2", "--feature_dim=6", "--fit_epochs=25",
                    "--fit_loss=mean", "--fit_debounce_ms=600000")
        self.engram("add", "u", self.path("u.npy"))
        self.assertIn("fit:           idle", self.engram("store", "get", "u").stdout)
        out = self.engram("fit", "u", "--wait").stdout
        self.assertIn("succeeded", out)
        self.assertIn("epoch 25/25", out)
        self.assertIn("map v1 (30 patterns)", out)
        info = self.engram("store", "get", "u").stdout
        self.assertIn("fit:           succeeded (map v1 from 30 patterns; epoch 25/25", info)
        self.assertIn("d_Phi 6", info)
        status = json.loads(self.engram("fit", "u", "--cancel", "--json").stdout)
        self.assertEqual(status["store"], "u")
        plain = self.engram("fit", "e", ok=False)
        self.assertIn("FAILED_PRECONDITION", plain.stderr)

    def test_07_bench_and_version(self):
        self.assertRegex(self.engram("version").stdout, r"engram \d+\.\d+\.\d+ ")
        # --version, both programs: the version, not Abseil's build mode.
        for program in ("engram", "engramd"):
            shown = subprocess.run([os.path.join(BIN, program), "--version"],
                                   capture_output=True, text=True, timeout=60)
            self.assertEqual(shown.returncode, 0, shown.stderr)
            self.assertRegex(shown.stdout, r"^%s \d+\.\d+\.\d+ \(API engram.v1\)\n$" % program)
        self.assertEqual(json.loads(self.engram("version", "--json").stdout)["api"], "engram.v1")
        self.assertEqual(json.loads(self.engram("health", "--json").stdout)["status"], "SERVING")
        rng = np.random.default_rng(4)
        write_npy(self.path("b.npy"), rng.normal(size=(40, 8)).astype(np.float32))
        self.engram("store", "create", "bench", "--dim=8")
        self.engram("add", "bench", self.path("b.npy"))
        out = json.loads(self.engram("bench", "bench", "--requests=30", "--concurrency=3",
                                     "--queries_per_request=4", "--json").stdout)
        self.assertEqual(out["requests"], 30)
        self.assertEqual(out["errors"], 0)
        self.assertEqual(out["queries_per_request"], 4)
        self.assertGreater(out["queries_per_s"], 0)
        self.assertLessEqual(out["p50_ms"], out["p99_ms"])
        text = self.engram("bench", "bench", "--duration_s=0.5", "--warmup_s=0.2", "--rate=40").stdout
        self.assertRegex(text, r"requests \(0 errors\)")
        rate = float(re.search(r"([\d.]+) requests/s", text).group(1))
        self.assertLess(rate, 60, "--rate limits the load")

    def test_08_calibration(self):
        rng = np.random.default_rng(5)
        write_npy(self.path("c.npy"), rng.uniform(size=(120, 16)).astype(np.float32))
        # --beta=auto: calibrated in the background once adds go quiet.
        self.engram("store", "create", "cal", "--dim=16", "--similarity=dot", "--beta=auto",
                    "--search_similarity", "--corruption=gaussian", "--level=0.2",
                    "--fit_debounce_ms=100")
        self.engram("add", "cal", self.path("c.npy"))
        deadline = time.time() + 30
        info = ""
        while "calibrated:" not in info and time.time() < deadline:
            time.sleep(0.2)
            info = self.engram("store", "get", "cal").stdout
        self.assertIn("calibration:   automatic, applies; gaussian 0.2; search beta, similarity", info)
        self.assertRegex(info, r"calibrated:    \w+ softmax beta [\d.e+]+ \(applied; was error")
        self.assertRegex(info, r"capacity:      recall@1 [\d.]+, error [\d.e+-]+, well separated")
        store = json.loads(self.engram("store", "get", "cal", "--json").stdout)
        report = store["calibration_report"]
        self.assertTrue(report["applied"])
        self.assertNotEqual(store["retrieval"].get("similarity"), "DOT")
        self.assertEqual(store["retrieval"]["beta"], report["beta"])
        # On request, waiting: nothing beats the applied setting (same seed).
        out = self.engram("calibrate", "cal", "--wait").stdout
        self.assertIn("cal: calibration succeeded", out)
        self.assertIn("kept the current setting", out)
        status = json.loads(self.engram("calibrate", "cal", "--wait", "--apply=false",
                                        "--json").stdout)
        self.assertEqual(status["state"], "SUCCEEDED")
        self.assertEqual(status["report"]["pattern_count"], "120")
        # Errors name the field.
        bad = self.engram("store", "create", "bad", "--dim=4", "--level=2", ok=False)
        self.assertIn("store.calibration.level", bad.stderr)
        self.assertIn("INVALID_ARGUMENT", bad.stderr)
        self.assertIn("NOT_FOUND", self.engram("calibrate", "nope", ok=False).stderr)
        self.assertIn("--beta must be a number",
                      self.engram("retrieve", "cal", self.path("c.npy"), "--beta=auto",
                                  ok=False).stderr)

    def test_09_store_update_changes_only_the_flags_given(self):
        self.engram("store", "create", "upd", "--dim=4", "--similarity=l2", "--top_k=2",
                    "--sample_size=64")
        before = json.loads(self.engram("store", "get", "upd", "--json").stdout)
        # Unset flags took the server's defaults.
        self.assertEqual(before["retrieval"]["beta"], 1)
        self.assertEqual(before["retrieval"]["separation"], "SOFTMAX")
        out = json.loads(self.engram("store", "update", "upd", "--beta=2.5", "--top_k=7",
                                     "--separation=entmax15", "--noapply", "--json").stdout)
        self.assertEqual(out["retrieval"]["beta"], 2.5)
        self.assertEqual(out["retrieval"]["top_k"], 7)
        self.assertEqual(out["retrieval"]["separation"], "ENTMAX15")
        self.assertEqual(out["retrieval"]["similarity"], "L2")  # Not given: kept.
        self.assertEqual(out["calibration"]["sample_size"], 64)
        self.assertIn("top_k:         7", self.engram("store", "get", "upd").stdout)
        cases = [
            (["store", "update", "upd"], "needs a setting to change"),
            (["store", "update", "upd", "--fit_epochs=3"], "feature_map.epochs' is not an updatable"),
            (["store", "update", "upd", "--separation=sideways"], "is not one of softmax, sparsemax, entmax15"),
            (["store", "update", "upd", "--beta=-1"], "store.retrieval.beta"),
            (["store", "update", "upd", "--beta=auto"], "--auto_calibrate"),
            (["store", "update", "nope", "--beta=2"], "NOT_FOUND"),
        ]
        for args, needle in cases:
            result = self.engram(*args, ok=False)
            self.assertNotEqual(result.returncode, 0, args)
            self.assertIn(needle, result.stderr, args)
        after = json.loads(self.engram("store", "get", "upd", "--json").stdout)
        self.assertEqual(after["retrieval"]["beta"], 2.5, "refused updates changed nothing")

    def test_10_patterns_list_get_delete(self):
        self.engram("store", "create", "pat", "--dim=3")
        np.savetxt(self.path("p.csv"), np.arange(15, dtype=np.float32).reshape(5, 3), delimiter=",")
        np.savetxt(self.path("pl.csv"), np.array([[7], [8], [9], [7], [8]]), delimiter=",")
        self.engram("add", "pat", self.path("p.csv"), "--labels=" + self.path("pl.csv"))
        page = self.engram("patterns", "list", "pat", "--page_size=2").stdout.splitlines()
        self.assertEqual(page[:2], ["1 [7]", "2 [8]"])
        self.assertTrue(page[2].startswith("next page: --page_token="), page)
        token = page[2].split("=", 1)[1]
        page2 = self.engram("patterns", "list", "pat", "--page_size=2", "--page_token=" + token).stdout
        self.assertTrue(page2.startswith("3 [9]\n4 [7]\n"), page2)
        everything = json.loads(self.engram("patterns", "list", "pat", "--page_size=2", "--all",
                                            "--values", "--json").stdout)
        self.assertEqual([int(p["id"]) for p in everything["patterns"]], [1, 2, 3, 4, 5])
        self.assertEqual(everything["patterns"][4]["values"], [12, 13, 14])
        self.assertEqual(self.engram("patterns", "get", "pat", "2").stdout, "2 [8] 3 4 5\n")
        out = self.engram("patterns", "delete", "pat", "1", "3").stdout
        self.assertIn("deleted 2 patterns from pat; it holds 3", out)
        listed = self.engram("patterns", "list", "pat", "--all").stdout.split()
        self.assertNotIn("1", listed)
        missing = self.engram("patterns", "delete", "pat", "2", "99", ok=False)
        self.assertIn("NOT_FOUND", missing.stderr)
        self.assertIn("2 [8]", self.engram("patterns", "get", "pat", "2").stdout,
                      "a refused delete deletes none")
        self.assertIn("ID must be a whole number",
                      self.engram("patterns", "get", "pat", "x", ok=False).stderr)

    def test_11_calibration_cancel_and_watch(self):
        rng = np.random.default_rng(6)
        write_npy(self.path("w.npy"), rng.uniform(size=(200, 16)).astype(np.float32))
        self.engram("store", "create", "watch", "--dim=16", "--sample_size=200",
                    "--search_similarity", "--search_separation")
        self.engram("add", "watch", self.path("w.npy"))
        # Queued and cancelled at once, or cancelled while running, or already
        # done: every outcome is a clean state, and --wait then succeeds.
        cancelled = json.loads(self.engram("calibrate", "watch", "--json").stdout)
        self.assertIn(cancelled["state"], ("PENDING", "RUNNING", "SUCCEEDED"))
        after = json.loads(self.engram("calibrate", "watch", "--cancel", "--json").stdout)
        self.assertIn(after["state"], ("CANCELLED", "RUNNING", "SUCCEEDED"))
        out = self.engram("calibrate", "watch", "--wait").stdout
        self.assertIn("watch: calibration succeeded", out)
        self.assertIn("capacity:", out)

    def test_99_sigterm_stops_the_server_cleanly(self):
        self.assertEqual(self.server.stop(timeout=20), 0)
        with open(self.server.log_path) as f:
            self.assertIn("stopped", f.read())


if __name__ == "__main__":
    unittest.main(verbosity=2)
