"""Starts and stops real engramd processes for the end-to-end tests."""
import atexit
import collections
import contextlib
import json
import os
import re
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request
from concurrent import futures

# The process of every engramd a test started; whatever still runs when the
# test's Python exits (a failed assertion, an exception between start and
# stop, a server object dropped without stop) is killed, so that a failing
# test leaves no server behind on its ports.
_started = []


@atexit.register
def _kill_leftovers():
    for proc in _started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class Engramd:
    """An engramd on a free loopback port (or the Unix socket a
    `--listen=unix:PATH` among `flags` names), ready when the constructor
    returns.

    `flags` are extra engramd flags; `data_dir` defaults to a fresh directory
    under `tmp`. The log is kept in `log_path`; `startup` holds what the server
    printed up to readiness. `wrapper` is a command engramd's runs under
    (ending in one that execs its arguments, so that the process is engramd).
    """

    def __init__(self, bin_dir, tmp, *flags, data_dir=None, metrics_listen="", wrapper=()):
        self.data_dir = data_dir or tempfile.mkdtemp(dir=tmp)
        unix = [f[len("--listen="):] for f in flags if f.startswith("--listen=unix:")]
        self.log_path = os.path.join(tmp, f"engramd-{time.monotonic_ns()}.log")
        self._log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(
            [*wrapper, os.path.join(bin_dir, "engramd"), "--listen=127.0.0.1:0",
             "--metrics_listen=" + metrics_listen, "--data_dir=" + self.data_dir, *flags],
            stdout=self._log, stderr=self._log)
        _started.append(self.proc)
        deadline = time.time() + 30
        while time.time() < deadline:
            self._log.seek(0)
            text = self._log.read()
            m = re.search(r"\(port (\d+)[,)]", text)
            if (m or unix) and "; ready" in text:
                self.addr = unix[-1] if unix else "127.0.0.1:" + m.group(1)
                self.startup = text
                metrics = re.search(r"metrics on [^;]*:(\d+);", text)
                self.metrics_port = int(metrics.group(1)) if metrics else None
                return
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError("engramd exited: " + text)
            time.sleep(0.02)
        self._log.seek(0)
        text = self._log.read()
        self.proc.kill()
        self.proc.wait()
        raise RuntimeError("engramd did not become ready in 30 s; its log:\n" + text)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def log(self):
        if self._log.closed:
            with open(self.log_path) as f:
                return f.read()
        self._log.seek(0)
        return self._log.read()

    def stop(self, timeout=30):
        """SIGTERM, then the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        return code

    def kill(self):
        self.proc.kill()
        self.proc.wait()
        self._log.close()


class OneServerTest(unittest.TestCase):
    """A test case with an engramd of its own for each test: `server`, a
    `channel` to it and an `engram.v1.Engram` `stub`, in a temporary
    directory `tmp`. A subclass sets `BIN` (the engramd's directory)."""

    BIN = None

    def setUp(self):
        import grpc
        from engram_client import pb_grpc
        self.tmp = tempfile.TemporaryDirectory()
        self.server = Engramd(self.BIN, self.tmp.name)
        self.channel = grpc.insecure_channel(self.server.addr)
        self.stub = pb_grpc.EngramStub(self.channel)

    def tearDown(self):
        self.channel.close()
        if self.server.proc.poll() is None:
            self.server.stop()
        self.tmp.cleanup()


def sanitized(bin_dir):
    """Whether the engramd in `bin_dir` was built with a sanitizer (ASan,
    UBSan, TSan): their runtimes bring their own allocator and check memory
    through pipes of their own."""
    libraries = subprocess.run(["ldd", os.path.join(bin_dir, "engramd")],
                               capture_output=True, text=True).stdout
    return any(name in libraries for name in ("libasan", "libubsan", "libtsan"))


def free_port():
    """A port free on 127.0.0.1 just now (for an engramd whose address
    another must know before it starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_status(bin_dir, addr, timeout=30):
    """`engram cluster status --json` at the router `addr`: its exit code (0
    when every replica serves) and its report ({} when it printed none)."""
    out = subprocess.run([os.path.join(bin_dir, "engram"), "cluster", "status", "--json",
                          "--addr=" + addr], capture_output=True, text=True, timeout=timeout)
    return out.returncode, json.loads(out.stdout) if out.stdout.strip() else {}


class IdleCalls:
    """`n` calls of engram.v1.Engram's `method` (a client stream, or
    AddPatterns, streamed unary on the server), each on a channel of its own
    to `addr`: each sends `first` (a serialized message, or nothing) and then
    holds still until close(), or for `timeout` seconds. `ended` gets the
    (code, details) of each call that ended with an error."""

    def __init__(self, addr, method, n, first=None, timeout=120):
        import grpc
        self.release = threading.Event()
        self.ended = []
        self.channels = [grpc.insecure_channel(addr) for _ in range(n)]
        self.threads = []
        for channel in self.channels:
            call = channel.stream_unary("/engram.v1.Engram/" + method)

            def messages():
                if first is not None:
                    yield first
                self.release.wait()

            def run(call=call, messages=messages):
                try:
                    call(messages(), timeout=timeout)
                except grpc.RpcError as e:
                    self.ended.append((e.code(), e.details()))

            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            self.threads.append(thread)

    def close(self):
        self.release.set()
        for channel in self.channels:
            channel.close()
        for thread in self.threads:
            thread.join(timeout=30)


def _frame(kind, flags, stream, payload=b""):
    """An HTTP/2 frame."""
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(
        ">I", stream) + payload


def _hello(acknowledged=False, settings=b""):
    """What a client says first on HTTP/2: the preface and its `settings`
    (a SETTINGS frame's payload; none by default); with `acknowledged`, an
    acknowledgement of the server's settings too, sent without waiting for
    them (a client that reads nothing)."""
    return b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, settings) + (
        _frame(4, 1, 0) if acknowledged else b"")


def _literal(name, value):
    """An HPACK header field, literal, never indexed names (short strings)."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def _headers(path):
    """A request's HEADERS block for `path`."""
    return b"".join([_literal(b":method", b"POST"), _literal(b":scheme", b"http"),
                     _literal(b":path", path.encode()), _literal(b":authority", b"x"),
                     _literal(b"content-type", b"application/grpc"),
                     _literal(b"te", b"trailers")])


def reset_streams(port, seconds, ca=None, path="/engram.v1.Engram/GetStore", connected=None,
                  stop=None):
    """HTTP/2 "rapid reset": opens streams of `path` on 127.0.0.1:`port` and
    resets each at once (HEADERS then RST_STREAM, 100 to a write) for
    `seconds`, or until the threading.Event `stop` is set if given (then
    `seconds` is the most it goes on), on a new connection whenever the
    server closes one; over TLS (trusting the CA file `ca`) if given. With
    `connected` (a threading.Barrier) the first connection waits there before
    its first stream, so that several attackers are all connected before any
    is cut (and its address kept out). Returns the streams written and the
    connections made."""
    headers = _headers(path)
    end = time.time() + seconds

    def over():
        return time.time() >= end or (stop is not None and stop.is_set())

    count = made = 0
    while not over():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            time.sleep(0.01)
            continue
        made += 1
        try:
            if ca:
                context = ssl.create_default_context(cafile=ca)
                context.set_alpn_protocols(["h2"])
                s = context.wrap_socket(s, server_hostname="localhost")
            # engramd may stop reading (a connection cut, or one it has not
            # got to yet): a write waits in short turns, to hear `over`.
            s.settimeout(0.5)
            if not _send(s, _hello(), over):
                break
            writing = threading.Lock()  # Frames go out whole.
            threading.Thread(target=_answer_settings_and_pings, args=(s, writing, over),
                             daemon=True).start()
            if connected is not None and made == 1:
                connected.wait(timeout=seconds)
            stream = 1
            while not over() and stream < 2**31 - 1000:
                batch = b""
                for _ in range(100):
                    batch += (_frame(1, 4, stream, headers) +
                              _frame(3, 0, stream, struct.pack(">I", 8)))
                    stream += 2
                with writing:
                    if not _send(s, batch, over):
                        break
                count += 100
        except OSError:
            pass  # engramd closed the connection: another.
        finally:
            s.close()
    return count, made


def endless_headers(port, most_bytes, seconds, stop=None):
    """HTTP/2 headers that never end (CVE-2024-27316's kind): on one
    connection to 127.0.0.1:`port`, a HEADERS frame without END_HEADERS,
    then CONTINUATION frames of well-formed header fields, none of them the
    last, until the server closes the connection, `most_bytes` are sent,
    `seconds` pass or the threading.Event `stop` is set. Returns the bytes
    sent. (A server that shuts the connection down may leave it open
    without reading: the sender then waits for `stop`.)"""
    end = time.time() + seconds

    def over():
        return time.time() >= end or (stop is not None and stop.is_set())

    # A literal field, not indexed: "x-pad" and 1,000 bytes (HPACK's 7-bit
    # length prefix 127, then 873 as a varint).
    field = b"\x00\x05x-pad\x7f\xe9\x06" + b"a" * 1000
    batch = b"".join(_frame(9, 0, 1, field) for _ in range(64))
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.settimeout(0.5)
        try:
            _send(s, _hello(acknowledged=True) +
                  _frame(1, 0, 1, _headers("/engram.v1.Engram/GetStore")), over)
            while sent < most_bytes and _send(s, batch, over):
                sent += len(batch)
        except OSError:
            pass  # Closed by the server.
    return sent


def unread_answers(port, calls, request, path="/engram.v1.Engram/GetStore", seconds=60,
                   stop=None):
    """A client that takes no answers: on one connection to
    127.0.0.1:`port`, gives its streams an HTTP/2 window of 0
    (SETTINGS_INITIAL_WINDOW_SIZE), makes `calls` calls of `path` with the
    serialized `request` and answers the server's settings and pings (so
    that its keepalive finds it alive) until the server closes the
    connection, `seconds` pass or the threading.Event `stop` is set.
    Returns how long the connection lasted after its calls were sent, or
    None if the server did not close it."""
    end = time.time() + seconds

    def over():
        return time.time() >= end or (stop is not None and stop.is_set())

    message = b"\x00" + struct.pack(">I", len(request)) + request
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.settimeout(0.5)
        writing = threading.Lock()
        _send(s, _hello(settings=struct.pack(">HI", 4, 0)), over)
        answering = threading.Thread(target=_answer_settings_and_pings,
                                     args=(s, writing, over))
        answering.start()
        with writing:
            _send(s, b"".join(_frame(1, 4, stream, _headers(path)) + _frame(0, 1, stream, message)
                              for stream in range(1, 2 * calls, 2)), over)
        sent = time.time()
        answering.join()
        return None if over() else time.time() - sent


def _send(s, data, over):
    """Writes all of `data` to `s` (whose timeout is short), waiting while
    the peer does not read; false if `over()` became true first. An error
    (the peer closed) is raised."""
    view = memoryview(data)
    while view:
        if over():
            return False
        try:
            view = view[s.send(view):]
        except (socket.timeout, ssl.SSLWantWriteError):
            continue  # Nothing written: the peer is not reading.
    return True


def _answer_settings_and_pings(s, writing, over):
    """Acknowledges the server's settings and pings until the connection
    ends or `over()`; a frame goes out whole, holding the lock `writing`."""
    pending = b""
    try:
        while not over():
            try:
                data = s.recv(65536)
            except socket.timeout:
                continue
            if not data:
                return
            pending += data
            while len(pending) >= 9:
                length = int.from_bytes(pending[:3], "big")
                if len(pending) < 9 + length:
                    break
                kind, flags = pending[3], pending[4]
                if kind in (4, 6) and not flags & 1:
                    with writing:
                        _send(s, _frame(kind, 1, 0, pending[9:9 + length] if kind == 6 else b""),
                              over)
                pending = pending[9 + length:]
    except (OSError, ValueError):
        return


def metric(metrics_port, name, default=None, **labels):
    """The value of one series on engramd's /metrics: `name` with exactly
    `labels` (none: the unlabelled series). A series not there is
    `default`, or an error where no default is given."""
    want = name + ("{%s}" % ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
                   if labels else "")
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % metrics_port,
                                timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series == want:
            return float(value)
    if default is None:
        raise LookupError("no series %s on /metrics" % want)
    return default


def until(test, condition, what, seconds=20, log=None, every=0.05):
    """Waits up to `seconds` for condition() to be true, else fails `test`
    with `what` (a string, or a function giving one, asked only then) and
    the tail of `log` (an Engramd's log, or a function giving text)."""
    deadline = time.time() + seconds
    while not condition():
        if time.time() >= deadline:
            message = what() if callable(what) else what
            if log is not None:
                tail = log.log() if hasattr(log, "log") else log()
                message = "%s\n%s" % (message, tail[-2000:])
            test.fail(message)
        time.sleep(every)


def logged(test, server, text, seconds=10):
    """Waits up to `seconds` for `text` in `server`'s log, else fails `test`
    with its tail. engramd writes its log on a thread of its own, so a line
    may come a moment after what it tells of is seen from outside (a metric
    counted, a call refused, a file's change in force)."""
    until(test, lambda: text in server.log(), "not in the log: %r" % text,
          seconds, server)


def resident_mib(pid):
    """The resident memory of process `pid`, in MiB."""
    with open("/proc/%d/status" % pid) as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def cpu_seconds(pid):
    """The CPU time process `pid` has used, user and system, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine():
    """The CPU's model and this machine's core count, for a probe's first line."""
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f
                      if line.startswith("model name")), "unknown")
    return "machine: %s, %d cores" % (model, os.cpu_count())


