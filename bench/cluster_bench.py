#!/usr/bin/env python3
"""A router over shards next to one engramd holding the same patterns.

  build/venv/bin/python bench/cluster_bench.py build/bin [--m 60000] [--reps 7]

One engramd on both cores against a router and 2 shards, each shard pinned
to one core (taskset), the router unpinned; the same Fashion-MNIST patterns
in both, exact softmax . dot at the store's defaults, d = 784. The requests
come from bench/retrieve_grpc (one C++ client, vectors returned). Prints the
median latency of Retrieve at L = 1 and L = 256 through each, the router's
overhead as a ratio in the same run, the bytes on the wire per query per
shard (from the router's metrics), and how far the two answers are apart.

Then the low-rank path: a softmax . dot store of --lr_m patterns, d = 16
(norms <= 0.5, so degree 2 meets tolerance 1e-3), LOW_RANK through one
engramd and through the router (which answers from the shards' summed
sums), with top_k 0 (sums only) and 5 (plus one top-only scan on the
shards); the router's exact path beside it; Python client, median ms.
"""
import argparse
import gzip
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../tests/e2e"))
import numpy as np  # noqa: E402
from engram_client import Client  # noqa: E402
from harness import Engramd  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("bin_dir")
ap.add_argument("--m", type=int, default=60000)
ap.add_argument("--reps", type=int, default=7)
ap.add_argument("--lr_m", type=int, default=200000)
a = ap.parse_args()

machine = subprocess.run([os.path.join(a.bin_dir, "retrieve_fashion"), "--mode=describe"],
                         capture_output=True, text=True, check=True).stdout.splitlines()[0]
print(machine)
def grpc_median(addr, l, reps):
    out = subprocess.run([os.path.join(a.bin_dir, "retrieve_grpc"), "--addr=" + addr,
                          "--m=%d" % a.m, "--l=%d" % l, "--reps=%d" % reps],
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1].split(",")[4])


def metric(port, name):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        text = r.read().decode()
    return sum(float(v) for v in re.findall(r"^%s\{[^}]*\} (\S+)$" % name, text, re.M))


def timed(client, q, reps, **kw):
    client.retrieve("lr", q, **kw)  # warm (the router fetches the sums once)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        client.retrieve("lr", q, **kw)
        times.append(1e3 * (time.perf_counter() - t))
    return float(np.median(times))


def low_rank(one, many):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(a.lr_m, 16)).astype(np.float32)
    x *= 0.5 / np.linalg.norm(x, axis=1, keepdims=True).max()
    for c in (one, many):
        c.create_store("lr", dim=16, similarity="dot", separation="softmax", beta=1)
        c.add("lr", x, ids=list(range(1, a.lr_m + 1)), batch=20000)
    print()
    print("low-rank path: M = %d, d = 16, softmax . dot, tolerance 1e-3 (Python client, "
          "median ms)" % a.lr_m)
    print("| L | top_k | one engramd LOW_RANK | router LOW_RANK | router / one | router EXACT |")
    print("|---:|---:|---:|---:|---:|---:|")
    for l in (1, 256):
        q = (x[:l] + 0.05 * rng.normal(size=(l, 16))).astype(np.float32)
        for k in (0, 5):
            reps = a.reps * (5 if l == 1 else 1)
            t_one = timed(one, q, reps, path="low_rank", top_k=k, tolerance=1e-3)
            t_many = timed(many, q, reps, path="low_rank", top_k=k, tolerance=1e-3)
            t_exact = timed(many, q, max(3, reps // 5), path="exact", top_k=k)
            want = one.retrieve("lr", q, path="low_rank", top_k=k, tolerance=1e-3)
            got = many.retrieve("lr", q, path="low_rank", top_k=k, tolerance=1e-3)
            assert np.max(np.abs(want.vectors - got.vectors)) < 1e-5, "answers differ"
            assert (want.ids == got.ids).all(), "matches differ"
            print("| %d | %d | %.2f | %.2f | %.2f | %.2f |" % (
                l, k, t_one, t_many, t_many / t_one, t_exact))


with tempfile.TemporaryDirectory() as tmp:
    engramd = os.path.join(a.bin_dir, "engramd")

    def wrapper(cpu):
        """A directory whose engramd runs the real one on one core."""
        d = os.path.join(tmp, "cpu%d" % cpu)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "engramd"), "w") as f:
            f.write("#!/bin/sh\nexec taskset -c %d %s \"$@\"\n" % (cpu, engramd))
        os.chmod(os.path.join(d, "engramd"), 0o755)
        return d
    single = Engramd(a.bin_dir, tmp, "--sync=false")
    shards = [Engramd(wrapper(cpu), tmp, "--sync=false", "--role=shard", "--cluster=bench",
                      "--shard_group=%d" % cpu, "--shard_groups=2", "--retrieval_threads=1")
              for cpu in (0, 1)]
    router = Engramd(a.bin_dir, tmp, "--role=router", "--cluster=bench",
                     "--shards=" + ";".join(s.addr for s in shards),
                     metrics_listen="127.0.0.1:0")
    try:
        for addr in (single.addr, router.addr):  # stores the patterns
            grpc_median(addr, 1, 1)
        print("M = %d, d = 784, exact softmax . dot; one engramd on 2 cores vs a router "
              "and 2 shards on one core each (bench/retrieve_grpc, median ms)" % a.m)
        print("| L | one engramd | router + 2 shards | router / one | bytes per query per shard |")
        print("|---:|---:|---:|---:|---:|")
        for l in (1, 256):
            reps = a.reps * (5 if l == 1 else 1)
            t_one = grpc_median(single.addr, l, reps)
            moved0 = metric(router.metrics_port, "engram_shard_bytes_total")
            t_many = grpc_median(router.addr, l, reps)
            moved = metric(router.metrics_port, "engram_shard_bytes_total") - moved0
            print("| %d | %.2f | %.2f | %.2f | %.0f |" % (
                l, t_one, t_many, t_many / t_one, moved / ((reps + 1) * l * 2)))
        with Client(single.addr) as one, Client(router.addr) as many:
            name = "bench-%d" % a.m
            with gzip.open("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz") as f:
                images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
            q = (images[-8:] / 255.0 * 0.5).astype(np.float32)
            diff = np.max(np.abs(one.retrieve(name, q).vectors - many.retrieve(name, q).vectors))
            print("max |difference| of the retrieved vectors (8 queries): %.2e" % diff)
            low_rank(one, many)
    finally:
        router.stop()
        for s in shards:
            s.stop()
        single.stop()
