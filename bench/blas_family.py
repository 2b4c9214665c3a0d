"""The OpenBLAS kernel family engram chooses, for every OpenBLAS user of a
benchmark's Python process (numpy, PyTorch, FAISS), and proof that they run it.

OpenBLAS reads OPENBLAS_CORETYPE once, when the library loads: call use() before
the first import of numpy, torch or faiss, and check() after them. A peer left
on the family OpenBLAS guesses (SSE3 kernels on CPUs it does not know) runs up
to ten times slower and would make engram look better than it is.
"""
import ctypes
import os
import subprocess
import sys


def _loaded_openblas():
    with open("/proc/self/maps") as maps:
        return sorted({line.split()[-1] for line in maps if "/libopenblas" in line})


def bin_dir_from_argv():
    """The benchmark's BIN_DIR among its arguments (the first that holds
    retrieve_fashion), for scripts that must call use() before parsing them."""
    for arg in sys.argv[1:]:
        if os.path.isfile(os.path.join(arg, "retrieve_fashion")):
            return arg
    raise SystemExit(f"usage: {sys.argv[0]} BIN_DIR ...: the build's bin directory "
                     "(with retrieve_fashion) is needed")


def use(bin_dir):
    """Returns (machine, family, kernels) as retrieve_fashion describes them and
    sets OPENBLAS_CORETYPE to the family for libraries loaded from now on."""
    if _loaded_openblas():
        raise SystemExit("blas_family.use() must run before numpy, torch or faiss is imported")
    lines = subprocess.run([os.path.join(bin_dir, "retrieve_fashion"), "--mode=describe"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    machine = lines[0].removeprefix("# machine: ")
    family = lines[1].removeprefix("# blas_family: ")
    kernels = lines[2].removeprefix("# kernels: ")
    os.environ["OPENBLAS_CORETYPE"] = family
    return machine, family, kernels


def check(family):
    """Exits unless every OpenBLAS loaded in this process runs `family`."""
    libraries = _loaded_openblas()
    if not libraries:
        raise SystemExit("no OpenBLAS is loaded in this process; nothing runs the family")
    for path in libraries:
        library = ctypes.CDLL(path)
        library.openblas_get_corename.restype = ctypes.c_char_p
        running = library.openblas_get_corename().decode()
        if running.lower() != family.lower():
            raise SystemExit(f"{path} runs the {running} kernels, not {family}: "
                             "it was loaded before OPENBLAS_CORETYPE was set")
