#!/usr/bin/env python3
"""A network partition between a router and its shards, for real.

The test makes network namespaces of its own (it needs root, `ip` and
`nft`): one for the router and one for each replica of a shard group of two,
joined by veth pairs with addresses that exist nowhere else (10.231.K.1 on
the router's side, 10.231.K.2 on the replica's). The client reaches the
router on a Unix socket. A partition is an nftables table in a replica's
namespace that drops every packet on its link, both ways: no reset and no
answer, the connection simply goes silent — what a failed switch or a lost
route does, and what a killed process (whose kernel answers with a reset)
does not.

Checked:
  - one replica cut off while three clients read, add and import through
    the router and a U-Hop fit runs: every call answers OK and the fit
    succeeds, none waits out its deadline (the router
    finds the silent connection by its keepalive, in seconds), and
    `engram cluster status` names the replica unreachable;
  - healed: the replica is repaired from its peer (every write it missed,
    the fitted map) and serves, both holding the same patterns;
  - both replicas cut off: calls are refused UNAVAILABLE naming the group
    within seconds, none waits out its deadline; healed, the group serves
    again with everything that was acknowledged;
  - links cut and healed at random for 15 s under writers: no acknowledged
    add lost, no acknowledged delete back, the replicas alike;
  - a client that goes silent holding import streams (every slot engramd
    gives streams): engramd's own keepalive ends them within seconds and
    the next import is taken.

Usage (root; with the Python of build/venv): partition_test.py BIN_DIR
(ENGRAM_PARTITION_SEED=N for another schedule of the flapping links)
"""
import json
import os
import shutil
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
from engram_client import Client, pb  # noqa: E402
from harness import Engramd, cluster_status  # noqa: E402

DIM = 16
# Every call's deadline: long beside what a partition may cost a call (the
# router's keepalive finds a silent connection in about 3 s), short beside a
# TCP connection's own give-up (minutes).
DEADLINE_S = 30.0
# What one call may take while a partition is found: keepalive (1 s between
# pings, 2 s for the answer), a second for the failover or the probe, and
# the noise of a shared 2-core machine.
SLOWEST_S = 10.0
# The flapping links' schedule (ENGRAM_PARTITION_SEED to try others).
SEED = int(os.environ.get("ENGRAM_PARTITION_SEED", "11"))


def sh(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True)


def can_partition():
    return (os.geteuid() == 0 and shutil.which("ip") is not None and
            shutil.which("nft") is not None)


class Net:
    """The test's namespaces: a router's and each replica's, joined by one
    veth pair each. Deleted (their links with them) by close()."""

    def __init__(self, replicas):
        tag = "engram-part-%d" % os.getpid()
        self.router = tag + "-r"
        self.replicas = ["%s-%d" % (tag, k) for k in range(replicas)]
        self.made = []
        try:
            self._make()
        except BaseException:
            self.close()
            raise

    def _make(self):
        for ns in [self.router] + self.replicas:
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for k, ns in enumerate(self.replicas, start=1):
            sh("ip", "-n", self.router, "link", "add", "to%d" % k, "type", "veth",
               "peer", "name", "uplink", "netns", ns)
            sh("ip", "-n", self.router, "addr", "add", "10.231.%d.1/30" % k, "dev", "to%d" % k)
            sh("ip", "-n", ns, "addr", "add", "10.231.%d.2/30" % k, "dev", "uplink")
            sh("ip", "-n", self.router, "link", "set", "to%d" % k, "up")
            sh("ip", "-n", ns, "link", "set", "uplink", "up")

    def address(self, k):
        """Replica k's address (from the router's namespace)."""
        return "10.231.%d.2:50051" % (k + 1)

    def cut(self, k):
        """Every packet of replica k's link dropped, both ways."""
        rules = ("table inet partition {\n"
                 " chain in { type filter hook input priority 0; iifname \"uplink\" drop; }\n"
                 " chain out { type filter hook output priority 0; oifname \"uplink\" drop; }\n"
                 "}\n")
        subprocess.run(["ip", "netns", "exec", self.replicas[k], "nft", "-f", "-"],
                       input=rules, check=True, capture_output=True, text=True)

    def heal(self, k):
        sh("ip", "netns", "exec", self.replicas[k], "nft", "delete", "table", "inet",
           "partition")

    def close(self):
        for ns in self.made:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


