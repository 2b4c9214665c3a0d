#!/usr/bin/env python3
"""Clients that open calls and then send nothing cannot take engramd down.

A stream (an import, a restore, a backup, a watch) holds one of gRPC's
threads for as long as it lasts, and so does an add until its request has
come. Eighty such calls used to leave engramd refusing every call but
Retrieve ("Server Threadpool Exhausted") for as long as their clients held
them. With --rpc_threads=16 here: import streams that sent one message and
adds that sent nothing, twice as many as engramd takes of each, held open:

  - every other call answers (store and pattern reads, listings, a
    retrieval, a fit's status, a health check, a delete), and the gauges
    engram_streams_in_flight and engram_writes_waiting_for_request say
    every slot is taken;
  - the next import and the next add are refused RESOURCE_EXHAUSTED naming
    their bound, at once;
  - once the idle clients let go, imports and adds are taken again;
  - idle reflection streams (gRPC's service, not engram's) beyond the
    stream slots are cancelled as they start; every other call answers.

(A client that goes silent, rather than idle, is ended by engramd's
keepalive: partition_test.py.)

Usage (with the Python of build/venv): slow_clients_test.py BIN_DIR
"""
import os
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
from harness import Engramd, IdleCalls, metric  # noqa: E402

THREADS = 16  # Streams may hold 8, adds waiting for their request 4.


def hold_slots(test, addr, method, n, first, held):
    """2 * `n` idle calls of `method` (n more than engramd takes), until
    held() says n of them hold their slots. A call that gRPC itself turned
    away ("Server Threadpool Exhausted": its threads were all busy a moment,
    refusing the others) took no slot: another is opened in its place (seen
    once in CI, where one add fewer than the slots waited for 30 s). The
    IdleCalls opened, once every call beyond the slots has ended."""
    calls = [IdleCalls(addr, method, 2 * n, first)]
    replaced = 0
    deadline = time.time() + 30
    while True:
        ended = [e for c in calls for e in c.ended]
        pool = sum("Threadpool Exhausted" in details for _, details in ended)
        if pool > replaced:
            calls.append(IdleCalls(addr, method, pool - replaced, first))
            replaced = pool
        # Every call beyond the n slots has been refused (until then gRPC's
        # threads may all be busy refusing, and turn the test's own calls
        # away too), and n hold theirs.
        elif len(ended) == 2 * n + replaced - n and held():
            return calls
        test.assertLess(time.time(), deadline, "%s: not all %d slots held; ended: %s" % (
            method, n, ended))
        time.sleep(0.1)


