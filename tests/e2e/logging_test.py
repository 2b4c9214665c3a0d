#!/usr/bin/python3
"""engramd's log as JSON lines (--log_format=json), end to end: every line
it writes — the configuration, a refused call whose store name holds
quotes, a newline and a control character, a credential file that does not
load, gRPC's own error for a failed TLS handshake, a port in use, the shutdown — is one JSON object
with time, level and msg; unknown --log_format and --log_level values
refuse to start.

Usage: logging_test.py BIN_DIR
"""
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

BIN = sys.argv.pop(1)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from engram_client import Client  # noqa: E402
import harness  # noqa: E402
from harness import Engramd, free_port, make_certs, metric  # noqa: E402


def records(text):
    """Each line of `text` as a JSON object (failing on any that is not)."""
    out = []
    for line in text.splitlines():
        record = json.loads(line)
        assert sorted(record) == ["level", "msg", "time"], line
        assert record["level"] in ("debug", "info", "warning", "error"), line
        assert record["time"].endswith("Z"), line
        out.append(record)
    return out


class LoggingTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.tmp.cleanup()

    def test_every_line_is_a_json_object(self):
        tokens = os.path.join(self.tmp.name, "tokens")
        with open(tokens, "w") as f:
            f.write("write writer-0123456789abcdef\n")
        e = Engramd(BIN, self.tmp.name, "--log_format=json", "--token_file=" + tokens,
                    "--credentials_refresh_s=1")
        try:
            started = records(e.startup)
            self.assertTrue(any("listening on" in r["msg"] for r in started))
            self.assertTrue(any(r["level"] == "warning" and "--token_file without --tls_cert"
                                in r["msg"] for r in started))
            name = 'no"such\nstore\x01'
            with Client(e.addr, token="writer-0123456789abcdef") as c:
                with self.assertRaises(grpc.RpcError) as refused:
                    c.get_store(name)
                self.assertIn(refused.exception.code(),
                              (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT))
            with open(tokens + ".next", "w") as f:
                f.write("write short\n")
            os.replace(tokens + ".next", tokens)
            harness.logged(self, e, "does not load", seconds=20)
        finally:
            self.assertEqual(e.stop(), 0)
        logged = records(e.log())
        self.assertTrue(any(name in r["msg"] for r in logged),
                        "the refused call's line, its store name escaped and read back")
        self.assertTrue(any(r["level"] == "error" and "does not load" in r["msg"]
                            for r in logged))
        self.assertTrue(any("shutting down" in r["msg"] for r in logged))

    def test_grpc_messages_are_json_too(self):
        # gRPC's own lines (here: a TLS handshake that bytes of plain HTTP
        # fail) come through engramd's log, as JSON.
        certs = make_certs(self.tmp.name)
        e = Engramd(BIN, self.tmp.name, "--log_format=json",
                    "--tls_cert=" + certs("server.pem"), "--tls_key=" + certs("server.key"))
        try:
            with socket.create_connection(("127.0.0.1", int(e.addr.rsplit(":", 1)[1])),
                                          timeout=10) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                s.settimeout(10)
                try:
                    s.recv(100)
                except OSError:
                    pass
            deadline = time.time() + 10
            while not any(r["msg"].startswith("grpc: ") for r in records(e.log())):
                self.assertLess(time.time(), deadline, e.log())
                time.sleep(0.1)
        finally:
            self.assertEqual(e.stop(), 0)

    def test_a_port_in_use_refuses_to_start(self):
        held = socket.socket()
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        try:
            port = held.getsockname()[1]
            run = subprocess.run(
                [os.path.join(BIN, "engramd"), "--listen=127.0.0.1:%d" % port,
                 "--metrics_listen=", "--data_dir=" + os.path.join(self.tmp.name, "d"),
                 "--log_format=json"], capture_output=True, text=True, timeout=60)
        finally:
            held.close()
        self.assertEqual(run.returncode, 1, run.stderr)
        logged = records(run.stderr)
        self.assertTrue(any(r["level"] == "error" and
                            "--listen=127.0.0.1:%d: cannot listen there: the port is in use" % port
                            in r["msg"] for r in logged), run.stderr)

    def start_on_a_pipe(self, *flags):
        """engramd with its log (JSON) going into a pipe; the process, the
        pipe's read end, the lines up to readiness, its address and its
        metrics port."""
        read_end, write_end = os.pipe()
        proc = subprocess.Popen(
            [os.path.join(BIN, "engramd"), "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
             "--data_dir=" + os.path.join(self.tmp.name, "d"), "--log_format=json", *flags],
            stdout=subprocess.DEVNULL, stderr=write_end)
        os.close(write_end)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        text = b""
        deadline = time.time() + 30
        while b"; ready" not in text:
            self.assertLess(time.time(), deadline, text)
            if select.select([read_end], [], [], 1)[0]:
                chunk = os.read(read_end, 1 << 16)
                self.assertTrue(chunk, "engramd exited: %s" % text)
                text += chunk
        port = re.search(r"\(port (\d+)[,)]", text.decode()).group(1)
        metrics = int(re.search(r"metrics on [^;]*:(\d+);", text.decode()).group(1))
        return proc, read_end, text.decode(), "127.0.0.1:" + port, metrics

    def read_to_end(self, read_end, text=b""):
        """`text` and what the pipe gives until engramd's end closes it
        (at most 60 s); closes the read end."""
        deadline = time.time() + 60
        while True:
            self.assertLess(time.time(), deadline, text[-2000:])
            if select.select([read_end], [], [], 1)[0]:
                chunk = os.read(read_end, 1 << 16)
                if not chunk:
                    break
                text += chunk
        os.close(read_end)
        return text

    def test_a_reader_that_stops_reading_holds_up_no_call(self):
        """Every refused call logs a line. With the log's reader stopped,
        engramd once answered some 500 of them, until the pipe was full,
        and then none (DEADLINE_EXCEEDED) while its health check still said
        SERVING. Now the lines past a queue are dropped, counted, and said
        once the reader reads again."""
        proc, read_end, startup, addr, metrics = self.start_on_a_pipe()
        records(startup)
        calls = 8000
        with Client(addr, timeout=10, retries=0) as c:
            for i in range(calls):
                with self.assertRaises(grpc.RpcError) as refused:
                    c.get_store("no-such-store-%d-%s" % (i, "x" * 40))
                self.assertEqual(refused.exception.code(), grpc.StatusCode.NOT_FOUND,
                                 "call %d: %s" % (i, refused.exception))
            self.assertEqual(c.health(), "SERVING")
        dropped = metric(metrics, "engram_log_lines_dropped_total")
        self.assertGreater(dropped, 0)
        # The reader reads again: the lines kept, then how many were not.
        text = b""
        deadline = time.time() + 30
        while b"log lines dropped before this one" not in text:
            self.assertLess(time.time(), deadline, text[-2000:])
            if select.select([read_end], [], [], 1)[0]:
                text += os.read(read_end, 1 << 16)
        proc.terminate()
        text = self.read_to_end(read_end, text)
        self.assertEqual(proc.wait(timeout=60), 0)
        logged = records(text.decode())
        refused = [r for r in logged if "no-such-store-" in r["msg"]]
        notes = [r for r in logged if "log lines dropped before this one" in r["msg"]]
        self.assertTrue(notes and all(r["level"] == "warning" for r in notes))
        self.assertEqual(sum(int(r["msg"].split()[0]) for r in notes), dropped)
        self.assertEqual(len(refused) + dropped, calls)
        self.assertTrue(any("shutting down" in r["msg"] for r in logged))

    def test_a_failure_writes_the_lines_still_queued(self):
        """A failing engramd (a fatal signal; gRPC's failed checks log why
        and then abort) lost the lines still queued behind a slow reader:
        the ones saying why. Now they reach stderr first, then the failing
        thread's stack, then Abseil's report."""
        proc, read_end, startup, addr, metrics = self.start_on_a_pipe()
        records(startup)
        calls = 1500  # Far more lines than the pipe holds, fewer than the queue.
        with Client(addr, timeout=10, retries=0) as c:
            for i in range(calls):
                with self.assertRaises(grpc.RpcError) as refused:
                    c.get_store("queued-%d-%s" % (i, "x" * 40))
                self.assertEqual(refused.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(metric(metrics, "engram_log_lines_dropped_total"), 0)
        os.kill(proc.pid, signal.SIGSEGV)
        # The handler takes the queue before its first write, which waits
        # for the reader (well within the 5 s it has): reading at once
        # could let the writer's thread write everything first.
        time.sleep(0.5)
        text = self.read_to_end(read_end)
        self.assertEqual(proc.wait(timeout=60), -signal.SIGSEGV)
        text = text.decode(errors="replace")
        header = text.find("*** engramd's log lines not written before the failure: ***")
        stack = text.find("*** engramd failed (signal 11); the failing thread's stack: ***")
        report = text.find("*** SIGSEGV received")
        last = text.find("queued-%d-" % (calls - 1))
        self.assertGreaterEqual(header, 0, text[-3000:])
        self.assertGreater(last, header, text[-3000:])
        self.assertGreater(stack, last, text[-3000:])
        self.assertGreater(report, stack, text[-3000:])
        # The stack, unwound by the unwind tables, names engramd's frames
        # down to main (Abseil's own walk stops a frame or two in).
        self.assertIn("engram::app::RunEngramd()", text[stack:report])
        # Every line once and whole (the writer's thread and the handler
        # may both be writing when the reader reads again: whole lines
        # between each other's).
        logged = [json.loads(line)["msg"] for line in text.splitlines() if line.startswith("{")]
        numbers = sorted(int(re.search(r"queued-(\d+)-", m).group(1)) for m in logged
                         if "queued-" in m)
        self.assertEqual(numbers, list(range(calls)))

    def test_a_reader_that_goes_away_ends_nothing(self):
        """A log reader gone (a closed pipe) killed engramd with SIGPIPE at
        its next line; now the line is dropped and counted."""
        proc, read_end, _, addr, metrics = self.start_on_a_pipe()
        os.close(read_end)
        with Client(addr, timeout=10, retries=0) as c:
            for i in range(20):
                with self.assertRaises(grpc.RpcError) as refused:
                    c.get_store("no-such-store-%d-%s" % (i, "x" * 40))
                self.assertEqual(refused.exception.code(), grpc.StatusCode.NOT_FOUND)
            c.create_store("kept", 2)
            self.assertEqual(c.get_store("kept").dimension, 2)
        self.assertIsNone(proc.poll())
        # The log's own thread writes (and drops) the lines after the calls.
        deadline = time.time() + 20
        while metric(metrics, "engram_log_lines_dropped_total") < 20 and time.time() < deadline:
            time.sleep(0.1)
        self.assertGreaterEqual(metric(metrics, "engram_log_lines_dropped_total"), 20)
        proc.terminate()
        self.assertEqual(proc.wait(timeout=60), 0)

    def test_started_with_no_stdin_stdout_or_stderr_it_serves(self):
        """Started with 0, 1 and 2 closed, engramd's signal pipe took 1 and
        2: it read its own first log line as a signal and shut down at once
        (exit 0, nothing served). Now those descriptors are /dev/null."""
        port = free_port()
        data = os.path.join(self.tmp.name, "closed")
        proc = subprocess.Popen(
            ["bash", "-c", 'exec "$0" "$@" <&- >&- 2>&-', os.path.join(BIN, "engramd"),
             "--listen=127.0.0.1:%d" % port, "--metrics_listen=", "--data_dir=" + data])
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        addr = "127.0.0.1:%d" % port
        deadline = time.time() + 30
        with Client(addr, timeout=10, retries=0) as c:
            while True:
                self.assertIsNone(proc.poll(), "engramd exited")
                try:
                    c.create_store("s", 2)
                    break
                except grpc.RpcError as e:
                    self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE, e)
                    self.assertLess(time.time(), deadline)
                    time.sleep(0.1)
            for i in range(50):  # Lines logged meanwhile go nowhere.
                with self.assertRaises(grpc.RpcError):
                    c.get_store("no-such-store-%d" % i)
            c.add("s", np.eye(2, dtype=np.float32))
        proc.terminate()
        self.assertEqual(proc.wait(timeout=60), 0)
        # No line went into a file of the store.
        e = Engramd(BIN, self.tmp.name, data_dir=data)
        try:
            with Client(e.addr) as c:
                self.assertEqual(c.get_store("s").pattern_count, 2)
        finally:
            self.assertEqual(e.stop(), 0)

    def test_unknown_format_or_level_refuses_to_start(self):
        for flag, text in (("--log_format=xml", "--log_format=xml is not one of text, json"),
                           ("--log_level=verbose", "--log_level=verbose is not one of")):
            run = subprocess.run(
                [os.path.join(BIN, "engramd"), "--listen=127.0.0.1:0", "--metrics_listen=",
                 "--data_dir=" + os.path.join(self.tmp.name, "d"), flag],
                capture_output=True, text=True, timeout=60)
            self.assertEqual(run.returncode, 1, run.stderr)
            self.assertIn(text, run.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
