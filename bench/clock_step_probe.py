#!/usr/bin/env python3
"""The wall clock set back under a router: a probe that prints what it
does, not a test. IT SETS THIS MACHINE'S CLOCK (back, then forward again by
the same amount): run it as root on a machine of your own, never beside
other work.

One shard and one router per build given (a build before a change and one
after, say); once every router is ready the wall clock is set back
--seconds, the shard is stopped (SIGSTOP), a GetStore with a 2 s deadline
is sent through each router at once (before its prober can have noticed,
so that the router calls the stopped shard), and each router is watched
for the line that says it noticed ("not ready: ..."). Then the shard goes
on, and the clock is set forward again by the same amount (in a `finally`,
so an error or ^C restores it too).

Usage (with the Python of build/venv):
  clock_step_probe.py BIN_DIR [OTHER_BIN_DIR ...] [--seconds 60] [--watch 10]

Prints, per build, the seconds after the stop at which its router said the
shard was gone, or that it said nothing within --watch seconds, and when
and how the GetStore through it ended (the client's own deadline waits by
the wall clock too, so it ends when the router answers).
"""
import argparse
import os
import signal
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
from harness import Engramd  # noqa: E402

import grpc  # noqa: E402
from engram_client import pb, pb_grpc  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("bins", nargs="+")
parser.add_argument("--seconds", type=int, default=60, help="how far the clock is set back")
parser.add_argument("--watch", type=float, default=10, help="how long each router is watched")
parser.add_argument("--call_after", type=float, default=0,
                    help="seconds after the stop at which the GetStore goes")
a = parser.parse_args()


def call_through(router, out):
    """A GetStore through `router` with a 2 s deadline, --call_after seconds
    from now: (seconds, code)."""
    time.sleep(a.call_after)
    start = time.monotonic()
    with grpc.insecure_channel(router.addr) as channel:
        try:
            pb_grpc.EngramStub(channel).GetStore(pb.GetStoreRequest(name="clock"), timeout=2)
            code = "OK"
        except grpc.RpcError as e:
            code = e.code().name
    out.append((time.monotonic() - start, code))


def step(seconds):
    time.clock_settime(time.CLOCK_REALTIME, time.clock_gettime(time.CLOCK_REALTIME) + seconds)


with tempfile.TemporaryDirectory() as tmp:
    shard = Engramd(a.bins[0], tmp, "--role=shard", "--cluster=clock")
    routers = []
    stepped = False
    try:
        for b in a.bins:
            routers.append(Engramd(b, tmp, "--role=router", "--cluster=clock",
                                   "--shards=" + shard.addr))
        deadline = time.monotonic() + 30
        while not all("; ready" in r.log() for r in routers):
            if time.monotonic() > deadline:
                sys.exit("the routers did not become ready")
            time.sleep(0.1)
        step(-a.seconds)
        stepped = True
        shard.proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        answers = [[] for _ in routers]
        for r, out in zip(routers, answers):
            threading.Thread(target=call_through, args=(r, out), daemon=True).start()
        noticed = [None] * len(routers)
        while time.monotonic() - stopped < a.watch and (None in noticed or not all(answers)):
            for i, r in enumerate(routers):
                if noticed[i] is None and "not ready" in r.log():
                    noticed[i] = time.monotonic() - stopped
            time.sleep(0.05)
        print(f"wall clock set back {a.seconds} s, then the shard stopped (SIGSTOP):")
        for b, n, out in zip(a.bins, noticed, answers):
            print(f"  {b}: " + (f"the router noticed after {n:.1f} s" if n is not None
                                else f"the router said nothing in {a.watch:.0f} s")
                  + ("; a GetStore (2 s deadline) through it ended %s after %.1f s"
                     % (out[0][1], out[0][0]) if out
                     else f"; a GetStore (2 s deadline) through it had no answer in {a.watch:.0f} s"))
    finally:
        if stepped:
            step(a.seconds)
        shard.proc.send_signal(signal.SIGCONT)
        for r in routers:
            r.stop()
        shard.stop()
