"""engram_client.Client: one method per RPC of engram.v1.Engram."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

import grpc
import numpy as np
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message

from engram_client._proto.engram.v1 import engram_pb2 as pb
from engram_client._proto.engram.v1 import engram_pb2_grpc as pb_grpc
from engram_client._proto.health.v1 import health_pb2, health_pb2_grpc

# Keyword settings of create_store / update_store -> field path in pb.Store.
# calibration={...} takes the fields of pb.CalibrationSettings by name.
SETTINGS: Dict[str, str] = {
    "precision": "precision",  # float32, bfloat16, float16; create only
    "similarity": "retrieval.similarity",
    "separation": "retrieval.separation",
    "beta": "retrieval.beta",
    "steps": "retrieval.steps",
    "eps": "retrieval.eps",
    "top_k": "retrieval.top_k",
    "tolerance": "low_rank.tolerance",
    "max_degree": "low_rank.max_degree",
    "feature_map": "feature_map.kind",
    "feature_dim": "feature_map.feature_dim",
    "fit_loss": "feature_map.loss",
    "fit_optimizer": "feature_map.optimizer",
    "fit_epochs": "feature_map.epochs",
    "fit_learning_rate": "feature_map.learning_rate",
    "fit_batch_size": "feature_map.batch_size",
    "fit_debounce_ms": "feature_map.debounce_ms",
    "fit_min_new_patterns": "feature_map.min_new_patterns",
    "default_ttl": "expiry.default_ttl",  # seconds
    "fit_seed": "feature_map.seed",
}

# Every RPC of engram.v1.Engram -> the Client method that calls it (checked
# against the service descriptor by the parity test).
RPCS: Dict[str, str] = {
    "CreateStore": "create_store",
    "GetStore": "get_store",
    "ListStores": "list_stores",
    "UpdateStore": "update_store",
    "DeleteStore": "delete_store",
    "AddPatterns": "add",
    "ImportPatterns": "import_patterns",
    "GetPattern": "get_pattern",
    "ListPatterns": "list_patterns",
    "DeletePatterns": "delete",
    "Retrieve": "retrieve",
    "GetFitStatus": "fit_status",
    "WatchFit": "watch_fit",
    "StartFit": "start_fit",
    "CancelFit": "cancel_fit",
    "StartCalibration": "start_calibration",
    "GetCalibrationStatus": "calibration",
    "WatchCalibration": "watch_calibration",
    "CancelCalibration": "cancel_calibration",
    "CreateBackup": "create_backup",
    "RestoreStore": "restore_store",
}

# The files a backup directory may hold (docs/backup.md).
_BACKUP_FILE = re.compile(
    r"^(manifest\.json|manifest\.sha256|"
    r"stores/[a-z0-9][a-z0-9_.-]{0,62}/(settings\.pb|map\.bin|patterns\.bin))$")


def verify_backup(directory: str) -> Dict[str, Any]:
    """Checks a backup directory's manifest against manifest.sha256 and
    every file against its size and SHA-256 in the manifest; returns the
    manifest (parsed JSON). Raises ValueError naming what is wrong. (`engram
    backup verify` also decodes every record.)"""
    def read(name: str) -> bytes:
        with open(os.path.join(directory, name), "rb") as f:
            return f.read()
    try:
        text = read("manifest.json")
    except FileNotFoundError:
        raise ValueError(f"{directory}: not an engram backup: no manifest.json")
    if read("manifest.sha256").decode().strip() != hashlib.sha256(text).hexdigest():
        raise ValueError(f"{directory}: manifest.json does not match manifest.sha256")
    manifest = json.loads(text)
    if manifest.get("kind") != "engram-backup" or manifest.get("format") != 1:
        raise ValueError(f"{directory}: not an engram backup of format 1")
    for store in manifest.get("stores", []):
        for f in store.get("files", []):
            if not _BACKUP_FILE.match(f["path"]):
                raise ValueError(f"{directory}: manifest lists {f['path']!r}")
            data = read(f["path"])
            if len(data) != int(f["bytes"]) or hashlib.sha256(data).hexdigest() != f["sha256"]:
                raise ValueError(f"{directory}: {f['path']} does not match the manifest")
    return manifest


@dataclasses.dataclass
class Recall:
    """What one Retrieve returned, query by query."""
    vectors: np.ndarray   # (L, d) float32; (0, 0) if not asked for
    ids: np.ndarray       # (L, k) uint64, best first
    weights: np.ndarray   # (L, k) float32
    labels: List[List[str]]  # L lists of k labels
    energy: np.ndarray    # (L,) float64
    steps: np.ndarray     # (L,) uint32
    path: str             # "exact" or "low_rank"
    degree: int = 0       # Taylor degree of the low-rank path
    rank: int = 0         # its rank
    error_bound: float = 0.0  # proved bound on ||y_low_rank - y_exact||_2
    reason: str = ""      # why the planner chose the path


@dataclasses.dataclass
class Pattern:
    """One stored pattern."""
    id: int
    values: np.ndarray    # (d,) float32; empty when listed without values
    label: str
    metadata: Dict[str, str]
    expire_time: Optional[float] = None  # Unix seconds; None: never

    @staticmethod
    def from_proto(p: pb.Pattern, values: Optional[np.ndarray] = None) -> "Pattern":
        """`values`: p.values already read (see _packed_rows)."""
        return Pattern(id=p.id, label=p.label,
                       values=np.array(p.values, dtype=np.float32) if values is None else values,
                       metadata=dict(p.metadata),
                       expire_time=p.expire_time.ToNanoseconds() / 1e9
                       if p.HasField("expire_time") else None)


class IncompleteImport(RuntimeError):
    """An import the server ended early without an error: `response` says
    what it committed."""

    def __init__(self, message: str, response: "pb.ImportPatternsResponse"):
        super().__init__(message)
        self.response = response


def _enum_name(value: int, enum: _descriptor.EnumDescriptor) -> str:
    return enum.values_by_number[value].name.lower()


def _set_path(message: _message.Message, path: str, value: Any, name: str) -> None:
    """Sets the field at dotted `path`; enums by name in any case (or number)."""
    *parents, leaf = path.split(".")
    for part in parents:
        message = getattr(message, part)
    field = message.DESCRIPTOR.fields_by_name[leaf]
    if field.message_type is not None and field.message_type.full_name == \
            "google.protobuf.Duration":
        getattr(message, leaf).FromNanoseconds(int(round(float(value) * 1e9)))
        return
    if field.enum_type is not None and isinstance(value, str):
        found = field.enum_type.values_by_name.get(value.upper())
        if found is None or found.number == 0:
            choices = [v.name.lower() for v in field.enum_type.values if v.number != 0]
            raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")
        value = found.number
    setattr(message, leaf, value)


def _settings_to_store(store: pb.Store, settings: Mapping[str, Any],
                       calibration: Optional[Mapping[str, Any]]) -> List[str]:
    """Sets the given settings on `store`; returns their field paths."""
    paths = []
    for name, value in settings.items():
        if name not in SETTINGS:
            raise TypeError(f"unknown setting {name!r}; settings: {', '.join(SETTINGS)}, "
                            "calibration={...}")
        _set_path(store, SETTINGS[name], value, name)
        paths.append(SETTINGS[name])
    for name, value in (calibration or {}).items():
        if name not in pb.CalibrationSettings.DESCRIPTOR.fields_by_name:
            raise TypeError(f"unknown calibration setting {name!r}; settings: "
                            f"{', '.join(pb.CalibrationSettings.DESCRIPTOR.fields_by_name)}")
        _set_path(store, "calibration." + name, value, name)
        paths.append("calibration." + name)
    return paths


# Vectors go over the wire without a Python float per value: a message's
# `repeated float` field is one length-delimited run of little-endian float32
# (packed), which numpy writes and reads in one go. Building the message
# through the generated classes instead converts every value to and from a
# Python float (16 ms each way for 256 queries of 784 values, more than the
# retrieval). Protobuf reads a message's fields in any order and merges
# concatenated messages, so the other fields still go through the generated
# classes and are joined to the vectors as bytes.


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(buf: bytes, pos: int) -> "tuple[int, int]":
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _rows_field(field: int, rows: np.ndarray, values_field: int,
                rest: Optional[Sequence[bytes]] = None) -> bytes:
    """The wire bytes of `field`, a repeated message field, with one message
    per row of `rows`: the row as packed float32 in the message's
    `values_field`, then rest[i] (that message's other fields, serialized)."""
    rows = np.ascontiguousarray(rows, dtype="<f4")
    n, d = rows.shape
    values_head = _varint(values_field << 3 | 2) + _varint(4 * d)
    tag = _varint(field << 3 | 2)
    if rest is None:  # Every message the same length: one numpy copy.
        head = tag + _varint(len(values_head) + 4 * d) + values_head
        out = np.empty((n, len(head) + 4 * d), np.uint8)
        out[:, :len(head)] = np.frombuffer(head, np.uint8)
        out[:, len(head):] = rows.view(np.uint8).reshape(n, 4 * d)
        return out.tobytes()
    return b"".join(tag + _varint(len(values_head) + 4 * d + len(r)) + values_head +
                    row.tobytes() + r for row, r in zip(rows, rest))


def _skip(buf: bytes, pos: int, kind: int) -> Optional[int]:
    """The position after a field's value of wire type `kind` at `pos`."""
    if kind == 0:
        return _read_varint(buf, pos)[1]
    if kind in (1, 5):
        return pos + (8 if kind == 1 else 4)
    if kind == 2:
        length, pos = _read_varint(buf, pos)
        return pos + length
    return None  # Groups: engramd never sends them.


def _packed_rows(raw: bytes, field: int, values_field: int, count: int,
                 dim: int) -> Optional[np.ndarray]:
    """The packed float32 `values_field` of each message of the repeated
    message field `field`, read straight from the wire bytes `raw` of the
    enclosing message, as a count x dim array; None if the bytes do not hold
    exactly `count` such messages with `dim` values each."""
    out = np.empty((count, dim), np.float32)
    i = pos = 0
    while pos < len(raw):
        key, pos = _read_varint(raw, pos)
        if key != (field << 3 | 2):
            pos = _skip(raw, pos, key & 7)
            if pos is None:
                return None
            continue
        length, pos = _read_varint(raw, pos)
        end, at, found = pos + length, pos, False
        while at < end and not found:  # engramd writes the values first.
            inner, at = _read_varint(raw, at)
            if inner == (values_field << 3 | 2):
                size, at = _read_varint(raw, at)
                if size != 4 * dim or i >= count:
                    return None
                out[i] = np.frombuffer(raw, "<f4", dim, at)
                found = True
            else:
                at = _skip(raw, at, inner & 7)
                if at is None:
                    return None
        if not found:
            return None
        i += 1
        pos = end
    return out if i == count else None


def _read_pem(value: Union[bytes, str, None]) -> Optional[bytes]:
    """PEM text as bytes; a str is a file holding it."""
    if value is None or isinstance(value, bytes):
        return value
    with open(value, "rb") as f:
        return f.read()


def _fsync_dir(path: str) -> None:
    """Makes a directory's entries (files created, renamed) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Client:
    """One channel to engramd; safe to share between threads.

    Errors are grpc.RpcError with the server's status code and message.
    Calls that are safe to repeat (reads, Retrieve, the cancels) are retried
    `retries` times on UNAVAILABLE after 50 ms, 100 ms, ... (with jitter);
    writes are not, since a write whose answer was lost may have been applied.
    """

    def __init__(self, address: Optional[str] = None, *, token: Optional[str] = None,
                 tls_ca: Union[bytes, str, None] = None, tls_cert: Union[bytes, str, None] = None,
                 tls_key: Union[bytes, str, None] = None, tls_server_name: Optional[str] = None,
                 timeout: float = 60.0, retries: int = 3, max_message_mb: int = 256):
        """address: HOST:PORT or unix:PATH (engramd on a Unix socket), else
        $ENGRAM_ADDR (if set), else 127.0.0.1:50051.
        token: the bearer token, else $ENGRAM_TOKEN (if set), else none.
        tls_ca/tls_cert/tls_key: PEM bytes, or the path of a PEM file. With
        tls_ca the channel is TLS; with tls_cert and tls_key also mutual TLS."""
        address = address or os.environ.get("ENGRAM_ADDR") or "127.0.0.1:50051"
        if token is None:
            token = os.environ.get("ENGRAM_TOKEN") or None
        options = [("grpc.max_receive_message_length", max_message_mb << 20),
                   ("grpc.max_send_message_length", max_message_mb << 20),
                   # Answers of many vectors are megabytes: a stream window
                   # of 8 MiB from the start, as engramd and the C++ client
                   # use, spares the flow-control round trips of growing it.
                   ("grpc.http2.lookahead_bytes", 8 << 20)]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if tls_ca is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_pem(tls_ca), private_key=_read_pem(tls_key),
                certificate_chain=_read_pem(tls_cert))
            self._channel = grpc.secure_channel(address, credentials, options)
        elif tls_cert is not None or tls_key is not None:
            raise ValueError("tls_cert and tls_key need tls_ca (the server's CA)")
        else:
            self._channel = grpc.insecure_channel(address, options)
        self._stub = pb_grpc.EngramStub(self._channel)
        # The methods that carry vectors, on wire bytes (see _rows_field).
        service = "/" + pb.DESCRIPTOR.services_by_name["Engram"].full_name + "/"
        self._retrieve_raw = self._channel.unary_unary(service + "Retrieve")
        self._list_raw = self._channel.unary_unary(service + "ListPatterns")
        self._add_raw = self._channel.unary_unary(
            service + "AddPatterns", response_deserializer=pb.AddPatternsResponse.FromString)
        self._import_raw = self._channel.stream_unary(
            service + "ImportPatterns",
            response_deserializer=pb.ImportPatternsResponse.FromString)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self._timeout = timeout
        self._retries = retries

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, method: Callable, request: Union[_message.Message, bytes], *,
              repeatable: bool):
        attempts = 1 + max(0, self._retries) if repeatable else 1
        for attempt in range(attempts):
            if attempt:
                # Waits out the delay, or less once the channel is back (a
                # channel in reconnect backoff would fail the call at once).
                delay = 0.05 * 2 ** min(attempt - 1, 10) * random.uniform(0.8, 1.2)
                try:
                    grpc.channel_ready_future(self._channel).result(timeout=delay)
                except grpc.FutureTimeoutError:
                    pass
            try:
                return method(request, timeout=self._timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt + 1 == attempts:
                    raise
        raise AssertionError("unreachable")

    def _stream(self, method: Callable, request: _message.Message) -> Iterator:
        # No deadline: a job can take long.
        return iter(method(request, metadata=self._metadata))

    # --- Stores ---

    def create_store(self, name: str, dim: int, *,
                     calibration: Optional[Mapping[str, Any]] = None,
                     **settings: Any) -> pb.Store:
        """Creates a store of `dim`-dimensional patterns.

        Settings are keywords of SETTINGS (e.g. similarity="l2",
        separation="entmax15", beta=10, top_k=3, feature_map="uhop",
        fit_epochs=50); enums by name in any case. Settings not given take the
        server's defaults. calibration={...} sets pb.CalibrationSettings
        fields (e.g. corruption="gaussian", level=0.3). beta="auto" turns on
        automatic calibration that applies what it finds."""
        store = pb.Store(name=name, dimension=dim)
        settings = dict(settings)
        calibration = dict(calibration or {})
        if settings.get("beta") == "auto":
            del settings["beta"]
            calibration.setdefault("automatic", True)
            calibration.setdefault("apply", True)
        _settings_to_store(store, settings, calibration)
        return self._call(self._stub.CreateStore, pb.CreateStoreRequest(store=store),
                          repeatable=False)

    def get_store(self, name: str) -> pb.Store:
        return self._call(self._stub.GetStore, pb.GetStoreRequest(name=name), repeatable=True)

    def list_stores(self) -> List[pb.Store]:
        stores: List[pb.Store] = []
        token = ""
        while True:
            r = self._call(self._stub.ListStores,
                           pb.ListStoresRequest(page_size=1000, page_token=token),
                           repeatable=True)
            stores.extend(r.stores)
            token = r.next_page_token
            if not token:
                return stores

    def update_store(self, name: str, *, calibration: Optional[Mapping[str, Any]] = None,
                     **settings: Any) -> pb.Store:
        """Changes the settings given (as create_store takes them), only those."""
        store = pb.Store(name=name)
        paths = _settings_to_store(store, settings, calibration)
        if not paths:
            raise ValueError("update_store needs a setting to change, e.g. beta=2")
        request = pb.UpdateStoreRequest(store=store)
        request.update_mask.paths.extend(paths)
        return self._call(self._stub.UpdateStore, request, repeatable=False)

    def delete_store(self, name: str) -> None:
        self._call(self._stub.DeleteStore, pb.DeleteStoreRequest(name=name), repeatable=False)

    # --- Patterns ---

    @staticmethod
    def _patterns(x: np.ndarray, first: int, count: int, labels: Optional[Sequence[str]],
                  ids: Optional[Sequence[int]],
                  metadata: Optional[Sequence[Mapping[str, str]]],
                  ttl: Optional[float] = None) -> bytes:
        """Rows first..first+count as the wire bytes of `patterns` (field 2
        of AddPatternsRequest and ImportPatternsRequest)."""
        rest = None
        if ids is not None or labels is not None or metadata is not None or ttl is not None:
            rest = []
            for i in range(first, first + count):
                p = pb.Pattern(id=int(ids[i]) if ids is not None else 0,
                               label=str(labels[i]) if labels is not None else "",
                               metadata=dict(metadata[i]) if metadata is not None else {})
                if ttl is not None:
                    p.ttl.FromNanoseconds(int(round(ttl * 1e9)))
                rest.append(p.SerializeToString())
        return _rows_field(2, x[first:first + count], 2, rest)

    @staticmethod
    def _matrix(vectors: Any) -> np.ndarray:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"vectors must be 2-D, got shape {x.shape}")
        return x

    def add(self, store: str, vectors: Any, *, labels: Optional[Sequence[str]] = None,
            ids: Optional[Sequence[int]] = None,
            metadata: Optional[Sequence[Mapping[str, str]]] = None,
            batch: int = 2048, ttl: Optional[float] = None) -> np.ndarray:
        """Adds the rows of `vectors` (n x d); returns their ids (uint64).
        Each batch of `batch` rows is one atomic AddPatterns. `ttl` (seconds)
        makes them expire that long after the add (else the store's
        default_ttl, if any)."""
        x = self._matrix(vectors)
        out: List[int] = []
        for first in range(0, len(x), batch):
            count = min(batch, len(x) - first)
            r = self._call(self._add_raw, pb.AddPatternsRequest(store=store).SerializeToString() +
                           self._patterns(x, first, count, labels, ids, metadata, ttl),
                           repeatable=False)
            out.extend(r.ids)
        return np.array(out, dtype=np.uint64)

    def import_patterns(self, store: str, vectors: Any, *,
                        labels: Optional[Sequence[str]] = None,
                        metadata: Optional[Sequence[Mapping[str, str]]] = None,
                        batch: int = 1024) -> pb.ImportPatternsResponse:
        """Streams the rows of `vectors` in messages of `batch` rows (for
        imports larger than one message); returns what was committed."""
        x = self._matrix(vectors)
        firsts = range(0, max(len(x), 1), batch)

        def messages() -> Iterator[bytes]:
            for first in firsts:
                count = min(batch, len(x) - first)
                yield (pb.ImportPatternsRequest(store=store if first == 0 else "")
                       .SerializeToString() +
                       self._patterns(x, first, count, labels, None, metadata))

        r = self._import_raw(messages(), timeout=self._timeout, metadata=self._metadata)
        # A message the server could not read ends the stream for it, and it
        # answers for the messages before: say so rather than return them.
        if r.batches != len(firsts):
            raise IncompleteImport(
                f"the server read {r.batches} of the {len(firsts)} messages and added "
                f"{r.patterns_added} of the {len(x)} patterns; the rest were not added", r)
        return r

    def get_pattern(self, store: str, pattern_id: int) -> Pattern:
        return Pattern.from_proto(self._call(
            self._stub.GetPattern, pb.GetPatternRequest(store=store, id=pattern_id),
            repeatable=True))

    def get(self, store: str, pattern_id: int) -> np.ndarray:
        """The values of one pattern."""
        return self.get_pattern(store, pattern_id).values

    def list_patterns(self, store: str, *, values: bool = True,
                      page_size: int = 1000) -> Iterator[Pattern]:
        """Every pattern in id order, a page at a time."""
        token = ""
        while True:
            raw = self._call(self._list_raw, pb.ListPatternsRequest(
                store=store, page_size=page_size, page_token=token,
                omit_values=not values).SerializeToString(), repeatable=True)
            r = pb.ListPatternsResponse.FromString(raw)
            dim = len(r.patterns[0].values) if len(r.patterns) else 0
            rows = _packed_rows(raw, 1, 2, len(r.patterns), dim) if values and dim else None
            for i, p in enumerate(r.patterns):
                yield Pattern.from_proto(p, None if rows is None else rows[i])
            token = r.next_page_token
            if not token:
                return

    def delete(self, store: str, ids: Iterable[int]) -> int:
        """Deletes patterns by id, all or none; returns the patterns left."""
        return self._call(self._stub.DeletePatterns, pb.DeletePatternsRequest(
            store=store, ids=[int(i) for i in ids]), repeatable=False).pattern_count

    # --- Stage II ---

    def retrieve(self, store: str, queries: Any, *, beta: Optional[float] = None,
                 steps: Optional[int] = None, top_k: Optional[int] = None,
                 eps: Optional[float] = None, path: str = "auto",
                 tolerance: Optional[float] = None, vectors: bool = True,
                 where_label: Optional[Sequence[str]] = None,
                 where: Optional[Mapping[str, str]] = None, where_any: bool = False) -> Recall:
        """Recalls stored patterns from `queries` (L x d, or one d-vector).

        `where_label` (labels) and `where` (metadata key -> value, all of them
        or, with `where_any`, any) restrict the recall to the matching
        patterns, exactly as if the store held only them."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2:
            raise ValueError(f"queries must be 1-D or 2-D, got shape {q.shape}")
        request = pb.RetrieveRequest(store=store, omit_vectors=not vectors)
        _set_path(request, "path", path, "path")
        if where_label or where:
            request.filter.labels.extend(where_label or [])
            for key, value in (where or {}).items():
                request.filter.metadata.add(key=key, value=value)
            if where_any:
                request.filter.combine = pb.Filter.ANY
        for field, value in (("beta", beta), ("steps", steps), ("top_k", top_k), ("eps", eps),
                             ("tolerance", tolerance)):
            if value is not None:
                setattr(request, field, value)
        raw = self._call(self._retrieve_raw,
                         request.SerializeToString() + _rows_field(2, q, 1), repeatable=True)
        r = pb.RetrieveResponse.FromString(raw)
        out = np.zeros((0, 0), np.float32)
        if vectors:
            dim = len(r.results[0].values) if len(r.results) else 0
            out = _packed_rows(raw, 1, 1, len(r.results), dim)
            if out is None:  # Not as engramd writes it: the slow, general way.
                out = np.array([list(res.values) for res in r.results], dtype=np.float32)
        k = max((len(res.matches) for res in r.results), default=0)
        ids = np.zeros((len(r.results), k), dtype=np.uint64)
        weights = np.zeros((len(r.results), k), dtype=np.float32)
        for i, res in enumerate(r.results):
            ids[i, :len(res.matches)] = [m.id for m in res.matches]
            weights[i, :len(res.matches)] = [m.weight for m in res.matches]
        return Recall(
            vectors=out, ids=ids, weights=weights,
            labels=[[m.label for m in res.matches] for res in r.results],
            energy=np.array([res.energy for res in r.results]),
            steps=np.array([res.steps for res in r.results], dtype=np.uint32),
            path=_enum_name(r.path.path, pb.RetrievalPath.DESCRIPTOR), degree=r.path.degree,
            rank=r.path.rank, error_bound=r.path.error_bound, reason=r.path.reason)

    # --- Stage I ---

    def fit_status(self, store: str) -> pb.FitStatus:
        return self._call(self._stub.GetFitStatus, pb.GetFitStatusRequest(store=store),
                          repeatable=True)

    def start_fit(self, store: str) -> pb.FitStatus:
        return self._call(self._stub.StartFit, pb.StartFitRequest(store=store),
                          repeatable=False)

    def cancel_fit(self, store: str) -> pb.FitStatus:
        return self._call(self._stub.CancelFit, pb.CancelFitRequest(store=store),
                          repeatable=True)

    def watch_fit(self, store: str) -> Iterator[pb.FitStatus]:
        """The fit's status at every change, until it ends."""
        return self._stream(self._stub.WatchFit, pb.WatchFitRequest(store=store))

    def fit(self, store: str, *, wait: bool = True) -> pb.FitStatus:
        """Starts a fit; with wait, follows it and returns the final status."""
        status = self.start_fit(store)
        if wait:
            for status in self.watch_fit(store):
                pass
        return status

    # --- Calibration ---

    def start_calibration(self, store: str, *, apply: Optional[bool] = None
                          ) -> pb.CalibrationStatus:
        request = pb.StartCalibrationRequest(store=store)
        if apply is not None:
            request.apply = apply
        return self._call(self._stub.StartCalibration, request, repeatable=False)

    def calibration(self, store: str) -> pb.CalibrationStatus:
        """The calibration's state and the last report."""
        return self._call(self._stub.GetCalibrationStatus,
                          pb.GetCalibrationStatusRequest(store=store), repeatable=True)

    def cancel_calibration(self, store: str) -> pb.CalibrationStatus:
        return self._call(self._stub.CancelCalibration,
                          pb.CancelCalibrationRequest(store=store), repeatable=True)

    def watch_calibration(self, store: str) -> Iterator[pb.CalibrationStatus]:
        """The calibration's status at every change, until it ends."""
        return self._stream(self._stub.WatchCalibration,
                            pb.WatchCalibrationRequest(store=store))

    def calibrate(self, store: str, *, apply: Optional[bool] = None,
                  wait: bool = True) -> pb.CalibrationStatus:
        """Queues a calibration; with wait, returns the final status (its
        `report` holds the setting found and the capacity figures)."""
        status = self.start_calibration(store, apply=apply)
        if wait:
            for status in self.watch_calibration(store):
                pass
        return status

    # --- Backups ---

    def create_backup(self, directory: str, *, store: str = "") -> Dict[str, Any]:
        """Writes an online backup of every store (or `store`) into
        `directory`, which must not exist or be empty: into DIR.partial
        first (every file synced), then renamed; then verified. Returns the
        manifest. A backup that fails leaves no directory behind."""
        if os.path.isdir(directory) and os.listdir(directory):
            raise FileExistsError(f"{directory} exists and is not empty")
        partial = directory.rstrip("/") + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        out, name = None, None

        def close():
            out.flush()
            os.fsync(out.fileno())
            out.close()

        try:
            for chunk in self._stub.CreateBackup(pb.CreateBackupRequest(store=store),
                                                 metadata=self._metadata):
                if chunk.file != name:
                    if out:
                        close()
                        out = None
                    if not _BACKUP_FILE.match(chunk.file):
                        raise ValueError(f"the server sent file {chunk.file!r}")
                    path = os.path.join(partial, chunk.file)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    out, name = open(path, "xb"), chunk.file
                out.write(chunk.data)
            if out:
                close()
                out = None
        except BaseException:
            if out:
                out.close()
            shutil.rmtree(partial, ignore_errors=True)
            raise
        for root, dirs, _ in os.walk(partial, topdown=False):
            _fsync_dir(root)
        if os.path.isdir(directory):
            os.rmdir(directory)
        os.rename(partial, directory)
        _fsync_dir(os.path.dirname(os.path.abspath(directory)))
        return verify_backup(directory)

    def restore_store(self, directory: str, *, store: str = "", name: str = "",
                      replace: bool = False, piece: int = 1 << 20) -> pb.Store:
        """Restores `store` of the backup in `directory` ("": its only
        store) under `name` ("": its own), all or nothing; a store of that
        name is replaced only with `replace`."""
        manifest = verify_backup(directory)
        stores = {s["name"]: s for s in manifest.get("stores", [])}
        if not store and len(stores) == 1:
            store = next(iter(stores))
        if store not in stores:
            raise ValueError(f"the backup holds no store {store!r} (it holds {sorted(stores)})")
        paths = ["manifest.json", "manifest.sha256"] + [f["path"] for f in stores[store]["files"]]

        def messages() -> Iterator[pb.RestoreStoreRequest]:
            yield pb.RestoreStoreRequest(source=store, name=name, replace=replace)
            for path in paths:
                with open(os.path.join(directory, path), "rb") as f:
                    data = f.read()
                for at in range(0, max(len(data), 1), piece):
                    yield pb.RestoreStoreRequest(chunk=pb.BackupChunk(
                        file=path, data=data[at:at + piece]))

        return self._stub.RestoreStore(messages(), metadata=self._metadata)

    def health(self, service: str = "") -> str:
        """"SERVING", "NOT_SERVING", ... of the server ("") or a service."""
        r = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service),
                       repeatable=True)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
