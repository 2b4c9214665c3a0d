"""A small Python client for engram, over the same proto as the server.

    import numpy as np
    from engram_client import Client

    with Client("127.0.0.1:50051") as engram:
        engram.create_store("faces", dim=784, similarity="l2")
        ids = engram.add("faces", images)                 # (n, 784) float array
        r = engram.retrieve("faces", noisy, beta=10, top_k=3)
        r.vectors, r.ids, r.weights, r.energy, r.steps   # numpy arrays

Vectors go in and come out as numpy arrays. Errors are grpc.RpcError with the
server's status code and message. The generated modules (engram.v1) are
built by CMake into build/python; put that directory on sys.path (or set
PYTHONPATH) next to this package.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Iterable, Optional, Sequence

import grpc
import numpy as np

from engram.v1 import engram_pb2 as pb
from engram.v1 import engram_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["Client", "Recall"]

_SIMILARITIES = {"dot": pb.DOT, "l2": pb.L2, "manhattan": pb.MANHATTAN, "cosine": pb.COSINE,
                 "kernel_dot": pb.KERNEL_DOT, "kernel_l2": pb.KERNEL_L2}
_SEPARATIONS = {"softmax": pb.SOFTMAX, "sparsemax": pb.SPARSEMAX, "entmax15": pb.ENTMAX15}
_PATHS = {"auto": pb.AUTO, "exact": pb.EXACT, "low_rank": pb.LOW_RANK}


@dataclasses.dataclass
class Recall:
    """What one Retrieve returned, query by query."""
    vectors: np.ndarray   # (L, d) float32; empty if omitted
    ids: np.ndarray       # (L, k) uint64, best first
    weights: np.ndarray   # (L, k) float32
    labels: list          # L lists of k labels
    energy: np.ndarray    # (L,) float64
    steps: np.ndarray     # (L,) uint32
    path: str             # "exact" or "low_rank"
    degree: int = 0       # Taylor degree g of the low-rank path
    rank: int = 0         # its rank r
    error_bound: float = 0.0  # proved bound on ||y_lowrank - y_exact||_2
    reason: str = ""      # why the planner chose the path


class Client:
    """One channel to engramd; safe to share between threads."""

    def __init__(self, address: str = "127.0.0.1:50051", *, token: Optional[str] = None,
                 tls_ca: Optional[bytes] = None, timeout: float = 60.0,
                 max_message_mb: int = 256):
        options = [("grpc.max_receive_message_length", max_message_mb << 20),
                   ("grpc.max_send_message_length", max_message_mb << 20)]
        if tls_ca is not None:
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(tls_ca), options)
        else:
            self._channel = grpc.insecure_channel(address, options)
        self._stub = pb_grpc.EngramStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self._timeout = timeout

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request):
        return method(request, timeout=self._timeout, metadata=self._metadata)

    # Stores.
    def create_store(self, name: str, dim: int, *, similarity: str = "dot",
                     separation: str = "softmax", beta: float = 1.0, steps: int = 1,
                     eps: float = 0.0, top_k: int = 5, uhop: bool = False,
                     feature_dim: int = 0, fit_epochs: int = 100, fit_loss: str = "max",
                     calibration: Optional[dict] = None):
        """beta="auto" calibrates in the background and applies what it finds;
        `calibration` sets CalibrationSettings fields (e.g. corruption="gaussian",
        level=0.3, search_similarity=True)."""
        auto = beta == "auto"
        store = pb.Store(name=name, dimension=dim, retrieval=pb.RetrievalSettings(
            similarity=_SIMILARITIES[similarity], separation=_SEPARATIONS[separation],
            beta=0.0 if auto else beta, steps=steps, eps=eps, top_k=top_k))
        settings = dict(calibration or {})
        if auto:
            settings.setdefault("automatic", True)
            settings.setdefault("apply", True)
        if isinstance(settings.get("corruption"), str):
            settings["corruption"] = pb.Corruption.Value(settings["corruption"].upper())
        store.calibration.CopyFrom(pb.CalibrationSettings(**settings))
        if uhop:
            store.feature_map.CopyFrom(pb.FeatureMapSettings(
                kind=pb.UHOP, feature_dim=feature_dim, epochs=fit_epochs,
                loss=pb.MEAN if fit_loss == "mean" else pb.MAX))
        return self._call(self._stub.CreateStore, pb.CreateStoreRequest(store=store))

    def get_store(self, name: str):
        return self._call(self._stub.GetStore, pb.GetStoreRequest(name=name))

    def list_stores(self) -> list:
        stores, token = [], ""
        while True:
            r = self._call(self._stub.ListStores, pb.ListStoresRequest(page_size=1000, page_token=token))
            stores.extend(r.stores)
            token = r.next_page_token
            if not token:
                return stores

    def delete_store(self, name: str):
        self._call(self._stub.DeleteStore, pb.DeleteStoreRequest(name=name))

    # Patterns.
    def add(self, store: str, vectors, *, labels: Optional[Sequence[str]] = None,
            ids: Optional[Sequence[int]] = None, batch: int = 2048) -> np.ndarray:
        """Adds the rows of `vectors` (n x d); returns their ids. Each batch is atomic."""
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"vectors must be 2-D, got shape {x.shape}")
        out = []
        for first in range(0, len(x), batch):
            patterns = [pb.Pattern(values=row, id=int(ids[first + i]) if ids is not None else 0,
                                   label=str(labels[first + i]) if labels is not None else "")
                        for i, row in enumerate(x[first:first + batch])]
            r = self._call(self._stub.AddPatterns, pb.AddPatternsRequest(store=store, patterns=patterns))
            out.extend(r.ids)
        return np.array(out, dtype=np.uint64)

    def get(self, store: str, pattern_id: int) -> np.ndarray:
        p = self._call(self._stub.GetPattern, pb.GetPatternRequest(store=store, id=pattern_id))
        return np.array(p.values, dtype=np.float32)

    def delete(self, store: str, ids: Iterable[int]):
        self._call(self._stub.DeletePatterns, pb.DeletePatternsRequest(store=store, ids=list(ids)))

    # Stage II.
    def retrieve(self, store: str, queries, *, beta: Optional[float] = None,
                 steps: Optional[int] = None, top_k: Optional[int] = None,
                 eps: Optional[float] = None, path: str = "auto",
                 tolerance: Optional[float] = None, vectors: bool = True) -> Recall:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        request = pb.RetrieveRequest(store=store, queries=[pb.Query(values=row) for row in q],
                                     path=_PATHS[path], omit_vectors=not vectors)
        for field, value in (("beta", beta), ("steps", steps), ("top_k", top_k), ("eps", eps),
                             ("tolerance", tolerance)):
            if value is not None:
                setattr(request, field, value)
        r = self._call(self._stub.Retrieve, request)
        k = max((len(res.matches) for res in r.results), default=0)
        ids = np.zeros((len(r.results), k), dtype=np.uint64)
        weights = np.zeros((len(r.results), k), dtype=np.float32)
        for i, res in enumerate(r.results):
            ids[i, :len(res.matches)] = [m.id for m in res.matches]
            weights[i, :len(res.matches)] = [m.weight for m in res.matches]
        return Recall(
            vectors=np.array([list(res.values) for res in r.results], dtype=np.float32)
            if vectors else np.zeros((0, 0), np.float32),
            ids=ids, weights=weights,
            labels=[[m.label for m in res.matches] for res in r.results],
            energy=np.array([res.energy for res in r.results]),
            steps=np.array([res.steps for res in r.results], dtype=np.uint32),
            path=pb.RetrievalPath.Name(r.path.path).lower(), degree=r.path.degree,
            rank=r.path.rank, error_bound=r.path.error_bound, reason=r.path.reason)

    # Stage I.
    def fit(self, store: str, *, wait: bool = True, poll: float = 0.2):
        """Starts a fit; with wait, returns the final FitStatus."""
        status = self._call(self._stub.StartFit, pb.StartFitRequest(store=store))
        while wait and status.state in (pb.FitStatus.PENDING, pb.FitStatus.RUNNING):
            time.sleep(poll)
            status = self._call(self._stub.GetFitStatus, pb.GetFitStatusRequest(store=store))
        return status

    # Calibration.
    def calibrate(self, store: str, *, apply: Optional[bool] = None, wait: bool = True,
                  poll: float = 0.1):
        """Queues a calibration; with wait, returns the final CalibrationStatus
        (its `report` holds the setting found and the capacity figures)."""
        request = pb.StartCalibrationRequest(store=store)
        if apply is not None:
            request.apply = apply
        status = self._call(self._stub.StartCalibration, request)
        busy = (pb.CalibrationStatus.PENDING, pb.CalibrationStatus.RUNNING)
        while wait and status.state in busy:
            time.sleep(poll)
            status = self.calibration(store)
        return status

    def calibration(self, store: str):
        return self._call(self._stub.GetCalibrationStatus,
                          pb.GetCalibrationStatusRequest(store=store))

    def health(self, service: str = "") -> str:
        r = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self._timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
