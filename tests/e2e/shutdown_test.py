#!/usr/bin/python3
"""Graceful shutdown: SIGTERM during a long Retrieve lets it finish, refuses
new calls, closes storage, exits 0; the data is there after a restart.

Usage: shutdown_test.py BIN_DIR PYTHON_DIR
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

BIN, PYDIR = sys.argv.pop(1), sys.argv.pop(1)
sys.path.insert(0, PYDIR)
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from engram.v1 import engram_pb2 as pb  # noqa: E402
from engram.v1 import engram_pb2_grpc as pb_grpc  # noqa: E402


def start(data_dir, log_path):
    log = open(log_path, "a+")
    offset = log.tell()
    proc = subprocess.Popen([os.path.join(BIN, "engramd"), "--listen=127.0.0.1:0",
                             "--metrics_listen=", "--data_dir=" + data_dir,
                             "--shutdown_grace_s=20"], stdout=log, stderr=log)
    deadline = time.time() + 20
    while time.time() < deadline:
        log.seek(offset)
        text = log.read()
        m = re.search(r"\(port (\d+)\).*\n.*ready", text)
        if m:
            return proc, "127.0.0.1:" + m.group(1), log
        time.sleep(0.02)
    raise RuntimeError("engramd did not start")


class ShutdownTest(unittest.TestCase):
    def test_sigterm_finishes_in_flight_calls(self):
        with tempfile.TemporaryDirectory() as tmp:
            log_path = os.path.join(tmp, "log")
            proc, addr, log = start(tmp, log_path)
            channel = grpc.insecure_channel(addr)
            stub = pb_grpc.EngramStub(channel)
            stub.CreateStore(pb.CreateStoreRequest(store=pb.Store(name="s", dimension=256)))
            x = np.random.default_rng(0).normal(size=(20000, 256)).astype(np.float32)
            for start_row in range(0, len(x), 5000):
                stub.AddPatterns(pb.AddPatternsRequest(store="s", patterns=[
                    pb.Pattern(values=row) for row in x[start_row:start_row + 5000]]))
            result = {}

            def long_retrieve():
                t = time.time()
                try:
                    r = stub.Retrieve(pb.RetrieveRequest(
                        store="s", queries=[pb.Query(values=row) for row in x[:128] * 0.01],
                        steps=40, omit_vectors=True), timeout=60)
                    result["ok"] = len(r.results)
                except grpc.RpcError as e:
                    result["error"] = e.code()
                result["seconds"] = time.time() - t

            worker = threading.Thread(target=long_retrieve)
            worker.start()
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            with self.assertRaises(grpc.RpcError) as refused:
                stub.GetStore(pb.GetStoreRequest(name="s"), timeout=5)
            self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAVAILABLE)
            worker.join()
            self.assertEqual(result.get("ok"), 128, result)
            self.assertGreater(result["seconds"], 0.5, "the call was in flight at SIGTERM")
            self.assertEqual(proc.wait(timeout=30), 0)
            log.seek(0)
            self.assertIn("stopped", log.read())
            channel.close()
            log.close()

            proc, addr, log = start(tmp, log_path)
            with grpc.insecure_channel(addr) as channel:
                stub = pb_grpc.EngramStub(channel)
                self.assertEqual(stub.GetStore(pb.GetStoreRequest(name="s")).pattern_count, 20000)
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(timeout=30), 0)
            log.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
