"""Every CUDA C source compiles through NVRTC exactly as ``cupy.RawModule`` compiles it on a GPU
(``kernels/cuda_load.py``: ``compile_options`` plus ``CUPY_ADDED_OPTIONS`` and ``-arch=sm_XX``), for the
A100's and the H100/H200's architectures, with no GPU needed: NVRTC is a library (the ``dev`` extra
installs its wheel, ``nvidia-cuda-nvrtc`` 13.0, the CUDA of the GPU machines' r580 drivers). Its
built-in ptxas reports every kernel's registers and spills (``-Xptxas=-v``): no errors, no warnings,
no spills. Where a ``ptxas`` is on the PATH, it assembles NVRTC's PTX too, with the same verdict.

The compile options carry a hash of the source and every header it includes, so CuPy's kernel
cache, keyed on the source text and the options only, never serves a binary built from an older
header.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from minivae.kernels.wiring import cuda_load

SOURCES = sorted(cuda_load.KERNELS_DIR.rglob("*.cu"))
ARCHS = ["sm_80", "sm_90"]
PTXAS_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'.*?"
                         r"(\d+) bytes spill stores, (\d+) bytes spill loads.*?Used (\d+) registers", re.S)


# ---- NVRTC through ctypes --------------------------------------------------------------------------

def _nvrtc_candidates() -> list[str]:
    """libnvrtc: from the pip wheel (CUDA 13's and 12's layouts), a toolkit, then the loader's path."""
    found = []
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        found += sorted(glob.glob(os.path.join(root, "cu13", "lib", "libnvrtc.so.*")))
        found += sorted(glob.glob(os.path.join(root, "cuda_nvrtc", "lib", "libnvrtc.so.*")))
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            found += sorted(glob.glob(os.path.join(home, "lib64", "libnvrtc.so.*")))
    system = ctypes.util.find_library("nvrtc")
    return [f for f in found if ".alt." not in f] + ([system] if system else [])


@functools.cache
def nvrtc() -> ctypes.CDLL | None:
    for path in _nvrtc_candidates():
        folder = os.path.dirname(path)
        # NVRTC opens its builtins library by name at compile time: a wheel's folder is not on the
        # loader's path, so load it first, globally
        for builtins in sorted(glob.glob(os.path.join(folder, "libnvrtc-builtins.so.*"))):
            if ".alt." not in builtins:
                ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


needs_nvrtc = pytest.mark.skipif(
    nvrtc() is None, reason="no libnvrtc here (pip install -e '.[dev]' brings the nvidia-cuda-nvrtc wheel)")


def _check(lib: ctypes.CDLL, status: int, what: str) -> None:
    if status != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise RuntimeError(f"{what}: {lib.nvrtcGetErrorString(status).decode()}")


def _get(lib: ctypes.CDLL, prog: ctypes.c_void_p, what: str) -> bytes:
    size = ctypes.c_size_t()
    _check(lib, getattr(lib, f"nvrtcGet{what}Size")(prog, ctypes.byref(size)), what)
    buf = ctypes.create_string_buffer(size.value)
    _check(lib, getattr(lib, f"nvrtcGet{what}")(prog, buf), what)
    return buf.raw[:size.value]


@functools.cache
def compile_with_nvrtc(source: Path, arch: str) -> tuple[int, str, bytes, bytes]:
    """(status, log, PTX, cubin) of ``source`` for ``arch``, with CuPy's options and ptxas -v."""
    lib = nvrtc()
    options = [*cuda_load.compile_options(source), *cuda_load.CUPY_ADDED_OPTIONS, f"-arch={arch}",
               "-Xptxas=-v"]
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.read_bytes(), source.name.encode(), 0,
                                       None, None), "nvrtcCreateProgram")
    try:
        argv = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
        status = lib.nvrtcCompileProgram(prog, len(options), argv)
        log = _get(lib, prog, "ProgramLog").rstrip(b"\0").decode(errors="replace")
        ptx = _get(lib, prog, "PTX").rstrip(b"\0") if status == 0 else b""
        cubin = _get(lib, prog, "CUBIN") if status == 0 else b""
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return status, log, ptx, cubin


def assert_no_spills(report: str, source: Path, arch: str) -> None:
    """Every kernel of ``source`` in ptxas' -v ``report``, for ``arch``, with no spill traffic."""
    found = {m[0]: m[1:] for m in PTXAS_ENTRY.findall(report)}
    assert set(found) == set(cuda_load.kernel_signatures(source.read_text())), report
    for name, (got_arch, stores, loads, registers) in found.items():
        assert got_arch == arch, (name, got_arch)
        assert int(stores) == int(loads) == 0, f"{source.name}: {name} spills on {arch}:\n{report}"
        assert 0 < int(registers) <= 255, (name, registers)


# ---- the tests -------------------------------------------------------------------------------------

@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.relative_to(cuda_load.KERNELS_DIR).as_posix())
def test_every_cu_compiles_through_nvrtc_as_cupy_compiles_it_without_spills(source, arch):
    status, log, ptx, cubin = compile_with_nvrtc(source, arch)
    assert status == 0, f"NVRTC failed on {source.name} for {arch}:\n{log}"
    assert not re.search(r"\b(error|warning)\b", log, re.I), log
    assert cubin[:4] == b"\x7fELF" and f".target {arch}".encode() in ptx
    assert_no_spills(log, source, arch)


