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
import socket
import subprocess
import sys
import tempfile
import time
import unittest

BIN = sys.argv.pop(1)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpc  # noqa: E402
from engram_client import Client  # noqa: E402
from harness import Engramd, make_certs  # noqa: E402


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
            deadline = time.time() + 20
            while "does not load" not in e.log():
                self.assertLess(time.time(), deadline, e.log())
                time.sleep(0.2)
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