@unittest.skipUnless(can_partition(), "needs root, ip (iproute2) and nft (nftables)")
class PartitionTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.net = Net(2)
        self.processes = []
        try:
            for k, ns in enumerate(self.net.replicas):
                self.processes.append(Engramd(
                    BIN, self.tmp.name, "--role=shard", "--cluster=part", "--shard_group=0",
                    "--shard_groups=1", "--listen=" + self.net.address(k),
                    wrapper=("ip", "netns", "exec", ns)))
            self.router = Engramd(
                BIN, self.tmp.name, "--role=router", "--cluster=part",
                "--listen=unix:" + os.path.join(self.tmp.name, "router.sock"),
                "--shards=" + ",".join(self.net.address(k) for k in range(2)),
                wrapper=("ip", "netns", "exec", self.net.router))
            self.processes.append(self.router)
        except BaseException:
            self.tearDown()
            raise

    def tearDown(self):
        for p in self.processes:
            if p.proc.poll() is None:
                p.stop()
        self.net.close()
        self.tmp.cleanup()

    def client(self):
        return Client(self.router.addr, retries=0, timeout=DEADLINE_S)

    def status(self):
        """`engram cluster status --json` through the router, and its exit."""
        return cluster_status(BIN, self.router.addr, timeout=60)

    def wait_serving(self, seconds=60):
        deadline = time.time() + seconds
        while True:
            code, state = self.status()
            if code == 0:
                return state
            if time.time() > deadline:
                self.fail("not every replica serves after %d s: %s\n%s" % (
                    seconds, state, self.router.log()[-3000:]))
            time.sleep(0.3)

    def same_holdings(self, seconds=10):
        """Once every replica serves: their stores, once both hold the same
        (a status shows what each held at the router's last probe, which
        may be from before a repair that just ended)."""
        deadline = time.time() + seconds
        while True:
            state = self.wait_serving()
            held = [{s["name"]: (s.get("digest"), int(s.get("pattern_count", 0)),
                                 int(s.get("map_version", 0)))
                     for s in r.get("stores", [])} for r in state["shards"]]
            if held[0] == held[1]:
                return held[0]
            if time.time() > deadline:
                self.fail("replicas serve but hold different patterns: %s" % state)
            time.sleep(0.3)

    def load(self, seconds):
        """Three clients reading and writing through the router for
        `seconds`: each call's (kind, took,
        code, message); the ids acknowledged as added one call at a time,
        and how many patterns imports acknowledged (their ids interleave
        with other clients' adds)."""
        calls, added, imported, lock = [], [], [0], threading.Lock()
        end = time.time() + seconds
        rng = np.random.default_rng(7)

        def work(w):
            with self.client() as c:
                i = 0
                while time.time() < end:
                    i += 1
                    kind = ("add", "retrieve", "get", "import")[(i + w) % 4]
                    start = time.time()
                    try:
                        if kind == "add":
                            ids = c.add("p", rng.normal(size=(4, DIM)).astype(np.float32))
                            with lock:
                                added.extend(int(x) for x in ids)
                        elif kind == "import":
                            r = c.import_patterns(
                                "p", rng.normal(size=(12, DIM)).astype(np.float32), batch=4)
                            with lock:
                                imported[0] += r.patterns_added
                        elif kind == "retrieve":
                            c.retrieve("p", rng.normal(size=(2, DIM)).astype(np.float32))
                        else:
                            c.get_store("p")
                        code, message = "OK", ""
                    except grpc.RpcError as e:
                        code, message = e.code().name, e.details()
                    with lock:
                        calls.append((kind, time.time() - start, code, message))
                    time.sleep(0.05)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return calls, added, imported[0]

    def timed_fit(self):
        """A U-Hop fit of "p" through the router, followed to its end: its
        final status and the seconds it took."""
        start = time.time()
        with self.client() as c:
            return c.fit("p"), time.time() - start

    def test_one_replica_cut_off_then_healed(self):
        with self.client() as c:
            c.create_store("p", dim=DIM, feature_map="uhop", fit_epochs=20)
            c.add("p", np.random.default_rng(1).normal(size=(50, DIM)).astype(np.float32))
        self.wait_serving()

        self.net.cut(0)
        fitted = []
        fit = threading.Thread(target=lambda: fitted.append(self.timed_fit()))
        fit.start()
        calls, added, imported = self.load(12)
        fit.join()
        slowest = max(took for _, took, _, _ in calls)
        failed = [c for c in calls if c[2] != "OK"]
        print("one replica cut off: %d calls, %d failed, slowest %.2f s; a fit %s in %.1f s" % (
            len(calls), len(failed), slowest, pb.FitStatus.State.Name(fitted[0][0].state),
            fitted[0][1]))
        self.assertEqual(failed, [])
        self.assertEqual((fitted[0][0].state, fitted[0][0].map_version),
                         (pb.FitStatus.SUCCEEDED, 1), fitted[0][0].error)
        self.assertLess(slowest, SLOWEST_S, sorted(calls, key=lambda c: -c[1])[:5])
        self.assertGreater(len(added), 0)
        code, state = self.status()
        self.assertNotEqual(code, 0)
        self.assertIn("unreachable", state["shards"][0]["detail"], state)
        self.assertTrue(state["shards"][1]["ready"], state)

        self.net.heal(0)
        start = time.time()
        held = self.same_holdings()
        print("healed: serving again after %.1f s" % (time.time() - start))
        self.assertEqual(held["p"][1:], (50 + len(added) + imported, 1))
        with self.client() as c:
            self.assertEqual(c.get_store("p").pattern_count, 50 + len(added) + imported)

    def test_whole_group_cut_off_then_healed(self):
        with self.client() as c:
            c.create_store("p", dim=DIM)
            first = c.add("p", np.random.default_rng(2).normal(size=(20, DIM)).astype(np.float32))
        self.wait_serving()

        self.net.cut(0)
        self.net.cut(1)
        calls, added, _ = self.load(10)
        slowest = max(took for _, took, _, _ in calls)
        codes = sorted(set(code for _, _, code, _ in calls))
        print("group cut off: %d calls (%s), slowest %.2f s" % (len(calls), codes, slowest))
        self.assertLess(slowest, SLOWEST_S, sorted(calls, key=lambda c: -c[1])[:5])
        self.assertTrue(set(codes) <= {"OK", "UNAVAILABLE"}, codes)
        late = [c for c in calls if c[2] == "UNAVAILABLE"]
        self.assertGreater(len(late), 0)
        for _, _, _, message in late:
            self.assertIn("group 0", message)

        self.net.heal(0)
        self.net.heal(1)
        start = time.time()
        self.same_holdings()
        print("healed: serving again after %.1f s" % (time.time() - start))
        with self.client() as c:
            held = sorted(p.id for p in c.list_patterns("p", values=False))
        # Every acknowledged add is there (an add that was refused may have
        # reached a replica before the silence: it may be there too).
        self.assertTrue(set(int(i) for i in first) | set(added) <= set(held))

    def test_links_that_come_and_go_lose_no_acknowledged_write(self):
        """For 15 s either replica's link is cut and healed at random, now
        and then both at once, while three clients add, delete and read:
        once the links stay up, both replicas serve and hold the same
        patterns — every acknowledged add but those deleted after, no
        acknowledged delete — and no call waited out its deadline."""
        with self.client() as c:
            c.create_store("p", dim=DIM)
        self.wait_serving()
        rng = np.random.default_rng(SEED)
        acked_adds, acked_deletes, unsure, calls = set(), set(), set(), []
        lock = threading.Lock()
        stop = threading.Event()

        def writer(w):
            mine = []
            local = np.random.default_rng(100 + w)
            with self.client() as c:
                while not stop.is_set():
                    start = time.time()
                    kind = "delete" if mine and local.random() < 0.3 else "add"
                    try:
                        if kind == "add":
                            ids = [int(i) for i in c.add(
                                "p", local.normal(size=(3, DIM)).astype(np.float32))]
                            with lock:
                                acked_adds.update(ids)
                            mine.extend(ids)
                        else:
                            gone = mine[:2]
                            del mine[:2]
                            try:
                                c.delete("p", gone)
                            except grpc.RpcError:
                                # It may have been applied before the
                                # silence: those ids may be there or not
                                # (and deleting them again may find none).
                                with lock:
                                    unsure.update(gone)
                                raise
                            with lock:
                                acked_deletes.update(gone)
                        code = "OK"
                    except grpc.RpcError as e:
                        code = e.code().name
                    with lock:
                        calls.append((kind, time.time() - start, code))
                    time.sleep(0.03)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        cut = [False, False]
        both = 0  # Times both were cut at once.
        end = time.time() + 15
        try:
            while time.time() < end:
                k = int(rng.integers(2))
                if cut[k]:
                    self.net.heal(k)
                elif not cut[1 - k] or rng.random() < 0.5:
                    self.net.cut(k)
                else:
                    continue
                cut[k] = not cut[k]
                both += all(cut)
                time.sleep(float(rng.uniform(0.3, 2.0)))
        finally:
            for k in (0, 1):
                if cut[k]:
                    self.net.heal(k)
            stop.set()
            for t in threads:
                t.join()

        codes = {}
        for _, _, code in calls:
            codes[code] = codes.get(code, 0) + 1
        slowest = max(took for _, took, _ in calls)
        print("flapping links (both cut %d times): %d calls %s, slowest %.2f s; %d adds and "
              "%d deletes acknowledged, %d ids of refused deletes" % (
                  both, len(calls), codes, slowest, len(acked_adds), len(acked_deletes),
                  len(unsure)))
        self.assertGreater(both, 0)
        self.assertTrue(set(codes) <= {"OK", "UNAVAILABLE"}, codes)
        self.assertLess(slowest, SLOWEST_S)
        self.assertGreater(codes.get("OK", 0), 0)
        # The replicas agree, and (from a probe after the last write: a
        # status may be up to a probe interval older than the listing) hold
        # what the router lists.
        deadline = time.time() + 60
        while True:
            held_by_replicas = self.same_holdings(seconds=60)
            with self.client() as c:
                held = set(p.id for p in c.list_patterns("p", values=False))
            if len(held) == held_by_replicas["p"][1] or time.time() > deadline:
                break
            time.sleep(0.3)
        self.assertEqual(len(held), held_by_replicas["p"][1])
        # What the router did with the replicas, should a check fail.
        story = "\n".join(line for line in self.router.log().splitlines()
                          if " rpc " not in line and ("replica" in line or "stale" in line)
                          )[-6000:]
        self.assertEqual(acked_adds - acked_deletes - unsure - held, set(),
                         "acknowledged adds lost; the router's log:\n" + story)
        self.assertEqual(acked_deletes & held, set(),
                         "acknowledged deletes came back; the router's log:\n" + story)


