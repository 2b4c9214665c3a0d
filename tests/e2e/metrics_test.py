#!/usr/bin/python3
"""Metrics end to end: engramd's /metrics passes `promtool check metrics`, and a
real Prometheus (Debian's package) scraping engramd on loopback reads the
series back through its HTTP API, with deploy's alerting rules loaded: every
rule evaluates without error and none fires for a healthy engramd.

Usage: metrics_test.py BIN_DIR
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
from engram_client import Client  # noqa: E402
from harness import Engramd, free_port, sanitized  # noqa: E402

BIN = sys.argv.pop(1)


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def series(port, *prefixes):
    """The unlabelled series of engramd's /metrics on `port` whose names
    start with one of `prefixes`, by name."""
    text = get(f"http://127.0.0.1:{port}/metrics")
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line.startswith(prefixes)}


class MetricsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.metrics_port = free_port()
        cls.server = Engramd(BIN, cls.tmp.name, metrics_listen=f"127.0.0.1:{cls.metrics_port}")
        cls.addr = cls.server.addr
        engram = lambda *a: subprocess.run([os.path.join(BIN, "engram"), "--addr=" + cls.addr, *a],  # noqa: E731
                                           capture_output=True, text=True, timeout=30)
        rows = os.path.join(cls.tmp.name, "rows.csv")
        with open(rows, "w") as f:
            f.write("1,0,0\n0,1,0\n0,0,1\n")
        engram("store", "create", "m", "--dim=3")
        engram("add", "m", rows)
        engram("retrieve", "m", rows)
        engram("store", "get", "missing")
        calibrated = engram("calibrate", "m", "--wait", "--apply")
        assert calibrated.returncode == 0, calibrated.stderr

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.tmp.cleanup()

    def test_exposition_passes_promtool(self):
        text = get(f"http://127.0.0.1:{self.metrics_port}/metrics")
        for name in ("engram_requests_total", "engram_request_duration_seconds_bucket",
                     "engram_queries_total", "engram_queries_per_request_bucket", "engram_patterns",
                     "engram_pattern_norm", "engram_storage_write_duration_seconds_bucket",
                     "engram_fits", "engram_damaged_stores", "engram_build_info",
                     "engram_retrieval_error_bound_bucket", "engram_calibration_duration_seconds_bucket",
                     "engram_capacity_error", "engram_capacity_theory_beta", "engram_calibrated_beta"):
            self.assertIn(name, text)
        self.assertRegex(text, r'engram_requests_total\{code="NOT_FOUND",method="GetStore"\} 1')
        self.assertRegex(text, r'engram_patterns\{store="m"\} 3')
        self.assertRegex(text, r'engram_store_memory_bytes\{store="m"\} [1-9][\d.e+]*')
        self.assertRegex(text, r'engram_calibrations_total\{result="(applied|kept)"\} 1')
        self.assertRegex(text, r'engram_capacity_recall_at_1\{store="m"\} [\d.e+-]+')
        self.assertRegex(text, r'engram_capacity_well_separated_fraction\{store="m"\} [\d.e+-]+')
        check = subprocess.run(["promtool", "check", "metrics"], input=text,
                               capture_output=True, text=True)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)

    def test_heap_and_write_memory_series(self):
        """engram_write_memory_*: the write budget, nothing held between
        calls. engram_heap_*: what jemalloc holds, live allocations growing
        with the patterns added; absent where the C library's malloc (a
        sanitizer build) cannot say."""
        def scrape():
            return series(self.metrics_port, "engram_heap_")

        write = series(self.metrics_port, "engram_write_memory_", "engram_writes_waiting_for_memory")
        self.assertEqual(sorted(write), ["engram_write_memory_limit_bytes",
                                         "engram_write_memory_reserved_bytes",
                                         "engram_writes_waiting_for_memory"])
        self.assertGreater(write["engram_write_memory_limit_bytes"], 0)
        self.assertEqual(write["engram_write_memory_reserved_bytes"], 0)  # Nothing in flight.
        self.assertEqual(write["engram_writes_waiting_for_memory"], 0)
        before = scrape()
        if sanitized(BIN):
            self.assertEqual(before, {})
            return
        self.assertEqual(sorted(before), ["engram_heap_allocated_bytes",
                                          "engram_heap_resident_bytes"])
        self.assertGreater(before["engram_heap_allocated_bytes"], 0)
        self.assertLessEqual(before["engram_heap_allocated_bytes"],
                             before["engram_heap_resident_bytes"])
        with Client(self.addr) as c:
            c.create_store("heap", dim=1024)
            c.add("heap", np.ones((2048, 1024), np.float32))  # 8 MiB of values.
        after = scrape()
        self.assertGreater(after["engram_heap_allocated_bytes"],
                           before["engram_heap_allocated_bytes"] + (8 << 20))
        self.assertLessEqual(after["engram_heap_allocated_bytes"],
                             after["engram_heap_resident_bytes"])

    def test_memory_guard_series(self):
        """engram_memory_limit_bytes: 9/10 of what engramd may use (here the
        machine's or the cgroup's memory); engram_memory_work_bytes: the
        shares of the work admitted under it, none between calls and none
        left once a large add has ended."""
        before = series(self.metrics_port, "engram_memory_")
        self.assertEqual(sorted(before), ["engram_memory_limit_bytes",
                                          "engram_memory_work_bytes"])
        self.assertGreater(before["engram_memory_limit_bytes"], 64 << 20)
        self.assertEqual(before["engram_memory_work_bytes"], 0)
        with Client(self.addr) as c:
            c.create_store("guarded", dim=1024)
            c.add("guarded", np.ones((2048, 1024), np.float32))  # 8 MiB: it takes a share.
        # The add's shares go back as its call ends, which may be a moment
        # after the client has the answer.
        deadline = time.time() + 10
        while series(self.metrics_port, "engram_memory_") != before:
            self.assertLess(time.time(), deadline,
                            series(self.metrics_port, "engram_memory_"))
            time.sleep(0.05)

    def test_store_memory_series(self):
        """engram_stores_memory_bytes: what every store's patterns take,
        growing with an add; engram_stores_memory_limit_bytes: the ceiling
        (--max_store_memory_mb, half the memory by default)."""
        before = series(self.metrics_port, "engram_stores_memory_")
        self.assertEqual(sorted(before), ["engram_stores_memory_bytes",
                                          "engram_stores_memory_limit_bytes"])
        self.assertGreater(before["engram_stores_memory_limit_bytes"], 0)
        with Client(self.addr) as c:
            c.create_store("counted", dim=1024)
            c.add("counted", np.ones((2048, 1024), np.float32))  # 8 MiB of values.
        after = series(self.metrics_port, "engram_stores_memory_")
        self.assertGreaterEqual(after["engram_stores_memory_bytes"],
                                before["engram_stores_memory_bytes"] + (8 << 20))

    def test_process_series_follow_the_process(self):
        """process_* (the standard names): descriptors counted as they open,
        memory, CPU time and the start time plausible."""
        def scrape():
            return series(self.metrics_port, "process_")

        before = scrape()
        self.assertEqual(sorted(before), [
            "process_cpu_seconds_total", "process_max_fds", "process_open_fds",
            "process_resident_memory_bytes", "process_start_time_seconds",
            "process_virtual_memory_bytes"])
        with open(f"/proc/{self.server.proc.pid}/limits") as f:
            soft = next(x for x in f if x.startswith("Max open files")).split()[3]
        self.assertEqual(before["process_max_fds"], float(soft))
        self.assertGreater(before["process_resident_memory_bytes"], 1e6)
        self.assertGreaterEqual(before["process_virtual_memory_bytes"],
                                before["process_resident_memory_bytes"])
        self.assertGreater(before["process_cpu_seconds_total"], 0)
        self.assertLess(abs(before["process_start_time_seconds"] -
                            (time.time() - self._uptime())), 5)
        host, port = self.addr.rsplit(":", 1)
        held = [socket.create_connection((host, int(port)), timeout=5) for _ in range(40)]
        # The 40 held connections show; a descriptor or two of earlier tests'
        # calls may close meanwhile, so the count is also checked against
        # the process's own table.
        fds = f"/proc/{self.server.proc.pid}/fd"
        try:
            deadline = time.time() + 10
            while (scrape()["process_open_fds"] < before["process_open_fds"] + 38 and
                   time.time() < deadline):
                time.sleep(0.05)
            counted = scrape()["process_open_fds"]
            self.assertGreaterEqual(counted, before["process_open_fds"] + 38)
            self.assertLessEqual(abs(counted - len(os.listdir(fds))), 3)
        finally:
            for s in held:
                s.close()
        self.assertGreater(scrape()["process_cpu_seconds_total"], 0)

    def _uptime(self):
        """Seconds since engramd started, from /proc."""
        with open(f"/proc/{self.server.proc.pid}/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - started_ticks / os.sysconf("SC_CLK_TCK")

    def test_prometheus_scrapes_engramd(self):
        prometheus = shutil.which("prometheus")
        self.assertIsNotNone(prometheus, "Debian package prometheus")
        web_port = free_port()
        config = os.path.join(self.tmp.name, "prometheus.yml")
        rules = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                             "../../deploy/compose/engram-alerts.yml")
        with open(rules) as f:
            defined = sum(line.strip().startswith("- alert: ") for line in f)
        self.assertGreaterEqual(defined, 12)
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    f"rule_files:\n  - {rules}\nscrape_configs:\n"
                    "  - job_name: engram\n    static_configs:\n"
                    f"      - targets: ['127.0.0.1:{self.metrics_port}']\n")
        log = open(os.path.join(self.tmp.name, "prometheus.log"), "w")
        proc = subprocess.Popen([prometheus, "--config.file=" + config,
                                 "--storage.tsdb.path=" + os.path.join(self.tmp.name, "tsdb"),
                                 f"--web.listen-address=127.0.0.1:{web_port}"],
                                stdout=log, stderr=log)
        try:
            query = urllib.parse.quote('engram_patterns{store="m"}')
            deadline = time.time() + 60
            value = None
            while time.time() < deadline and value is None:
                try:
                    body = json.loads(get(f"http://127.0.0.1:{web_port}/api/v1/query?query={query}"))
                    result = body["data"]["result"]
                    if result:
                        value = float(result[0]["value"][1])
                except OSError:
                    pass
                time.sleep(0.5)
            self.assertEqual(value, 3.0)
            up = json.loads(get(f"http://127.0.0.1:{web_port}/api/v1/query?query=up"))
            self.assertEqual(up["data"]["result"][0]["value"][1], "1")
            # deploy's alerting rules load and evaluate against engramd's
            # series; the stores' memory over its limit joins on them (what
            # EngramStoresMemoryNearLimit compares with 0.9).
            ratio = urllib.parse.quote(
                "engram_stores_memory_bytes / engram_stores_memory_limit_bytes")
            result = json.loads(get(f"http://127.0.0.1:{web_port}/api/v1/query?query={ratio}"))
            self.assertEqual(len(result["data"]["result"]), 1, result)
            self.assertTrue(0 < float(result["data"]["result"][0]["value"][1]) < 0.9, result)
            # ... and the resident memory over the guard's limit (what
            # EngramResidentMemoryNearLimit compares with 0.9).
            ratio = urllib.parse.quote(
                "process_resident_memory_bytes / engram_memory_limit_bytes")
            result = json.loads(get(f"http://127.0.0.1:{web_port}/api/v1/query?query={ratio}"))
            self.assertEqual(len(result["data"]["result"]), 1, result)
            self.assertTrue(0 < float(result["data"]["result"][0]["value"][1]) < 0.9, result)
            deadline = time.time() + 30
            while True:
                groups = json.loads(get(f"http://127.0.0.1:{web_port}/api/v1/rules"))["data"]["groups"]
                alerts = [r for g in groups for r in g["rules"]]
                if (len(alerts) == defined and all(r.get("lastEvaluation", "").startswith("20")
                                             and r["health"] == "ok" for r in alerts)) \
                        or time.time() > deadline:
                    break
                time.sleep(0.5)
            self.assertEqual(len(alerts), defined, groups)
            for r in alerts:
                self.assertEqual(r["health"], "ok", r)
                self.assertEqual(r["state"], "inactive", r)  # A healthy engramd.
        finally:
            proc.terminate()
            proc.wait()
            log.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
