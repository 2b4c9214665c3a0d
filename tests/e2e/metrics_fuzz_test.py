#!/usr/bin/python3
"""The metrics port survives any request.

Sends a few thousand randomised requests to a real engramd's /metrics port
(any method, path, version, header set, body framing, oversized lines,
partial requests, stalled clients and raw garbage), from several threads at
once. Every answer must be an HTTP status line with a code engramd is allowed
to give, or a closed connection. Afterwards engramd must still serve gRPC
health and a /metrics page that Prometheus can parse, and a scraper must get
an answer while stalled connections are held open.

Usage: metrics_fuzz_test.py BIN_DIR [--requests=N] [--seed=S]
"""
import argparse
import os
import random
import re
import socket
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Engramd  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("bin")
parser.add_argument("--requests", type=int, default=3000)
parser.add_argument("--seed", type=int, default=int(time.time()))
ARGS, rest = parser.parse_known_args()
sys.argv[1:] = rest

ALLOWED = {200, 400, 404, 405, 413, 414, 417, 431, 501, 505}
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
           "CONNECT", "PRI", "get", "G\x00ET", "X" * 300, ""]
PATHS = ["/metrics", "/", "/foo", "/metrics?x=1", "/metrics/", "//metrics",
         "/%6detrics", "/metrics#frag", "*", "http://127.0.0.1/metrics",
         "/../../etc/passwd", "/metrics%00", "/\xff\xfe", "/" + "a" * 70000, ""]
VERSIONS = ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.1x", "", "HTTP/99.99"]


def random_bytes(rng, n):
    return bytes(rng.getrandbits(8) for _ in range(n))


def random_header(rng):
    kind = rng.randrange(10)
    if kind == 0:
        return b"Content-Length: " + rng.choice([b"-1", b"99999999999999999999", b"abc", b"5", b"0"])
    if kind == 1:
        return b"Transfer-Encoding: " + rng.choice([b"chunked", b"gzip, chunked", b"bogus"])
    if kind == 2:
        return b"X-Long: " + b"v" * rng.choice([100, 5000, 40000])
    if kind == 3:
        return b"NoColonHere"
    if kind == 4:
        return b" folded continuation"
    if kind == 5:
        return b"Host: " + random_bytes(rng, rng.randrange(1, 40))
    if kind == 6:
        return b"Expect: 100-continue"
    if kind == 7:
        return b"Connection: " + rng.choice([b"keep-alive", b"close", b"upgrade"])
    return random_bytes(rng, rng.randrange(1, 60)).replace(b"\r\n", b"") + b": x"


def random_request(rng):
    kind = rng.randrange(12)
    if kind == 0:
        return random_bytes(rng, rng.randrange(1, 3000))
    line = "%s %s %s" % (rng.choice(METHODS), rng.choice(PATHS), rng.choice(VERSIONS))
    head = [line.encode("utf-8", "surrogateescape")]
    head += [random_header(rng) for _ in range(rng.choice([0, 0, 1, 3, 10, 200]))]
    body = random_bytes(rng, rng.choice([0, 0, 5, 1000]))
    if kind == 1:  # chunked framing with a bad chunk
        head.append(b"Transfer-Encoding: chunked")
        body = b"zz\r\n" + body + b"\r\n0\r\n\r\n"
    separator = rng.choice([b"\r\n", b"\r\n", b"\n", b"\r"])
    request = separator.join(head) + separator + separator + body
    if kind == 2:  # partial: cut anywhere
        request = request[:rng.randrange(len(request) + 1)]
    return request


def exchange(port, request, rng, source="127.0.0.1", wait=0.5):
    """Sends one request; the status code, or None if the connection closed
    (or stayed silent for `wait` seconds: the request may be incomplete)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5,
                                  source_address=(source, 0)) as s:
        try:
            if rng.random() < 0.1:  # a slow client: a few bytes at a time
                for i in range(0, min(len(request), 60), 7):
                    s.sendall(request[i:i + 7])
                    time.sleep(0.01)
                request = request[60:]
            s.sendall(request)
            if rng.random() < 0.2:  # the client hangs up its side
                s.shutdown(socket.SHUT_WR)
        except OSError:  # engramd closed first (an early answer or a refusal)
            pass
        s.settimeout(wait)
        data = b""
        try:
            while len(data) < 64:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
    if not data:
        return None
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", data)
    if not m:
        raise AssertionError("not an HTTP answer: %r (request %r)" % (data[:80], request[:120]))
    return int(m.group(1))


def scrape(port, source="127.0.0.1"):
    return exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", random.Random(1), source,
                    wait=5)


class MetricsFuzzTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.server = Engramd(ARGS.bin, cls.tmp.name, metrics_listen="127.0.0.1:0")
        cls.port = cls.server.metrics_port

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.tmp.cleanup()

    def assertServing(self):
        self.assertIsNone(self.server.proc.poll(), "engramd died:\n" + self.server.log()[-3000:])
        # Connections a test just closed count against the per-address limit
        # until the server's polling thread has seen them close (a moment,
        # longer on a loaded machine): a scraper retries, as Prometheus does.
        deadline = time.time() + 10
        while scrape(self.port) != 200 and time.time() < deadline:
            time.sleep(0.1)
        self.assertEqual(scrape(self.port), 200)
        from urllib.request import urlopen
        with urlopen("http://127.0.0.1:%d/metrics" % self.port, timeout=5) as r:
            text = r.read().decode()
        self.assertIn("engram_build_info", text)
        from engram_client import Client
        with Client(self.server.addr, timeout=10) as c:
            self.assertEqual(c.health("engram.v1.Engram"), "SERVING")

    def test_random_requests(self):
        print("seed", ARGS.seed, "requests", ARGS.requests, flush=True)
        codes = {}
        errors = []
        lock = threading.Lock()

        def worker(index, count):
            rng = random.Random(ARGS.seed * 31 + index)
            for _ in range(count):
                request = random_request(rng)
                try:
                    code = exchange(self.port, request, rng, source="127.0.0.%d" % (10 + index))
                except AssertionError as e:
                    with lock:
                        errors.append(str(e))
                    continue
                except ConnectionRefusedError as e:  # engramd is gone
                    with lock:
                        errors.append("connection failed: %r" % e)
                    return
                with lock:
                    codes[code] = codes.get(code, 0) + 1

        threads = [threading.Thread(target=worker, args=(i, ARGS.requests // 8)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print("answers:", sorted(codes.items(), key=lambda kv: str(kv[0])), flush=True)
        self.assertEqual(errors[:5], [])
        self.assertFalse(set(c for c in codes if c is not None) - ALLOWED, codes)
        self.assertIn(200, codes)
        self.assertServing()

    def test_stalled_clients_do_not_block_scrapes(self):
        stalled = []
        for _ in range(40):  # more than the per-address limit, under the total
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                stalled.append(s)
            except OSError:
                break
        try:
            # A scraper from another address is answered at once.
            self.assertEqual(scrape(self.port, source="127.0.0.2"), 200)
        finally:
            for s in stalled:
                s.close()
        self.assertServing()


if __name__ == "__main__":
    unittest.main()
