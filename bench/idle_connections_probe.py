#!/usr/bin/env python3
"""What connections that send nothing cost a running engramd: a probe that
prints figures, not a test.

Opens N HTTP/2 connections to one engramd (each says hello and then
nothing), waits 3 s, and measures engramd's CPU over the next 10 s: the
cost of the watch for streams reset by the thousand and for headers that
never end (stream_flood.h), which looks at every connection four times a
second. Then the same with the stream limits off (--max_open_streams=0
--max_stream_resets_per_s=0; the watch for memory stays).
Raises the open-file limit as far as the hard limit allows.

Usage (with the Python of build/venv):
  idle_connections_probe.py BIN_DIR [--connections 2000 4000] [--seconds 10]

Prints the machine, then one line per engramd and number of connections.
"""
import argparse
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
from harness import Engramd, cpu_seconds, idle_connections, machine  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bin")
    parser.add_argument("--connections", type=int, nargs="+", default=[2000, 4000])
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(machine(), flush=True)
    for flags in ([], ["--max_open_streams=0", "--max_stream_resets_per_s=0"]):
        for n in args.connections:
            with tempfile.TemporaryDirectory() as tmp:
                server = Engramd(args.bin, tmp, *flags)
                try:
                    port = int(server.addr.rsplit(":", 1)[1])
                    sockets = idle_connections(port, n)
                    time.sleep(3)
                    before = cpu_seconds(server.proc.pid)
                    time.sleep(args.seconds)
                    used = cpu_seconds(server.proc.pid) - before
                    print("%s: %d idle connections, engramd %.1f%% of a core" %
                          (" ".join(flags) or "defaults", n,
                           100 * used / args.seconds), flush=True)
                    for s in sockets:
                        s.close()
                finally:
                    server.stop()


if __name__ == "__main__":
    main()
