"""Kernels compiled for this machine: built once per source, compiler, flags and CPU, cached, and None (the PyTorch
path runs) where they cannot be built."""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import pytest
import torch

from gemma3.model import native_kernels, selective_scan
from gemma3.utils.machine import cpu_flags


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty kernel cache and no loaded kernels, restored afterwards."""
    monkeypatch.setenv(native_kernels.CACHE_ENV, str(tmp_path / "cache"))
    native_kernels.load_kernel.cache_clear()
    selective_scan.fused_cpu_scan.cache_clear()
    yield tmp_path
    native_kernels.load_kernel.cache_clear()
    getattr(selective_scan.fused_cpu_scan, "cache_clear", lambda: None)()  # a test may have replaced it


def test_built_once_per_cpu_and_cached(fresh, monkeypatch):
    assert native_kernels.load_kernel("selective_scan_cpu") is not None
    built = sorted((fresh / "cache").glob("selective_scan_cpu-*.so"))
    assert len(built) == 1
    native_kernels.load_kernel.cache_clear()
    assert native_kernels.load_kernel("selective_scan_cpu") is not None  # from the cache: no second build
    assert sorted((fresh / "cache").glob("*.so")) == built
    # another kind of CPU (different flags) never loads this build
    monkeypatch.setattr(native_kernels, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    native_kernels.load_kernel.cache_clear()
    assert native_kernels.load_kernel("selective_scan_cpu") is not None
    assert len(list((fresh / "cache").glob("selective_scan_cpu-*.so"))) == 2


def test_without_a_compiler_the_pytorch_scan_runs(fresh, monkeypatch, caplog):
    monkeypatch.setenv("CXX", str(fresh / "no-such-compiler"))
    with caplog.at_level(logging.WARNING):
        assert native_kernels.load_kernel("selective_scan_cpu") is None
    assert "selective_scan_cpu.cpp" in caplog.text and "PyTorch path" in caplog.text
    assert selective_scan.fused_cpu_scan() is None
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = dict(u=r(1, 4, 9), delta=r(1, 4, 9).abs(), A=-r(4, 3).abs(), B=r(1, 3, 9), C=r(1, 3, 9))
    torch.testing.assert_close(selective_scan.selective_scan(**x), selective_scan.selective_scan_reference(**x))
    with pytest.raises(RuntimeError, match="could not be built"):
        selective_scan.selective_scan_fused(**x)


def test_a_source_that_does_not_compile_is_named(fresh, monkeypatch, caplog):
    csrc = fresh / "csrc"
    csrc.mkdir()
    (csrc / "broken.cpp").write_text('extern "C" int f() { return undefined_name; }\n')
    monkeypatch.setattr(native_kernels, "CSRC", csrc)
    with caplog.at_level(logging.WARNING):
        assert native_kernels.load_kernel("broken") is None
    assert "broken.cpp" in caplog.text and "undefined_name" in caplog.text
    assert not list((fresh / "cache").glob("*"))  # nothing half-written left in the cache


def test_a_changed_header_rebuilds_the_kernels_that_include_it(fresh, monkeypatch):
    csrc = fresh / "csrc"
    csrc.mkdir()
    (csrc / "value.h").write_text("#pragma once\nconstexpr int kValue = 1;\n")
    (csrc / "uses.cpp").write_text('#include "value.h"\nextern "C" int value() { return kValue; }\n')
    monkeypatch.setattr(native_kernels, "CSRC", csrc)
    assert native_kernels.load_kernel("uses").value() == 1
    (csrc / "value.h").write_text("#pragma once\nconstexpr int kValue = 2;\n")
    native_kernels.load_kernel.cache_clear()
    assert native_kernels.load_kernel("uses").value() == 2  # not the cached build of the old header
    assert len(list((fresh / "cache").glob("uses-*.so"))) == 2


def test_an_unwritable_cache_or_a_damaged_build_falls_back(fresh, monkeypatch, caplog):
    (fresh / "a-file").write_text("")
    monkeypatch.setenv(native_kernels.CACHE_ENV, str(fresh / "a-file" / "cache"))  # a folder under a file
    with caplog.at_level(logging.WARNING):
        assert native_kernels.load_kernel("selective_scan_cpu") is None
    assert "Could not compile" in caplog.text
    monkeypatch.setenv(native_kernels.CACHE_ENV, str(fresh / "cache"))
    native_kernels.load_kernel.cache_clear()
    assert native_kernels.load_kernel("selective_scan_cpu") is not None
    (good,) = (fresh / "cache").glob("selective_scan_cpu-*.so")
    built = fresh / "damaged" / good.name  # the same build, damaged, in another cache (a new path: a fresh dlopen)
    built.parent.mkdir()
    built.write_bytes(b"not a shared library")
    monkeypatch.setenv(native_kernels.CACHE_ENV, str(built.parent))
    native_kernels.load_kernel.cache_clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert native_kernels.load_kernel("selective_scan_cpu") is None
    assert str(built) in caplog.text and "delete the file" in caplog.text


@pytest.mark.skipif("avx2" not in cpu_flags(), reason="runs an AVX2 build, which needs an AVX2 CPU")
def test_an_avx2_build_gives_the_reference_results(fresh, monkeypatch):
    """What an AVX2-only machine compiles (x86-64-v3: AVX2 and FMA, no AVX512), run here: forward and backward,
    full and partial channel tiles, grouped, every extra input."""
    library = fresh / "avx2.so"
    source = native_kernels.CSRC / "selective_scan_cpu.cpp"
    assert native_kernels.compile_kernel(source, library, native_kernels.compiler(), march="x86-64-v3") == ""
    built = ctypes.CDLL(str(library))
    monkeypatch.setattr(selective_scan, "fused_cpu_scan", lambda: selective_scan.scan_entry(built))
    monkeypatch.setattr(selective_scan, "fused_cpu_scan_backward", lambda: selective_scan.backward_entry(built))
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = dict(u=r(2, 40, 61), delta=r(2, 40, 61), A=-torch.exp(r(40, 16)), B=r(2, 2, 16, 61), C=r(2, 2, 16, 61),
             D=r(40), z=r(2, 40, 61), delta_bias=0.1 * r(40))  # fmt: skip
    dy = r(2, 40, 61)
    results = []
    for fn in (selective_scan.selective_scan_fused, selective_scan.selective_scan_reference):
        leaves = {k: v.clone().requires_grad_(True) for k, v in x.items()}
        y = fn(**leaves, delta_softplus=True)
        y.backward(dy)  # the training path: the kernel's backward
        results.append((y.detach(), *(leaves[k].grad for k in x)))
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_the_kernel_runs_on_torchs_own_openmp_runtime(fresh):
    """Built with OpenMP, the kernel binds to the libgomp.so.1 torch loaded (one runtime in the process, so its team
    is the threads torch leaves spinning, not new ones competing with them), and its results do not depend on the
    number of threads."""
    bundled = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    if not bundled.exists() or not Path("/proc/self/maps").exists():
        pytest.skip("this torch does not ship libgomp.so.1 (the kernel then runs its own OpenMP or std::thread)")
    kernel = native_kernels.load_kernel("selective_scan_cpu")
    assert kernel is not None and kernel.gemma3_uses_openmp() == 1
    runtimes = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                if line.split()[-1].endswith("/libgomp.so.1")}  # fmt: skip
    assert {os.path.realpath(r) for r in runtimes} == {os.path.realpath(bundled)}
    g = torch.Generator().manual_seed(0)
    u, delta, z = (torch.randn(2, 40, 33, generator=g) for _ in range(3))
    A, B, C = (
        -torch.rand(40, 8, generator=g) - 0.2,
        torch.randn(2, 8, 33, generator=g),
        torch.randn(2, 8, 33, generator=g),
    )
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(selective_scan.selective_scan_fused(u, delta, A, B, C, z=z, delta_softplus=True))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512f\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512f"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
