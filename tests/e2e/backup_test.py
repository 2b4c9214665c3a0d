#!/usr/bin/python3
"""End-to-end: backups and restores with real engramd processes and the CLI.

Usage: backup_test.py BIN_DIR
- A backup taken while a writer adds and deletes, and a fit runs, restores
  (engramd --restore_from) to exactly the acknowledged writes up to one point
  between the backup's start and end.
- A store restored under a new name answers Retrieve exactly as the original.
- Damaged, truncated, edited and foreign backups are refused naming the
  file, by `engram backup verify`, by the CLI's restore and by the server
  (sent directly); a restore over a taken name needs --replace.
"""
import os
import shutil
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Engramd, OneServerTest, stored_patterns  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from engram_client import pb, pb_grpc  # noqa: E402

BIN = sys.argv.pop(1) if len(sys.argv) > 1 else "build/bin"
DIM = 16


def cli(addr, *args, check=True):
    r = subprocess.run([os.path.join(BIN, "engram"), "--addr=" + addr, *args],
                       capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"engram {' '.join(args)}: {r.stderr}")
    return r


def vector(i):
    # Exactly representable as float32, so values read back compare equal.
    return [float(np.float32(((i * 31 + k * 7) % 97) / 97.0)) for k in range(DIM)]


class Writer(threading.Thread):
    """Adds batches of explicit ids and deletes some, one call at a time,
    recording every acknowledged operation in order."""

    def __init__(self, stub, name):
        super().__init__(daemon=True)
        self.stub, self.name = stub, name
        self.acked = []  # ("add", [ids]) or ("delete", [ids]), in ack order.
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self):
        next_id, live = 1, []
        while not self.stop.is_set():
            if len(live) > 40 and next_id % 3 == 0:
                ids = live[:5]
                self.stub.DeletePatterns(pb.DeletePatternsRequest(
                    store=self.name, ids=ids), timeout=30)
                live = live[5:]
                op = ("delete", ids)
            else:
                ids = list(range(next_id, next_id + 20))
                self.stub.AddPatterns(pb.AddPatternsRequest(store=self.name, patterns=[
                    pb.Pattern(id=i, values=vector(i), label=f"l{i % 5}") for i in ids]),
                    timeout=30)
                live += ids
                op = ("add", ids)
            next_id += 20
            with self.lock:
                self.acked.append(op)

    def count(self):
        with self.lock:
            return len(self.acked)


def model_after(ops):
    """The store's contents after `ops`: {id: values}."""
    state = {}
    for kind, ids in ops:
        for i in ids:
            if kind == "add":
                state[i] = vector(i)
            else:
                del state[i]
    return state


