#!/usr/bin/python3
"""The gRPC port survives any bytes and any message.

Against a real engramd, a router and one of its shards (each on its own
port), for a few seconds each: raw bytes on the TCP port (garbage, a cut
HTTP/2 preface, the preface followed by garbage, HTTP/1.1, and after a
well-formed hello floods of frames: pings, settings, window updates past
the largest window, priorities, empty DATA, unknown types, an oversized
frame, resets of streams never opened, random frame headers), then calls of
every method of every service the port serves — engram.v1.Engram and, on a
shard, engram.cluster.v1.Shard, as the server's reflection describes them —
with payloads that are random bytes, random wire format (random field
numbers and wire types; floats that are NaN, infinite or huge; varints at
their limits; nested and packed fields), valid requests with bytes flipped,
cut or appended, and, most often, requests of the method's own type with
random fields set to values at and past their limits (mostly naming the
store that is there, which is brought back when a call deletes it), on
unary and streaming calls alike.

The same against an engramd serving TLS with bearer tokens: garbage
before and after the TLS handshake, and calls whose authorization header
is missing, a read or write token, or random bytes (UNAUTHENTICATED and
PERMISSION_DENIED allowed there too).

Every call must end with an allowed gRPC status (never UNKNOWN, never an
INTERNAL of engram's own, never UNAVAILABLE: a dropped connection or a
router that lost a shard group) within its deadline, the server must still
run, and a store made before the fuzzing must read back unchanged: bad
input changes nothing.

Usage: grpc_fuzz_test.py BIN_DIR [PYTHON_DIR] [--seconds=S] [--seed=N]
(PYTHON_DIR: the generated reflection client, BIN_DIR/../python by default)
"""
import collections
import os
import random
import socket
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from google.protobuf import message_factory  # noqa: E402
from engram_client import Client, pb  # noqa: E402
import ssl  # noqa: E402
from harness import Engramd, frame_floods, make_certs, reflected_services  # noqa: E402
from fuzz import arguments, fill, mutate, random_message  # noqa: E402

ARGS = arguments(8.0, "of calls, per server")

# What a call may end with. A request that does not parse is
# INVALID_ARGUMENT naming its message type (Retrieve and AddPatterns parse
# their own; the others' gRPC parses, and its bare INTERNAL is rewritten by
# the servers). An INTERNAL is a broken invariant; UNKNOWN an exception
# escaping a handler; UNAVAILABLE a dropped connection (a crash);
# UNIMPLEMENTED a method a server lacks: none of these is allowed.
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION,
           grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED,
           grpc.StatusCode.ABORTED,
           grpc.StatusCode.DATA_LOSS, grpc.StatusCode.CANCELLED}
DEADLINE = 5.0
TOKENS = ["reader-0123456789abcdef", "writer-0123456789abcdef"]  # read, write


def templates():
    """Valid requests of engram.v1, serialized, to mutate."""
    vals = [0.5] * 8
    return [
        pb.CreateStoreRequest(store=pb.Store(name="fuzz", dimension=8)).SerializeToString(),
        pb.AddPatternsRequest(store="fuzz", patterns=[pb.Pattern(values=vals, label="x")] * 3)
        .SerializeToString(),
        pb.RetrieveRequest(store="fuzz", queries=[pb.Query(values=vals)] * 2, top_k=3,
                           filter=pb.Filter(labels=["x"])).SerializeToString(),
        pb.RetrieveRequest(store="fuzz", queries=[pb.Query(values=vals)],
                           path=pb.LOW_RANK if hasattr(pb, "LOW_RANK") else 0).SerializeToString(),
        pb.GetStoreRequest(name="fuzz").SerializeToString(),
        pb.ListPatternsRequest(store="fuzz", page_size=5).SerializeToString(),
        pb.DeletePatternsRequest(store="fuzz", ids=[1, 2, 3]).SerializeToString(),
        pb.GetPatternRequest(store="fuzz", id=1).SerializeToString(),
    ]


def payload(rng, templates_, factory, method):
    kind = rng.randrange(8)
    if kind == 0:
        return rng.randbytes(rng.choice([0, 1, 5, 64, 4096]))
    if kind == 1:
        return random_message(rng)
    if kind == 2:
        return mutate(rng, rng.choice(templates_))
    request = factory.GetPrototype(method.input_type)()
    fill(rng, request)
    return request.SerializeToString()