def frame_floods(rng):
    """HTTP/2 frames a server must shrug off, each kind as one burst after a
    client's hello, as (name, bytes): pings, settings, window updates (the
    last past the largest window a connection may have), priorities,
    empty DATA frames on an open stream, frames of an unknown type, a frame
    past the largest size, RST_STREAM and WINDOW_UPDATE on streams never
    opened, and random frame headers. `rng`: a random.Random."""
    hello = _hello(acknowledged=True)
    opened = _frame(1, 4, 1, _headers("/engram.v1.Engram/AddPatterns"))
    return [
        ("pings", hello + b"".join(_frame(6, 0, 0, struct.pack(">Q", i)) for i in range(20000))),
        ("settings", hello + b"".join(_frame(4, 0, 0, struct.pack(">HI", 3, 100 + i))
                                      for i in range(20000))),
        ("window updates", hello + _frame(8, 0, 0, struct.pack(">I", 1)) * 20000 +
         _frame(8, 0, 0, struct.pack(">I", 0x7fffffff))),
        ("priorities", hello + b"".join(_frame(2, 0, 2 * i + 1, struct.pack(">IB", 2 * i + 3, 16))
                                        for i in range(20000))),
        ("empty data", hello + opened + _frame(0, 0, 1) * 20000),
        ("unknown types", hello + b"".join(_frame(rng.randrange(10, 256), rng.randrange(256), 0,
                                                  rng.randbytes(1000)) for _ in range(500))),
        ("oversized", hello + _frame(0, 0, 1, b"x" * 70000)),
        ("streams never opened", hello + b"".join(
            _frame(3, 0, 2 * i + 1, struct.pack(">I", 8)) + _frame(8, 0, 2 * i + 1, b"\0\0\0\1")
            for i in range(5000))),
        ("random headers", hello + b"".join(
            struct.pack(">I", rng.randrange(64))[1:] + rng.randbytes(6) + rng.randbytes(
                rng.randrange(64)) for _ in range(2000))),
    ]


