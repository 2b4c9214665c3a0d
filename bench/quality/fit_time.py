#!/usr/bin/python3
"""Stage I fit time: engram (in process, bench/fit_fashion) next to the
PyTorch re-implementation of the reference's fit_W, in the same run.

  bench/quality/fit_time.py BIN_DIR [--m 1000] [--reference PATH] [--reps 3]

Both: M Fashion-MNIST images, d = 784, W 784 x 784 from randn, 100 epochs of
plain SGD on the full pair set, 2 threads, with the OpenBLAS kernel family
engram chooses for this CPU (PyTorch's own kernels do not depend on it).
Prints the machine, then best-of-reps seconds.
"""
import argparse
import importlib.util
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import blas_family  # noqa: E402

MACHINE, FAMILY, _ = blas_family.use(sys.argv[1])  # Before PyTorch loads OpenBLAS.
import torch  # noqa: E402

blas_family.check(FAMILY)

ap = argparse.ArgumentParser()
ap.add_argument("bin_dir")
ap.add_argument("--m", type=int, default=1000)
ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--reference", default=os.path.join(os.path.dirname(__file__),
                                                    "../../../shared/anchors/uhop_reference.py"))
a = ap.parse_args()
spec = importlib.util.spec_from_file_location("uhop_reference", a.reference)
reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reference)
torch.set_num_threads(2)
x = reference.load("fashion", a.m, 42)
print(f"machine: {MACHINE}")
print(f"fit M={a.m} d=784 d_Phi=784 100 epochs SGD, 2 threads, best of {a.reps}")
print(f"{'loss':6}{'engram s':>10}{'PyTorch s':>11}{'ratio':>8}")
for loss in ("max", "mean"):
    engram = min(float(subprocess.run(
        [os.path.join(a.bin_dir, "fit_fashion"), f"--m={a.m}", f"--loss={loss}"],
        capture_output=True, text=True, check=True).stdout.split(",")[3]) for _ in range(a.reps))
    times = []
    for _ in range(a.reps):
        t = time.perf_counter()
        reference.fit_W(x, 100, loss, 42)
        times.append(time.perf_counter() - t)
    torch_s = min(times)
    print(f"{loss:6}{engram:10.2f}{torch_s:11.2f}{torch_s / engram:7.2f}x")