def raw_tcp(rng, addr, tls=None):
    """Garbage on the port itself (inside a TLS session if `tls`, an
    ssl.SSLContext, and before it as well); the server may answer anything
    or close."""
    host, port = addr.rsplit(":", 1)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    sends = [rng.randbytes(rng.choice([1, 100, 5000])), preface[:rng.randrange(1, len(preface))],
             preface + rng.randbytes(rng.choice([9, 100, 3000])),
             b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
             preface + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\xff" * 9 + rng.randbytes(50)]
    sends += [data for _, data in frame_floods(rng)]
    for data in sends:
        for wrap in ([False, True] if tls else [False]):
            with socket.create_connection((host, int(port)), timeout=2) as raw:
                s = raw
                try:
                    if wrap:
                        s = tls.wrap_socket(raw, server_hostname=host)
                    s.sendall(data)
                    if not wrap:
                        s.shutdown(socket.SHUT_WR)
                    while s.recv(65536):
                        pass
                except OSError:
                    pass  # Reset or timed out: either is an answer to garbage.
                finally:
                    if s is not raw:
                        s.close()


class GrpcFuzzTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        b, tmp = ARGS.bin, cls.tmp.name
        cls.single = Engramd(b, tmp)
        cls.shards = [Engramd(b, tmp, "--role=shard", "--cluster=fz", "--shard_group=%d" % g,
                              "--shard_groups=2") for g in range(2)]
        cls.router = Engramd(b, tmp, "--role=router", "--cluster=fz",
                             "--shards=" + ";".join(s.addr for s in cls.shards))
        p = make_certs(tmp)
        with open(os.path.join(tmp, "tokens"), "w") as f:
            f.write("read %s\nwrite %s\n" % tuple(TOKENS))
        cls.secure = Engramd(b, tmp, "--tls_cert=" + p("server.pem"), "--tls_key=" + p("server.key"),
                             "--token_file=" + os.path.join(tmp, "tokens"))
        with open(p("ca.pem"), "rb") as f:
            cls.ca = f.read()
        cls.credentials = grpc.ssl_channel_credentials(cls.ca)
        cls.tls_context = ssl.create_default_context(cafile=p("ca.pem"))
        cls.tls_context.set_alpn_protocols(["h2"])
        rng = np.random.default_rng(3)
        cls.kept = rng.normal(size=(40, 8)).astype(np.float32)
        cls.queries = cls.kept[:5] + 0.3 * rng.normal(size=(5, 8)).astype(np.float32)
        cls.before = {}
        for server, secure in ((cls.single, False), (cls.router, False), (cls.secure, True)):
            with cls.client(server, secure) as c:
                c.create_store("keep", dim=8)
                c.add("keep", cls.kept)
                c.create_store("fuzz", dim=8)
                c.add("fuzz", cls.kept[:10])
                cls.before[server.addr] = cls.state(c)

    @classmethod
    def tearDownClass(cls):
        for s in [cls.router, cls.single, cls.secure] + cls.shards:
            s.stop()
        cls.tmp.cleanup()

    def fuzz(self, server, services, seed, secure=False):
        """`secure`: `server` serves TLS with tokens (the class's)."""
        rng = random.Random(seed)
        print("fuzzing %s (--seed=%d repeats this run)" % (server.addr, ARGS.seed),
              file=sys.stderr)
        raw_tcp(rng, server.addr, self.tls_context if secure else None)
        self.assertIsNone(server.proc.poll(), "engramd exited after raw bytes")

        def open_channel():
            if not secure:
                return grpc.insecure_channel(server.addr)
            return grpc.secure_channel(server.addr, self.credentials)

        def headers():
            if not secure:
                return None
            kind = rng.randrange(4)
            if kind == 0:
                return None
            if kind == 3:
                value = "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(40)))
                return [("authorization", value)]
            return [("authorization", "Bearer " + TOKENS[kind - 1])]
        allowed = ALLOWED | ({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
                             if secure else set())
        with open_channel() as reflecting:
            described = reflected_services(reflecting, services)
        factory = message_factory.MessageFactory(described[0].file.pool)
        calls = [(svc.full_name, m) for svc in described for m in svc.methods]
        codes = collections.Counter()
        details = collections.Counter()
        bad = []
        templates_ = templates()
        with open_channel() as channel, self.client(server, secure) as keeper:
            end = time.monotonic() + ARGS.seconds
            n = 0
            while time.monotonic() < end:
                svc, method = rng.choice(calls)
                name = method.name
                client_streams, server_streams = method.client_streaming, method.server_streaming
                path = "/%s/%s" % (svc, name)
                ident = lambda x: x  # noqa: E731
                messages = [payload(rng, templates_, factory, method)
                            for _ in range(rng.choice([1, 1, 2, 4]))]
                metadata = headers()
                try:
                    if client_streams:
                        call = channel.stream_unary(path, ident, ident)
                        call(iter(messages), timeout=DEADLINE, metadata=metadata)
                    elif server_streams:
                        call = channel.unary_stream(path, ident, ident)
                        for _ in call(messages[0], timeout=DEADLINE, metadata=metadata):
                            pass
                    else:
                        call = channel.unary_unary(path, ident, ident)
                        call(messages[0], timeout=DEADLINE, metadata=metadata)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as e:
                    code = e.code()
                    details[(name, code.name, (e.details() or "")[:90])] += 1
                    # A watch of a job that runs on waits for its deadline.
                    watching = code == grpc.StatusCode.DEADLINE_EXCEEDED and server_streams
                    if code not in allowed and not watching:
                        bad.append((path, code, e.details(), messages[0][:80]))
                codes[(name, code.name)] += 1
                n += 1
                if n % 10 == 0:
                    self.assertIsNone(server.proc.poll(), "engramd exited during %s" % path)
                    self.refill(keeper)
        self.assertIsNone(server.proc.poll(), "engramd exited")
        by_code = collections.Counter()
        for (_, code), count in codes.items():
            by_code[code] += count
        print("%s (%s): %d calls, seed %d: %s" % (
            server.addr, ", ".join(s.split(".")[-1] for s in services), n, seed,
            ", ".join("%s %d" % kv for kv in sorted(by_code.items()))), file=sys.stderr)
        if os.environ.get("FUZZ_DETAILS"):
            for key, count in sorted(details.items()):
                print("  %s %s %s: %d" % (key + (count,)), file=sys.stderr)
        self.assertEqual(bad, [], "calls that ended outside the allowed codes")
        self.assertGreater(n, 20)

    @classmethod
    def client(cls, server, secure):
        if not secure:
            return Client(server.addr)
        return Client(server.addr, token=TOKENS[1], tls_ca=cls.ca)

    def refill(self, c):
        """Brings back the store the calls aim at, when they deleted it or
        emptied it, so that most calls reach past the lookup (on a shard,
        on the shard itself: the fuzzing writes to it directly)."""
        try:
            try:
                if c.get_store("fuzz").pattern_count >= 2:
                    return
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                c.create_store("fuzz", dim=8)
            c.add("fuzz", self.kept[:10])
        except grpc.RpcError:
            pass  # Made by a fuzzed call with other settings: as good.

    @classmethod
    def state(cls, c):
        """What must not change: the kept store's settings and a retrieval."""
        store = c.get_store("keep")
        out = c.retrieve("keep", cls.queries, top_k=3)
        return (store.pattern_count, store.dimension, store.retrieval.SerializeToString(),
                out.vectors.tobytes(), np.asarray(out.ids).tobytes())

    def check_kept(self, server, secure=False):
        with self.client(server, secure) as c:
            self.assertEqual(self.state(c), self.before[server.addr])

    def test_1_engramd(self):
        self.fuzz(self.single, ["engram.v1.Engram"], ARGS.seed)
        self.check_kept(self.single)

    def test_2_router(self):
        self.fuzz(self.router, ["engram.v1.Engram"], ARGS.seed + 1)
        self.check_kept(self.router)

    def test_3_shard(self):
        self.fuzz(self.shards[0], ["engram.v1.Engram", "engram.cluster.v1.Shard"],
                  ARGS.seed + 2)
        self.check_kept(self.router)

    def test_4_tls_with_tokens(self):
        self.fuzz(self.secure, ["engram.v1.Engram"], ARGS.seed + 3, secure=True)
        self.check_kept(self.secure, secure=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
