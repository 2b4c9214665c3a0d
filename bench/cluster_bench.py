#!/usr/bin/env python3
"""A router over shards next to one engramd holding the same patterns.

  build/venv/bin/python bench/cluster_bench.py build/bin [--m 60000] [--reps 7]

One engramd on both cores against a router and 2 shards, each shard pinned
to one core (taskset), the router unpinned; the same Fashion-MNIST patterns
(explicit ids) in both; softmax . dot, d = 784, beta 1/784. Prints the median
latency of Retrieve at L = 1 and L = 256 through each, the router's overhead
as a ratio in the same run, and the bytes on the wire per query per shard
(from the router's metrics).
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
a = ap.parse_args()

machine = subprocess.run([os.path.join(a.bin_dir, "retrieve_fashion"), "--mode=describe"],
                         capture_output=True, text=True, check=True).stdout.splitlines()[0]
print(machine)
with gzip.open("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz") as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)[:a.m]
x = (images / 255.0).astype(np.float32)
rng = np.random.default_rng(0)
queries = x[rng.choice(a.m, 256, replace=False)] * (rng.random((256, 784)) >= 0.5) * 2
queries = queries.astype(np.float32)
ids = np.arange(1, a.m + 1, dtype=np.uint64)


def metric(port, name):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        text = r.read().decode()
    return sum(float(v) for v in re.findall(r"^%s\{[^}]*\} (\S+)$" % name, text, re.M))


def timed(client, q, reps):
    client.retrieve("b", q, beta=1 / 784, top_k=10, vectors=True)  # warm
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        client.retrieve("b", q, beta=1 / 784, top_k=10, vectors=True)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


with tempfile.TemporaryDirectory() as tmp:
    engramd = os.path.join(a.bin_dir, "engramd")
    # taskset wraps the binary: the harness starts BIN_DIR/engramd, so a
    # small wrapper directory per core holds an engramd that pins itself.
    def wrapper(cpu):
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
        with Client(single.addr, timeout=600) as one, Client(router.addr, timeout=600) as many:
            for c in (one, many):
                c.create_store("b", dim=784, top_k=10)
                for first in range(0, a.m, 5000):
                    c.add("b", x[first:first + 5000], ids=ids[first:first + 5000].tolist(),
                          batch=5000)
            print("M = %d, d = 784, softmax . dot; one engramd on 2 cores vs a router and "
                  "2 shards on one core each" % a.m)
            print("| L | one engramd (ms) | router + 2 shards (ms) | router / one |")
            print("|---:|---:|---:|---:|")
            for l in (1, 256):
                q = queries[:l]
                sent0 = metric(router.metrics_port, "engram_shard_bytes_total")
                reps = a.reps * (10 if l == 1 else 1)
                t_one = timed(one, q, reps)
                t_many = timed(many, q, reps)
                moved = metric(router.metrics_port, "engram_shard_bytes_total") - sent0
                print("| %d | %.2f | %.2f | %.2f |" % (l, t_one, t_many, t_many / t_one))
                calls = reps + 1
                print("  bytes on the wire per query per shard (both ways): %.0f" %
                      (moved / (calls * l * 2)))
            a_one = one.retrieve("b", queries[:8], beta=1 / 784, top_k=10)
            a_many = many.retrieve("b", queries[:8], beta=1 / 784, top_k=10)
            print("max |difference| of the retrieved vectors: %.2e" %
                  float(np.max(np.abs(a_one.vectors - a_many.vectors))))
    finally:
        router.stop()
        for s in shards:
            s.stop()
        single.stop()
