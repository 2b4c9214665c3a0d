"""Builds engram_client with its gRPC modules generated from engram's protos.

The modules are generated at build time (protoc and grpc_python_plugin, from
Debian's protobuf-compiler and protobuf-compiler-grpc) under
engram_client/_proto, so they never shadow another package's. protoc must be
3.15 or newer (proto3 `optional`); set PROTOC and GRPC_PYTHON_PLUGIN to use
other binaries than the ones on PATH, and ENGRAM_SOURCE_DIR when building
from a copy of this directory.
"""
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# engram's source tree (this directory's grandparent unless built from a copy).
SOURCE = Path(os.environ.get("ENGRAM_SOURCE_DIR") or HERE.parent.parent)
PROTO_ROOT = SOURCE / "proto"
# Source proto -> where it is generated inside the package.
PROTOS = {
    "engram/v1/engram.proto": "engram_client/_proto/engram/v1/engram.proto",
    "grpc/health/v1/health.proto": "engram_client/_proto/health/v1/health.proto",
}


def _tool(env, name):
    path = os.environ.get(env) or shutil.which(name)
    if not path:
        raise SystemExit(f"engram_client: {name} not found (install protobuf-compiler "
                         f"and protobuf-compiler-grpc, or set {env})")
    return path


def generate(out_dir):
    protoc = _tool("PROTOC", "protoc")
    plugin = _tool("GRPC_PYTHON_PLUGIN", "grpc_python_plugin")
    version = subprocess.run([protoc, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"(\d+)\.(\d+)", version)
    if not found or (int(found[1]), int(found[2])) < (3, 15):
        raise SystemExit(f"engram_client: {protoc} is '{version.strip()}'; protoc 3.15 or "
                         "newer is needed (proto3 optional)")
    with tempfile.TemporaryDirectory() as stage:
        for source, target in PROTOS.items():
            if not (PROTO_ROOT / source).is_file():
                raise SystemExit(f"engram_client: {PROTO_ROOT / source} is missing; build "
                                 "from engram's source tree")
            (Path(stage) / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(PROTO_ROOT / source, Path(stage) / target)
        subprocess.run([protoc, "-I", stage, f"--python_out={out_dir}",
                        f"--grpc_python_out={out_dir}",
                        f"--plugin=protoc-gen-grpc_python={plugin}", *PROTOS.values()],
                       check=True)
    for target in PROTOS.values():  # Packages all the way down.
        package = Path(out_dir) / Path(target).parent
        while package != Path(out_dir) / "engram_client":
            (package / "__init__.py").touch()
            package = package.parent


def version():
    """engram's version: project(engram VERSION x.y.z) in CMakeLists.txt."""
    text = (SOURCE / "CMakeLists.txt").read_text()
    return re.search(r"project\(engram VERSION ([0-9.]+)", text)[1]


class BuildWithProtos(build_py):
    def run(self):
        super().run()
        generate(self.build_lib)


setup(version=version(), cmdclass={"build_py": BuildWithProtos})
