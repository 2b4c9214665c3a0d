#!/usr/bin/python3
"""The U-Hop memory-retrieval protocol on Fashion-MNIST, through a real engramd
over gRPC, next to the PyTorch re-implementation of the public reference
(../shared/anchors/uhop_reference.py) run in the same invocation.

  bench/quality/uhop_reproduction.py BIN_DIR PYTHON_DIR [--sizes 100,500,1000,2000]
        [--corruptions dropout,gaussian] [--reference PATH] [--out results.md]

Protocol (as the reference): M random training images (numpy default_rng(42)
choice); every memory queried once with a corrupted copy, made with the
reference's own torch calls (dropout p = 0.5: zero half the pixels, double the
rest; Gaussian noise sigma = 0.5); one update step, beta = 1; error = mean over
memories of sum((clamp(x,0,1) - clamp(x_hat,0,1))^2). U-Hop: W (d x d) fitted
on the first half of the memories, loss `max`, SGD lr 10, 100 epochs, then the
second half added with the fitted map (engram: an explicit StartFit, automatic
fits held off). engram runs every similarity x separation; the reference runs
MHN (dot), L2, Man(hattan) and UMHN (U-Hop kernel dot).
"""
import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ap = argparse.ArgumentParser()
ap.add_argument("bin_dir")
ap.add_argument("python_dir")
ap.add_argument("--sizes", default="100,500,1000,2000")
ap.add_argument("--corruptions", default="dropout,gaussian")
ap.add_argument("--reference", default=os.path.join(os.path.dirname(__file__),
                                                    "../../../shared/anchors/uhop_reference.py"))
ap.add_argument("--seed", type=int, default=42)
ap.add_argument("--out", default="", help="also write the tables (markdown) here")
args = ap.parse_args()
sys.path.insert(0, args.python_dir)
import grpc  # noqa: E402
from engram.v1 import engram_pb2 as pb  # noqa: E402
from engram.v1 import engram_pb2_grpc as pb_grpc  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../tests/e2e"))
from harness import Engramd  # noqa: E402

LEVEL = {"dropout": 0.5, "gaussian": 0.5}
SIMILARITIES = [("dot", pb.DOT, "MHN"), ("l2", pb.L2, "L2"), ("manhattan", pb.MANHATTAN, "Man"),
                ("cosine", pb.COSINE, None), ("kernel_dot", pb.KERNEL_DOT, "UMHN"),
                ("kernel_l2", pb.KERNEL_L2, None)]
SEPARATIONS = [("softmax", pb.SOFTMAX, "softmax"), ("sparsemax", pb.SPARSEMAX, "sparsemax"),
               ("entmax15", pb.ENTMAX15, "entmax")]


