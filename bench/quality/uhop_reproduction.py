#!/usr/bin/env python3
"""The U-Hop memory-retrieval protocol on Fashion-MNIST, through a real engramd
over gRPC, next to the PyTorch re-implementation of the public reference
(given with --reference; not part of engram) run in the same invocation.

  bench/quality/uhop_reproduction.py BIN_DIR --reference PATH [--sizes 100,500,1000,2000]
        [--corruptions dropout,gaussian] [--out results.md]

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
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from protocol import (LEVEL, add, corrupt, error, load, parse_args, retrieve,  # noqa: E402
                      run_reference, set_rule, uhop_store, Tables, engramd_stub)

args = parse_args(__doc__)
from engram_client import pb  # noqa: E402

SIMILARITIES = [("dot", pb.DOT, "MHN"), ("l2", pb.L2, "L2"), ("manhattan", pb.MANHATTAN, "Man"),
                ("cosine", pb.COSINE, None), ("kernel_dot", pb.KERNEL_DOT, "UMHN"),
                ("kernel_l2", pb.KERNEL_L2, None)]
SEPARATIONS = [("softmax", pb.SOFTMAX, "softmax"), ("sparsemax", pb.SPARSEMAX, "sparsemax"),
               ("entmax15", pb.ENTMAX15, "entmax")]


def run_engram(stub, m, corruption):
    x = load(m, args.seed)
    q = corrupt(x, corruption, LEVEL[corruption], args.seed)
    tag = f"{corruption}-{m}"
    stub.CreateStore(pb.CreateStoreRequest(store=pb.Store(name="raw-" + tag, dimension=784)))
    add(pb, stub, "raw-" + tag, x)
    _, fit_s, status = uhop_store(pb, stub, "uhop-" + tag, x, args.seed)
    results = {}
    for sim_name, sim, _ in SIMILARITIES:
        store = ("uhop-" if sim_name.startswith("kernel") else "raw-") + tag
        for sep_name, sep, _ in SEPARATIONS:
            set_rule(pb, stub, store, sim, sep)
            results[(sim_name, sep_name)] = error(x, retrieve(pb, stub, store, q)[0])
    return results, fit_s, status


def main():
    sizes = [int(s) for s in args.sizes.split(",")]
    emit = Tables()
    with engramd_stub(args.bin_dir) as stub:
        for corruption in args.corruptions.split(","):
            t = time.perf_counter()
            reference, ref_fits = run_reference(sizes, corruption, args.seed, args.reference)
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
    emit.save(args.out)


if __name__ == "__main__":
    main()
