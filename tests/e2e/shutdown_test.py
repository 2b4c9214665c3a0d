#!/usr/bin/python3
"""Graceful shutdown: SIGTERM during a long Retrieve lets it finish, refuses
new calls, closes storage, exits 0; the data is there after a restart.

Usage: shutdown_test.py BIN_DIR
"""
import os
import signal
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Engramd  # noqa: E402

BIN = sys.argv.pop(1)
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from engram_client import pb, pb_grpc  # noqa: E402


def start(tmp, data_dir):
    return Engramd(BIN, tmp, "--shutdown_grace_s=60", data_dir=data_dir)


class ShutdownTest(unittest.TestCase):
    def test_sigterm_finishes_in_flight_calls(self):
        with tempfile.TemporaryDirectory() as tmp:
            data = os.path.join(tmp, "data")
            server = start(tmp, data)
            proc = server.proc
            channel = grpc.insecure_channel(server.addr)
            stub = pb_grpc.EngramStub(channel)
            stub.CreateStore(pb.CreateStoreRequest(store=pb.Store(name="s", dimension=256)))
            x = np.random.default_rng(0).normal(size=(20000, 256)).astype(np.float32)
            for start_row in range(0, len(x), 5000):
                stub.AddPatterns(pb.AddPatternsRequest(store="s", patterns=[
                    pb.Pattern(values=row) for row in x[start_row:start_row + 5000]]))
            result = {}
            queries = [pb.Query(values=row) for row in x[:128] * 0.01]
            # The in-flight call is sized by time, not work: steps for about
            # 3 s on this machine (one step measured first), whatever its speed.
            t = time.time()
            stub.Retrieve(pb.RetrieveRequest(store="s", queries=queries, steps=2,
                                             omit_vectors=True), timeout=60)
            step = max((time.time() - t) / 2, 1e-4)
            steps = int(min(1000, max(4, 3.0 / step)))

            def long_retrieve():
                t = time.time()
                try:
                    r = stub.Retrieve(pb.RetrieveRequest(
                        store="s", queries=queries, steps=steps, omit_vectors=True), timeout=90)
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
            self.assertGreater(result["seconds"], min(0.5, steps * step / 2),
                               "the call was in flight at SIGTERM")
            self.assertEqual(proc.wait(timeout=30), 0)
            self.assertIn("stopped", server.log())
            self.assertEqual(server.stop(), 0)
            channel.close()

            server = start(tmp, data)
            with grpc.insecure_channel(server.addr) as channel:
                stub = pb_grpc.EngramStub(channel)
                self.assertEqual(stub.GetStore(pb.GetStoreRequest(name="s")).pattern_count, 20000)
            self.assertEqual(server.stop(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
