"""Small C++ kernels compiled for this machine on first use and called through ``ctypes``.

A kernel is one C++ file in ``gemma3/model/csrc`` with a C entry point and nothing beyond the C++ standard library
and the folder's own headers (``run_jobs.h``, ``vexp.h``):
it compiles in about a second with the system's C++ compiler (``$CXX``, else ``c++`` / ``g++``) at ``-O3
-march=native``, so each machine runs code for its own vector instructions (AVX2, AVX512). The shared library is
cached in ``$GEMMA3_KERNEL_CACHE`` (default ``~/.cache/gemma3/kernels``) under a hash of the source, the compiler,
the flags and this CPU's feature flags, so a build is never loaded on another kind of CPU. Where it cannot be built
(no compiler), `load_kernel` returns None and says why once; every caller keeps a PyTorch path.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path

from gemma3.utils.machine import cpu_flags

logger = logging.getLogger(__name__)

CSRC = Path(__file__).parent / "csrc"
# -fno-trapping-math: without it GCC keeps the float clamps in the scan's exp as branches on AVX2 (AVX512's masks
# if-convert them) and the main loop stays scalar there: 58 instead of 20 ms at VideoMamba-M shapes.
FLAGS = ("-O3", "-mprefer-vector-width=512", "-fno-trapping-math", "-fopenmp-simd", "-shared", "-fPIC", "-pthread")
# The kernels run their threads as an OpenMP team. PyTorch's wheels ship libgomp.so.1 and load it first, so the
# dynamic loader binds the kernel to that same runtime: its team is the threads torch's last operator left spinning
# (with threads of their own, those spinning threads took the cores: a scan after a torch op ran in 26-37 instead of
# 11-16 ms). A compiler without OpenMP builds the std::thread version.
OPENMP = "-fopenmp"
CACHE_ENV = "GEMMA3_KERNEL_CACHE"
DECODE_KERNEL = "decode_cpu"  # csrc/decode_cpu.cpp: the int4 head, the fp16 GEMV, the decoder layer step


def kernel_cache() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gemma3" / "kernels")


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def compile_kernel(source: Path, library: Path, cxx: str, march: str = "native") -> str:
    """Compile ``source`` into the shared library ``library`` for ``-march=<march>`` (written whole or not at all);
    returns "" on success, else what went wrong (the compiler's last lines)."""
    partial = library.with_name(f".{library.name}.{os.getpid()}.tmp")
    try:
        library.parent.mkdir(parents=True, exist_ok=True)
        for openmp in ([OPENMP], []):  # without OpenMP (a compiler lacking it): the kernels' std::thread version
            done = subprocess.run([cxx, f"-march={march}", *FLAGS, *openmp, str(source), "-o", str(partial)],
                                  capture_output=True, text=True, timeout=300)  # fmt: skip
            if done.returncode == 0:
                break
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        return " | ".join(done.stderr.strip().splitlines()[-5:]) or f"exit status {done.returncode}"
    os.replace(partial, library)  # atomic: a concurrent process sees the whole library or none
    return ""


@functools.cache
def load_kernel(name: str) -> ctypes.CDLL | None:
    """``csrc/<name>.cpp`` built for this machine (once; then loaded from the cache), or None when it cannot be built
    (the reason is logged as a warning)."""
    source = CSRC / f"{name}.cpp"
    cxx = compiler()
    if cxx is None:
        logger.warning("No C++ compiler ($CXX, c++, g++): %s runs its PyTorch path", name)
        return None
    machine = " ".join(sorted(cpu_flags())) or platform.machine()
    headers = [h.read_bytes() for h in sorted(CSRC.glob("*.h"))]  # a header's change rebuilds its includers
    key = hashlib.sha1(b"\0".join([source.read_bytes(), *headers, cxx.encode(), " ".join((*FLAGS, OPENMP)).encode(),
                                   machine.encode()]))  # fmt: skip
    library = kernel_cache() / f"{name}-{key.hexdigest()[:16]}.so"
    if not library.exists():
        logger.info("Compiling %s for this CPU -> %s", source.name, library)
        problem = compile_kernel(source, library, cxx)
        if problem:
            logger.warning("Could not compile %s with %s: %s; its PyTorch path runs", source, cxx, problem)
            return None
    try:
        return ctypes.CDLL(str(library))
    except OSError as err:  # a damaged cached build: named, and the PyTorch path runs
        logger.warning("Could not load %s (%s): its PyTorch path runs; delete the file to rebuild it", library, err)
        return None
