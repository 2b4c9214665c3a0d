#!/usr/bin/env python3
"""Calibration on the U-Hop reference protocol (bench/quality/protocol.py):
a calibrated engram store against every fixed beta = 1 configuration of the
reference table (MHN = dot, L2, Man(hattan), UMHN = U-Hop kernel_dot, each
with softmax, sparsemax and entmax), at every M, in error and recall@1.

  bench/quality/calibration_quality.py BIN_DIR --reference PATH [--sizes 100,500,1000,2000]
        [--corruptions dropout,gaussian] [--out docs/calibration.md]

Per M and corruption: one U-Hop store (fitted on the first half, then all M
added), created with calibration settings for the protocol's corruption kind
and level (its own seed: calibration never sees the benchmark's queries),
searching beta, similarity and separation. The fixed rows are retrieved from
the same store at beta = 1 (their errors are also the reference's own run, in
the same invocation); recall@1 is whether the top match is the queried
memory. Then `StartCalibration` (applied), and the benchmark's queries are
retrieved with the store's own settings.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# First: it sets the OpenBLAS kernels before numpy loads.
from protocol import (LEVEL, corrupt, error, load, parse_args, retrieve,  # noqa: E402
                      run_reference, set_rule, uhop_store, Tables, engramd_stub)
import numpy as np  # noqa: E402

args = parse_args(__doc__, lambda ap: ap.add_argument("--calibration_seed", type=int, default=1))
from engram_client import pb  # noqa: E402

FIXED = [("MHN", pb.DOT), ("L2", pb.L2), ("Man", pb.MANHATTAN), ("UMHN", pb.KERNEL_DOT)]
ACTS = [("softmax", pb.SOFTMAX), ("sparsemax", pb.SPARSEMAX), ("entmax", pb.ENTMAX15)]
CORRUPTION = {"dropout": pb.DROPOUT, "gaussian": pb.GAUSSIAN}


def lower(enum, value):
    return enum.Name(value).lower()


def calibrate(stub, name):
    status = stub.StartCalibration(pb.StartCalibrationRequest(store=name, apply=True))
    busy = (pb.CalibrationStatus.PENDING, pb.CalibrationStatus.RUNNING)
    t = time.perf_counter()
    while status.state in busy:
        time.sleep(0.05)
        status = stub.GetCalibrationStatus(pb.GetCalibrationStatusRequest(store=name))
    assert status.state == pb.CalibrationStatus.SUCCEEDED, status
    return status.report, time.perf_counter() - t


def run(stub, m, corruption, reference):
    x = load(m, args.seed)
    q = corrupt(x, corruption, LEVEL[corruption], args.seed)
    name = f"cal-{corruption}-{m}"
    ids, _, _ = uhop_store(pb, stub, name, x, args.seed, pb.CalibrationSettings(
        apply=True, corruption=CORRUPTION[corruption], level=LEVEL[corruption],
        search_similarity=True, search_separation=True, seed=args.calibration_seed))
    fixed = []
    for mode, sim in FIXED:
        for act, sep in ACTS:
            set_rule(pb, stub, name, sim, sep, beta=1.0)
            states, top = retrieve(pb, stub, name, q, beta=None)
            fixed.append((f"{mode} {act}", error(x, states), float(np.mean(top == ids)),
                          reference[(m, mode, act)]))
    set_rule(pb, stub, name, pb.KERNEL_DOT, pb.SOFTMAX, beta=1.0)  # The store's default.
    report, wall_s = calibrate(stub, name)
    store = stub.GetStore(pb.GetStoreRequest(name=name))
    states, top = retrieve(pb, stub, name, q, beta=None)
    return fixed, report, store.retrieval, error(x, states), float(np.mean(top == ids)), wall_s


def main():
    sizes = [int(s) for s in args.sizes.split(",")]
    all_beat = True
    emit = Tables()
    with engramd_stub(args.bin_dir) as stub:
        for corruption in args.corruptions.split(","):
            reference, _ = run_reference(sizes, corruption, args.seed, args.reference)
            emit(f"### {corruption} (level {LEVEL[corruption]}), one step")
            emit()
            emit("| M | calibrated setting | calibrated error | calibrated recall@1 | "
                 "best fixed error (reference's run) | best fixed recall@1 | "
                 "beats every fixed | calibration |")
            emit("|---:|---|---:|---:|---|---|---|---|")
            details = []
            for m in sizes:
                fixed, report, rule, err, recall, wall_s = run(stub, m, corruption, reference)
                best_err = min(fixed, key=lambda f: f[3])
                best_rec = max(fixed, key=lambda f: f[2])
                beats = all(err <= f[3] + 5e-4 and err <= f[1] + 5e-4 and recall >= f[2]
                            for f in fixed)
                all_beat &= beats
                setting = (f"{lower(pb.Similarity, rule.similarity)} "
                           f"{lower(pb.Separation, rule.separation)} β = {rule.beta:.4g}")
                emit(f"| {m} | {setting} | {err:.3f} | {recall:.3f} | "
                     f"{best_err[3]:.3f} ({best_err[0]}) | {best_rec[2]:.3f} ({best_rec[0]}) | "
                     f"{'yes' if beats else 'NO'} | {report.candidates} settings, "
                     f"{wall_s:.1f} s |")
                details.append(
                    f"- M = {m}: capacity report recall@1 {report.recall_at_1:.3f}, error "
                    f"{report.error:.3f} (squared L2, on {report.sample_size} patterns corrupted with "
                    f"calibration's own seed), was {report.previous_recall_at_1:.3f} / "
                    f"{report.previous_error:.3f} at kernel_dot softmax β = 1; well separated "
                    f"{100 * report.well_separated_fraction:.1f}%; the theory's β "
                    f"{report.theory_beta_median:.4g} (p90 {report.theory_beta_p90:.4g}). "
                    "Fixed (error engram / reference, recall@1): " +
                    "; ".join(f"{f[0]} {f[1]:.3f} / {f[3]:.3f}, {f[2]:.3f}" for f in fixed))
            emit()
            for d in details:
                emit(d)
            emit()
    emit(f"calibrated store beats every fixed configuration at every M: {'yes' if all_beat else 'NO'}")
    emit.save(args.out)


if __name__ == "__main__":
    main()
