#!/usr/bin/python3
"""Exact retrieval next to its peers, in one run, on Fashion-MNIST (d = 784).

  bench/peers.py BIN_DIR [--sizes 10000,60000] [--batches 1,16,64,256] [--reps 15]
                 [--min_ms 500] [--rounds 1] [--out docs/performance] [--large 1000000]

For each M (stored patterns: the first M training images) and L (queries: the
last L images scaled by 0.5), best of `reps` after a warm-up, or of as many
calls as take engram --min_ms in process if that is more (at most ten times
`reps`): the host has slow stretches of a second or so, which 15 calls of a
few ms fall in whole, every participant of a cell the same count (with --rounds N,
every participant N times in turn and the median of those bests: on a noisy
host, compare figures of the same rounds):
  engram        in process (bench/retrieve_fashion), as engramd runs it:
                one BLAS thread, the batch split over 2 threads
  engram cold   the same with 64 MiB of other memory written before each call
                (outside the time), as a server's caches hold other work
                between requests
  engram gRPC   a real engramd, one C++ client (bench/retrieve_grpc), vectors
                returned; and once, an empty call (GetStore): the fixed cost
  Python client the same engramd through engram_client's retrieve (numpy in
                and out, vectors returned)
  PyTorch       softmax(beta Q Xi^T) Xi, 2 threads
  FAISS         IndexFlatIP top-10 search (nearest neighbours only), 2 threads
  sgemm pair    the two products alone (OpenBLAS, 2 threads): the compute floor
  stream Xi     reading Xi once (L = 1 rows): the bandwidth floor
Every OpenBLAS user (engram, numpy, PyTorch, FAISS) runs the kernel family
engram chooses for this CPU, and PyTorch flushes denormals as engram does.
Writes OUT.md (tables) and OUT.png (plot) when --out is given; the first line
names the machine.
"""
import argparse
import gzip
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import blas_family  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("bin_dir")
ap.add_argument("--sizes", default="10000,60000")
ap.add_argument("--batches", default="1,16,64,256")
ap.add_argument("--reps", type=int, default=15)
ap.add_argument("--min_ms", type=float, default=500,
                help="at least as many calls as take this long in process (0: --reps alone)")
ap.add_argument("--rounds", type=int, default=1,
                help="measure every participant this many times in turn; medians of the bests")
ap.add_argument("--out", default="")
ap.add_argument("--large", type=int, default=0, help="also M rows of random data at L = 256")
a = ap.parse_args()

MACHINE, FAMILY, KERNELS = blas_family.use(a.bin_dir)  # Before numpy, PyTorch and FAISS load.
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../tests/e2e"))
from harness import Engramd  # noqa: E402
import faiss  # noqa: E402
from engram_client import Client  # noqa: E402

blas_family.check(FAMILY)

torch.set_num_threads(2)
torch.set_flush_denormal(True)
faiss.omp_set_num_threads(2)
with gzip.open("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz") as fh:
    X = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 784).astype(np.float32) / 255.0


def best(f, reps):
    f()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def run(binary, *flags):
    # The figures are the last line (retrieve_grpc names the machine first).
    out = subprocess.run([os.path.join(a.bin_dir, binary), *flags], capture_output=True,
                         text=True, check=True).stdout.strip().splitlines()[-1].split(",")
    return float(out[5] if binary == "retrieve_fashion" else out[3])