def idle_connections(port, n):
    """`n` HTTP/2 connections to 127.0.0.1:`port` that say hello (the
    preface, empty settings, an acknowledgement of the server's) and then
    nothing more; their sockets, to be closed by the caller."""
    sockets = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(_hello(acknowledged=True))
        sockets.append(s)
    return sockets


@contextlib.contextmanager
def garbled_message(client, which):
    """While in effect, the `which`-th (from 1) message of patterns that
    `client` (engram_client.Client) builds goes out as bytes that do not
    parse as one."""
    real, built = client._patterns, []

    def patterns(*args):
        built.append(1)
        return real(*args) if len(built) != which else b"\x12\x7f\x0a"
    client._patterns = patterns
    try:
        yield
    finally:
        client._patterns = real


def make_certs(d):
    """A CA, a server certificate for 127.0.0.1/localhost and a client one,
    made with openssl in directory `d`; returns name -> path in `d`."""
    p = lambda name: os.path.join(d, name)  # noqa: E731

    def sh(*args):
        subprocess.run(args, check=True, capture_output=True)

    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
       "-subj", "/CN=engram test CA", "-keyout", p("ca.key"), "-out", p("ca.pem"))
    with open(p("san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who in ("server", "client"):
        sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}",
           "-keyout", p(f"{who}.key"), "-out", p(f"{who}.csr"))
        extra = ["-extfile", p("san.ext")] if who == "server" else []
        sh("openssl", "x509", "-req", "-in", p(f"{who}.csr"), "-CA", p("ca.pem"),
           "-CAkey", p("ca.key"), "-CAcreateserial", "-days", "2", "-out", p(f"{who}.pem"), *extra)
    return p


