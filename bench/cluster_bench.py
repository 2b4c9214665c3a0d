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
def grpc_median(addr, l, reps):
    out = subprocess.run([os.path.join(a.bin_dir, "retrieve_grpc"), "--addr=" + addr,
                          "--m=%d" % a.m, "--l=%d" % l, "--reps=%d" % reps],
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip().split(",")[4])


def metric(port, name):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        text = r.read().decode()
    return sum(float(v) for v in re.findall(r"^%s\{[^}]*\} (\S+)$" % name, text, re.M))


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
    finally:
        router.stop()
        for s in shards:
            s.stop()
        single.stop()