rows = []
lines = []
emit = lambda s="": (print(s, flush=True), lines.append(s))  # noqa: E731
with tempfile.TemporaryDirectory() as tmp:
    server = Engramd(a.bin_dir, tmp, "--sync=false")
    addr = server.addr
    try:
        emit(f"Machine: {MACHINE}; engram's kernels {KERNELS}; "
             f"peers: PyTorch {torch.__version__}, FAISS {faiss.__version__}, "
             f"OpenBLAS {FAMILY} for all.")
        emit(f"Each figure: the best of {a.reps} calls, or of as many as take engram "
             f"{a.min_ms:g} ms in process if more (at most {10 * a.reps}; the column calls)" +
             (f", the median of {a.rounds} rounds of every participant in turn." if a.rounds > 1
              else "."))
        emit()
        emit("| M | L | engram ms | engram cold ms | engram gRPC ms | Python client ms | PyTorch ms | FAISS top-10 ms | sgemm pair ms | stream Ξ ms | engram vs PyTorch | engram / sgemm pair | gRPC / in process | gRPC / cold | calls |")
        emit("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        client = Client(addr)
        for m in [int(s) for s in a.sizes.split(",")]:
            xi = np.ascontiguousarray(X[:m])
            t_xi = torch.from_numpy(xi)
            index = faiss.IndexFlatIP(784)
            index.add(xi)
            for l in [int(s) for s in a.batches.split(",")]:
                q = np.ascontiguousarray(X[-l:] * 0.5)
                t_q = torch.from_numpy(q)
                reps = a.reps
                if a.min_ms > 0:
                    probe = run("retrieve_fashion", f"--m={m}", f"--l={l}", "--reps=3",
                                "--threads=1", "--slices=2")
                    reps = max(a.reps, min(10 * a.reps, int(a.min_ms / probe)))
                common = [f"--m={m}", f"--l={l}", f"--reps={reps}"]

                def one_round():
                    return dict(
                        engram=run("retrieve_fashion", *common, "--threads=1", "--slices=2"),
                        cold=run("retrieve_fashion", *common, "--threads=1", "--slices=2",
                                 "--flush_mb=64"),
                        grpc=run("retrieve_grpc", f"--addr={addr}", *common),
                        # The store retrieve_grpc made (bench-M, every image of its M).
                        python=best(lambda: client.retrieve(f"bench-{m}", q, path="exact"),
                                    reps),
                        torch=best(lambda: torch.softmax(t_q @ t_xi.T, dim=-1) @ t_xi, reps),
                        faiss=best(lambda: index.search(q, 10), reps),
                        gemm=run("retrieve_fashion", *common, "--mode=gemm", "--threads=2"),
                        stream=(run("retrieve_fashion", *common, "--mode=stream") if l == 1
                                else float("nan")))

                # Every participant once per round, the rounds one after another;
                # each figure is the median of its rounds' bests.
                rounds = [one_round() for _ in range(a.rounds)]
                median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
                engram, cold, grpc_ms, python_ms = (median[k] for k in ("engram", "cold", "grpc", "python"))
                torch_ms, faiss_ms, gemm, stream = (median[k] for k in ("torch", "faiss", "gemm", "stream"))
                rows.append((m, l, engram, grpc_ms, torch_ms, faiss_ms, gemm, stream))
                emit(f"| {m} | {l} | {engram:.2f} | {cold:.2f} | {grpc_ms:.2f} | {python_ms:.2f} | {torch_ms:.2f} | {faiss_ms:.2f} | "
                     f"{gemm:.2f} | {'' if l != 1 else f'{stream:.2f}'} | {torch_ms / engram:.2f}x | "
                     f"{gemm / engram:.0%} | {grpc_ms / engram - 1:+.0%} | {grpc_ms / cold - 1:+.0%} | {reps} |")
        emit()
        # The fixed cost of one call on this machine, to read the gRPC column by.
        empty = run("retrieve_grpc", f"--addr={addr}", "--get_store", f"--reps={10 * a.reps}")
        emit(f"One empty call (GetStore) through the same client and server: {empty:.3f} ms.")
        emit()
        emit("Sparse separations (no peer), engram in process, M = 10000:")
        emit()
        emit("| separation | L | engram ms |")
        emit("|---|---:|---:|")
        for sep in ("sparsemax", "entmax15"):
            for l in (1, 256):
                common = ["--m=10000", f"--l={l}", f"--reps={a.reps}"]
                ms = run("retrieve_fashion", *common, "--threads=1", "--slices=2", f"--separation={sep}")
                emit(f"| {sep} | {l} | {ms:.2f} |")
        if a.large:
            ms = run("retrieve_fashion", f"--synthetic={a.large}", f"--m={a.large}", "--l=256",
                     "--reps=2", "--threads=1", "--slices=2")
            emit()
            emit(f"M = {a.large:,} random patterns, L = 256, softmax·dot: {ms / 1e3:.2f} s "
                 f"({4 * 256 * a.large * 784 / ms / 1e6:.0f} GFLOP/s); the score buffer is at most "
                 "16 MiB per thread (RetrievalOptions::max_score_floats), 32 MiB per request here.")
    finally:
        server.stop()

if a.out:
    with open(a.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = ["engram", "engram gRPC", "PyTorch", "FAISS top-10", "sgemm pair"]
    fig, axes = plt.subplots(1, len({r[0] for r in rows}), figsize=(12, 4.5), sharey=True)
    for ax, m in zip(np.atleast_1d(axes), sorted({r[0] for r in rows})):
        sub = [r for r in rows if r[0] == m]
        x = np.arange(len(sub))
        for k, name in enumerate(names):
            ax.bar(x + (k - 2) * 0.16, [r[2 + k] * 1e3 / r[1] for r in sub], 0.16, label=name)
        ax.set_xticks(x, [f"L={r[1]}" for r in sub])
        ax.set_yscale("log")
        ax.set_title(f"M = {m:,}, d = 784")
        ax.set_ylabel("µs per query (log)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle("Exact retrieval on Fashion-MNIST, 2 cores (lower is better)")
    fig.tight_layout()
    fig.savefig(a.out + ".png", dpi=110)
