#!/usr/bin/python3
"""Backup and restore of one large store, timed, with the sizes on disk.

Usage (with build/venv/bin/python): backup_bench.py BIN_DIR [--patterns=1000000]
    [--dim=128] [--dir=DIR] [--shards=N]

Fills a store with random float32 patterns (each with a label), restarts
engramd so the data directory is flushed, then times `engram backup create`,
`engram backup verify`, `engram backup restore` (a second copy in the same
server, under a new name) and `engramd --restore_from` (a whole new server),
and prints each with the sizes of the data directory and the backup.

With --shards=N the store is spread over N shard groups (one replica each)
behind a router, and every step but the last goes through the router (the
last restores the cluster's backup into one new engramd).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
import numpy as np  # noqa: E402
from engram_client import Client  # noqa: E402
from harness import Engramd  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("bin_dir")
ap.add_argument("--patterns", type=int, default=1_000_000)
ap.add_argument("--dim", type=int, default=128)
ap.add_argument("--dir", default="", help="where to keep data and backups (default: a temp dir)")
ap.add_argument("--shards", type=int, default=0, help="shard groups behind a router (0: one engramd)")
a = ap.parse_args()


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def gib(n):
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def timed(*argv):
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=3600)
    return time.perf_counter() - start


machine = subprocess.run([os.path.join(a.bin_dir, "retrieve_fashion"), "--mode=describe"],
                         capture_output=True, text=True).stdout.strip()
print(machine)
tmp = a.dir or tempfile.mkdtemp()
os.makedirs(tmp, exist_ok=True)
engram = os.path.join(a.bin_dir, "engram")
data = os.path.join(tmp, "data")


class Cluster:
    """N shard groups of one replica behind a router; `addr` is the router's."""

    def __init__(self, n):
        self.shards = [Engramd(a.bin_dir, tmp, "--sync=false", "--role=shard", "--cluster=bench",
                               f"--shard_group={g}", f"--shard_groups={n}",
                               data_dir=f"{data}-{g}") for g in range(n)]
        self.router = Engramd(a.bin_dir, tmp, "--role=router", "--cluster=bench",
                              "--shards=" + ";".join(s.addr for s in self.shards))
        self.addr = self.router.addr

    def stop(self):
        self.router.stop()
        for s in self.shards:
            s.stop()


def launch():
    if a.shards:
        return Cluster(a.shards)
    return Engramd(a.bin_dir, tmp, "--sync=false", data_dir=data)


server = launch()
rng = np.random.default_rng(0)
start = time.perf_counter()
with Client(server.addr, timeout=600) as c:
    c.create_store("big", dim=a.dim)
    chunk = 50_000
    for first in range(0, a.patterns, chunk):
        n = min(chunk, a.patterns - first)
        x = rng.standard_normal((n, a.dim), dtype=np.float32)
        c.import_patterns("big", x, labels=[f"c{(first + i) % 10}" for i in range(n)],
                          batch=10_000)
fill = time.perf_counter() - start
server.stop()
server = launch()  # Flushed by the clean stop.
data_bytes = sum(du(f"{data}-{g}") for g in range(a.shards)) if a.shards else du(data)
backup = os.path.join(tmp, "backup")
t_create = timed(engram, "--addr=" + server.addr, "backup", "create", backup)
backup_bytes = du(backup)
t_verify = timed(engram, "backup", "verify", backup)
t_restore = timed(engram, "--addr=" + server.addr, "backup", "restore", backup, "--as=copy")
server.stop()
start = time.perf_counter()
whole = Engramd(a.bin_dir, tmp, "--restore_from=" + backup,
                data_dir=os.path.join(tmp, "restored"))
t_whole = time.perf_counter() - start
whole.stop()

where = (f"over {a.shards} shard groups behind a router (every step through it)"
         if a.shards else "in one engramd")
print(f"store: {a.patterns:,} x {a.dim} float32 with labels, {where}; filled in {fill:.1f} s")
print(f"data directory (RocksDB, after a clean stop): {gib(data_bytes)}")
print(f"{'step':44} {'seconds':>8}  size")
print(f"{'engram backup create (online, streamed)':44} {t_create:8.2f}  {gib(backup_bytes)}")
print(f"{'engram backup verify (every byte, decoded)':44} {t_verify:8.2f}")
print(f"{'engram backup restore --as=copy (RPC)':44} {t_restore:8.2f}")
print(f"{'engramd --restore_from (start to ready)':44} {t_whole:8.2f}")
