"""The U-Hop memory-retrieval protocol on Fashion-MNIST (shared by
uhop_reproduction.py and calibration_quality.py): data, the reference's
corruptions, its error metric, and engram store helpers over gRPC.

Protocol (as the reference, a PyTorch re-implementation of the public U-Hop
code, not part of engram, given with --reference): M random
training images (numpy default_rng(seed) choice); every memory queried once
with a corrupted copy made with the reference's own torch calls (dropout
p = 0.5: zero half the pixels, double the rest; Gaussian noise sigma = 0.5);
one update step; error = mean over memories of
sum((clamp(x,0,1) - clamp(x_hat,0,1))^2). U-Hop: W (d x d) fitted on the
first half of the memories, loss `max`, SGD lr 10, 100 epochs, then the
second half added with the fitted map.
"""
import argparse
import contextlib
import gzip
import os
import sys
import subprocess
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import blas_family  # noqa: E402

# numpy and PyTorch here, and the reference in its own process (it inherits
# the environment), run the OpenBLAS kernel family engram chooses: a
# reference on the family OpenBLAS guesses would be timed on kernels up to
# ten times slower.
MACHINE, FAMILY, KERNELS = blas_family.use(blas_family.bin_dir_from_argv())
import numpy as np  # noqa: E402
import torch  # noqa: E402

blas_family.check(FAMILY)

LEVEL = {"dropout": 0.5, "gaussian": 0.5}


def parse_args(doc, extra=lambda ap: None):
    """The protocol scripts' common arguments; puts the e2e harness on
    sys.path (run with a Python where engram_client is installed, such as
    build/venv/bin/python)."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("bin_dir")
    ap.add_argument("--sizes", default="100,500,1000,2000")
    ap.add_argument("--corruptions", default="dropout,gaussian")
    ap.add_argument("--reference", required=True,
                    help="the reference implementation's script (uhop_reference.py)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default="", help="also write the tables (markdown) here")
    extra(ap)
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "../../tests/e2e"))
    return args


@contextlib.contextmanager
def engramd_stub(bin_dir):
    """A fresh engramd (--sync=false) in a temporary directory, and a stub to it."""
    import grpc
    from engram_client import pb_grpc
    from harness import Engramd
    with tempfile.TemporaryDirectory() as tmp:
        server = Engramd(bin_dir, tmp, "--sync=false")
        try:
            channel = grpc.insecure_channel(server.addr, options=[
                ("grpc.max_receive_message_length", 256 << 20),
                ("grpc.max_send_message_length", 256 << 20)])
            yield pb_grpc.EngramStub(channel)
        finally:
            server.stop()


class Tables:
    """Prints lines as they come and keeps them for --out."""

    def __init__(self):
        self.lines = []
        self(f"Machine: {MACHINE}; engram's kernels {KERNELS}; OpenBLAS {FAMILY} "
             "for every participant")
        self()

    def __call__(self, line=""):
        print(line, flush=True)
        self.lines.append(line)

    def save(self, path):
        if path:
            with open(path, "w") as f:
                f.write("\n".join(self.lines) + "\n")


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


def add(pb, stub, name, rows):
    ids = []
    for i in range(0, len(rows), 500):
        ids += stub.AddPatterns(pb.AddPatternsRequest(store=name, patterns=[
            pb.Pattern(values=r) for r in rows[i:i + 500]])).ids
    return ids


def retrieve(pb, stub, name, queries, beta=1.0):
    """One exact step; beta None keeps the store's. Returns (states, top-1 ids)."""
    request = pb.RetrieveRequest(store=name, queries=[pb.Query(values=q) for q in queries],
                                 steps=1, top_k=1, path=pb.EXACT)
    if beta is not None:
        request.beta = beta
    r = stub.Retrieve(request, timeout=600)
    states = np.array([list(res.values) for res in r.results], dtype=np.float32)
    return states, np.array([res.matches[0].id for res in r.results])


def set_rule(pb, stub, name, similarity, separation, beta=None):
    paths = ["retrieval.similarity", "retrieval.separation"]
    settings = pb.RetrievalSettings(similarity=similarity, separation=separation)
    if beta is not None:
        settings.beta = beta
        paths.append("retrieval.beta")
    stub.UpdateStore(pb.UpdateStoreRequest(store=pb.Store(name=name, retrieval=settings),
                                           update_mask={"paths": paths}))


def uhop_store(pb, stub, name, x, seed, calibration=None):
    """A U-Hop store fitted on the first half of x, then holding all of x.
    Returns (ids of x's rows, fit seconds, final fit status)."""
    stub.CreateStore(pb.CreateStoreRequest(store=pb.Store(
        name=name, dimension=x.shape[1],
        retrieval=pb.RetrievalSettings(similarity=pb.KERNEL_DOT),
        feature_map=pb.FeatureMapSettings(kind=pb.UHOP, loss=pb.MAX, epochs=100, seed=seed,
                                          batch_size=4096, debounce_ms=3600000,
                                          min_new_patterns=1000000),
        calibration=calibration)))
    m = len(x)
    ids = add(pb, stub, name, x[: m // 2])
    t = time.perf_counter()
    stub.StartFit(pb.StartFitRequest(store=name))
    status = None
    for status in stub.WatchFit(pb.WatchFitRequest(store=name)):
        pass
    fit_s = time.perf_counter() - t
    assert status.state == pb.FitStatus.SUCCEEDED, status
    ids += add(pb, stub, name, x[m // 2:])
    return np.array(ids), fit_s, status


def run_reference(m_list, corruption, seed, reference):
    """The reference at beta = 1: {(M, mode, act): error}, {M: fit seconds}."""
    out = subprocess.run(
        ["/usr/bin/python3", reference, "--sizes", ",".join(map(str, m_list)),
         "--modes", "MHN,L2,Man,UMHN", "--acts", "softmax,sparsemax,entmax",
         "--corrupt", corruption, "--level", str(LEVEL[corruption]), "--seed", str(seed)],
        capture_output=True, text=True, check=True).stdout
    results, fits = {}, {}
    for line in out.strip().splitlines()[1:]:
        f = line.split(",")
        m, mode, act, err, fit_s = int(f[1]), f[2], f[3], float(f[7]), float(f[8])
        results[(m, mode, act)] = err
        if mode == "UMHN":
            fits[m] = fit_s
    return results, fits
