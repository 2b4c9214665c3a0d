#!/usr/bin/python3
"""engram in process vs PyTorch on the same retrieval, in one run.

  bench/compare_torch.py [BIN_DIR] [--m 10000] [--l 256] [--reps 20]

PyTorch computes softmax(Q Xi^T) Xi with 2 threads (beta = 1), the same math
engram's exact path runs (plus engram's energy and top-k). Both read the same
Fashion-MNIST images: the first M as memories, the last L scaled by 0.5 as
queries. Prints a table and the ratio; best of `reps` after a warm-up each.
"""
import argparse
import gzip
import os
import subprocess
import time

import numpy as np
import torch

ap = argparse.ArgumentParser()
ap.add_argument("bin_dir", nargs="?", default="build/bin")
ap.add_argument("--m", type=int, default=10000)
ap.add_argument("--l", type=int, default=256)
ap.add_argument("--reps", type=int, default=20)
ap.add_argument("--coretype", default="", help="OPENBLAS_CORETYPE for engram")
a = ap.parse_args()

with gzip.open("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz") as fh:
    X = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 784).astype(np.float32) / 255.0
torch.set_num_threads(2)
Xi = torch.from_numpy(np.ascontiguousarray(X[: a.m]))
Q = torch.from_numpy(np.ascontiguousarray(X[-a.l:] * 0.5))


def best(f, reps):
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts) * 1e3, sorted(ts)[len(ts) // 2] * 1e3


torch_best, torch_median = best(lambda: torch.softmax(Q @ Xi.T, dim=-1) @ Xi, a.reps)
env = dict(os.environ)
if a.coretype:
    env["OPENBLAS_CORETYPE"] = a.coretype
out = subprocess.run([os.path.join(a.bin_dir, "retrieve_fashion"), f"--m={a.m}",
                      f"--l={a.l}", f"--reps={a.reps}"], capture_output=True,
                     text=True, check=True, env=env).stdout.strip().split(",")
engram_best, engram_median = float(out[4]), float(out[5])
gflop = 4.0 * a.l * a.m * 784 / 1e9
print(f"retrieve L={a.l} M={a.m} d=784 softmax dot beta=1, 2 threads, best of {a.reps}"
      + (f", OPENBLAS_CORETYPE={a.coretype}" if a.coretype else ""))
print(f"{'':24}{'best ms':>10}{'median ms':>11}{'GFLOP/s':>9}")
print(f"{'engram (in process)':24}{engram_best:10.2f}{engram_median:11.2f}{gflop / engram_best * 1e3:9.1f}")
print(f"{'PyTorch ' + torch.__version__:24}{torch_best:10.2f}{torch_median:11.2f}{gflop / torch_best * 1e3:9.1f}")
print(f"engram is {torch_best / engram_best:.2f}x PyTorch's speed (best), "
      f"{torch_median / engram_median:.2f}x (median)")