# A client that opens N import streams to ADDR, commits one pattern on each,
# then holds them open, sending nothing more.
# Holds `n` import streams to `addr` open, each having committed a pattern.
STUCK_CLIENT = """
import sys
addr, n, e2e_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sys.path.insert(0, e2e_dir)
from engram_client import pb
from harness import IdleCalls
one = pb.ImportPatternsRequest(store="s", patterns=[pb.Pattern(values=[1.0, 2.0])])
IdleCalls(addr, "ImportPatterns", n, one.SerializeToString(), timeout=600).release.wait()
"""


@unittest.skipUnless(can_partition(), "needs root, ip (iproute2) and nft (nftables)")
class SilentClientTest(unittest.TestCase):
    """Clients that go silent in the middle of their streams: engramd's own
    keepalive ends those calls and gives back their threads."""

    def test_streams_of_a_client_gone_silent_are_ended(self):
        with tempfile.TemporaryDirectory() as tmp:
            net = Net(1)  # The server in the first namespace, the client in the other.
            server = stuck = None
            try:
                addr = "10.231.1.1:50051"
                # 8 threads: streams may hold 4.
                server = Engramd(BIN, tmp, "--listen=" + addr, "--rpc_threads=8",
                                 "--keepalive_s=1",
                                 wrapper=("ip", "netns", "exec", net.router))

                def engram(*args):
                    return subprocess.run(
                        ["ip", "netns", "exec", net.router, os.path.join(BIN, "engram"),
                         "--addr=" + addr, *args], capture_output=True, text=True, timeout=60)

                def count():
                    return json.loads(engram("store", "get", "s", "--json").stdout).get(
                        "pattern_count", 0)

                self.assertEqual(engram("store", "create", "s", "--dim=2").returncode, 0)
                rows = os.path.join(tmp, "rows.npy")
                np.save(rows, np.ones((3, 2), np.float32))
                stuck = subprocess.Popen(
                    ["ip", "netns", "exec", net.replicas[0], sys.executable, "-c",
                     STUCK_CLIENT, addr, "4", os.path.dirname(os.path.abspath(__file__))],
                    stderr=subprocess.PIPE, text=True)
                deadline = time.time() + 30
                while int(count()) < 4:
                    self.assertLess(time.time(), deadline, "the stuck client's streams")
                    time.sleep(0.2)
                # Its four streams hold every slot: an import is refused ...
                refused = engram("add", "s", rows)
                self.assertNotEqual(refused.returncode, 0)
                self.assertIn("streams", refused.stderr)
                # ... until the client goes silent and engramd's pings find it.
                net.cut(0)
                start = time.time()
                while True:
                    added = engram("add", "s", rows)
                    if added.returncode == 0:
                        break
                    self.assertLess(time.time() - start, 30,
                                    "the silent client's streams still hold: " + added.stderr)
                    time.sleep(0.2)
                took = time.time() - start
                print("a client gone silent: its streams ended %.1f s after the cut" % took)
                self.assertEqual(int(count()), 7)
            finally:
                if stuck is not None:
                    stuck.kill()
                    stuck.wait()
                    stuck.stderr.close()
                if server is not None:
                    server.stop()
                net.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