def stored_patterns(stub, name):
    """Every pattern of a store as {id: values}, read through ListPatterns
    pages with a raw engram.v1.Engram stub (the crash tests' ground truth)."""
    from engram_client import pb
    found, token = {}, ""
    while True:
        r = stub.ListPatterns(pb.ListPatternsRequest(store=name, page_size=1000,
                                                     page_token=token), timeout=30)
        for p in r.patterns:
            found[p.id] = list(p.values)
        token = r.next_page_token
        if not token:
            return found


def reflected_services(channel, names):
    """The descriptors of the services `names`, as the server behind
    `channel` describes them through gRPC reflection: the files that define
    them and every file those import, in a pool of their own (a service's
    .file.pool). The generated grpc_reflection_client must be importable."""
    from google.protobuf import descriptor_pb2, descriptor_pool
    from grpc_reflection_client.v1alpha import reflection_pb2 as rpb
    from grpc_reflection_client.v1alpha import reflection_pb2_grpc as rgrpc
    stub = rgrpc.ServerReflectionStub(channel)

    def ask(**request):
        return next(iter(stub.ServerReflectionInfo(
            iter([rpb.ServerReflectionRequest(**request)]), timeout=10)))

    files = {}
    pending = [ask(file_containing_symbol=name) for name in names]
    while pending:
        for raw in pending.pop().file_descriptor_response.file_descriptor_proto:
            proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
            files[proto.name] = proto
            pending += [ask(file_by_filename=d) for d in proto.dependency if d not in files]
    pool = descriptor_pool.DescriptorPool()
    added = set()

    def add(name):
        if name not in added:
            for dep in files[name].dependency:
                add(dep)
            pool.Add(files[name])
            added.add(name)

    for name in list(files):
        add(name)
    return [pool.FindServiceByName(name) for name in names]


