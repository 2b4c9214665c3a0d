#!/usr/bin/env python3
"""HTTP/2 "rapid reset" (CVE-2023-44487) against one engramd: a probe that
prints what it costs, not a test.

Clients open streams of engram.v1.Engram/GetStore and reset each at once
(HEADERS then RST_STREAM, 100 to a write) on a few connections — a new one
whenever engramd closes one — while one well-behaved client calls GetStore
in a loop. gRPC 1.51's synchronous
server keeps each such stream queued until one of its threads takes it,
however soon it was reset, so engramd's memory and its queue grow with
the attack, unless engramd cuts the connection: it does when a connection
has more streams started and not ended than twice --max_open_streams, or
fails more than --max_stream_resets_per_s a second (then its address is
kept out for 10 s). Over TLS with --token_file (or client certificates) a
stream without credentials is refused as its headers arrive, before it
queues. Each --flag=... passes one more flag to engramd.

Usage (with the Python of build/venv):
  http2_reset_probe.py BIN_DIR [--seconds 10] [--connections 4] [--tls] [--tokens]
                       [--flag=--max_open_streams=0 ...]

Prints the machine, then for the well-behaved client before, during and
after the attack: calls answered, calls failed (by code), the slowest call;
the streams the attack opened, engramd's CPU seconds and resident memory.
"""
import argparse
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
import grpc  # noqa: E402
from engram_client import Client  # noqa: E402
from harness import Engramd, cpu_seconds, machine, make_certs, reset_streams  # noqa: E402

TOKEN = "writer-0123456789abcdef"


def calls(client, seconds):
    ok, failed, slowest = 0, {}, 0.0
    end = time.time() + seconds
    while time.time() < end:
        start = time.time()
        try:
            client.get_store("s")
            ok += 1
        except grpc.RpcError as e:
            failed[e.code().name] = failed.get(e.code().name, 0) + 1
        slowest = max(slowest, time.time() - start)
    return "%d answered, failed %s, slowest %.3f s" % (ok, failed or "none", slowest)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bin")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--tokens", action="store_true")
    parser.add_argument("--flag", action="append", default=[],
                        help="one more engramd flag (--flag=--max_open_streams=0)")
    args = parser.parse_args()
    print(machine(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        flags, options, ca = [], {}, None
        if args.tls:
            certs = make_certs(tmp)
            ca = certs("ca.pem")
            flags += ["--tls_cert=" + certs("server.pem"), "--tls_key=" + certs("server.key")]
            options["tls_ca"] = ca
        if args.tokens:
            tokens = os.path.join(tmp, "tokens")
            with open(tokens, "w") as f:
                f.write("write %s\n" % TOKEN)
            flags.append("--token_file=" + tokens)
            options["token"] = TOKEN
        flags += args.flag
        print("engramd: %s" % (" ".join(flags) or "plaintext, no tokens"), flush=True)
        server = Engramd(args.bin, tmp, *flags)
        try:
            port = int(server.addr.rsplit(":", 1)[1])
            client = Client(server.addr, retries=0, timeout=5, **options)
            client.create_store("s", dim=4)
            print("before:", calls(client, 3), flush=True)
            cpu_before, opened, made = cpu_seconds(server.proc.pid), [], []

            def attack():
                streams, connections = reset_streams(port, args.seconds, ca=ca)
                opened.append(streams)
                made.append(connections)

            attackers = [threading.Thread(target=attack) for _ in range(args.connections)]
            for t in attackers:
                t.start()
            print("during:", calls(client, args.seconds), flush=True)
            for t in attackers:
                t.join()
            with open("/proc/%d/status" % server.proc.pid) as f:
                resident = next(line.split()[1] for line in f if line.startswith("VmRSS"))
            print("attack: %d streams written on %d connections (%d at a time); engramd "
                  "%.1f CPU s, %d MiB resident" % (sum(opened), sum(made), args.connections,
                                                   cpu_seconds(server.proc.pid) - cpu_before, int(resident) // 1024),
                  flush=True)
            print("after:", calls(client, 3))
        finally:
            server.kill()


if __name__ == "__main__":
    main()
