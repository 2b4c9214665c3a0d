#!/usr/bin/env python3
"""Plots low_rank_bench's CSV output: bound against measured error over
beta * norms, and the phase diagram of the path AUTO takes.

  build/bin/low_rank_bench --csv=docs/low-rank
  python3 bench/low_rank_plot.py docs/low-rank   # writes docs/low-rank.png
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402


def read(path):
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def main():
    prefix = sys.argv[1] if len(sys.argv) > 1 else "docs/low-rank"
    sweep = read(prefix + "-sweep.csv")
    phase = read(prefix + "-phase.csv")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))

    r = [row["R"] for row in sweep]
    for g, color in ((2, "tab:blue"), (4, "tab:orange")):
        bound = [row[f"bound{g}"] if row[f"bound{g}"] < 1e300 else float("nan")
                 for row in sweep]
        left.plot(r, bound, "-", color=color, label=f"bound, g = {g}")
        left.plot(r, [row[f"error{g}"] for row in sweep], "o--", color=color,
                  markersize=3, label=f"measured, g = {g}")
    left.axhline(1e-3, color="gray", linestyle=":", label="tolerance 1e-3")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("R = beta * max||xi|| * max||x||")
    left.set_ylabel("||y_lowrank - y_exact||_2 (max over 256 queries)")
    left.set_title("d_Phi = 16, M = 100,000: bound vs measured")
    left.legend(fontsize=8)

    ms = sorted({row["M"] for row in phase})
    betas = sorted({row["beta"] for row in phase})
    grid = [[0] * len(ms) for _ in betas]
    for row in phase:
        grid[betas.index(row["beta"])][ms.index(row["M"])] = row["degree"]
    cmap = ListedColormap(["#dddddd", "#9ecae1", "#4292c6", "#2171b5",
                           "#08306b"])
    def edges(values):  # Cell edges halfway between points on a log axis.
        mids = [(a * b) ** 0.5 for a, b in zip(values, values[1:])]
        return ([values[0] ** 2 / mids[0]] + mids +
                [values[-1] ** 2 / mids[-1]])

    mesh = right.pcolormesh(edges(ms), edges(betas), grid, cmap=cmap,
                            vmin=-1, vmax=9, shading="flat")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("M (patterns)")
    right.set_ylabel("beta (max||xi|| = max||x|| = 1)")
    right.set_title("Path AUTO takes at tolerance 1e-3 (d_Phi = 8)")
    bar = fig.colorbar(mesh, ax=right, ticks=[0, 2, 4, 6, 8])
    bar.set_ticklabels(["exact", "g = 2", "g = 4", "g = 6", "g = 8"])
    fig.tight_layout()
    fig.savefig(prefix + ".png", dpi=110)
    print("wrote", prefix + ".png")


if __name__ == "__main__":
    main()