@needs_nvrtc
@pytest.mark.skipif(shutil.which("ptxas") is None, reason="no ptxas on the PATH (the toolkit is optional)")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.relative_to(cuda_load.KERNELS_DIR).as_posix())
def test_ptxas_assembles_nvrtcs_ptx_without_spills(source, arch, tmp_path):
    status, log, ptx, _ = compile_with_nvrtc(source, arch)
    assert status == 0, log
    path = tmp_path / f"{source.stem}.ptx"
    path.write_bytes(ptx)
    done = subprocess.run(["ptxas", "-v", f"-arch={arch}", str(path), "-o", str(tmp_path / "k.cubin")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{source.name}:\n{done.stderr}"
    assert_no_spills(done.stdout + done.stderr, source, arch)


@needs_nvrtc
def test_nvrtc_reports_a_kernel_that_does_not_compile(tmp_path):
    """NVRTC's status and log say what is wrong with a broken source (here: a name NVRTC lacks
    without the headers nvcc includes implicitly)."""
    broken = tmp_path / "broken.cu"
    broken.write_text('extern "C" __global__ void k(float* y) { y[0] = -INFINITY; }\n')
    status, log, _, _ = compile_with_nvrtc(broken, "sm_90")
    assert status != 0 and 'identifier "INFINITY" is undefined' in log


@needs_nvrtc
def test_a_spilling_kernel_fails_the_spill_check(tmp_path):
    """48 live accumulators under a 32-register cap (1024 threads, 2 blocks per SM): ptxas spills,
    and the check says so (its verdict on the real kernels is not vacuous)."""
    source = tmp_path / "spill.cu"
    source.write_text(
        'extern "C" __global__ __launch_bounds__(1024, 2) void spill(const float* __restrict__ x,\n'
        "                                                          float* __restrict__ y, int n) {\n"
        "    float acc[48];\n"
        "#pragma unroll\n"
        "    for (int j = 0; j < 48; ++j) acc[j] = x[j];\n"
        "    for (int i = 0; i < n; ++i) {\n"
        "#pragma unroll\n"
        "        for (int j = 0; j < 48; ++j) acc[j] = acc[j] * x[i + j] + acc[(j + 7) % 48];\n"
        "    }\n"
        "    float s = 0.0f;\n"
        "#pragma unroll\n"
        "    for (int j = 0; j < 48; ++j) s += acc[j];\n"
        "    y[threadIdx.x] = s;\n"
        "}\n")
    status, log, _, _ = compile_with_nvrtc(source, "sm_90")
    assert status == 0, log
    with pytest.raises(AssertionError, match="spill spills on sm_90"):
        assert_no_spills(log, source, "sm_90")


# ---- the kernel cache key ---------------------------------------------------------------------------

@pytest.fixture
def kernel_tree(tmp_path, monkeypatch):
    """A .cu beside a header of its own, including a header of a stand-in common/ folder."""
    common, room = tmp_path / "common", tmp_path / "room"
    common.mkdir()
    room.mkdir()
    (common / "shared.cuh").write_text("#pragma once\nconstexpr int SHARED = 1;\n")
    (room / "local.cuh").write_text('#pragma once\n#include "shared.cuh"\nconstexpr int LOCAL = 2;\n')
    (room / "k.cu").write_text('#include "local.cuh"\n// #include "commented_out.cuh"\n'
                               'extern "C" __global__ void k(float* y) { y[0] = SHARED + LOCAL; }\n')
    (room / "unrelated.cuh").write_text("constexpr int OTHER = 3;\n")
    monkeypatch.setattr(cuda_load, "COMMON_DIR", common)
    return room / "k.cu"


def test_included_files_follow_quoted_includes_transitively(kernel_tree):
    names = [p.name for p in cuda_load.included_files(kernel_tree)]
    assert names == ["k.cu", "local.cuh", "shared.cuh"]


@pytest.mark.parametrize("edited, changes", [("common/shared.cuh", True), ("room/local.cuh", True),
                                             ("room/k.cu", True), ("room/unrelated.cuh", False)])
def test_the_compile_options_change_with_the_source_and_every_included_header(kernel_tree, edited, changes):
    before = cuda_load.compile_options(kernel_tree)
    path = kernel_tree.parents[1] / edited
    path.write_text(path.read_text() + "// edited\n")
    after = cuda_load.compile_options(kernel_tree)
    assert (before != after) == changes
    assert before[:3] == after[:3] == ("-std=c++17", f"-I{cuda_load.COMMON_DIR}", f"-I{kernel_tree.parent}")


def test_a_missing_header_is_named(kernel_tree):
    kernel_tree.write_text('#include "nowhere.cuh"\n')
    with pytest.raises(ValueError, match=r"k.cu includes 'nowhere.cuh', which is in none of"):
        cuda_load.compile_options(kernel_tree)


def test_cupy_compiles_with_the_hashed_options(monkeypatch):
    """``load(..., "cupy")`` hands cupy.RawModule exactly ``compile_options`` (a stand-in cupy records
    what it gets): what NVRTC is tested with above is what runs on a GPU."""
    seen = []

    class RawModule:
        def __init__(self, code, options):
            seen.append((code, options))

    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(RawModule=RawModule, ndarray=np.ndarray))
    monkeypatch.setattr(cuda_load, "_MODULES", {})
    source = cuda_load.KERNELS_DIR / "adam" / "cuda_c.cu"
    module = cuda_load.load(source, "cupy")
    assert seen == [(source.read_text(), cuda_load.compile_options(source))]
    assert "adam_step" in module.signatures
