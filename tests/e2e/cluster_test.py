#!/usr/bin/env python3
"""One store over many engramd: a router over shards answers as one engramd.

Real processes on loopback: a single engramd (the reference), a router over
3 shard groups of 1 replica, and a router over 2 groups of 2 replicas. The
same patterns (with explicit ids) go into each; every similarity x
separation, 1 and 3 steps, top-k and energy must agree within 1e-5. Then
failures: a replica down (reads go on), a group down (UNAVAILABLE naming it),
and topologies that are wrong (refused at start, naming the flag and the
address).

Usage (with the Python of build/venv): cluster_test.py BIN_DIR
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

BIN = sys.argv.pop(1)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from engram_client import Client, IncompleteImport, pb, pb_grpc  # noqa: E402
import harness  # noqa: E402
from harness import Engramd, Proxy, cluster_status, free_port, garbled_message  # noqa: E402

SIMILARITIES = ["dot", "l2", "manhattan", "cosine"]
SEPARATIONS = ["softmax", "sparsemax", "entmax15"]


def pb_state(fit):
    """A FitStatus's state by name."""
    return fit.DESCRIPTOR.fields_by_name["state"].enum_type.values_by_number[fit.state].name


def store_group(pattern_id, groups=2):
    """The shard group of an id the cluster assigned (top bits: group + 1)."""
    return ((pattern_id >> 48) - 1) % groups


def shard(tmp, cluster, group, groups, *flags, listen=None, data_dir=None):
    """A shard engramd: group `group` of `groups` of `cluster`, on `listen`
    (a free loopback port otherwise)."""
    return Engramd(BIN, tmp, "--role=shard", "--cluster=" + cluster,
                   "--shard_group=%d" % group, "--shard_groups=%d" % groups,
                   "--listen=" + (listen or "127.0.0.1:%d" % free_port()), *flags,
                   data_dir=data_dir)


def router(tmp, cluster, shards, *flags):
    """A router of `cluster` over `shards` (--shards: groups split by ';',
    a group's replicas by ',')."""
    return Engramd(BIN, tmp, "--role=router", "--cluster=" + cluster, "--shards=" + shards,
                   *flags)


def retry(call, seconds=10):
    """`call()` until it raises no grpc.RpcError (a call while the router
    has yet to see a replica go), for at most `seconds`."""
    deadline = time.time() + seconds
    while True:
        try:
            return call()
        except grpc.RpcError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


class Cluster:
    """Shards of `groups` x `replicas` and a router over them."""

    def __init__(self, tmp, groups, replicas, cluster="test", listen=None, router_flags=()):
        """`listen(g, r)`, if given, is replica r of group g's --listen (a
        free loopback port otherwise); the router dials what it names."""
        self.tmp = tmp
        self.cluster, self.groups = cluster, groups
        self.shards = []  # [group][replica] -> Engramd
        for g in range(groups):
            row = []
            for r in range(replicas):
                row.append(shard(tmp, cluster, g, groups, listen=listen(g, r) if listen else None))
            self.shards.append(row)
        topology = ";".join(",".join(s.addr for s in row) for row in self.shards)
        self.router = router(tmp, cluster, topology, *router_flags)

    def restart(self, group, replica, addr, data_dir):
        """Replica `replica` of `group` again, on its address and data."""
        self.shards[group][replica] = shard(self.tmp, self.cluster, group, self.groups,
                                            listen=addr, data_dir=data_dir)

    def wait_serving(self, seconds=20):
        """Until every replica serves (`engram cluster status` exits 0); its
        report if they do not in time."""
        deadline = time.time() + seconds
        while True:
            code, state = cluster_status(BIN, self.router.addr, timeout=10)
            if code == 0:
                return None
            if time.time() > deadline:
                return json.dumps(state, indent=1) + "\n" + self.router.log()[-2000:]
            time.sleep(0.2)

    def stop(self):
        self.router.stop()
        for row in self.shards:
            for s in row:
                if s.proc.poll() is None:
                    s.stop()


class ClusterTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.single = Engramd(BIN, cls.tmp.name)
        cls.three = Cluster(cls.tmp.name, 3, 1)
        cls.two_by_two = Cluster(cls.tmp.name, 2, 2)
        rng = np.random.default_rng(5)
        cls.patterns = rng.normal(size=(300, 12)).astype(np.float32)
        cls.ids = np.arange(1, 301, dtype=np.uint64) * 7919  # explicit ids
        cls.queries = (cls.patterns[[3, 50, 111, 299]] +
                       0.4 * rng.normal(size=(4, 12))).astype(np.float32)

    @classmethod
    def tearDownClass(cls):
        cls.three.stop()
        cls.two_by_two.stop()
        cls.single.stop()
        cls.tmp.cleanup()

    @contextlib.contextmanager
    def clients(self):
        """A client of each server, by name."""
        clients = {name: Client(addr) for name, addr in self.each_server()}
        try:
            yield clients
        finally:
            for c in clients.values():
                c.close()

    def each_server(self):
        return [("single", self.single.addr), ("3x1", self.three.router.addr),
                ("2x2", self.two_by_two.router.addr)]

    def test_1_every_rule_answers_as_one_engramd(self):
        for _, addr in self.each_server():
            with Client(addr) as c:
                c.create_store("same", dim=12, top_k=5)
                c.add("same", self.patterns, ids=self.ids.tolist(),
                      labels=["p%d" % i for i in range(300)], batch=128)
                self.assertEqual(c.get_store("same").pattern_count, 300)
        with self.clients() as clients:
            for similarity in SIMILARITIES:
                for separation in SEPARATIONS:
                    for c in clients.values():
                        c.update_store("same", similarity=similarity, separation=separation)
                    for beta in (0.5, 4.0):
                        for steps in (1, 3):
                            want = clients["single"].retrieve("same", self.queries, beta=beta,
                                                              steps=steps, top_k=5)
                            for name in ("3x1", "2x2"):
                                got = clients[name].retrieve("same", self.queries, beta=beta,
                                                             steps=steps, top_k=5)
                                where = "%s %s beta %g steps %d via %s" % (
                                    similarity, separation, beta, steps, name)
                                np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5,
                                                           err_msg=where)
                                np.testing.assert_allclose(got.energy, want.energy, rtol=1e-5,
                                                           atol=1e-5, err_msg=where)
                                np.testing.assert_array_equal(got.steps, want.steps, err_msg=where)
                                np.testing.assert_array_equal(got.ids, want.ids, err_msg=where)
                                np.testing.assert_allclose(got.weights, want.weights, atol=1e-5,
                                                           err_msg=where)
                                self.assertEqual(got.labels, want.labels, where)

    def test_1a_filtered_recall_answers_as_one_engramd(self):
        """Each group steps over its matching patterns only; merged, that is
        one engramd's filtered answer (itself a store of only the matches)."""
        labels = ["c%d" % (i % 5) for i in range(300)]
        labels[17] = "alone"  # One pattern: every other group matches none.
        metadata = [{"tenant": "t%d" % (i % 3), "odd": str(i % 2)} for i in range(300)]
        for _, addr in self.each_server():
            with Client(addr) as c:
                c.create_store("filt", dim=12, top_k=4)
                c.add("filt", self.patterns, ids=self.ids.tolist(), labels=labels,
                      metadata=metadata, batch=128)
        filters = [dict(where_label=["c1", "c3"]),
                   dict(where={"tenant": "t2", "odd": "1"}),
                   dict(where={"tenant": "t0"}, where_label=["c4"], where_any=True),
                   dict(where_label=["alone"])]
        with self.clients() as clients:
            for similarity in SIMILARITIES:
                for separation in SEPARATIONS:
                    for c in clients.values():
                        c.update_store("filt", similarity=similarity, separation=separation)
                    for f in filters:
                        for steps in (1, 3):
                            want = clients["single"].retrieve("filt", self.queries, beta=2.0,
                                                              steps=steps, **f)
                            for name in ("3x1", "2x2"):
                                got = clients[name].retrieve("filt", self.queries, beta=2.0,
                                                             steps=steps, **f)
                                where = "%s %s %s steps %d via %s" % (similarity, separation, f,
                                                                      steps, name)
                                np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5,
                                                           err_msg=where)
                                np.testing.assert_allclose(got.energy, want.energy, rtol=1e-5,
                                                           atol=1e-5, err_msg=where)
                                np.testing.assert_array_equal(got.ids, want.ids, err_msg=where)
                                np.testing.assert_allclose(got.weights, want.weights, atol=1e-5,
                                                           err_msg=where)
                                self.assertEqual(got.labels, want.labels, where)
                                self.assertEqual(got.path, "exact", where)
                                self.assertIn("filtered to", got.reason, where)
            # Only the matches answer: the one "alone" pattern is every match.
            got = clients["2x2"].retrieve("filt", self.queries, where_label=["alone"])
            self.assertTrue(all(int(i) == int(self.ids[17]) for i in got.ids[:, 0]))
            self.assertIn("filtered to 1 of 300", got.reason)
            for name, c in clients.items():
                with self.assertRaises(grpc.RpcError) as e:
                    c.retrieve("filt", self.queries, where_label=["nobody"])
                self.assertEqual(e.exception.code(), grpc.StatusCode.FAILED_PRECONDITION, name)
                self.assertIn("matches no pattern", e.exception.details(), name)
                with self.assertRaises(grpc.RpcError) as e:
                    c.retrieve("filt", self.queries, where_label=["c1"], path="low_rank")
                self.assertEqual(e.exception.code(), grpc.StatusCode.FAILED_PRECONDITION, name)
                with self.assertRaises(grpc.RpcError) as e:
                    c.retrieve("filt", self.queries, where_label=["x" * 100000])
                self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT, name)
                self.assertIn("filter.labels[0]", e.exception.details(), name)
                c.delete_store("filt")

    def test_1b_low_rank_runs_on_the_router_as_on_one_engramd(self):
        rng = np.random.default_rng(11)
        patterns = rng.normal(size=(400, 6)).astype(np.float32)
        patterns *= 0.3 / np.linalg.norm(patterns, axis=1, keepdims=True).max()
        ids = np.arange(1, 401, dtype=np.uint64) * 104729
        queries = (patterns[[0, 7, 222]] + 0.05 * rng.normal(size=(3, 6))).astype(np.float32)

        def compare(stage, n):
            for path in ("low_rank", "auto"):
                for steps in (1, 3):
                    want = clients["single"].retrieve("lr", queries, steps=steps, path=path,
                                                      top_k=4, tolerance=1e-3)
                    self.assertEqual(want.path, "low_rank", want.reason)
                    for name in ("3x1", "2x2"):
                        got = clients[name].retrieve("lr", queries, steps=steps, path=path,
                                                     top_k=4, tolerance=1e-3)
                        where = "%s: %s steps %d via %s" % (stage, path, steps, name)
                        self.assertEqual(got.path, "low_rank", where + ": " + got.reason)
                        self.assertIn("sums merged from", got.reason)
                        self.assertEqual((got.degree, got.rank), (want.degree, want.rank), where)
                        self.assertAlmostEqual(got.error_bound, want.error_bound, delta=1e-9)
                        np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-6,
                                                   err_msg=where)
                        np.testing.assert_allclose(got.energy, want.energy, atol=1e-6,
                                                   err_msg=where)
                        np.testing.assert_array_equal(got.ids, want.ids, err_msg=where)
                        np.testing.assert_allclose(got.weights, want.weights, atol=1e-6,
                                                   err_msg=where)
                        self.assertEqual(got.labels, want.labels, where)
                        self.assertEqual(clients[name].get_store("lr").pattern_count, n)

        with self.clients() as clients:
            for c in clients.values():
                c.create_store("lr", dim=6, similarity="dot", separation="softmax", beta=1)
                c.add("lr", patterns[:300], ids=ids[:300].tolist(),
                      labels=["q%d" % i for i in range(300)])
            compare("first 300", 300)
            # The router's sums follow every change: adds, deletes.
            for c in clients.values():
                c.add("lr", patterns[300:], ids=ids[300:].tolist(),
                      labels=["q%d" % i for i in range(300, 400)])
            compare("all 400", 400)
            for c in clients.values():
                c.delete("lr", ids[::3].tolist())
            compare("after deletes", 400 - len(ids[::3]))
            # A separation without a low-rank form: refused alike, AUTO exact.
            for name, c in clients.items():
                c.update_store("lr", separation="sparsemax")
                with self.assertRaises(grpc.RpcError) as e:
                    c.retrieve("lr", queries, path="low_rank")
                self.assertEqual(e.exception.code(), grpc.StatusCode.FAILED_PRECONDITION, name)
                self.assertIn("sparsemax", e.exception.details())
                self.assertEqual(c.retrieve("lr", queries).path, "exact", name)
            for c in clients.values():
                c.delete_store("lr")

    def test_1c_a_uhop_fit_through_the_router_is_one_map_for_every_shard(self):
        rng = np.random.default_rng(17)
        patterns = rng.normal(size=(240, 10)).astype(np.float32)
        ids = (np.arange(1, 241, dtype=np.uint64) * 15485863).tolist()
        queries = (patterns[[1, 100, 200]] + 0.3 * rng.normal(size=(3, 10))).astype(np.float32)
        with self.clients() as clients:
            for c in clients.values():
                # Automatic fits wait for a quiet minute: these fits are started by hand.
                c.create_store("uh", dim=10, feature_map="uhop", fit_epochs=30,
                               fit_debounce_ms=60000, similarity="kernel_l2", top_k=3)
                c.add("uh", patterns, ids=ids, labels=["k%d" % (i % 4) for i in range(240)])
            fits = {name: c.fit("uh") for name, c in clients.items()}
            for name, fit in fits.items():
                self.assertEqual(pb_state(fit), "SUCCEEDED", "%s: %s" % (name, fit.error))
                self.assertEqual(fit.patterns_fitted, 240, name)
                self.assertEqual(fit.epoch, 30, name)
            # Every pattern fits in one batch: the router fits on all of them in
            # id order, the order one engramd holds them in: the same map.
            self.assertAlmostEqual(fits["3x1"].loss_after, fits["single"].loss_after, delta=1e-6)
            self.assertAlmostEqual(fits["2x2"].loss_after, fits["single"].loss_after, delta=1e-6)
            for name in ("3x1", "2x2"):
                cluster = self.three if name == "3x1" else self.two_by_two
                versions = {Client(s.addr).fit_status("uh").map_version
                            for row in cluster.shards for s in row}
                self.assertEqual(versions, {fits[name].map_version}, name)
                self.assertEqual(clients[name].fit_status("uh").state, fits[name].state)
            # Every kernel rule, 1 and 3 steps, within 1e-5 of one engramd, over
            # all patterns and over a filter's (the shards gather the matches'
            # features with them).
            for similarity in ("kernel_dot", "kernel_l2"):
                for separation in SEPARATIONS:
                    for c in clients.values():
                        c.update_store("uh", similarity=similarity, separation=separation)
                    for steps, where_label in ((1, None), (3, None), (1, ["k1", "k2"]),
                                               (3, ["k3"])):
                        want = clients["single"].retrieve("uh", queries, beta=2, steps=steps,
                                                          where_label=where_label)
                        for name in ("3x1", "2x2"):
                            got = clients[name].retrieve("uh", queries, beta=2, steps=steps,
                                                         where_label=where_label)
                            where = "%s %s steps %d %s via %s" % (similarity, separation, steps,
                                                                  where_label, name)
                            np.testing.assert_array_equal(got.ids, want.ids, err_msg=where)
                            np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5,
                                                       err_msg=where)
                            np.testing.assert_allclose(got.energy, want.energy, rtol=1e-5,
                                                       atol=1e-5, err_msg=where)
                            np.testing.assert_allclose(got.weights, want.weights, atol=1e-5,
                                                       err_msg=where)
            # The low-rank path of kernel_dot: the router takes Phi x with the
            # map the shards' sums came with.
            for c in clients.values():
                c.update_store("uh", similarity="kernel_dot", separation="softmax")
            small = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
            for steps in (1, 3):
                want = clients["single"].retrieve("uh", small, beta=1e-3, steps=steps,
                                                  path="low_rank", tolerance=0.1)
                self.assertEqual(want.path, "low_rank", want.reason)
                for name in ("3x1", "2x2"):
                    got = clients[name].retrieve("uh", small, beta=1e-3, steps=steps,
                                                 path="low_rank", tolerance=0.1)
                    where = "kernel_dot low-rank steps %d via %s" % (steps, name)
                    self.assertEqual((got.path, got.degree), (want.path, want.degree), got.reason)
                    self.assertIn("sums merged from", got.reason)
                    np.testing.assert_array_equal(got.ids, want.ids, err_msg=where)
                    np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5,
                                               err_msg=where)
                    np.testing.assert_allclose(got.weights, want.weights, atol=1e-5,
                                               err_msg=where)
            for c in clients.values():
                c.update_store("uh", similarity="kernel_l2", separation="softmax")
            # A calibration searching the kernel forms under the fitted map: the
            # router's sample and map are one engramd's, so is its report.
            for c in clients.values():
                c.update_store("uh", calibration={"search_similarity": True, "sample_size": 48})
            reports = {name: c.calibrate("uh", apply=False).report for name, c in clients.items()}
            for name in ("3x1", "2x2"):
                self.assertEqual(reports[name].similarity, reports["single"].similarity, name)
                self.assertAlmostEqual(reports[name].beta, reports["single"].beta, places=5)
                self.assertAlmostEqual(reports[name].error, reports["single"].error, delta=1e-5)
                self.assertEqual(reports[name].candidates, reports["single"].candidates, name)
                self.assertFalse(reports[name].applied)
            # Further fits publish the next versions everywhere, while queries
            # run: none fails or mixes versions (the router retries a query
            # that meets a publication half done). Cancel is refused once
            # nothing runs.
            errors, stop = [], threading.Event()

            def query():
                with Client(self.two_by_two.router.addr) as c:
                    while not stop.is_set():
                        try:
                            c.retrieve("uh", queries, steps=3)
                        except grpc.RpcError as e:
                            errors.append(e)
            reader = threading.Thread(target=query)
            reader.start()
            try:
                for k in range(1, 6):
                    again = clients["2x2"].fit("uh")
                    self.assertEqual(again.map_version, fits["2x2"].map_version + k)
            finally:
                stop.set()
                reader.join()
            self.assertEqual(errors, [])
            # Nothing to cancel: the fit's status as it stands, as one engramd
            # answers; a store that does not exist is NOT_FOUND everywhere.
            for name, c in clients.items():
                self.assertEqual(pb_state(c.cancel_fit("uh")), "SUCCEEDED", name)
                with self.assertRaises(grpc.RpcError) as e:
                    c.cancel_fit("no-such-store")
                self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND, name)
            # A job that cannot start is refused as one engramd refuses it,
            # in the same words: a fit without a U-Hop map, either job on
            # fewer than 2 patterns.
            refusals = {}
            for name, c in clients.items():
                c.create_store("plain", dim=3)
                c.add("plain", np.eye(3, dtype=np.float32)[:1])
                for what, start in (("fit", c.start_fit), ("calibration", c.start_calibration)):
                    with self.assertRaises(grpc.RpcError) as e:
                        start("plain")
                    self.assertEqual(e.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
                    refusals.setdefault(what, {})[name] = e.exception.details()
                c.delete_store("plain")
            for what, by_server in refusals.items():
                self.assertEqual(len(set(by_server.values())), 1, by_server)
            self.assertIn("no U-Hop feature map", refusals["fit"]["single"])
            self.assertIn("holds 1 pattern; a calibration needs at least 2",
                          refusals["calibration"]["single"])
            for c in clients.values():
                c.delete_store("uh")

    def test_1d_a_calibration_through_the_router_applies_one_setting_everywhere(self):
        rng = np.random.default_rng(23)
        patterns = rng.normal(size=(300, 8)).astype(np.float32)
        ids = (np.arange(1, 301, dtype=np.uint64) * 32452843).tolist()
        with self.clients() as clients:
            for c in clients.values():
                c.create_store("cal", dim=8, similarity="l2", beta=1,
                               calibration={"sample_size": 64, "seed": 4})
                c.add("cal", patterns, ids=ids)
            done = {name: c.calibrate("cal", apply=True) for name, c in clients.items()}
            want = done["single"].report
            self.assertTrue(want.improved and want.applied, want)
            for name in ("3x1", "2x2"):
                got = done[name]
                self.assertEqual(got.state, done["single"].state, got.error)
                # Every pattern gathered in id order, the same seed: the same
                # search as one engramd, the same choice.
                r = got.report
                self.assertEqual((r.similarity, r.separation, r.applied),
                                 (want.similarity, want.separation, True), name)
                self.assertAlmostEqual(r.beta, want.beta, places=5)
                self.assertAlmostEqual(r.error, want.error, delta=1e-6)
                self.assertEqual((r.pattern_count, r.sample_size), (300, want.sample_size))
                cluster = self.three if name == "3x1" else self.two_by_two
                for row in cluster.shards:
                    for s in row:
                        stored = Client(s.addr).get_store("cal")
                        self.assertEqual(stored.retrieval.similarity, want.similarity)
                        self.assertAlmostEqual(stored.retrieval.beta, want.beta, places=5)
                        self.assertTrue(stored.calibration_report.applied)
                        self.assertEqual(Client(s.addr).calibration("cal").report.beta, r.beta)
                self.assertEqual(clients[name].calibration("cal").report.beta, r.beta)
            for name, c in clients.items():
                cancelled = c.cancel_calibration("cal")
                self.assertAlmostEqual(cancelled.report.beta, want.beta, places=5, msg=name)
                with self.assertRaises(grpc.RpcError) as e:
                    c.cancel_calibration("no-such-store")
                self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND, name)
            for c in clients.values():
                c.delete_store("cal")

    def test_2_patterns_spread_and_every_call_reaches_them(self):
        with Client(self.three.router.addr) as c:
            c.create_store("spread", dim=3)
            ids = c.add("spread", np.eye(3, dtype=np.float32).repeat(20, axis=0))
            self.assertEqual(len(set(ids.tolist())), 60)
            per_group = [Client(row[0].addr).get_store("spread").pattern_count
                         for row in self.three.shards]
            self.assertEqual(sum(per_group), 60)
            self.assertTrue(all(n > 0 for n in per_group), per_group)
            listed = [p.id for p in c.list_patterns("spread", page_size=7)]
            self.assertEqual(sorted(listed), sorted(ids.tolist()))
            np.testing.assert_array_equal(c.get("spread", int(ids[25])), np.eye(3)[1])
            self.assertEqual(c.delete("spread", ids[:10].tolist()), 50)
            with self.assertRaises(grpc.RpcError) as e:
                c.get("spread", int(ids[0]))
            self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
            imported = c.import_patterns("spread", np.ones((9, 3), np.float32), batch=4)
            self.assertEqual((imported.patterns_added, imported.pattern_count), (9, 59))
            names = [s.name for s in c.list_stores()]
            self.assertIn("spread", names)
            c.delete_store("spread")
            with self.assertRaises(grpc.RpcError) as e:
                c.get_store("spread")
            self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
            for row in self.three.shards:
                self.assertNotIn("spread", [s.name for s in Client(row[0].addr).list_stores()])

    def test_2b_a_bad_batch_adds_nothing_anywhere(self):
        """A batch one group would refuse (its values, lifetimes, an id
        given twice, an id a group holds) is refused whole by a router, as
        by one engramd: no group keeps its share of it."""
        good = [pb.Pattern(values=[float(i), 1.0, 2.0]) for i in range(6)]

        def with_bad(i, **fields):
            batch = [pb.Pattern() for _ in good]
            for b, g in zip(batch, good):
                b.CopyFrom(g)
            for name, value in fields.items():
                if name == "values":
                    batch[i].ClearField("values")
                    batch[i].values.extend(value)
                elif name == "ttl":
                    batch[i].ttl.FromSeconds(value)
                else:
                    setattr(batch[i], name, value)
            return batch

        bad_batches = {
            "nan": with_bad(4, values=[1.0, float("nan"), 0.0]),
            "a wrong length": with_bad(5, values=[1.0, 2.0, 3.0, 4.0]),
            "a negative ttl": with_bad(3, ttl=-5),
            "every pattern of another dimension": [
                pb.Pattern(values=[1.0, 2.0, 3.0, 4.0]) for _ in good],
            "an id twice": [
                pb.Pattern(id=7919 * (k % 3 + 1), values=[1.0, 2.0, 3.0]) for k in range(6)],
        }
        for name, addr in self.each_server():
            with Client(addr) as c:
                c.create_store("badbatch", dim=3)
                c.add("badbatch", np.ones((6, 3), np.float32))
                stub = pb_grpc.EngramStub(grpc.insecure_channel(addr))
                for what, batch in bad_batches.items():
                    with self.assertRaises(grpc.RpcError, msg=(name, what)) as e:
                        stub.AddPatterns(pb.AddPatternsRequest(store="badbatch", patterns=batch),
                                         timeout=10)
                    self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT,
                                     (name, what, e.exception.details()))
                    self.assertEqual(c.get_store("badbatch").pattern_count, 6,
                                     (name, what, e.exception.details()))
                # A delete that names an id twice, over every group.
                ids = [p.id for p in c.list_patterns("badbatch")]
                with self.assertRaises(grpc.RpcError) as e:
                    c.delete("badbatch", ids + ids[-1:])
                self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT, name)
                self.assertEqual(c.get_store("badbatch").pattern_count, 6, name)
                # A delete over every group naming one id no group holds:
                # nothing is deleted anywhere, and the answer names the id
                # by its place in the request.
                missing = max(ids) + 1009
                with self.assertRaises(grpc.RpcError) as e:
                    c.delete("badbatch", ids + [missing])
                self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND, name)
                self.assertTrue(e.exception.details().startswith(
                    f"ids[{len(ids)}] {missing} is not in store 'badbatch'"),
                    (name, e.exception.details()))
                self.assertEqual(c.get_store("badbatch").pattern_count, 6,
                                 (name, e.exception.details()))
                # An id one group already holds, among new ids every group
                # takes: the groups that added their share delete it again.
                fresh = [1000003 * k for k in range(1, 31)]
                batch = [pb.Pattern(id=i, values=[1.0, 2.0, 3.0]) for i in fresh + ids[:1]]
                for _ in range(2):  # And once more: the state is as before.
                    with self.assertRaises(grpc.RpcError) as e:
                        stub.AddPatterns(pb.AddPatternsRequest(store="badbatch", patterns=batch),
                                         timeout=10)
                    self.assertEqual(e.exception.code(), grpc.StatusCode.ALREADY_EXISTS, name)
                    self.assertTrue(e.exception.details().startswith(
                        f"patterns[{len(fresh)}].id {ids[0]} already exists"),
                        (name, e.exception.details()))
                    self.assertEqual(c.get_store("badbatch").pattern_count, 6,
                                     (name, e.exception.details()))
                    self.assertEqual(sorted(p.id for p in c.list_patterns("badbatch")),
                                     sorted(ids), name)
                    if name != "single":
                        self.assertIn("nothing was added", e.exception.details())
                c.delete_store("badbatch")

    def test_2d_an_import_answers_as_one_engramd(self):
        """ImportPatterns through a router counts every message read and
        refuses in one engramd's words, a message that does not parse among
        them; one that does not parse at the end looks like the end to any
        server, and the client says the import is incomplete."""
        one = [pb.Pattern(values=[1.0, 2.0, 3.0])]
        texts = {}
        for name, addr in self.each_server():
            with Client(addr) as c:
                c.create_store("imp", dim=3)
                stub = pb_grpc.EngramStub(grpc.insecure_channel(addr))
                empty = c.import_patterns("imp", np.zeros((0, 3), np.float32))
                self.assertEqual((empty.batches, empty.patterns_added), (1, 0), name)

                def refused(*messages):
                    with self.assertRaises(grpc.RpcError) as e:
                        stub.ImportPatterns(iter(messages), timeout=10)
                    return e.exception.code(), e.exception.details()
                texts[name] = [
                    refused(),
                    refused(pb.ImportPatternsRequest(patterns=one)),
                    refused(pb.ImportPatternsRequest(store="imp", patterns=one),
                            pb.ImportPatternsRequest(store="other", patterns=one)),
                ]
                # A group's refusal: the same code, and the message and what
                # was committed named as one engramd names them (a router adds
                # the shard that refused, and checks a message's dimensions
                # before it asks the store).
                for code, details in [
                        refused(pb.ImportPatternsRequest(store="nope", patterns=one)),
                        refused(pb.ImportPatternsRequest(store="imp", patterns=one),
                                pb.ImportPatternsRequest(
                                    patterns=one + [pb.Pattern(values=[1.0])]))]:
                    texts[name].append(code)
                    self.assertRegex(details, r"^message \d: .*; \d patterns of earlier "
                                     r"messages were committed$", name)
                self.assertEqual(c.get_store("imp").pattern_count, 2, name)
                # One of three messages garbled on the way out: the second is
                # refused, what came before it named; the last looks like the
                # stream's end to any server, and the client says the import
                # is incomplete.
                with garbled_message(c, 2), self.assertRaises(grpc.RpcError, msg=name) as e:
                    c.import_patterns("imp", np.ones((9, 3), np.float32), batch=3)
                self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT, name)
                self.assertEqual(e.exception.details(),
                                 "message 1: its bytes are not an engram.v1.ImportPatternsRequest; "
                                 "neither it nor the messages after it were read; 3 patterns of "
                                 "earlier messages were committed", name)
                self.assertEqual(c.get_store("imp").pattern_count, 5, name)
                with garbled_message(c, 3), self.assertRaises(IncompleteImport, msg=name) as e:
                    c.import_patterns("imp", np.ones((9, 3), np.float32), batch=3)
                self.assertIn("read 2 of the 3 messages and added 6 of the 9", str(e.exception))
                self.assertEqual(c.get_store("imp").pattern_count, 11, name)
                c.delete_store("imp")
        self.assertEqual(texts["single"][2][1],
                         "message 1: store 'other' differs from the first message's 'imp'; "
                         "1 patterns of earlier messages were committed")
        for name in ("3x1", "2x2"):
            self.assertEqual(texts[name], texts["single"], name)

    def test_2e_scores_that_would_overflow_are_refused_everywhere(self):
        """Finite values whose scores would pass float's range: a pattern
        too long is refused on add, a query too long or a beta too hot on
        retrieval (a shard checks the states a router sends), in one
        engramd's words."""
        texts = {}
        for name, addr in self.each_server():
            with Client(addr) as c:
                c.create_store("ovf", dim=4)
                ids = c.add("ovf", np.eye(4, dtype=np.float32))
                stub = pb_grpc.EngramStub(grpc.insecure_channel(addr))
                answers = []
                for call in [
                        lambda: c.add("ovf", np.full((1, 4), 1e19, np.float32)),
                        lambda: c.retrieve("ovf", np.array([[1, 0, 0, 0], [0, 0, 0, 1e20]],
                                                           np.float32)),
                        lambda: c.retrieve("ovf", np.eye(4, dtype=np.float32)[:1], beta=1e37)]:
                    with self.assertRaises(grpc.RpcError, msg=name) as e:
                        call()
                    answers.append((e.exception.code(), e.exception.details().split(" [")[0]))
                texts[name] = answers
                self.assertEqual(c.get_store("ovf").pattern_count, 4, name)
                ok = c.retrieve("ovf", np.array([[1e17, 0, 0, 0]], np.float32), top_k=1)
                self.assertEqual(list(ok.ids[0]), [ids[0]], name)
                self.assertTrue(np.isfinite(ok.vectors).all(), name)
                stub.DeleteStore(pb.DeleteStoreRequest(name="ovf"), timeout=10)
        self.assertEqual(texts["single"][1],
                         (grpc.StatusCode.INVALID_ARGUMENT,
                          "queries[1] has norm 1e+20: with beta 1 and the store's patterns of "
                          "norms up to 1 its scores could reach 1e+40, past the 1e+37 float "
                          "scores are kept under; scale it down or lower beta"))
        for name in ("3x1", "2x2"):
            self.assertEqual(texts[name], texts["single"], name)

    def test_2c_a_name_no_store_could_have_is_invalid_everywhere(self):
        """A store name that breaks the naming rules is INVALID_ARGUMENT from
        every method, on a router as on one engramd; a valid name that is
        not there stays NOT_FOUND."""
        calls = {
            "GetStore": lambda s, n: s.GetStore(pb.GetStoreRequest(name=n), timeout=10),
            "DeleteStore": lambda s, n: s.DeleteStore(pb.DeleteStoreRequest(name=n), timeout=10),
            "AddPatterns": lambda s, n: s.AddPatterns(pb.AddPatternsRequest(
                store=n, patterns=[pb.Pattern(values=[1.0, 2.0])]), timeout=10),
            "Retrieve": lambda s, n: s.Retrieve(pb.RetrieveRequest(
                store=n, queries=[pb.Query(values=[1.0, 2.0])]), timeout=10),
            "CancelFit": lambda s, n: s.CancelFit(pb.CancelFitRequest(store=n), timeout=10),
        }
        for name, addr in self.each_server():
            stub = pb_grpc.EngramStub(grpc.insecure_channel(addr))
            for method, call in calls.items():
                for store, code in (("", grpc.StatusCode.INVALID_ARGUMENT),
                                    ("Faces", grpc.StatusCode.INVALID_ARGUMENT),
                                    ("faces", grpc.StatusCode.NOT_FOUND)):
                    with self.assertRaises(grpc.RpcError, msg=(name, method, store)) as e:
                        call(stub, store)
                    self.assertEqual(e.exception.code(), code,
                                     (name, method, store, e.exception.details()))

    def test_3_a_bad_create_reaches_no_shard(self):
        with Client(self.three.router.addr) as c:
            with self.assertRaises(grpc.RpcError) as e:
                c.create_store("bad", dim=4, beta=-1)
            self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIn("store.retrieval.beta", e.exception.details())
        for row in self.three.shards:
            self.assertNotIn("bad", [s.name for s in Client(row[0].addr).list_stores()])

    def test_4_replicas_keep_reads_going_and_a_lost_group_is_named(self):
        cluster = Cluster(self.tmp.name, 2, 2, cluster="failover")
        try:
            with Client(cluster.router.addr, retries=0) as c:
                c.create_store("r", dim=4)
                c.add("r", np.eye(4, dtype=np.float32))
                for row in cluster.shards:  # every replica holds its group
                    counts = [Client(s.addr).get_store("r").pattern_count for s in row]
                    self.assertEqual(counts[0], counts[1])
                ids = [p.id for p in c.list_patterns("r", values=False)]
                cluster.shards[0][0].kill()
                cluster.shards[1][1].kill()
                # Reads go on at once, before any probe has seen the kills: a
                # call that finds its replica gone asks the other one.
                for i in range(12):
                    for path in ("auto", "exact"):
                        got = c.retrieve("r", np.eye(4)[i % 4], path=path)
                        self.assertGreater(int(got.ids[0, 0]), 0)
                    self.assertEqual(c.get_store("r").pattern_count, 4)
                    self.assertEqual(c.get("r", ids[i % 4]).shape, (4,))
                # Writes too (the replica that is gone goes stale).
                c.add("r", np.ones((1, 4), dtype=np.float32))
                self.assertEqual(c.get_store("r").pattern_count, 5)
                cluster.shards[0][1].kill()
                deadline = time.time() + 10
                while True:
                    try:
                        c.retrieve("r", np.eye(4)[0])
                    except grpc.RpcError as e:
                        if e.code() == grpc.StatusCode.UNAVAILABLE and "shard group 0" in e.details():
                            break
                    if time.time() > deadline:
                        self.fail("no UNAVAILABLE naming shard group 0")
                    time.sleep(0.2)
                deadline = time.time() + 5  # readiness follows within a moment
                while (c.health("engram.v1.Engram") != "NOT_SERVING" and
                       time.time() < deadline):
                    time.sleep(0.1)
                self.assertEqual(c.health("engram.v1.Engram"), "NOT_SERVING")
        finally:
            cluster.stop()

    def test_4b_a_replica_that_was_down_catches_up_and_serves(self):
        cluster = Cluster(self.tmp.name, 2, 2, cluster="catchup")
        try:
            with Client(cluster.router.addr, retries=0) as c:
                c.create_store("cu", dim=4, feature_map="uhop", fit_epochs=5)
                first = c.add("cu", np.eye(4, dtype=np.float32))
                down = cluster.shards[0][0]
                addr, data = down.addr, down.data_dir
                down.kill()
                # Writes while it is down reach the other replica only.
                deadline = time.time() + 10
                while True:
                    try:
                        later = c.add("cu", np.random.default_rng(2).normal(
                            size=(40, 4)).astype(np.float32))
                        c.delete("cu", first[:2].tolist())
                        break
                    except grpc.RpcError:
                        if time.time() > deadline:
                            raise
                        time.sleep(0.2)
                c.update_store("cu", beta=3)
                # A fit while it is down: the map reaches the other three.
                fitted = c.fit("cu")
                self.assertEqual((pb_state(fitted), fitted.map_version), ("SUCCEEDED", 1),
                                 fitted.error)
                cluster.restart(0, 0, addr, data)
                # Back, stale, repaired from its peer (patterns, settings and
                # the map), then ready.
                want = sorted(int(i) for i in list(first[2:]) + list(later)
                              if store_group(int(i)) == 0)
                deadline = time.time() + 20
                while True:
                    got = sorted(p.id for p in Client(addr).list_patterns("cu", values=False))
                    back = Client(addr)
                    if (got == want and back.get_store("cu").retrieval.beta == 3 and
                            back.fit_status("cu").map_version == 1):
                        break
                    if time.time() > deadline:
                        self.fail("replica not repaired: %d of %d patterns" % (len(got), len(want)))
                    time.sleep(0.2)
                time.sleep(1.5)  # a probe or two: ready again
                cluster.shards[0][1].kill()
                deadline = time.time() + 10
                while True:
                    try:
                        ids = sorted(p.id for p in c.list_patterns("cu", values=False))
                        break
                    except grpc.RpcError:
                        if time.time() > deadline:
                            raise
                        time.sleep(0.2)
                self.assertEqual(len(ids), 42)
                # Group 0 is now the repaired replica alone: kernel queries
                # find one map version in every group.
                c.update_store("cu", similarity="kernel_l2")
                self.assertEqual(c.retrieve("cu", np.eye(4, dtype=np.float32)[2:]).ids.shape,
                                 (2, 5))
        finally:
            cluster.stop()

    def test_4j_a_replica_that_missed_a_reused_id_is_repaired(self):
        """A replica down while an id was deleted and added again with other
        values (explicit ids) holds the same ids as its peer but not the
        same patterns: the repair compares patterns, not ids (it used to
        copy by id alone, never agree, and keep the replica stale)."""
        cluster = Cluster(self.tmp.name, 1, 2, cluster="reuse")
        try:
            with Client(cluster.router.addr, retries=0) as c:
                c.create_store("re", dim=4)
                old = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], np.float32)
                c.add("re", old, ids=[7, 8], labels=["old", "keep"])
                down = cluster.shards[0][0]
                addr, data = down.addr, down.data_dir
                down.kill()
                new = np.array([[0, 0, 0.5, 0.5]], np.float32)
                retry(lambda: c.delete("re", [7]))
                c.add("re", new, ids=[7], labels=["new"], metadata=[{"v": "2"}])
                cluster.restart(0, 0, addr, data)
                deadline = time.time() + 20
                while True:
                    with Client(addr) as back:
                        held = {p.id: p for p in back.list_patterns("re")}
                    if sorted(held) == [7, 8] and held[7].label == "new":
                        break
                    if time.time() > deadline:
                        self.fail("replica not repaired: %r; router log:\n%s" % (
                            {i: (p.label, list(p.values)) for i, p in held.items()},
                            cluster.router.log()[-2000:]))
                    time.sleep(0.2)
                np.testing.assert_array_equal(held[7].values, new[0])
                self.assertEqual(dict(held[7].metadata), {"v": "2"})
                np.testing.assert_array_equal(held[8].values, old[1])
                # It serves alone what its peer acknowledged.
                self.assertIsNone(cluster.wait_serving())
                cluster.shards[0][1].kill()
                got = retry(lambda: c.get_pattern("re", 7))
                self.assertEqual(got.label, "new")
                np.testing.assert_array_equal(got.values, new[0])
        finally:
            cluster.stop()

    def test_4k_a_group_whose_replicas_were_all_away_serves_again(self):
        """Every replica of a group unreachable for a moment (a blip of the
        router's network) comes back stale: the one that took the latest
        write serves again and the others are repaired from it (they used
        to wait for a ready peer that never came, the group unavailable for
        good)."""
        cluster = Cluster(self.tmp.name, 1, 2, cluster="blip")
        try:
            with Client(cluster.router.addr, retries=0) as c:
                c.create_store("bl", dim=4)
                c.add("bl", np.eye(4, dtype=np.float32), ids=[1, 2, 3, 4])
                for s in cluster.shards[0]:
                    s.proc.send_signal(signal.SIGSTOP)
                time.sleep(3)  # past a probe's timeout (2 s): both unreachable
                for s in cluster.shards[0]:
                    s.proc.send_signal(signal.SIGCONT)
                self.assertIsNone(cluster.wait_serving())
                self.assertEqual(c.get_store("bl").pattern_count, 4)
                np.testing.assert_array_equal(c.get("bl", 3), np.eye(4, dtype=np.float32)[2])
        finally:
            for s in cluster.shards[0]:
                if s.proc.poll() is None:
                    s.proc.send_signal(signal.SIGCONT)
            cluster.stop()

    def test_4o_a_half_repaired_replica_never_serves_as_the_latest(self):
        """A repair's writes keep the target's write stamp: a replica left
        half repaired (its repair failed after copying adds, before a
        delete), whose peer then went away and came back, used to carry a
        later stamp than the peer, serve as the one that "took the latest
        write" when both were stale, and have its peer repaired from it —
        an acknowledged delete came back on both."""
        blocked = set()
        a = shard(self.tmp.name, "half", 0, 1)
        b = shard(self.tmp.name, "half", 0, 1)
        proxy = Proxy(a.addr, missing=blocked)
        router = Engramd(BIN, self.tmp.name, "--role=router", "--cluster=half",
                         "--shards=%s,%s" % (proxy.addr, b.addr))

        def status():
            return {r["address"]: r for r in cluster_status(BIN, router.addr)[1]["shards"]}

        def until(what, seconds=20):
            harness.until(self, what, status, seconds, every=0.2)

        try:
            with Client(router.addr, retries=0) as c:
                c.create_store("half", dim=4)
                first = c.add("half", np.eye(4, dtype=np.float32))
                # A away: a delete and an add reach B alone.
                a.proc.send_signal(signal.SIGSTOP)
                until(lambda: not status()[proxy.addr].get("ready"))
                c.delete("half", [int(first[0])])
                later = retry(lambda: c.add("half", np.ones((2, 4), np.float32)))
                # A back, its repair copies the add and fails at the delete.
                blocked.add("/engram.v1.Engram/DeletePatterns")
                a.proc.send_signal(signal.SIGCONT)
                with Client(a.addr) as direct:
                    until(lambda: set(int(i) for i in later) <= set(
                        p.id for p in direct.list_patterns("half", values=False)))
                self.assertFalse(status()[proxy.addr].get("ready"))
                # B away and back: both stale; B took the latest write.
                b_addr, b_data = b.addr, b.data_dir
                b.kill()
                until(lambda: not status()[b_addr].get("ready"))
                b = shard(self.tmp.name, "half", 0, 1, listen=b_addr, data_dir=b_data)
                blocked.clear()
                until(lambda: all(r.get("ready") for r in status().values()), 30)
                held = sorted(p.id for p in c.list_patterns("half", values=False))
                self.assertNotIn(int(first[0]), held, "an acknowledged delete came back")
                self.assertEqual(held, sorted([int(i) for i in first[1:]] +
                                              [int(i) for i in later]))
        finally:
            if a.proc.poll() is None:
                a.proc.send_signal(signal.SIGCONT)
            router.stop()
            proxy.stop()
            for s in (a, b):
                if s.proc.poll() is None:
                    s.stop()

    def test_4p_a_listing_goes_on_when_its_replica_is_gone(self):
        """A listing through a router continues on another replica of the
        group when the one that served its last page is gone (each page of a
        group is asked of any ready replica by the last id listed); before,
        its next pages stayed on that replica and the listing had to start
        again. Both replicas of group 0 go away in turn, mid-listing, with
        the listing's pages a few patterns long."""
        cluster = Cluster(self.tmp.name, 2, 2, cluster="listing")
        try:
            with Client(cluster.router.addr, retries=0) as c:
                c.create_store("ls", dim=12)
                ids = [int(i) for i in c.add("ls", self.patterns[:80])]
                in_group0 = sum(1 for i in ids if store_group(i) == 0)
                self.assertGreaterEqual(in_group0, 21, "three pages of group 0")
                listing = c.list_patterns("ls", page_size=7)
                got = [next(listing) for _ in range(7)]  # group 0's first page
                first = cluster.shards[0][0]
                addr, data = first.addr, first.data_dir
                first.kill()
                got += [next(listing) for _ in range(7)]
                cluster.restart(0, 0, addr, data)
                self.assertIsNone(cluster.wait_serving())
                cluster.shards[0][1].kill()
                got += list(listing)
                self.assertEqual([p.id for p in got],
                                 sorted(i for i in ids if store_group(i) == 0) +
                                 sorted(i for i in ids if store_group(i) == 1))
                by_id = dict(zip(ids, self.patterns[:80]))
                for p in got:
                    np.testing.assert_array_equal(p.values, by_id[p.id])
        finally:
            cluster.stop()

    def test_4r_a_listing_goes_on_through_another_router(self):
        """A page token of one router serves at another router of the same
        cluster, and at the same router restarted (routers behind one
        address, a router rolled out mid-export); a router of another
        cluster, or over another number of groups, refuses it."""
        cluster = Cluster(self.tmp.name, 2, 1, cluster="tokens")
        topology = ";".join(row[0].addr for row in cluster.shards)
        second = router(self.tmp.name, "tokens", topology)
        # The same cluster's name over one group (another deployment of it).
        lone = shard(self.tmp.name, "tokens", 0, 1)
        fewer = router(self.tmp.name, "tokens", lone.addr)
        apart = shard(self.tmp.name, "others", 0, 1)
        other = router(self.tmp.name, "others", apart.addr)
        try:
            def page(addr, token):
                with grpc.insecure_channel(addr) as channel:
                    r = pb_grpc.EngramStub(channel).ListPatterns(pb.ListPatternsRequest(
                        store="tk", page_size=6, page_token=token, omit_values=True),
                        timeout=30)
                return [p.id for p in r.patterns], r.next_page_token

            with Client(cluster.router.addr) as c:
                c.create_store("tk", dim=12)
                ids = [int(i) for i in c.add("tk", self.patterns[:40])]
            want = (sorted(i for i in ids if store_group(i) == 0) +
                    sorted(i for i in ids if store_group(i) == 1))
            got, token = page(cluster.router.addr, "")
            for refusing, why in ((fewer, "a listing over 2 shard groups; this router has 1"),
                                  (other, "page_token was not issued by ListPatterns/tk")):
                with self.assertRaises(grpc.RpcError) as e:
                    page(refusing.addr, token)
                self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
                self.assertIn(why, e.exception.details())
            more, token = page(second.addr, token)
            got += more
            addr = cluster.router.addr
            cluster.router.stop()
            cluster.router = router(self.tmp.name, "tokens", topology, "--listen=" + addr)
            self.assertIsNone(cluster.wait_serving())
            routers = [cluster.router.addr, second.addr]
            while token:
                more, token = page(routers[len(got) % 2], token)
                got += more
            self.assertEqual(got, want)
        finally:
            for r in (second, fewer, other, lone, apart):
                r.stop()
            cluster.stop()

    def test_4s_a_backup_through_a_router_fails_over_a_replica_that_breaks_off(self):
        """A replica whose backup stream ends UNAVAILABLE (it went away)
        costs a backup through a router nothing: the group's backup is taken
        again from another replica, and the backup holds every pattern."""
        method = "/engram.v1.Engram/CreateBackup"

        def break_off(called, response, context):
            if called == method:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the replica went away")
            return response

        shards = [shard(self.tmp.name, "breakoff", 0, 1) for _ in range(2)]
        flaky = Proxy(shards[0].addr, answer=break_off)
        routed = router(self.tmp.name, "breakoff", "%s,%s" % (flaky.addr, shards[1].addr))
        restored = Engramd(BIN, self.tmp.name)
        try:
            with Client(routed.addr) as c:
                c.create_store("bo", dim=12)
                ids = sorted(int(i) for i in c.add("bo", self.patterns[:50]))
                # Reads go to the replicas in turn: until the one that
                # breaks off has been asked (a few backups at most).
                for k in range(4):
                    if flaky.calls[method]:
                        break
                    d = os.path.join(self.tmp.name, "breakoff-%d" % k)
                    manifest = c.create_backup(d)
                    self.assertEqual([st["name"] for st in manifest["stores"]], ["bo"])
                    with Client(restored.addr) as single:
                        single.restore_store(d, name="breakoff-%d" % k)
                        self.assertEqual(sorted(p.id for p in single.list_patterns(
                            "breakoff-%d" % k, values=False)), ids)
                self.assertGreaterEqual(flaky.calls[method], 1)
        finally:
            restored.stop()
            routed.stop()
            flaky.stop()
            for s in shards:
                s.stop()

    def test_4t_a_replica_that_misses_a_restore_goes_stale_and_is_repaired(self):
        """A restore through a router that the first replica of a group took
        and a later one did not (here: it refuses RestoreStore) goes on as a
        write does: that replica goes stale and is repaired from its peer,
        and the restore answers OK; before, the whole restore failed and was
        undone."""
        method = "/engram.v1.Engram/RestoreStore"
        shards = [shard(self.tmp.name, "missrestore", 0, 1) for _ in range(2)]
        refusing = Proxy(shards[1].addr, missing={method})
        routed = router(self.tmp.name, "missrestore", "%s,%s" % (shards[0].addr, refusing.addr))
        try:
            with Client(routed.addr) as c:
                c.create_store("mr", dim=12)
                ids = sorted(int(i) for i in c.add("mr", self.patterns[:30]))
                d = os.path.join(self.tmp.name, "missrestore")
                c.create_backup(d, store="mr")
                restored = c.restore_store(d, name="mr-copy")
                self.assertEqual(refusing.calls[method], 1)
                self.assertEqual(restored.pattern_count, 30)
                deadline = time.time() + 30
                with Client(shards[1].addr) as direct:
                    while True:
                        try:
                            held = sorted(p.id for p in direct.list_patterns(
                                "mr-copy", values=False))
                        except grpc.RpcError:
                            held = []
                        if held == ids:
                            break
                        if time.time() > deadline:
                            self.fail("the replica that missed the restore holds %d of %d"
                                      % (len(held), len(ids)))
                        time.sleep(0.2)
                self.assertEqual(sorted(p.id for p in c.list_patterns("mr-copy", values=False)),
                                 ids)
        finally:
            routed.stop()
            refusing.stop()
            for s in shards:
                s.stop()

    def test_4q_a_listing_over_replicas_of_an_older_engramd(self):
        """A replica of an older engramd has no ListPatternsAfter: a group
        whose replicas are all older lists by their own page tokens, every
        page of a listing from the replica that began it, as before; in a
        group with one older replica the other one serves every page."""
        shards = [shard(self.tmp.name, "olderlist", g, 2) for g in (0, 0, 1, 1)]
        after = "/engram.cluster.v1.Shard/ListPatternsAfter"
        listed = "/engram.v1.Engram/ListPatterns"
        old = [Proxy(s.addr, missing={after}) for s in shards]
        routed = router(self.tmp.name, "olderlist", "%s,%s;%s,%s" % (
            old[0].addr, shards[1].addr, old[2].addr, old[3].addr))
        try:
            with Client(routed.addr, retries=0) as c:
                c.create_store("ol", dim=12)
                ids = [int(i) for i in c.add("ol", self.patterns[:60])]
                want = (sorted(i for i in ids if store_group(i) == 0) +
                        sorted(i for i in ids if store_group(i) == 1))
                in_group1 = sum(1 for i in ids if store_group(i) == 1)
                for _ in range(3):
                    before = [p.calls[listed] for p in old]
                    self.assertEqual([p.id for p in c.list_patterns("ol", page_size=4)], want)
                    pages = [p.calls[listed] - b for p, b in zip(old, before)]
                    # Group 0: the newer replica served every page.
                    self.assertEqual(pages[0], 0)
                    # Group 1 (older only): every page by one replica's tokens.
                    self.assertEqual(sorted(pages[2:]), [0, -(-in_group1 // 4)])
        finally:
            routed.stop()
            for p in old:
                p.stop()
            for s in shards:
                s.stop()

    def test_4l_a_store_made_while_a_replica_was_down_is_repaired(self):
        """A replica down while a store was created gets the store from its
        repair, made from the peer's description; the description reports
        the effective feature dimension where the settings kept 0 ("the
        store's dimension"), and the two settings digests never agreed: the
        replica stayed stale for good."""
        cluster = Cluster(self.tmp.name, 1, 2, cluster="late")
        try:
            with Client(cluster.router.addr, retries=0) as c:
                down = cluster.shards[0][0]
                addr, data = down.addr, down.data_dir
                down.kill()
                retry(lambda: c.create_store("late", dim=4))
                c.add("late", np.eye(4, dtype=np.float32))
                cluster.restart(0, 0, addr, data)
                self.assertIsNone(cluster.wait_serving())
                with Client(addr) as back:
                    self.assertEqual(back.get_store("late").pattern_count, 4)
        finally:
            cluster.stop()

    def test_4d_a_router_that_starts_among_disagreeing_replicas_keeps_the_latest(self):
        # The first replica misses writes its peer acknowledged, and comes
        # back while no router runs: the next router must repair it from the
        # peer (which took the latest write stamp), not the other way round.
        cluster = Cluster(self.tmp.name, 1, 2, cluster="stamps")
        try:
            with Client(cluster.router.addr, retries=0) as c:
                c.create_store("st", dim=3)
                first = c.add("st", np.eye(3, dtype=np.float32)).tolist()
                down = cluster.shards[0][0]
                addr, data = down.addr, down.data_dir
                down.kill()
                deadline = time.time() + 10
                while True:
                    try:
                        later = c.add("st", np.ones((5, 3), np.float32)).tolist()
                        break
                    except grpc.RpcError:
                        if time.time() > deadline:
                            raise
                        time.sleep(0.2)
            cluster.router.stop()
            cluster.restart(0, 0, addr, data)
            self.assertEqual(len(list(Client(addr).list_patterns("st", values=False))), 3)
            cluster.router = router(self.tmp.name, "stamps",
                                    ",".join(s.addr for s in cluster.shards[0]))
            want = sorted(first + later)
            deadline = time.time() + 20
            while True:
                held = [sorted(p.id for p in Client(s.addr).list_patterns("st", values=False))
                        for s in cluster.shards[0]]
                if held == [want, want]:
                    break
                if time.time() > deadline:
                    self.fail("replicas hold %s, want %s" % (held, want))
                time.sleep(0.2)
            with Client(cluster.router.addr) as c:
                self.assertEqual(sorted(p.id for p in c.list_patterns("st", values=False)), want)
        finally:
            cluster.stop()

    def test_4c_status_and_metrics_of_a_second_router(self):
        topology = ";".join(row[0].addr for row in self.three.shards)
        router = Engramd(BIN, self.tmp.name, "--role=router", "--cluster=test",
                         "--shards=" + topology, metrics_listen="127.0.0.1:0")
        try:
            out = subprocess.run([os.path.join(BIN, "engram"), "--addr=" + router.addr,
                                  "cluster", "status"], capture_output=True, text=True,
                                 timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertIn("cluster test: 3 shard groups of 1 replicas", out.stdout)
            for row in self.three.shards:
                self.assertRegex(out.stdout, r"group \d  %s\s+ready" % row[0].addr)
            with Client(router.addr) as c:  # a store made through the other router
                c.create_store("two", dim=2)
                c.add("two", np.eye(2, dtype=np.float32))
                c.retrieve("two", np.eye(2))
                c.delete_store("two")
            import urllib.request
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % router.metrics_port,
                                        timeout=10) as r:
                text = r.read().decode()
            for row in self.three.shards:
                self.assertIn('engram_shard_requests_total{code="OK",method="PartialStep",'
                              'shard="%s"}' % row[0].addr, text)
            self.assertIn('engram_shard_replicas{state="ready"} 3', text)
            self.assertIn('engram_shard_bytes_total{direction="received"', text)
        finally:
            router.stop()

    def test_4g_a_retrieval_asks_each_group_once_per_step(self):
        """The store's description comes with the sums' check, and the first
        exact step goes out with the last retrieval's settings at the same
        time; a changed setting sends it again."""
        topology = ";".join(row[0].addr for row in self.three.shards)
        router = Engramd(BIN, self.tmp.name, "--role=router", "--cluster=test",
                         "--shards=" + topology, metrics_listen="127.0.0.1:0")

        def calls():
            import re
            import urllib.request
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % router.metrics_port,
                                        timeout=10) as r:
                text = r.read().decode()
            counts = {}
            for method, value in re.findall(
                    r'^engram_shard_requests_total\{code="\w+",method="(\w+)",[^}]*\} (\S+)$',
                    text, re.M):
                counts[method] = counts.get(method, 0) + int(float(value))
            return counts

        def retrieve(c, **kw):
            before = calls()
            got = c.retrieve("rounds", self.queries, **kw)
            after = calls()
            return got, {m: n - before.get(m, 0) for m, n in after.items()
                         if n != before.get(m, 0)}

        try:
            with Client(router.addr) as c, Client(self.single.addr) as one:
                for x in (c, one):
                    x.create_store("rounds", dim=12, similarity="dot", separation="softmax",
                                   beta=1)
                    x.add("rounds", self.patterns, ids=self.ids.tolist())
                # The first time: the description (with the sums), then the step.
                got, asked = retrieve(c)
                self.assertEqual(got.path, "exact", got.reason)
                self.assertEqual(asked, {"LowRankSums": 3, "PartialStep": 3})
                for path, first in (("auto", "LowRankSums"), ("exact", "GetStore")):
                    for steps in (1, 3):
                        got, asked = retrieve(c, path=path, steps=steps)
                        self.assertEqual(asked, {first: 3, "PartialStep": 3 * steps},
                                         (path, steps))
                        want = one.retrieve("rounds", self.queries, path=path, steps=steps)
                        np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5)
                        np.testing.assert_array_equal(got.ids, want.ids)
                # A setting changed (through another router, as far as this
                # one knows): the early step is of no use, and sent again.
                for x in (self.three.router, self.single):
                    with Client(x.addr) as other:
                        other.update_store("rounds", beta=0.25)
                for path, first in (("auto", "LowRankSums"), ("exact", "GetStore")):
                    got, asked = retrieve(c, path=path)
                    want = one.retrieve("rounds", self.queries, path=path)
                    np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5)
                    np.testing.assert_array_equal(got.ids, want.ids)
                    expect = 6 if path == "auto" else 3  # The hint learned beta.
                    self.assertEqual(asked, {first: 3, "PartialStep": expect}, path)
                # A request that asks for another beta gets it.
                got, asked = retrieve(c, beta=2.0)
                want = one.retrieve("rounds", self.queries, beta=2.0)
                np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5)
                self.assertEqual(asked, {"LowRankSums": 3, "PartialStep": 3})
                # A setting changed through this router: no early step until
                # a retrieval has seen the new settings.
                for x in (c, one):
                    x.update_store("rounds", beta=0.5)
                got, asked = retrieve(c)
                want = one.retrieve("rounds", self.queries)
                np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5)
                self.assertEqual(asked, {"LowRankSums": 3, "PartialStep": 3})
                for x in (c, one):
                    x.delete_store("rounds")
        finally:
            router.stop()

    def test_4h_a_damaged_part_is_named_through_the_router(self):
        """A store damaged in one group is DAMAGED through the router: its
        retrievals are refused naming the group (an early step sent with
        what the router knew before changes nothing), the other stores
        serve, and a backup of every store leaves it out."""
        import json
        cluster = Cluster(self.tmp.name, 2, 1, cluster="damage")
        try:
            router = cluster.router.addr
            with Client(router) as c:
                for name in ("good", "bad"):
                    c.create_store(name, dim=12)
                    c.add(name, self.patterns, ids=self.ids.tolist())
                    for path in ("auto", "exact"):
                        c.retrieve(name, self.queries, path=path)
            # A record of "bad" in group 0 that no engramd wrote.
            shard = cluster.shards[0][0]
            listen = "--listen=" + shard.addr  # Where the router looks for it.
            self.assertEqual(shard.stop(), 0)
            subprocess.run(["ldb", "--db=" + os.path.join(shard.data_dir, "db"),
                            "--column_family=store/bad", "--key_hex", "--value_hex",
                            "put", "0x70" + "00" * 7 + "2a", "0x0102"],
                           check=True, capture_output=True, timeout=60)
            cluster.shards[0][0] = Engramd(BIN, self.tmp.name, "--role=shard",
                                           "--cluster=damage", "--shard_group=0",
                                           "--shard_groups=2", listen,
                                           data_dir=shard.data_dir)
            with Client(router) as c:
                deadline = time.time() + 30
                while True:  # Until the router has probed the shard again.
                    try:
                        c.retrieve("good", self.queries)
                        break
                    except grpc.RpcError:
                        self.assertLess(time.time(), deadline, "the router never came back")
                        time.sleep(0.2)
                got = c.get_store("bad")
                self.assertEqual(got.state, pb.Store.DAMAGED)
                self.assertIn("shard group 0", got.state_detail)
                for path in ("auto", "exact"):
                    with self.assertRaises(grpc.RpcError) as e:
                        c.retrieve("bad", self.queries, path=path)
                    self.assertEqual(e.exception.code(), grpc.StatusCode.FAILED_PRECONDITION,
                                     path)
                    self.assertIn("DAMAGED", e.exception.details())
                    self.assertIn("shard group 0", e.exception.details())
                self.assertEqual(c.get_store("good").pattern_count, len(self.ids))
            d = os.path.join(self.tmp.name, "damaged-backup")
            r = subprocess.run([os.path.join(BIN, "engram"), "--addr=" + router,
                                "backup", "create", d], capture_output=True, text=True,
                               timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(d, "manifest.json")) as f:
                stores = [st["name"] for st in json.load(f)["stores"]]
            self.assertEqual(stores, ["good"])
        finally:
            cluster.stop()

    def test_4i_a_shard_without_the_delete_check_still_deletes(self):
        """A group whose shard predates CheckDelete (it answers UNIMPLEMENTED)
        has its share of a delete go unchecked, as before the check; the
        groups that have the check still refuse for the whole request."""
        shards = [shard(self.tmp.name, "old", g, 2) for g in range(2)]
        check = "/engram.cluster.v1.Shard/CheckDelete"
        # A shard as a build from before CheckDelete.
        old = Proxy(shards[1].addr, missing={check})
        routed = router(self.tmp.name, "old", "%s;%s" % (shards[0].addr, old.addr))
        try:
            with Client(routed.addr) as c:
                c.create_store("old", dim=12)
                ids = c.add("old", self.patterns[:60]).tolist()
                by_group = [[i for i in ids if store_group(i) == g] for g in range(2)]
                self.assertTrue(by_group[0] and by_group[1], by_group)
                asked = old.calls[check]
                # Over both groups: group 1's check is missing, the delete works.
                self.assertEqual(c.delete("old", by_group[0][:3] + by_group[1][:3]), 54)
                self.assertEqual(old.calls[check], asked + 1)  # Asked, and it could not.
                # An id group 0 (which checks) lacks: nothing is deleted anywhere.
                missing0 = max(by_group[0]) + (1 << 20)
                self.assertEqual(store_group(missing0), 0)
                with self.assertRaises(grpc.RpcError) as e:
                    c.delete("old", by_group[1][3:5] + [missing0])
                self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
                self.assertTrue(e.exception.details().startswith(
                    "ids[2] %d is not in store 'old'" % missing0), e.exception.details())
                self.assertEqual(c.get_store("old").pattern_count, 54)
                # An id group 1 (unchecked) lacks: as before the check, group 0's
                # share is deleted and the answer says so.
                missing1 = max(by_group[1]) + (1 << 20)
                self.assertEqual(store_group(missing1), 1)
                with self.assertRaises(grpc.RpcError) as e:
                    c.delete("old", by_group[0][3:5] + [missing1])
                self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
                self.assertTrue(e.exception.details().startswith(
                    "ids[2] %d is not in store 'old'" % missing1), e.exception.details())
                self.assertIn("deleted by groups 0 (2 ids)", e.exception.details())
                self.assertEqual(c.get_store("old").pattern_count, 52)
                left = {p.id for p in c.list_patterns("old", values=False)}
                self.assertEqual(left, set(ids) - set(by_group[0][:5]) - set(by_group[1][:3]))
        finally:
            routed.stop()
            old.stop()
            for s in shards:
                s.stop()

    def test_4e_a_backup_through_a_router_restores_anywhere(self):
        """A store backed up through a router is one store: it restores into
        one engramd, into the same cluster and into one of another shape, and
        answers as the original everywhere; ids never come back."""
        queries = self.queries

        def cli(addr, *args, check=True):
            r = subprocess.run([os.path.join(BIN, "engram"), "--addr=" + addr, *args],
                               capture_output=True, text=True, timeout=120)
            if check:
                self.assertEqual(r.returncode, 0, f"engram {' '.join(args)}: {r.stderr}")
            return r

        def answers(addr, name):
            with Client(addr) as c:
                r = c.retrieve(name, queries, top_k=5, path="exact")
                ids = sorted(p.id for p in c.list_patterns(name, page_size=1000))
                return r, ids

        router = self.two_by_two.router.addr
        d = os.path.join(self.tmp.name, "cluster-backup")
        with Client(router) as c:
            c.create_store("bk", dim=12)
            auto = c.add("bk", self.patterns[:150],
                         labels=[f"l{i}" for i in range(150)],
                         metadata=[{"k": str(i % 3)} for i in range(150)])
            explicit = c.add("bk", self.patterns[150:200], ids=(np.arange(50) + 11).tolist())
            deleted = [int(auto[-1]), int(auto[-2]), int(explicit[-1])]
            c.delete("bk", deleted)
        original, ids = answers(router, "bk")
        self.assertEqual(len(ids), 197)
        cli(router, "backup", "create", d, "--store=bk")
        cli(router, "backup", "verify", d)
        # Every store at once takes the same path.
        cli(router, "backup", "create", d + "-all")
        cli(router, "backup", "verify", d + "-all")

        def same(got, want, exact):
            got_r, got_ids = got
            self.assertEqual(got_ids, ids)
            np.testing.assert_array_equal(got_r.ids, want.ids)
            if exact:
                np.testing.assert_array_equal(got_r.vectors, want.vectors)
            else:
                np.testing.assert_allclose(got_r.vectors, want.vectors, atol=1e-5)

        # Into one engramd; into the same cluster under a new name (each
        # group takes back exactly its part); into a cluster of 3 groups.
        cli(self.single.addr, "backup", "restore", d, "--as=bk1")
        same(answers(self.single.addr, "bk1"), original, exact=False)
        cli(router, "backup", "restore", d, "--as=bk2")
        same(answers(router, "bk2"), original, exact=True)
        for row in self.two_by_two.shards:
            with Client(row[0].addr) as a, Client(row[1].addr) as b:
                self.assertEqual(a.get_store("bk2").pattern_count, a.get_store("bk").pattern_count)
                self.assertEqual(b.get_store("bk2").pattern_count, a.get_store("bk").pattern_count)
        three = self.three.router.addr
        cli(three, "backup", "restore", d, "--as=bk3")
        same(answers(three, "bk3"), original, exact=False)
        for addr, name in ((self.single.addr, "bk1"), (router, "bk2"), (three, "bk3")):
            with Client(addr) as c:
                np.testing.assert_array_equal(c.get(name, int(auto[7])), self.patterns[7])
                fresh = c.add(name, self.patterns[:20]).tolist()
                self.assertFalse(set(fresh) & (set(ids) | set(deleted)), (addr, fresh))
                if addr != self.single.addr:
                    for i in fresh:  # Each new id lives where the router looks.
                        np.testing.assert_array_equal(c.get(name, i), self.patterns[fresh.index(i)])
        # A name that is taken: refused before any group changes; then
        # replaced on every group.
        taken = cli(router, "backup", "restore", d, "--as=bk2", check=False)
        self.assertNotEqual(taken.returncode, 0)
        self.assertIn("ALREADY_EXISTS", taken.stderr)
        with Client(router) as c:
            self.assertEqual(c.get_store("bk2").pattern_count, 217)
        cli(router, "backup", "restore", d, "--as=bk2", "--replace")
        same(answers(router, "bk2"), original, exact=True)
        for addr, name in ((self.single.addr, "bk1"), (router, "bk2"), (router, "bk"), (three, "bk3")):
            with Client(addr) as c:
                c.delete_store(name)

    def test_4f_a_restore_one_group_refuses_is_undone_on_the_others(self):
        shards = [shard(self.tmp.name, "undo", g, 2, *flags)
                  for g, flags in ((0, []), (1, ["--max_restore_mb=0"]))]
        routed = router(self.tmp.name, "undo", ";".join(s.addr for s in shards))
        d = os.path.join(self.tmp.name, "undo-backup")
        try:
            with Client(routed.addr) as c:
                c.create_store("u", dim=12)
                c.add("u", self.patterns[:40])
                c.create_backup(d, store="u")
                c.delete_store("u")
                # Group 0 takes its part first; group 1 refuses its own.
                with self.assertRaises(grpc.RpcError) as e:
                    c.restore_store(d, store="u")
                self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
                self.assertIn("nothing of it was kept", e.exception.details())
                self.assertIn(shards[1].addr, e.exception.details())
                with self.assertRaises(grpc.RpcError) as e:
                    c.get_store("u")
                self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
            for s in shards:
                with Client(s.addr) as c:
                    self.assertEqual([x.name for x in c.list_stores()], [])
        finally:
            routed.stop()
            for s in shards:
                s.stop()

    def test_4m_shards_and_a_router_on_unix_sockets(self):
        """Shards on this machine dialled on their Unix sockets, both
        spellings and beside a TCP replica, behind a router on a socket too:
        answers as one engramd; a replica killed and started again on its
        socket is repaired and serves."""
        d = tempfile.mkdtemp(dir=self.tmp.name)
        sockets = {(0, 0): "unix:" + os.path.join(d, "g0a.sock"),
                   (1, 0): "unix://" + os.path.join(d, "g1a.sock"),
                   (1, 1): "unix:" + os.path.join(d, "g1b.sock")}
        cluster = Cluster(self.tmp.name, 2, 2, cluster="sockets",
                          listen=lambda g, r: sockets.get((g, r), "127.0.0.1:%d" % free_port()),
                          router_flags=["--listen=unix:" + os.path.join(d, "router.sock")])
        try:
            self.assertTrue(cluster.router.addr.startswith("unix:"))
            self.assertIsNone(cluster.wait_serving())
            with Client(cluster.router.addr, retries=0) as c, Client(self.single.addr) as one:
                for client in (c, one):
                    client.create_store("sock", dim=12, top_k=5)
                    client.add("sock", self.patterns, ids=self.ids.tolist(), batch=128)
                want = one.retrieve("sock", self.queries, steps=3)
                got = c.retrieve("sock", self.queries, steps=3)
                np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5)
                np.testing.assert_array_equal(got.ids, want.ids)
                one.delete_store("sock")

                # A socket replica away: reads and writes go on through its
                # peer; back on its socket, it is repaired from that peer.
                away = cluster.shards[1][1]
                data = away.data_dir
                away.kill()
                more = retry(lambda: c.add("sock", self.queries))
                self.assertEqual(retry(lambda: c.get_store("sock")).pattern_count, 304)
                cluster.restart(1, 1, sockets[(1, 1)], data)
                self.assertIsNone(cluster.wait_serving())
                with Client(sockets[(1, 1)]) as back, Client(sockets[(1, 0)]) as peer:
                    mine = sorted(p.id for p in back.list_patterns("sock", values=False))
                    self.assertEqual(mine, sorted(
                        p.id for p in peer.list_patterns("sock", values=False)))
                self.assertTrue(set(int(i) for i in more if store_group(int(i)) == 1) <=
                                set(mine))
        finally:
            cluster.stop()

    def test_5_wrong_topologies_are_refused_at_start(self):
        shard = self.three.shards[0][0].addr
        cases = [
            (["--shards=%s;%s" % (shard, shard)], "named twice"),
            (["--shards=%s,%s;%s" % (shard, self.three.shards[1][0].addr,
                                     self.three.shards[2][0].addr)], "replicas"),
            (["--shards=%s" % shard, "--cluster=test"], "is shard group 0 of 3"),
            (["--shards=%s;%s;%s" % tuple(row[0].addr for row in self.three.shards),
              "--cluster=other"], "answers for cluster 'test'"),
            (["--shards=nonsense"], "not an address"),
            ([], "needs --shards"),
        ]
        for flags, needle in cases:
            out = subprocess.run([os.path.join(BIN, "engramd"), "--role=router",
                                  "--listen=127.0.0.1:0", "--metrics_listen=", *flags],
                                 capture_output=True, text=True, timeout=30)
            self.assertNotEqual(out.returncode, 0, flags)
            self.assertIn(needle, out.stderr, flags)

    def test_6_an_unreachable_shard_keeps_the_router_not_ready(self):
        dead = "127.0.0.1:%d" % free_port()
        router = subprocess.Popen([os.path.join(BIN, "engramd"), "--role=router",
                                   "--listen=127.0.0.1:0", "--metrics_listen=",
                                   "--shards=" + dead], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.time() + 10
            seen = ""
            while "not ready" not in seen and time.time() < deadline:
                seen += router.stdout.readline()
            self.assertIn("not ready: shard group 0 has no ready replica (%s unreachable" % dead,
                          seen)
        finally:
            router.terminate()
            router.wait(timeout=30)
            router.stdout.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
