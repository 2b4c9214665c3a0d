"""The Python client of engram, over the same proto as the server.

    import numpy as np
    from engram_client import Client

    with Client("127.0.0.1:50051") as engram:
        engram.create_store("faces", dim=784, similarity="l2", beta=10)
        ids = engram.add("faces", images)                 # (n, 784) array
        r = engram.retrieve("faces", noisy, top_k=3)
        r.vectors, r.ids, r.weights, r.energy, r.steps   # numpy arrays
        engram.update_store("faces", beta=20)
        engram.calibrate("faces", apply=True).report     # waits, streaming
        engram.create_backup("backups/monday")           # a directory of files
        engram.restore_store("backups/monday", store="faces", name="faces-old")

Every RPC of engram.v1.Engram has a method (RPCS maps one to the other);
vectors go in and come out as numpy arrays; errors are grpc.RpcError with the
server's status code and message. `pb` holds the API's messages.
"""
from importlib import metadata as _metadata

from engram_client._proto.engram.v1 import engram_pb2 as pb
from engram_client._proto.engram.v1 import engram_pb2_grpc as pb_grpc
from engram_client.client import (RPCS, SETTINGS, Client, IncompleteImport, Pattern, Recall,
                                  verify_backup)

try:
    __version__ = _metadata.version("engram-client")
except _metadata.PackageNotFoundError:  # Imported from a build tree.
    __version__ = "unknown"

__all__ = ["Client", "IncompleteImport", "Pattern", "Recall", "RPCS", "SETTINGS", "pb", "pb_grpc",
           "verify_backup", "__version__"]
