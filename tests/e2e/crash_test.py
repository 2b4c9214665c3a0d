#!/usr/bin/python3
"""Crash test: a real engramd under concurrent writers and readers, killed with
SIGKILL at random moments and restarted, many times.

Usage: crash_test.py BIN_DIR [--cycles N] [--seed S]

Each writer owns one store and keeps a model of it: the patterns of every
acknowledged add, minus every acknowledged delete. A batch in flight when the
server dies has an unknown outcome. After every restart the test lists each
store and checks that
  - every acknowledged write is there (no lost adds, no resurrected deletes),
  - the in-flight batch of each writer was applied entirely or not at all,
  - nothing else is there, with every value bit-exact,
  - retrieval of a few stored vectors answers their own ids.
It prints the cycles and the writes it checked.
"""
import argparse
import os
import random
import struct
import sys
import tempfile
import threading
import time

ap = argparse.ArgumentParser()
ap.add_argument("bin_dir")
ap.add_argument("--cycles", type=int, default=50)
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--writers", type=int, default=3)
args = ap.parse_args()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import grpc  # noqa: E402
from engram_client import pb, pb_grpc  # noqa: E402
from harness import Engramd, stored_patterns  # noqa: E402

DIM = 8


def vector(store_index, pattern_id):
    """A vector that identifies its pattern, exact in float32."""
    return [float(store_index), float(pattern_id % 4096), float(pattern_id // 4096),
            1.0, -1.0, 0.5, float(pattern_id % 7), 2.0]


def f32(values):
    return list(struct.unpack(f"{len(values)}f", struct.pack(f"{len(values)}f", *values)))


class Writer:
    """Owns one store: adds and deletes, recording what was acknowledged."""

    def __init__(self, index, seed):
        self.index = index
        self.name = f"crash-{index}"
        self.rng = random.Random(seed)
        self.model = {}        # id -> values, acknowledged state
        self.next_id = 1
        self.pending = None    # ("add", {id: values}) or ("delete", [ids])
        self.acked = 0

    def run(self, stub, stop):
        while not stop.is_set():
            full = len(self.model) > 4000
            if self.model and self.rng.random() < (0.6 if full else 0.3):
                count = self.rng.randint(1, 80 if full else 10)
                ids = self.rng.sample(sorted(self.model), min(len(self.model), count))
                self.pending = ("delete", ids)
                request = pb.DeletePatternsRequest(store=self.name, ids=ids)
                call = stub.DeletePatterns
            else:
                batch = {}
                for _ in range(self.rng.randint(1, 60)):
                    batch[self.next_id] = f32(vector(self.index, self.next_id))
                    self.next_id += 1
                self.pending = ("add", batch)
                request = pb.AddPatternsRequest(store=self.name, patterns=[
                    pb.Pattern(id=i, values=v, label=f"p{i}") for i, v in batch.items()])
                call = stub.AddPatterns
            try:
                call(request, timeout=10)
            except grpc.RpcError:
                return  # The server died under us: the batch stays pending.
            self.apply(self.pending)
            self.pending = None
            self.acked += 1

    def apply(self, op):
        kind, content = op
        if kind == "add":
            self.model.update(content)
        else:
            for i in content:
                del self.model[i]


def verify(stub, writer, stats):
    found = stored_patterns(stub, writer.name)
    if writer.pending is not None:
        kind, content = writer.pending
        ids = list(content) if kind == "add" else content
        present = [i in found for i in ids]
        if kind == "add":
            applied = all(present)
            partial = any(present) and not applied
        else:
            applied = not any(present)
            partial = any(present) and not all(present)
        if partial:
            stats["partial"] += 1
            raise AssertionError(f"{writer.name}: {kind} batch {ids[:5]}... half applied")
        if applied:
            writer.apply(writer.pending)
            stats["pending_applied"] += 1
        else:
            stats["pending_dropped"] += 1
        writer.pending = None
    lost = [i for i in writer.model if i not in found]
    extra = [i for i in found if i not in writer.model]
    if lost:
        stats["lost"] += len(lost)
        raise AssertionError(f"{writer.name}: acknowledged patterns lost: {lost[:10]}")
    if extra:
        raise AssertionError(f"{writer.name}: patterns nobody acknowledged: {extra[:10]}")
    for i, values in writer.model.items():
        if found[i] != values:
            raise AssertionError(f"{writer.name}: pattern {i} holds {found[i]}, expected {values}")
    stats["checked"] += len(writer.model)
    sample = writer.rng.sample(sorted(writer.model), min(5, len(writer.model)))
    if sample:
        r = stub.Retrieve(pb.RetrieveRequest(
            store=writer.name, queries=[pb.Query(values=writer.model[i]) for i in sample],
            top_k=1, beta=50.0, omit_vectors=True), timeout=30)
        for i, result in zip(sample, r.results):
            if result.matches[0].id != i:
                raise AssertionError(f"{writer.name}: retrieving pattern {i} answered {result.matches[0].id}")
        stats["retrievals"] += len(sample)


def reader(stub, names, stop):
    rng = random.Random(7)
    while not stop.is_set():
        try:
            stub.Retrieve(pb.RetrieveRequest(store=rng.choice(names),
                                             queries=[pb.Query(values=[0.5] * DIM)]), timeout=5)
        except grpc.RpcError:
            time.sleep(0.005)


def main():
    rng = random.Random(args.seed)
    stats = dict(checked=0, pending_applied=0, pending_dropped=0, lost=0, partial=0, retrievals=0)
    started = time.time()
    with tempfile.TemporaryDirectory() as data_dir:
        server = Engramd(args.bin_dir, data_dir, data_dir=data_dir)
        writers = [Writer(i, args.seed * 100 + i) for i in range(args.writers)]
        with grpc.insecure_channel(server.addr) as channel:
            stub = pb_grpc.EngramStub(channel)
            for w in writers:
                stub.CreateStore(pb.CreateStoreRequest(store=pb.Store(
                    name=w.name, dimension=DIM,
                    retrieval=pb.RetrievalSettings(similarity=pb.L2))), timeout=10)
        for cycle in range(1, args.cycles + 1):
            stop = threading.Event()
            channel = grpc.insecure_channel(server.addr)
            stub = pb_grpc.EngramStub(channel)
            threads = [threading.Thread(target=w.run, args=(stub, stop)) for w in writers]
            threads += [threading.Thread(target=reader, args=(stub, [w.name for w in writers], stop))
                        for _ in range(2)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.05, 0.6))
            server.kill()
            stop.set()
            for t in threads:
                t.join()
            channel.close()
            server = Engramd(args.bin_dir, data_dir, data_dir=data_dir)
            with grpc.insecure_channel(server.addr) as channel:
                stub = pb_grpc.EngramStub(channel)
                for w in writers:
                    verify(stub, w, stats)
            print(f"cycle {cycle}: {sum(len(w.model) for w in writers)} patterns verified, "
                  f"{sum(w.acked for w in writers)} writes acknowledged so far", flush=True)
        server.kill()
    acked = sum(w.acked for w in writers)
    print(f"crash test: {args.cycles} kill -9 cycles, {acked} acknowledged writes, "
          f"{stats['checked']} pattern checks, {stats['retrievals']} retrievals, "
          f"in-flight batches applied {stats['pending_applied']} / dropped {stats['pending_dropped']}; "
          f"lost {stats['lost']}, partial {stats['partial']} "
          f"in {time.time() - started:.1f}s")


if __name__ == "__main__":
    main()