def load(m, seed):
    with gzip.open("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784).astype(np.float32) / 255.0
    idx = np.random.default_rng(seed).choice(len(x), size=m, replace=False)
    return x[idx].copy()


def corrupt(x, kind, level, seed):
    """The reference's corruption, with the same torch generator calls."""
    g = torch.Generator().manual_seed(seed + 1)
    t = torch.from_numpy(x)
    if kind == "dropout":
        keep = (torch.rand(t.shape, generator=g) >= level).float()
        return (t * keep / (1 - level)).numpy()
    return (t + level * torch.randn(t.shape, generator=g)).numpy()


def error(x, y):
    return float(np.mean(np.sum((np.clip(x, 0, 1) - np.clip(y, 0, 1)) ** 2, axis=1)))


def add(stub, name, rows):
    for i in range(0, len(rows), 500):
        stub.AddPatterns(pb.AddPatternsRequest(store=name, patterns=[
            pb.Pattern(values=r) for r in rows[i:i + 500]]))


def retrieve(stub, name, queries):
    r = stub.Retrieve(pb.RetrieveRequest(store=name, queries=[pb.Query(values=q) for q in queries],
                                         beta=1.0, steps=1, top_k=1, path=pb.EXACT),
                      timeout=600)
    return np.array([list(res.values) for res in r.results], dtype=np.float32)


def set_rule(stub, name, similarity, separation):
    stub.UpdateStore(pb.UpdateStoreRequest(
        store=pb.Store(name=name, retrieval=pb.RetrievalSettings(similarity=similarity,
                                                                 separation=separation)),
        update_mask={"paths": ["retrieval.similarity", "retrieval.separation"]}))


def run_engram(stub, m, corruption):
    x = load(m, args.seed)
    q = corrupt(x, corruption, LEVEL[corruption], args.seed)
    tag = f"{corruption}-{m}"
    stub.CreateStore(pb.CreateStoreRequest(store=pb.Store(name="raw-" + tag, dimension=784)))
    add(stub, "raw-" + tag, x)
    stub.CreateStore(pb.CreateStoreRequest(store=pb.Store(
        name="uhop-" + tag, dimension=784,
        retrieval=pb.RetrievalSettings(similarity=pb.KERNEL_DOT),
        feature_map=pb.FeatureMapSettings(kind=pb.UHOP, loss=pb.MAX, epochs=100, seed=args.seed,
                                          batch_size=4096, debounce_ms=3600000,
                                          min_new_patterns=1000000))))
    add(stub, "uhop-" + tag, x[: m // 2])
    t = time.perf_counter()
    stub.StartFit(pb.StartFitRequest(store="uhop-" + tag))
    status = None
    for status in stub.WatchFit(pb.WatchFitRequest(store="uhop-" + tag)):
        pass
    fit_s = time.perf_counter() - t
    assert status.state == pb.FitStatus.SUCCEEDED, status
    add(stub, "uhop-" + tag, x[m // 2:])
    results = {}
    for sim_name, sim, _ in SIMILARITIES:
        store = ("uhop-" if sim_name.startswith("kernel") else "raw-") + tag
        for sep_name, sep, _ in SEPARATIONS:
            set_rule(stub, store, sim, sep)
            results[(sim_name, sep_name)] = error(x, retrieve(stub, store, q))
    return results, fit_s, status


def run_reference(m_list, corruption):
    out = subprocess.run(
        ["/usr/bin/python3", args.reference, "--sizes", ",".join(map(str, m_list)),
         "--modes", "MHN,L2,Man,UMHN", "--acts", "softmax,sparsemax,entmax",
         "--corrupt", corruption, "--level", str(LEVEL[corruption]), "--seed", str(args.seed)],
        capture_output=True, text=True, check=True).stdout
    results, fits = {}, {}
    for line in out.strip().splitlines()[1:]:
        f = line.split(",")
        m, mode, act, err, fit_s = int(f[1]), f[2], f[3], float(f[7]), float(f[8])
        results[(m, mode, act)] = err
        if mode == "UMHN":
            fits[m] = fit_s
    return results, fits


def main():
    sizes = [int(s) for s in args.sizes.split(",")]
    lines = []
    emit = lambda s="": (print(s, flush=True), lines.append(s))  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        server = Engramd(args.bin_dir, tmp, "--sync=false")
        addr = server.addr
        try:
            channel = grpc.insecure_channel(addr, options=[("grpc.max_receive_message_length", 256 << 20),
                                                           ("grpc.max_send_message_length", 256 << 20)])
            stub = pb_grpc.EngramStub(channel)
            for corruption in args.corruptions.split(","):
                t = time.perf_counter()
                reference, ref_fits = run_reference(sizes, corruption)
                ref_s = time.perf_counter() - t
                emit(f"### {corruption} (level {LEVEL[corruption]}), beta = 1, one step")
                emit()
                emit("| M | similarity | separation | engram error | reference error | engram / reference |")
                emit("|---:|---|---|---:|---:|---:|")
                best = {}
                fit_times = {}
                t = time.perf_counter()
                for m in sizes:
                    results, fit_s, status = run_engram(stub, m, corruption)
                    fit_times[m] = (fit_s, status.loss_before, status.loss_after)
                    for sim_name, _, ref_mode in SIMILARITIES:
                        for sep_name, _, ref_act in SEPARATIONS:
                            e = results[(sim_name, sep_name)]
                            r = reference.get((m, ref_mode, ref_act)) if ref_mode else None
                            ratio = f"{e / r:.3f}" if r else "—"
                            emit(f"| {m} | {sim_name} | {sep_name} | {e:.3f} | "
                                 f"{'' if r is None else f'{r:.3f}'} | {ratio} |")
                            if m not in best or e < best[m][0]:
                                best[m] = (e, sim_name, sep_name)
                engram_s = time.perf_counter() - t
                emit()
                for m in sizes:
                    e, sim_name, sep_name = best[m]
                    fs, l0, l1 = fit_times[m]
                    emit(f"- M = {m}: best engram configuration {sim_name} + {sep_name}, error {e:.3f}; "
                         f"U-Hop fit on {m // 2} patterns {fs:.2f}s over gRPC (loss {l0:.4f} -> {l1:.4f}), "
                         f"reference fit {ref_fits.get(m, float('nan')):.2f}s")
                emit(f"- wall time: engram (all sizes, all rules, through gRPC) {engram_s:.1f}s; "
                     f"reference {ref_s:.1f}s")
                emit()
        finally:
            server.stop()
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
