#!/usr/bin/env python3
"""Crash test of a cluster: a router over 2 shard groups of 2 replicas under
concurrent writers and readers; each cycle kills one process with SIGKILL
(the router, or one shard replica) at a random moment, restarts it, waits
for the cluster to be whole again, and checks every store against the
writers' models of their acknowledged writes.

Usage (with the Python of build/venv):
    cluster_crash_test.py BIN_DIR [--cycles N] [--seed S]

Checked after every cycle, through the router:
  - every acknowledged add is there and no acknowledged delete came back;
  - a batch in flight at the kill is applied all or nothing in each shard
    group (a group's share is atomic; groups are independent);
  - nothing else is there, values bit-exact;
  - while one replica of a group is down, reads keep succeeding from the
    moment of the kill (a read whose replica is gone asks the other one):
    any failed read fails the test;
  - the restarted replica is repaired and serves, and within 30 s every
    replica's own listing equals its peer's, values included (a write the killed router sent
    may land after the new router first looked; it repairs that too).
"""
import argparse
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time

ap = argparse.ArgumentParser()
ap.add_argument("bin_dir")
ap.add_argument("--cycles", type=int, default=12)
ap.add_argument("--seed", type=int, default=3)
args = ap.parse_args()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import grpc  # noqa: E402
from engram_client import pb, pb_grpc  # noqa: E402
from harness import Engramd, free_port, stored_patterns  # noqa: E402

DIM = 6
GROUPS = 2


