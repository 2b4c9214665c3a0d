#!/usr/bin/env python3
"""A Stage I fit of a large U-Hop store while queries run: memory stays
bounded and query latency is measured with and without the fit.

  build/venv/bin/python bench/quality/fit_under_load.py BIN_DIR [--m 100000] [--queries 200]

The store holds M Fashion-MNIST-shaped patterns (the 70,000 images, then noisy
copies), d = d_Phi = 784, kernel_dot; fits use minibatches of 1024. One client
sends single-query Retrieve calls back to back; p50/p99 are taken over the
calls made before the fit and over those made while it runs. engramd's
resident memory (VmRSS) is sampled throughout.
"""
import argparse
import gzip
import os
import re
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import blas_family  # noqa: E402

MACHINE, FAMILY, _ = blas_family.use(blas_family.bin_dir_from_argv())  # Before numpy.
import numpy as np  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("bin_dir")
ap.add_argument("--m", type=int, default=100000)
ap.add_argument("--queries", type=int, default=200)
ap.add_argument("--epochs", type=int, default=100)
a = ap.parse_args()
import grpc  # noqa: E402
from engram_client import pb, pb_grpc  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../tests/e2e"))
from harness import Engramd  # noqa: E402


def images():
    out = []
    for name in ("train", "t10k"):
        with gzip.open(f"/usr/share/datasets/fashion-mnist/{name}-images-idx3-ubyte.gz") as f:
            out.append(np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784).astype(np.float32) / 255)
    x = np.concatenate(out)
    rng = np.random.default_rng(0)
    while len(x) < a.m:
        extra = x[: a.m - len(x)] + rng.normal(0, 0.05, size=(min(len(x), a.m - len(x)), 784)).astype(np.float32)
        x = np.concatenate([x, extra])
    return x[: a.m]


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


def percentile(values, p):
    return float(np.percentile(np.array(values) * 1e3, p))


def main():
    x = images()
    with tempfile.TemporaryDirectory() as tmp:
        server = Engramd(a.bin_dir, tmp, "--sync=false")
        proc = server.proc
        stub = pb_grpc.EngramStub(grpc.insecure_channel(server.addr))
        stub.CreateStore(pb.CreateStoreRequest(store=pb.Store(
            name="big", dimension=784, retrieval=pb.RetrievalSettings(similarity=pb.KERNEL_DOT, beta=0.01),
            feature_map=pb.FeatureMapSettings(kind=pb.UHOP, epochs=a.epochs, batch_size=1024,
                                              debounce_ms=3600000, min_new_patterns=10 ** 9))))
        for i in range(0, a.m, 2000):
            stub.AddPatterns(pb.AddPatternsRequest(store="big", patterns=[
                pb.Pattern(values=r) for r in x[i:i + 2000]]))
        rss_loaded = rss_mb(proc.pid)
        query = pb.RetrieveRequest(store="big", queries=[pb.Query(values=x[7] * 0.5)], top_k=1,
                                   omit_vectors=True)

        def measure(n):
            lat = []
            for _ in range(n):
                t = time.perf_counter()
                stub.Retrieve(query)
                lat.append(time.perf_counter() - t)
            return lat

        quiet = measure(a.queries)
        peak = [rss_loaded]
        fit_done = threading.Event()

        def sample():
            while not fit_done.is_set():
                peak.append(rss_mb(proc.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        t = time.perf_counter()
        stub.StartFit(pb.StartFitRequest(store="big"))
        during = []
        while True:
            during += measure(5)
            status = stub.GetFitStatus(pb.GetFitStatusRequest(store="big"))
            if status.state not in (pb.FitStatus.PENDING, pb.FitStatus.RUNNING):
                break
        fit_s = time.perf_counter() - t
        fit_done.set()
        sampler.join()
        print(f"machine: {MACHINE}")
        print(f"M={a.m} d=784 d_Phi=784 kernel_dot, fit {a.epochs} epochs, minibatch 1024")
        print(f"fit: {status.state == pb.FitStatus.SUCCEEDED and 'succeeded' or status.state} in "
              f"{fit_s:.1f}s (server: {status.duration_seconds:.1f}s, loss {status.loss_before:.4f} -> "
              f"{status.loss_after:.4f}, map v{status.map_version} from {status.patterns_fitted} patterns)")
        print(f"engramd RSS: {rss_loaded:.0f} MB loaded, peak {max(peak):.0f} MB during the fit "
              f"(+{max(peak) - rss_loaded:.0f} MB)")
        print(f"single-query Retrieve latency over {a.m} patterns, ms:")
        print(f"  without a fit: p50 {percentile(quiet, 50):.1f}  p99 {percentile(quiet, 99):.1f}  ({len(quiet)} calls)")
        print(f"  during the fit: p50 {percentile(during, 50):.1f}  p99 {percentile(during, 99):.1f}  ({len(during)} calls)")
        server.stop()


if __name__ == "__main__":
    main()
