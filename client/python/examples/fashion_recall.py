#!/usr/bin/env python3
"""Store Fashion-MNIST in engram, corrupt some images, and see what it recalls.

  build/venv/bin/python client/python/examples/fashion_recall.py \
      [--addr 127.0.0.1:50051] [--n 10000] [--show 8] [--png recall.png]

(any Python where `pip install ./client/python` put engram_client will do).

Saves a PNG grid: the corrupted query, engram's recall, the original.
"""
import argparse
import gzip

import numpy as np

from engram_client import Client

ap = argparse.ArgumentParser()
ap.add_argument("--addr", default="127.0.0.1:50051")
ap.add_argument("--store", default="fashion-example")
ap.add_argument("--n", type=int, default=10000)
ap.add_argument("--show", type=int, default=8)
ap.add_argument("--png", default="recall.png")
a = ap.parse_args()

with gzip.open("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz") as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)[: a.n] / 255.0
with gzip.open("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz") as f:
    labels = np.frombuffer(f.read(), np.uint8, offset=8)[: a.n]

rng = np.random.default_rng(0)
picked = rng.choice(a.n, size=a.show, replace=False)
truth = images[picked].astype(np.float32)
noisy = truth * (rng.random(truth.shape) >= 0.5) * 2  # Drop half the pixels.

with Client(a.addr) as engram:
    if a.store in [s.name for s in engram.list_stores()]:
        engram.delete_store(a.store)
    engram.create_store(a.store, dim=784, similarity="l2", beta=10, top_k=1)
    ids = engram.add(a.store, images, labels=[str(l) for l in labels])
    recall = engram.retrieve(a.store, noisy)
    engram.delete_store(a.store)

found = recall.ids[:, 0]
correct = int(np.sum(found == ids[picked]))
error = float(np.mean(np.sum((np.clip(recall.vectors, 0, 1) - truth) ** 2, axis=1)))
print(f"stored {len(ids)} images; recalled {correct}/{a.show} exactly; "
      f"mean squared error {error:.3f} (corrupted: "
      f"{float(np.mean(np.sum((np.clip(noisy, 0, 1) - truth) ** 2, axis=1))):.1f})")

import matplotlib  # noqa: E402
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, axes = plt.subplots(3, a.show, figsize=(1.4 * a.show, 4.4))
for col in range(a.show):
    for row, (img, title) in enumerate(((noisy[col], "query"), (recall.vectors[col], "recall"),
                                         (truth[col], "truth"))):
        ax = axes[row, col]
        ax.imshow(np.clip(img, 0, 1).reshape(28, 28), cmap="gray")
        ax.set_xticks([])
        ax.set_yticks([])
        if col == 0:
            ax.set_ylabel(title)
fig.suptitle(f"engram: {correct}/{a.show} recalled from half the pixels")
fig.tight_layout()
fig.savefig(a.png, dpi=100)
print(f"wrote {a.png}")