def group_of(pattern_id):
    """The shard group of a client-chosen id (server/store/placement.h)."""
    z = (pattern_id + 0x9e3779b97f4a7c15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & 0xFFFFFFFFFFFFFFFF
    z ^= z >> 31
    return z % GROUPS


def f32(values):
    return list(struct.unpack(f"{len(values)}f", struct.pack(f"{len(values)}f", *values)))


class Writer:
    def __init__(self, index, seed):
        self.index = index
        self.name = f"cc-{index}"
        self.rng = random.Random(seed)
        self.model = {}
        self.next_id = 1
        self.pending = None
        self.acked = 0

    def run(self, stub, stop):
        while not stop.is_set():
            if self.model and self.rng.random() < 0.3:
                ids = self.rng.sample(sorted(self.model), min(len(self.model),
                                                              self.rng.randint(1, 8)))
                self.pending = ("delete", ids)
                call, request = stub.DeletePatterns, pb.DeletePatternsRequest(
                    store=self.name, ids=ids)
            else:
                batch = {}
                for _ in range(self.rng.randint(1, 30)):
                    i = self.next_id
                    batch[i] = f32([self.index, i % 997, i // 997, 1.0, -1.0, 0.25])
                    self.next_id += 1
                self.pending = ("add", batch)
                call, request = stub.AddPatterns, pb.AddPatternsRequest(
                    store=self.name,
                    patterns=[pb.Pattern(id=i, values=v) for i, v in batch.items()])
            try:
                call(request, timeout=10)
            except grpc.RpcError:
                return  # Outcome unknown: stays pending.
            kind, content = self.pending
            if kind == "add":
                self.model.update(content)
            else:
                for i in content:
                    del self.model[i]
            self.pending = None
            self.acked += 1


def verify(stub, w, stats):
    found = stored_patterns(stub, w.name)
    if w.pending is not None:
        kind, content = w.pending
        ids = list(content) if kind == "add" else content
        for g in range(GROUPS):  # Each group's share: all or nothing.
            share = [i for i in ids if group_of(i) == g]
            present = [i in found for i in share]
            if any(present) and not all(present):
                raise AssertionError(f"{w.name}: {kind} share of group {g} half applied")
            applied = all(present) if kind == "add" else not any(present)
            if share and applied:
                for i in share:
                    if kind == "add":
                        w.model[i] = content[i]
                    else:
                        w.model.pop(i, None)
                stats["shares_applied"] += 1
        w.pending = None
    lost = [i for i in w.model if i not in found]
    extra = [i for i in found if i not in w.model]
    if lost:
        raise AssertionError(f"{w.name}: acknowledged patterns lost: {lost[:10]}")
    if extra:
        raise AssertionError(f"{w.name}: patterns nobody acknowledged: {extra[:10]}")
    for i, v in w.model.items():
        if found[i] != v:
            raise AssertionError(f"{w.name}: pattern {i} holds {found[i]}, expected {v}")
    stats["checked"] += len(w.model)


def may_be_empty(w):
    """Whether writer w's store may hold no pattern just now: nothing
    acknowledged is left but what a pending delete may have taken."""
    while True:
        try:
            kept = set(w.model)
            break
        except RuntimeError:  # The writer changed it meanwhile.
            pass
    pending = w.pending
    if pending is not None and pending[0] == "delete":
        kept -= set(pending[1])
    return not kept


def reader(addr, writers, stop, late_errors, kill_time):
    rng = random.Random(9)
    with grpc.insecure_channel(addr) as channel:
        stub = pb_grpc.EngramStub(channel)
        while not stop.is_set():
            w = rng.choice(writers)
            try:
                stub.Retrieve(pb.RetrieveRequest(store=w.name,
                                                 queries=[pb.Query(values=[0.5] * DIM)]),
                              timeout=5)
            except grpc.RpcError as e:
                # An empty store's answer, not a failure (seen under ASan:
                # a store still empty when a replica was killed in cycle 1).
                empty = (e.code() == grpc.StatusCode.FAILED_PRECONDITION
                         and "no memories" in e.details() and may_be_empty(w))
                if kill_time[0] and kill_time[1] == "replica" and not empty:
                    late_errors.append(e.details())
                time.sleep(0.01)


def main():
    rng = random.Random(args.seed)
    stats = dict(checked=0, shares_applied=0, router_kills=0, replica_kills=0, repairs=0)
    with tempfile.TemporaryDirectory() as tmp:
        def shard(g, port, data=None):
            return Engramd(args.bin_dir, tmp, "--role=shard", "--cluster=crash",
                           "--shard_group=%d" % g, "--shard_groups=%d" % GROUPS,
                           "--listen=127.0.0.1:%d" % port, data_dir=data)
        ports = [[free_port(), free_port()] for _ in range(GROUPS)]
        shards = [[shard(g, ports[g][r]) for r in range(2)] for g in range(GROUPS)]
        topology = ";".join(",".join("127.0.0.1:%d" % p for p in row) for row in ports)
        router_port = free_port()

        def router():
            return Engramd(args.bin_dir, tmp, "--role=router", "--cluster=crash",
                           "--shards=" + topology, "--listen=127.0.0.1:%d" % router_port)
        front = router()
        writers = [Writer(i, args.seed * 10 + i) for i in range(3)]
        with grpc.insecure_channel(front.addr) as channel:
            stub = pb_grpc.EngramStub(channel)
            for w in writers:
                stub.CreateStore(pb.CreateStoreRequest(store=pb.Store(name=w.name, dimension=DIM)),
                                 timeout=10)
        late_errors = []
        for cycle in range(1, args.cycles + 1):
            stop = threading.Event()
            kill_time = [0.0, ""]
            channel = grpc.insecure_channel(front.addr)
            stub = pb_grpc.EngramStub(channel)
            threads = [threading.Thread(target=w.run, args=(stub, stop)) for w in writers]
            threads += [threading.Thread(target=reader,
                                         args=(front.addr, writers, stop, late_errors,
                                               kill_time))]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.1, 0.5))
            if rng.random() < 0.3:
                kill_time[:] = [time.time(), "router"]
                front.kill()
                stats["router_kills"] += 1
                stop.set()
                for t in threads:
                    t.join()
                front = router()
            else:
                g, r = rng.randrange(GROUPS), rng.randrange(2)
                victim = shards[g][r]
                kill_time[:] = [time.time(), "replica"]
                victim.kill()
                stats["replica_kills"] += 1
                time.sleep(2.0)  # Writes and reads go on with one replica.
                stop.set()
                for t in threads:
                    t.join()
                shards[g][r] = shard(g, ports[g][r], data=victim.data_dir)
            channel.close()
            # Whole again: every replica ready (repaired where it was behind).
            deadline = time.time() + 60
            while True:
                out = subprocess.run([os.path.join(args.bin_dir, "engram"),
                                      "--addr=" + front.addr, "cluster", "status", "--json"],
                                     capture_output=True, text=True, timeout=30)
                status = json.loads(out.stdout) if out.stdout.strip() else {"shards": []}
                if status["shards"] and all(s.get("ready") for s in status["shards"]):
                    break
                if time.time() > deadline:
                    raise AssertionError(
                        "cluster not whole again: %s\ncluster status: exit %d, %s\n"
                        "router log (end):\n%s" % (
                            [(s["address"], s.get("detail")) for s in status["shards"]],
                            out.returncode, out.stderr.strip(), front.log()[-3000:]))
                time.sleep(0.2)
            stats["repairs"] += sum("repaired" in s.get("detail", "") for s in status["shards"])
            with grpc.insecure_channel(front.addr) as channel:
                stub = pb_grpc.EngramStub(channel)
                for w in writers:
                    verify(stub, w, stats)
            # Each replica of a group holds the same patterns. A write the
            # killed router sent may still land on a shard after the new
            # router's first look (the shard finishes what it read): never
            # acknowledged, it is on one replica until the router's
            # agreement check (three probes alike) repairs the other.
            for g in range(GROUPS):
                deadline = time.time() + 30
                while True:
                    held = []
                    for r in range(2):
                        with grpc.insecure_channel(shards[g][r].addr) as c:
                            s = pb_grpc.EngramStub(c)
                            held.append({w.name: {(i, tuple(v)) for i, v in
                                                  stored_patterns(s, w.name).items()}
                                         for w in writers})
                    if held[0] == held[1]:
                        break
                    if time.time() > deadline:
                        differ = {n: sorted({i for i, _ in held[0][n] ^ held[1][n]})[:10]
                                  for n in held[0] if held[0][n] != held[1][n]}
                        raise AssertionError(
                            f"replicas of group {g} still differ 30 s after cycle {cycle}: "
                            f"{differ}\nrouter log (end):\n{front.log()[-3000:]}")
                    time.sleep(0.2)
            print(f"cycle {cycle}: {sum(len(w.model) for w in writers)} patterns verified, "
                  f"{sum(w.acked for w in writers)} writes acknowledged so far", flush=True)
        if late_errors:
            raise AssertionError("reads failed with one replica down: %s" % late_errors[:3])
        front.stop()
        for row in shards:
            for s in row:
                s.stop()
    print(f"cluster crash test: {args.cycles} cycles ({stats['router_kills']} router kills, "
          f"{stats['replica_kills']} replica kills), "
          f"{sum(w.acked for w in writers)} acknowledged writes, "
          f"{stats['checked']} pattern checks, {stats['shares_applied']} in-flight shares applied, "
          f"replicas repaired {stats['repairs']} times: 0 lost")


if __name__ == "__main__":
    main()
