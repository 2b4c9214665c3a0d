#!/usr/bin/python3
"""Server reflection: a client that has no engram code learns the API from a
running engramd and calls it, as grpcurl or Postman would.

Usage: reflection_test.py BIN_DIR PYTHON_DIR
"""
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Engramd, reflected_services  # noqa: E402

BIN, PYDIR = sys.argv.pop(1), sys.argv.pop(1)
sys.path.insert(0, PYDIR)
import grpc  # noqa: E402
from google.protobuf import message_factory  # noqa: E402
from grpc_reflection_client.v1alpha import reflection_pb2 as rpb  # noqa: E402
from grpc_reflection_client.v1alpha import reflection_pb2_grpc as rgrpc  # noqa: E402


class ReflectionTest(unittest.TestCase):
    def test_generic_client_discovers_and_calls_engram(self):
        with tempfile.TemporaryDirectory() as tmp:
            server = Engramd(BIN, tmp)
            try:
                addr = server.addr
                channel = grpc.insecure_channel(addr)
                reflection = rgrpc.ServerReflectionStub(channel)

                def ask(**request):
                    return next(iter(reflection.ServerReflectionInfo(
                        iter([rpb.ServerReflectionRequest(**request)]), timeout=10)))

                services = [s.name for s in ask(list_services="").list_services_response.service]
                self.assertIn("engram.v1.Engram", services)
                self.assertIn("grpc.health.v1.Health", services)

                # Build the API from the descriptors the server sends: the
                # engram file and what it imports.
                service, = reflected_services(channel, ["engram.v1.Engram"])
                pool = service.file.pool
                self.assertIn("Retrieve", [m.name for m in service.methods])
                method = service.methods_by_name["CreateStore"]
                factory = message_factory.MessageFactory(pool)
                request_class = factory.GetPrototype(method.input_type)
                response_class = factory.GetPrototype(method.output_type)
                request = request_class()
                request.store.name = "reflected"
                request.store.dimension = 4
                call = channel.unary_unary("/engram.v1.Engram/CreateStore",
                                           request_serializer=lambda m: m.SerializeToString(),
                                           response_deserializer=response_class.FromString)
                store = call(request, timeout=10)
                self.assertEqual(store.name, "reflected")
                self.assertEqual(store.retrieval.beta, 1.0)
                channel.close()
            finally:
                server.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