class SlowClientsTest(unittest.TestCase):
    def test_idle_calls_hold_only_their_share_of_threads(self):
        with tempfile.TemporaryDirectory() as tmp:
            server = Engramd(BIN, tmp, "--rpc_threads=%d" % THREADS,
                             metrics_listen="127.0.0.1:0")
            idle = []
            try:
                c = Client(server.addr, retries=0, timeout=30)
                c.create_store("s", dim=2)
                ids = c.add("s", np.eye(2, dtype=np.float32))
                one = (pb.ImportPatternsRequest(store="s", patterns=[pb.Pattern(values=[1, 2])])
                       .SerializeToString())

                def imported():
                    # The streams that got a slot each committed their
                    # message (while the others are refused, a call may
                    # find every thread busy refusing: asked again).
                    try:
                        return c.get_store("s").pattern_count >= 2 + THREADS // 2
                    except grpc.RpcError as e:
                        self.assertEqual(e.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
                        return False

                idle += hold_slots(self, server.addr, "ImportPatterns", THREADS // 2, one,
                                   imported)
                # The adds that got a slot wait for their requests (each
                # arrives in its own time: under ASan 0.5 s was not enough).
                idle += hold_slots(self, server.addr, "AddPatterns", THREADS // 4, None,
                                   lambda: metric(server.metrics_port,
                                                  "engram_writes_waiting_for_request")
                                   >= THREADS // 4)
                self.assertEqual(c.get_store("s").pattern_count, 2 + THREADS // 2)

                # The gauges say so.
                gauges = {name: metric(server.metrics_port, name) for name in (
                    "engram_stream_slots", "engram_streams_in_flight",
                    "engram_unread_write_slots", "engram_writes_waiting_for_request")}
                self.assertEqual(gauges, {
                    "engram_stream_slots": THREADS // 2,
                    "engram_streams_in_flight": THREADS // 2,
                    "engram_unread_write_slots": THREADS // 4,
                    "engram_writes_waiting_for_request": THREADS // 4})

                # Every other call answers.
                self.assertEqual([s.name for s in c.list_stores()], ["s"])
                np.testing.assert_array_equal(c.get("s", int(ids[0])), [1, 0])
                self.assertEqual(len(list(c.list_patterns("s"))), 2 + THREADS // 2)
                self.assertEqual(c.retrieve("s", np.array([[1, 0]], np.float32),
                                            top_k=1).ids.shape, (1, 1))
                c.fit_status("s")
                self.assertEqual(c.health(), "SERVING")
                c.delete("s", [int(ids[1])])

                # The next stream and the next add: refused at once, each
                # naming its bound.
                for call, needle in (
                        (lambda: c.import_patterns("s", np.ones((1, 2), np.float32)),
                         "%d streams (imports, restores, backups, watches)" % (THREADS // 2)),
                        (lambda: c.add("s", np.ones((1, 2), np.float32)),
                         "%d writes waiting for their request" % (THREADS // 4))):
                    start = time.time()
                    with self.assertRaises(grpc.RpcError) as refused:
                        call()
                    self.assertEqual(refused.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
                    self.assertIn(needle, refused.exception.details())
                    self.assertLess(time.time() - start, 5)

                # The idle clients let go: imports and adds are taken again.
                for calls in idle:
                    calls.close()
                idle = []
                deadline = time.time() + 30
                while True:
                    try:
                        c.import_patterns("s", np.ones((3, 2), np.float32))
                        c.add("s", np.ones((1, 2), np.float32))
                        break
                    except grpc.RpcError as e:
                        self.assertEqual(e.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
                        self.assertLess(time.time(), deadline, e.details())
                        time.sleep(0.2)
                c.close()
                # A call gives its slot back as it ends, which may be a
                # moment after its client has the answer.
                deadline = time.time() + 10
                while (metric(server.metrics_port, "engram_streams_in_flight"),
                       metric(server.metrics_port, "engram_writes_waiting_for_request")) != (0, 0):
                    self.assertLess(time.time(), deadline, "slots still held")
                    time.sleep(0.1)
            finally:
                for calls in idle:
                    calls.close()
                server.stop()

    def test_idle_reflection_streams_hold_only_the_stream_slots(self):
        """gRPC's reflection service (for grpcurl and the like) answers on a
        thread per stream too: beyond the stream slots, a reflection stream
        is cancelled as it starts, and every other call answers."""
        with tempfile.TemporaryDirectory() as tmp:
            server = Engramd(BIN, tmp, "--rpc_threads=%d" % THREADS)
            channels, release, ended = [], threading.Event(), []
            try:
                c = Client(server.addr, retries=0, timeout=30)
                c.create_store("s", dim=2)

                def hold(channel):
                    call = channel.stream_stream(
                        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
                    try:
                        for _ in call(iter(release.wait, True), timeout=120):
                            pass
                    except grpc.RpcError as e:
                        ended.append(e.code())

                threads = []
                for _ in range(2 * THREADS):
                    channels.append(grpc.insecure_channel(server.addr))
                    threads.append(threading.Thread(target=hold, args=(channels[-1],),
                                                    daemon=True))
                    threads[-1].start()
                deadline = time.time() + 30
                while len(ended) < 2 * THREADS - THREADS // 2:
                    self.assertLess(time.time(), deadline, "%d ended" % len(ended))
                    time.sleep(0.1)
                self.assertEqual(set(ended), {grpc.StatusCode.CANCELLED})
                self.assertEqual(c.get_store("s").pattern_count, 0)
                c.add("s", np.eye(2, dtype=np.float32))
                self.assertEqual([s.name for s in c.list_stores()], ["s"])
                # The slots are all held: an import waits for none of them.
                with self.assertRaises(grpc.RpcError) as refused:
                    c.import_patterns("s", np.ones((1, 2), np.float32))
                self.assertEqual(refused.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
                release.set()
                for channel in channels:
                    channel.close()
                c.close()
            finally:
                release.set()
                server.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
