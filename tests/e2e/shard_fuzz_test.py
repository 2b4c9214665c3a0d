#!/usr/bin/env python3
"""A router survives shards that answer anything, and recovers when they
answer right again.

Two shard groups of two replicas, each replica a real engramd behind a
proxy that, while the damage is on, spoils a share of its answers to the
router: bytes flipped, cut, appended to or inserted into; fields of the
answer's own type set to values at and past their limits (counts, shapes,
versions, NaN and infinite numbers, arrays of other lengths); an answer of
no fields; an error status of any code and any text instead of the answer
(after the shard did the work: a write that landed and whose answer was
lost); or an answer late, past the call's deadline at times. Requests are
never touched: what a shard holds is what the router asked of it. The
answers a replica's readiness and repair rest on (Describe, ListStores,
GetFeatureMap: what a shard says it holds) pass whole; without consensus a
router takes its shards' word for those.
Clients meanwhile call the router: reads and writes of patterns, stores
made and deleted, retrievals on every path (exact, low-rank, auto,
filtered) over a softmax dot store, a sparsemax store and a kernel_dot store
with a fitted map, fits, calibrations and backups.

While the damage is on, every call must end within its deadline (and a
little) with a status that is not UNKNOWN (an exception in a handler), the
router must keep running, and a retrieval the router answers as OK must
have the shape asked for (a result per query, d values per vector): what
the router computes from damaged parts is refused, never answered. (What
it relays, a pattern or a page of them, is the shard's word.)

When the damage stops, the replicas of each group must come to hold the
same stores and patterns (the router repairs the ones that differ), and the
router must answer as one engramd holding the same patterns: the patterns
it lists are the union of what the groups hold (read from them directly),
and exact and low-rank retrievals over them agree with one engramd's within
1e-5.

Usage: shard_fuzz_test.py BIN_DIR [PYTHON_DIR] [--seconds=S] [--seed=N]
(PYTHON_DIR: the generated reflection client, BIN_DIR/../python by default)
"""
import faulthandler
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from google.protobuf import message_factory  # noqa: E402
from engram_client import Client, pb  # noqa: E402
from fuzz import STRINGS, arguments, fill, mutate  # noqa: E402
from harness import Engramd, Proxy, reflected_services  # noqa: E402

ARGS = arguments(20.0, "of damaged answers")
faulthandler.register(signal.SIGUSR1, all_threads=True)  # Where a stuck run is.
# A run that hangs fails with every thread's stack instead of waiting for
# ctest's timeout.
faulthandler.dump_traceback_later(ARGS.seconds + 300, exit=True)

DIM = 8
GROUPS, REPLICAS = 2, 2
DEADLINE = 4.0  # Of every client call.
SLACK = 3.0  # What a call may take past its deadline, on a loaded machine.
DAMAGED = 0.3  # The share of the shards' answers spoiled while the damage is on.
SCALE = 0.15  # Of the vectors: norms of about 0.4, where the low-rank path holds.
TAKEN_AT_ITS_WORD = ("/Describe", "/ListStores", "/GetFeatureMap")
STORES = {
    "dot": dict(top_k=3),
    "sparse": dict(separation="sparsemax", top_k=3),
    "kernel": dict(feature_map="uhop", similarity="kernel_dot", fit_epochs=5,
                   fit_debounce_ms=600000, top_k=3),
}


class Spoiler:
    """Spoils a share of the answers that pass through a proxy while `on`."""

    def __init__(self, seed, answer_types):
        self.on = False
        self.spoiled = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._types = answer_types  # "/service/method" -> message class

    def __call__(self, method, response, context):
        with self._lock:
            # What a replica's readiness and repair rest on passes whole: a
            # router takes a shard's word for what it holds (its holdings,
            # its stores, its map's version), and a lie there is copied to
            # the peers a repair makes agree with it (a store dropped, a map
            # version no fit can follow). Everything else may be spoiled.
            rate = 0 if method.endswith(TAKEN_AT_ITS_WORD) else DAMAGED
            if not self.on or self._rng.random() >= rate:
                return response
            self.spoiled += 1
            rng = random.Random(self._rng.getrandbits(64))
        kind = rng.randrange(7)
        if kind == 0:
            return mutate(rng, response)
        if kind == 1:
            return b""
        if kind == 2:
            # Any code but UNKNOWN, which the test keeps for the router's own.
            codes = [c for c in grpc.StatusCode
                     if c not in (grpc.StatusCode.OK, grpc.StatusCode.UNKNOWN)]
            context.abort(rng.choice(codes),
                          rng.choice(STRINGS + ["shard says no", "\xff" * 3]))
        if kind == 3:
            time.sleep(rng.choice([0.05, 0.3, DEADLINE + 0.5]))
            return response
        kind_type = self._types.get(method)
        if kind_type is None:
            return mutate(rng, response)
        try:
            message = kind_type.FromString(response)
        except Exception:  # noqa: BLE001 - bytes spoiled by a stream's earlier message
            return mutate(rng, response)
        try:
            if kind == 4:
                fill(rng, message, store=rng.choice(list(STORES)))
            else:
                cut(rng, message)
            return message.SerializeToString()
        except (ValueError, TypeError, OverflowError):  # A value the field cannot hold.
            return mutate(rng, response)


