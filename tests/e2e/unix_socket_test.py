#!/usr/bin/python3
"""End-to-end: engramd serving on a Unix socket (--listen=unix:PATH).

Usage: unix_socket_test.py BIN_DIR
The CLI and the Python client over the socket; one engramd per socket (a
second one is refused and the first keeps serving); a socket left by a
killed engramd is replaced; SIGTERM removes the socket; paths that cannot
become a socket are refused at start, touching nothing.
"""
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from engram_client import Client  # noqa: E402

BIN = sys.argv.pop(1) if len(sys.argv) > 1 else "build/bin"


class UnixEngramd:
    """An engramd on a Unix socket, ready when the constructor returns."""

    def __init__(self, tmp, listen, data_dir):
        self.log_path = os.path.join(tmp, "engramd-%d.log" % time.monotonic_ns())
        self.log_file = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "engramd"), "--listen=" + listen, "--metrics_listen=",
             "--data_dir=" + data_dir],
            stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if "; ready" in self.log():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("engramd did not become ready; its log:\n" + self.log())

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.log_file.close()


def start_refused(tmp, listen, data_dir):
    """Runs an engramd that must refuse to start; its exit code and log."""
    result = subprocess.run(
        [os.path.join(BIN, "engramd"), "--listen=" + listen, "--metrics_listen=",
         "--data_dir=" + data_dir],
        capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout + result.stderr


class UnixSocketTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.sock = os.path.join(self.dir, "engram.sock")
        self.listen = "unix:" + self.sock

    def tearDown(self):
        self.tmp.cleanup()

    def engram(self, *args, addr=None):
        return subprocess.run(
            [os.path.join(BIN, "engram"), "--addr=" + (addr or self.listen), *args],
            capture_output=True, text=True, timeout=60)

    def test_clients_one_server_per_socket_and_restarts(self):
        first = UnixEngramd(self.dir, self.listen, os.path.join(self.dir, "a"))
        try:
            self.assertIn("listening on %s (Unix socket," % self.listen, first.log())
            self.assertTrue(stat.S_ISSOCK(os.lstat(self.sock).st_mode))
            # The CLI, both address forms.
            self.assertEqual(self.engram("store", "create", "s", "--dim=3").returncode, 0)
            self.assertEqual(self.engram("health", addr="unix://" + self.sock).stdout.strip(),
                             "SERVING")
            # The Python client.
            with Client(self.listen, retries=0) as c:
                c.add("s", np.eye(3, dtype=np.float32))
                self.assertEqual(c.get_store("s").pattern_count, 3)

            # A second engramd on the same socket is refused, and the first
            # still has it.
            code, log = start_refused(self.dir, self.listen, os.path.join(self.dir, "b"))
            self.assertNotEqual(code, 0, log)
            self.assertIn("another server serves on this socket", log)
            self.assertEqual(self.engram("store", "list").returncode, 0)
            self.assertIn("s ", self.engram("store", "list").stdout)
        finally:
            first.stop(signal.SIGKILL)

        # Killed: its socket stays behind, and the next engramd replaces it.
        self.assertTrue(os.path.exists(self.sock))
        second = UnixEngramd(self.dir, self.listen, os.path.join(self.dir, "a"))
        try:
            with Client(self.listen, retries=0) as c:
                self.assertEqual(c.get_store("s").pattern_count, 3)
        finally:
            second.stop(signal.SIGTERM)
        self.assertEqual(second.proc.returncode, 0, second.log())
        # A clean stop removes the socket.
        self.assertFalse(os.path.exists(self.sock))

    def test_paths_that_cannot_be_a_socket_are_refused(self):
        notes = os.path.join(self.dir, "notes.txt")
        with open(notes, "w") as f:
            f.write("keep me")
        cases = [
            ("unix:" + notes, "something other than a socket is there"),
            ("unix:" + os.path.join(self.dir, "missing", "e.sock"), "does not exist"),
            ("unix:" + os.path.join(self.dir, "x" * 120), "holds at most 107"),
        ]
        for listen, why in cases:
            code, log = start_refused(self.dir, listen, os.path.join(self.dir, "c"))
            self.assertNotEqual(code, 0, log)
            self.assertIn(why, log)
        with open(notes) as f:
            self.assertEqual(f.read(), "keep me")


if __name__ == "__main__":
    unittest.main(verbosity=2)