class Proxy:
    """A gRPC proxy in front of a real engramd, for a router to dial instead
    of a shard: passes every call through, bytes, metadata and deadline as
    they come. Methods in `missing` are answered as by a server without them
    (UNIMPLEMENTED); `answer(method, response, context)`, if given, sees
    each response message (bytes) on its way back and returns the bytes to
    send (or aborts the call through `context`). Counts calls by method."""

    def __init__(self, backend, missing=(), answer=None):
        import grpc
        from engram_client import pb
        self.calls = collections.Counter()
        self._channel = grpc.insecure_channel(backend)
        self._answer = answer or (lambda method, response, context: response)
        kinds = {}  # "/service/method" -> (client streams, server streams)
        for service in pb.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                kinds["/%s/%s" % (service.full_name, m.name)] = (m.client_streaming,
                                                                  m.server_streaming)
        proxy = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details):
                proxy.calls[details.method] += 1
                if details.method in missing:
                    return None  # gRPC answers UNIMPLEMENTED.
                return proxy._forward(details.method, kinds.get(details.method, (False, False)))

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        self._server.add_generic_rpc_handlers([Handler()])
        self.addr = "127.0.0.1:%d" % self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def _forward(self, method, kind):
        import grpc

        def passed(context):
            remaining = context.time_remaining()
            metadata = [(k, v) for k, v in context.invocation_metadata()
                        if not k.startswith((":", "grpc-")) and k != "user-agent"]
            return dict(timeout=remaining if remaining is not None and remaining < 1e6 else None,
                        metadata=metadata)

        def relay(call, context):
            try:
                return call()
            except grpc.RpcError as e:
                context.abort(e.code(), e.details())

        def answered(response, context):
            return self._answer(method, response, context)

        def each_answered(responses, context):
            return iter([answered(r, context) for r in responses])

        client_streams, server_streams = kind
        if not client_streams and not server_streams:
            stub = self._channel.unary_unary(method)
            return grpc.unary_unary_rpc_method_handler(lambda request, context: answered(
                relay(lambda: stub(request, **passed(context)), context), context))
        if not client_streams:
            stub = self._channel.unary_stream(method)
            return grpc.unary_stream_rpc_method_handler(lambda request, context: each_answered(
                relay(lambda: list(stub(request, **passed(context))), context), context))
        if not server_streams:
            stub = self._channel.stream_unary(method)
            return grpc.stream_unary_rpc_method_handler(lambda requests, context: answered(
                relay(lambda: stub(requests, **passed(context)), context), context))
        stub = self._channel.stream_stream(method)
        return grpc.stream_stream_rpc_method_handler(lambda requests, context: each_answered(
            relay(lambda: list(stub(requests, **passed(context))), context), context))

    def stop(self):
        self._server.stop(grace=None).wait()
        self._channel.close()