def cut(rng, message, depth=0):
    """Repeated fields of `message` (and of its messages) cut short or grown
    by one; numbers scaled past their sense."""
    for field, value in list(message.ListFields()):
        if field.label == field.LABEL_REPEATED:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                continue
            n = len(value)
            if n and rng.random() < 0.5:
                del value[rng.randrange(n):]
            elif n and field.message_type is None:
                value.append(value[0])
            elif n and depth < 3:
                for item in value:
                    cut(rng, item, depth + 1)
        elif field.message_type is not None:
            if depth < 3:
                cut(rng, value, depth + 1)
        elif field.cpp_type in (field.CPPTYPE_FLOAT, field.CPPTYPE_DOUBLE):
            setattr(message, field.name, rng.choice([float("nan"), float("inf"), -value, 0.0]))
        elif field.cpp_type in (field.CPPTYPE_UINT32, field.CPPTYPE_UINT64):
            limit = (1 << 32) - 1 if field.cpp_type == field.CPPTYPE_UINT32 else (1 << 64) - 1
            setattr(message, field.name, rng.choice([0, min(value + 1, limit), limit]))


class ShardFuzzTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        b, tmp = ARGS.bin, cls.tmp.name
        # shards[g][r]: replica r of group g.
        cls.shards = [[Engramd(b, tmp, "--role=shard", "--cluster=sf", "--shard_group=%d" % g,
                               "--shard_groups=%d" % GROUPS) for _ in range(REPLICAS)]
                      for g in range(GROUPS)]
        with grpc.insecure_channel(cls.shards[0][0].addr) as channel:
            services = reflected_services(channel, ["engram.v1.Engram",
                                                    "engram.cluster.v1.Shard"])
        factory = message_factory.MessageFactory(services[0].file.pool)
        types = {}
        for service in services:
            for m in service.methods:
                types["/%s/%s" % (service.full_name, m.name)] = factory.GetPrototype(
                    m.output_type)
        print("seed", ARGS.seed, flush=True)
        cls.spoilers = [Spoiler(ARGS.seed + i, types) for i in range(GROUPS * REPLICAS)]
        cls.proxies = [[Proxy(s.addr, answer=cls.spoilers[g * REPLICAS + r])
                        for r, s in enumerate(row)] for g, row in enumerate(cls.shards)]
        cls.router = Engramd(b, tmp, "--role=router", "--cluster=sf", "--shards=" + ";".join(
            ",".join(p.addr for p in row) for row in cls.proxies))

    @classmethod
    def tearDownClass(cls):
        cls.router.stop()
        for row in cls.proxies:
            for p in row:
                p.stop()
        for row in cls.shards:
            for s in row:
                s.stop()
        cls.tmp.cleanup()

    def damage(self, on):
        for s in self.spoilers:
            s.on = on

    def test_router_survives_damaged_answers_and_recovers(self):
        rng = np.random.default_rng(ARGS.seed % (1 << 32))
        with Client(self.router.addr) as c:
            for name, settings in STORES.items():
                c.create_store(name, dim=DIM, **settings)
                c.add(name, (SCALE * rng.normal(size=(120, DIM))).astype(np.float32),
                      labels=["even" if i % 2 == 0 else "odd" for i in range(120)])
            c.fit("kernel")
        stop = time.monotonic() + ARGS.seconds
        errors, counts, lock = [], {}, threading.Lock()

        def client_loop(seed):
            pick = random.Random(seed)
            with Client(self.router.addr, timeout=DEADLINE, retries=0) as c:
                while time.monotonic() < stop and not errors:
                    op = pick.choice(OPS)
                    began = time.monotonic()
                    try:
                        op(self, c, pick, self.tmp.name)
                        code = grpc.StatusCode.OK
                    except grpc.RpcError as e:
                        code = e.code()
                        if code == grpc.StatusCode.UNKNOWN:
                            errors.append("%s: UNKNOWN %s" % (op.__name__, e.details()))
                    except Exception as e:  # noqa: BLE001 - an answer of the wrong shape
                        errors.append("%s: %r" % (op.__name__, e))
                        code = None
                    took = time.monotonic() - began
                    if took > 2 * DEADLINE + SLACK:
                        errors.append("%s took %.1f s" % (op.__name__, took))
                    with lock:
                        counts[(op.__name__, code)] = counts.get((op.__name__, code), 0) + 1

        self.damage(True)
        threads = [threading.Thread(target=client_loop, args=(ARGS.seed + 10 + i,))
                   for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.damage(False)
        for (name, code), n in sorted(counts.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
            print("  %-12s %-20s %d" % (name, code.name if code else "error", n))
        print("answers spoiled:", sum(s.spoiled for s in self.spoilers), flush=True)
        self.assertIsNone(self.router.proc.poll(), self.router.log()[-3000:])
        self.assertEqual(errors, [], "seed %d" % ARGS.seed)
        self.check_recovered()

    def replicas_agree(self):
        """Whether the replicas of every group hold the same stores and
        patterns (values, labels, metadata), read from them directly."""
        for row in self.shards:
            seen = []
            for shard in row:
                with Client(shard.addr, timeout=10) as direct:
                    seen.append({st.name: sorted((p.id, p.values.tobytes(), p.label,
                                                  sorted(p.metadata.items()))
                                                 for p in direct.list_patterns(st.name))
                                 for st in direct.list_stores()})
            if any(held != seen[0] for held in seen[1:]):
                return False
        return True

    def wait_settled(self, client):
        """Until every replica serves (`engram cluster status` exits 0), the
        replicas of each group hold the same, and no fit the fuzzing started
        is still running (while its map is published group by group, a
        retrieval is refused ABORTED, to be retried); `client` is the
        router's."""
        deadline = time.monotonic() + 60
        while True:
            status = subprocess.run([os.path.join(ARGS.bin, "engram"), "cluster", "status",
                                     "--addr=" + self.router.addr],
                                    capture_output=True, text=True, timeout=30)
            if status.returncode != 0:
                waiting = "a replica that does not serve"
            elif not self.replicas_agree():
                waiting = "the replicas of a group to hold the same"
            elif self.fitting(client):
                waiting = "a fit of the kernel store to end"
            else:
                return
            self.assertLess(time.monotonic(), deadline,
                            "still waiting after 60 s for %s:\n%s\nthe router's log:\n%s" % (
                                waiting, status.stdout, self.router.log()[-3000:]))
            time.sleep(0.2)

    @staticmethod
    def fitting(client):
        """Whether the router has a fit of the kernel store pending or
        running (or cannot say)."""
        try:
            state = client.fit_status("kernel").state
        except grpc.RpcError:
            return True
        return state in (pb.FitStatus.PENDING, pb.FitStatus.RUNNING)

    def check_recovered(self):
        """With the damage off, the router reads as one engramd that holds
        what the shards hold."""
        with Client(self.router.addr, timeout=10) as c:
            self.wait_settled(c)
            # New patterns in both groups: every part of the sums changes.
            for name in STORES:
                c.add(name, (SCALE * np.random.default_rng(1).normal(size=(8, DIM))).astype(
                    np.float32))
            self.wait_settled(c)
            queries = (SCALE * np.random.default_rng(2).normal(size=(5, DIM))).astype(np.float32)
            with Engramd(ARGS.bin, self.tmp.name) as single, Client(single.addr) as one:
                for name in ("dot", "sparse"):
                    listed = {p.id: p.values for p in c.list_patterns(name)}
                    held = {}
                    for row in self.shards:
                        with Client(row[0].addr) as direct:
                            held.update({p.id: p.values for p in direct.list_patterns(name)})
                    self.assertEqual(sorted(listed), sorted(held), name)
                    for i in held:
                        np.testing.assert_array_equal(listed[i], held[i])
                    ids = sorted(held)
                    one.create_store(name, dim=DIM, **STORES[name])
                    one.add(name, np.array([held[i] for i in ids]), ids=ids)
                    paths = ["exact", "auto"] + (["low_rank"] if name == "dot" else [])
                    for path in paths:
                        for steps in (1, 3):
                            got = c.retrieve(name, queries, path=path, steps=steps)
                            want = one.retrieve(name, queries, path=path, steps=steps)
                            where = "%s %s steps %d" % (name, path, steps)
                            self.assertEqual(got.path, want.path, where)
                            np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5,
                                                       err_msg=where)
                            np.testing.assert_allclose(got.energy, want.energy, atol=1e-5,
                                                       err_msg=where)
                            np.testing.assert_array_equal(got.ids, want.ids, where)
            # The kernel store answers (its fitted map's norms can keep the
            # low-rank path out of reach: AUTO then plans exact).
            for path in ("exact", "auto"):
                r = c.retrieve("kernel", queries, path=path)
                self.assertEqual(r.vectors.shape, (5, DIM))


# The client calls of the fuzzing: each raises grpc.RpcError for a refused
# call, and AssertionError for an OK retrieval of the wrong shape.
def retrieve(test, c, pick, tmp):
    name = pick.choice(list(STORES))
    n = pick.choice([1, 3])
    path = pick.choice(["exact", "auto", "low_rank", "auto"])
    where = {"where_label": ["even"]} if pick.random() < 0.2 and path != "low_rank" else {}
    r = c.retrieve(name, SCALE * np.random.default_rng(pick.getrandbits(32)).normal(size=(n, DIM)),
                   path=path, steps=pick.choice([1, 3]), **where)
    assert r.vectors.shape == (n, DIM), (name, path, r.vectors.shape)
    assert len(r.energy) == n and r.ids.shape[0] == n, (name, path)


def add(test, c, pick, tmp):
    n = pick.choice([1, 4])
    ids = c.add(pick.choice(list(STORES)), (SCALE * np.random.default_rng(
        pick.getrandbits(32)).normal(size=(n, DIM))).astype(np.float32))
    assert len(ids) == n, ids


def delete(test, c, pick, tmp):
    name = pick.choice(list(STORES))
    page = list(c._stub.ListPatterns(pb.ListPatternsRequest(store=name, page_size=20,
                                                            omit_values=True),
                                     timeout=DEADLINE).patterns)
    if len(page) >= 10:
        c.delete(name, [p.id for p in pick.sample(page, 2)])


def list_patterns(test, c, pick, tmp):
    c._stub.ListPatterns(pb.ListPatternsRequest(store=pick.choice(list(STORES)),
                                                page_size=pick.choice([5, 50])),
                         timeout=DEADLINE)


def get_pattern(test, c, pick, tmp):
    name = pick.choice(list(STORES))
    page = c._stub.ListPatterns(pb.ListPatternsRequest(store=name, page_size=10,
                                                       omit_values=True), timeout=DEADLINE)
    if page.patterns:
        c.get_pattern(name, pick.choice(page.patterns).id)


def describe(test, c, pick, tmp):
    if pick.random() < 0.5:
        c.get_store(pick.choice(list(STORES)))
    else:
        c.list_stores()


def scratch_store(test, c, pick, tmp):
    name = "scratch-%d" % pick.randrange(3)
    if pick.random() < 0.5:
        c.create_store(name, dim=DIM)
        c.add(name, np.ones((2, DIM), np.float32))
    else:
        c.delete_store(name)


def fit(test, c, pick, tmp):
    if pick.random() < 0.5:
        c.start_fit("kernel")
    else:
        c.start_calibration(pick.choice(["dot", "sparse"]), apply=False)


def backup(test, c, pick, tmp):
    # The stream itself, with a deadline (the client's create_backup has none).
    for _ in c._stub.CreateBackup(pb.CreateBackupRequest(store=pick.choice(list(STORES))),
                                  timeout=2 * DEADLINE):
        pass


OPS = [retrieve, retrieve, retrieve, retrieve, add, delete, list_patterns, get_pattern, describe,
       scratch_store, fit, backup]

if __name__ == "__main__":
    unittest.main()