class BackupTest(OneServerTest):
    BIN = BIN

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def create(self, name, uhop=False):
        store = pb.Store(name=name, dimension=DIM)
        if uhop:
            store.feature_map.kind = pb.UHOP
        self.stub.CreateStore(pb.CreateStoreRequest(store=store), timeout=30)

    def test_backup_under_writes_and_a_fit_restores_a_point_between(self):
        self.create("busy")
        self.create("fitted", uhop=True)
        rng = np.random.default_rng(1)
        self.stub.AddPatterns(pb.AddPatternsRequest(store="fitted", patterns=[
            pb.Pattern(values=rng.standard_normal(DIM).tolist()) for _ in range(400)]),
            timeout=30)
        writer = Writer(self.stub, "busy")
        writer.start()
        while writer.count() < 50:
            time.sleep(0.01)
        self.stub.StartFit(pb.StartFitRequest(store="fitted"), timeout=30)
        before = writer.count()
        cli(self.server.addr, "backup", "create", self.path("b"))
        after = writer.count()
        writer.stop.set()
        writer.join()
        self.assertGreater(after, before, "the writer went on during the backup")
        verify = cli(self.server.addr, "backup", "verify", self.path("b"))
        self.assertIn("every file matches", verify.stdout)

        with Engramd(BIN, self.tmp.name, "--restore_from=" + self.path("b")) as b:
            self.assertIn("restored 2 stores", b.log())
            with grpc.insecure_channel(b.addr) as channel:
                restored = stored_patterns(pb_grpc.EngramStub(channel), "busy")
        # Exactly the acknowledged writes up to some point during the backup.
        points = [k for k in range(before, after + 1)
                  if model_after(writer.acked[:k]) == restored]
        sizes = [len(model_after(writer.acked[:k])) for k in range(before, after + 1)]
        self.assertTrue(points, f"restored {len(restored)} patterns match no point "
                        f"between acknowledged writes {before} and {after} "
                        f"(sizes {sizes}; ops {len(writer.acked)})")

    def test_a_backup_that_fails_leaves_no_directory(self):
        r = cli(self.server.addr, "backup", "create", self.path("cut"), "--store=nope",
                check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("NOT_FOUND", r.stderr)
        self.assertFalse(os.path.exists(self.path("cut")))
        self.assertFalse(os.path.exists(self.path("cut.partial")))

    def test_a_restored_store_answers_exactly_as_the_original(self):
        self.create("orig", uhop=True)
        rng = np.random.default_rng(2)
        values = rng.standard_normal((500, DIM)).astype(np.float32)
        self.stub.AddPatterns(pb.AddPatternsRequest(store="orig", patterns=[
            pb.Pattern(values=v.tolist(), label=f"c{i % 10}",
                       metadata={"tenant": f"t{i % 3}"}) for i, v in enumerate(values)]),
            timeout=30)
        self.stub.DeletePatterns(pb.DeletePatternsRequest(store="orig", ids=[5, 17, 300]),
                                 timeout=30)
        cli(self.server.addr, "fit", "orig", "--wait")
        # A trailing slash (a shell's completion) names the same directory.
        cli(self.server.addr, "backup", "create", self.path("one") + "/", "--store=orig")
        self.assertFalse(os.path.exists(self.path("one.partial")))
        self.assertFalse(os.path.exists(os.path.join(self.path("one"), ".partial")))
        copy = cli(self.server.addr, "backup", "restore", self.path("one"), "--as=copy")
        self.assertIn("restored store 'copy': 497 patterns", copy.stdout)
        queries = [pb.Query(values=(values[i] + 0.3 * rng.standard_normal(DIM)).tolist())
                   for i in range(0, 500, 25)]
        answers = []
        for name in ("orig", "copy"):
            r = self.stub.Retrieve(pb.RetrieveRequest(store=name, queries=queries, top_k=5),
                                   timeout=30)
            answers.append([(list(q.values), [(m.id, m.weight, m.label) for m in q.matches],
                             q.energy) for q in r.results])
        self.assertEqual(answers[0], answers[1])
        a, b = (self.stub.GetStore(pb.GetStoreRequest(name=n), timeout=30) for n in
                ("orig", "copy"))
        self.assertEqual(a.fit.map_version, b.fit.map_version)
        self.assertGreater(b.fit.map_version, 0)
        self.assertEqual(a.pattern_count, b.pattern_count)

        # A taken name needs --replace; with it, the store is the backup's.
        taken = cli(self.server.addr, "backup", "restore", self.path("one"), check=False)
        self.assertNotEqual(taken.returncode, 0)
        self.assertIn("ALREADY_EXISTS", taken.stderr)
        self.stub.DeletePatterns(pb.DeletePatternsRequest(store="orig", ids=[1, 2]),
                                 timeout=30)
        cli(self.server.addr, "backup", "restore", self.path("one"), "--replace")
        self.assertEqual(self.stub.GetStore(pb.GetStoreRequest(name="orig"),
                                            timeout=30).pattern_count, 497)

    def test_export_reads_back_with_engram_add(self):
        self.create("src")
        values = np.arange(5 * DIM, dtype=np.float32).reshape(5, DIM) / 7
        self.stub.AddPatterns(pb.AddPatternsRequest(store="src", patterns=[
            pb.Pattern(id=10 + i, values=v.tolist(), label=f"c{i}",
                       metadata={"tenant": f"t{i % 2}"} if i % 2 else {})
            for i, v in enumerate(values)]), timeout=30)
        out = self.path("export")
        exported = cli(self.server.addr, "export", "src", out + "/")
        self.assertIn("to %s/values.npy and %s/patterns.jsonl" % (out, out), exported.stdout)
        self.assertEqual(sorted(os.listdir(out)), ["patterns.jsonl", "values.npy"])
        np.testing.assert_array_equal(np.load(os.path.join(out, "values.npy")), values)
        # One that fails midway leaves no directory.
        gone = cli(self.server.addr, "export", "nope", self.path("gone"), check=False)
        self.assertIn("NOT_FOUND", gone.stderr)
        self.assertFalse(os.path.exists(self.path("gone")))
        self.assertFalse(os.path.exists(self.path("gone.partial")))
        self.create("dst")
        cli(self.server.addr, "add", "dst", os.path.join(out, "values.npy"),
            "--patterns=" + os.path.join(out, "patterns.jsonl"))
        a, b = (list(self.stub.ListPatterns(pb.ListPatternsRequest(store=n), timeout=30)
                     .patterns) for n in ("src", "dst"))
        self.assertEqual(a, b)

    def test_damaged_edited_and_foreign_backups_are_refused_by_name(self):
        self.create("s")
        self.stub.AddPatterns(pb.AddPatternsRequest(store="s", patterns=[
            pb.Pattern(values=vector(i)) for i in range(1, 300)]), timeout=30)
        good = self.path("good")
        cli(self.server.addr, "backup", "create", good)
        patterns = os.path.join("stores", "s", "patterns.bin")

        def damaged(name, change):
            d = self.path(name)
            shutil.copytree(good, d)
            change(d)
            return d

        def flip(d):
            with open(os.path.join(d, patterns), "r+b") as f:
                f.seek(1000)
                byte = f.read(1)
                f.seek(1000)
                f.write(bytes([byte[0] ^ 0x40]))

        def truncate(d):
            with open(os.path.join(d, patterns), "r+b") as f:
                f.truncate(5000)

        def edit_manifest(d):
            with open(os.path.join(d, "manifest.json"), "r+") as f:
                text = f.read().replace('"patterns": "299"', '"patterns": "298"')
                f.seek(0)
                f.write(text)
                f.truncate()

        def foreign(d):
            shutil.rmtree(d)
            os.makedirs(d)
            with open(os.path.join(d, "notes.txt"), "w") as f:
                f.write("not a backup\n")

        cases = [("flip", flip, "stores/s/patterns.bin"),
                 ("cut", truncate, "stores/s/patterns.bin"),
                 ("edit", edit_manifest, "manifest.json"),
                 ("foreign", foreign, "not an engram backup")]
        for name, change, names in cases:
            d = damaged(name, change)
            for args in (["backup", "verify", d], ["backup", "restore", d, "--as=x"]):
                r = cli(self.server.addr, *args, check=False)
                self.assertNotEqual(r.returncode, 0, (name, args))
                self.assertIn(names, r.stderr, (name, args))
            # The server checks too: the damaged files sent directly.
            files = []
            for root, _, names_ in os.walk(d):
                for n in names_:
                    full = os.path.join(root, n)
                    with open(full, "rb") as f:
                        files.append((os.path.relpath(full, d), f.read()))
            requests = [pb.RestoreStoreRequest(name="x")] + [
                pb.RestoreStoreRequest(chunk=pb.BackupChunk(file=p, data=data))
                for p, data in files]
            with self.assertRaises(grpc.RpcError) as raised:
                self.stub.RestoreStore(iter(requests), timeout=30)
            self.assertIn(raised.exception.code(), (grpc.StatusCode.DATA_LOSS,
                                                    grpc.StatusCode.INVALID_ARGUMENT))
            with self.assertRaises(grpc.RpcError):
                self.stub.GetStore(pb.GetStoreRequest(name="x"), timeout=30)

        # A message garbled on the way, among the good backup's files: named,
        # and nothing restored.
        files = []
        for root, _, names_ in os.walk(good):
            for n in sorted(names_):
                full = os.path.join(root, n)
                with open(full, "rb") as f:
                    files.append(pb.RestoreStoreRequest(chunk=pb.BackupChunk(
                        file=os.path.relpath(full, good), data=f.read())).SerializeToString())
        raw = [pb.RestoreStoreRequest(name="x").SerializeToString()] + files
        raw.insert(2, b"\x22\x7f\x0a")
        restore = self.channel.stream_unary("/engram.v1.Engram/RestoreStore")
        with self.assertRaises(grpc.RpcError) as raised:
            restore(iter(raw), timeout=30)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(raised.exception.details(),
                         "message 2: its bytes are not an engram.v1.RestoreStoreRequest; "
                         "neither it nor the messages after it were read")
        with self.assertRaises(grpc.RpcError):
            self.stub.GetStore(pb.GetStoreRequest(name="x"), timeout=30)
        raw.pop(2)  # The same stream without it restores.
        restore(iter(raw), timeout=30)
        self.assertEqual(self.stub.GetStore(pb.GetStoreRequest(name="x"), timeout=30)
                         .pattern_count, 299)

        # A whole-server restore of a damaged backup refuses to start and
        # leaves its data directory without a database.
        empty = self.path("fresh")
        proc = subprocess.run([os.path.join(BIN, "engramd"), "--listen=127.0.0.1:0",
                               "--metrics_listen=", "--data_dir=" + empty,
                               "--restore_from=" + self.path("flip")],
                              capture_output=True, text=True, timeout=60)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("stores/s/patterns.bin", proc.stderr)
        self.assertFalse(os.path.exists(os.path.join(empty, "db")))
        # ... and into a data directory that holds a database.
        proc = subprocess.run([os.path.join(BIN, "engramd"), "--listen=127.0.0.1:0",
                               "--metrics_listen=", "--data_dir=" + self.server.data_dir,
                               "--restore_from=" + good],
                              capture_output=True, text=True, timeout=60)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("needs an empty --data_dir", proc.stderr)


if __name__ == "__main__":
    unittest.main()
