"""Every kernel launch in kernels/ hands the kernel arguments of the types it takes.

CuPy passes each argument of ``kernel(grid, block, args)`` by its own type, whatever the C parameter:
an array as a pointer to its dtype, a NumPy scalar by its dtype's size, a Python ``float`` as a
``double`` and a Python ``int`` as a 64-bit integer, so a launch site that hands ``n`` where the
kernel takes ``int`` makes the kernel read garbage, with no error. Numba types a launch's arguments
from their values: a Python float is a float64, which turns a float32 kernel's arithmetic into
float64 (right on the simulator, slow on a GPU).

Every launch site is found in the source (``kernel(...)`` calls of a ``get_function`` result in the
CUDA C launchers, ``nbc.launch(...)`` calls in the Numba CUDA ones), and every one is reached by
bench/smoke.py's cases (every rung, both directions) with stand-ins that record instead of
launching. Each CuPy launch's arguments are checked against the C signature parsed from the
``.cu``: count, pointers as C-contiguous NumPy arrays of the pointer's type, scalars as NumPy
scalars of exactly the parameter's type. Each Numba launch's against the kernel's Python
signature: count, arrays of the case's dtype, float scalars as NumPy scalars of that dtype.
"""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import smoke
from minivae.kernels.wiring import cuda_load

pytest.importorskip("numba", reason="the Numba CUDA launchers need numba (the `numba` extra)")

KERNELS = cuda_load.KERNELS_DIR
LAUNCHER_FILES = sorted(p for p in KERNELS.rglob("*.py") if p.parent not in (KERNELS, KERNELS / "wiring"))
PRODUCTION_SOURCES = sorted(p for p in KERNELS.glob("*/*.cu") if p.parent.name not in ("common", "wiring"))


def launch_sites(path: Path) -> dict[str, list[tuple[int, int]]]:
    """{"cupy": [(first line, last line)], "numba": [...]} of the launch calls in ``path``."""
    tree = ast.parse(path.read_text())
    sites: dict[str, list[tuple[int, int]]] = {"cupy": [], "numba": []}
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        kernels = {t.id for node in ast.walk(fn) if isinstance(node, ast.Assign)
                   and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Attribute)
                   and node.value.func.attr == "get_function"
                   for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(fn):
            if not isinstance(node, ast.Call):
                continue
            if isinstance(node.func, ast.Name) and node.func.id in kernels:
                sites["cupy"].append((node.lineno, node.end_lineno))
            elif (isinstance(node.func, ast.Attribute) and node.func.attr == "launch"
                  and isinstance(node.func.value, ast.Name) and node.func.value.id == "nbc"):
                sites["numba"].append((node.lineno, node.end_lineno))
    return sites


SITES = {(kind, p.relative_to(KERNELS).as_posix(), span): None
         for p in LAUNCHER_FILES for kind, spans in launch_sites(p).items() for span in spans}


def the_site(kind: str, frame) -> tuple[str, str, tuple[int, int]]:
    """The launch site a recorder was called from."""
    rel = Path(frame.f_code.co_filename).resolve().relative_to(KERNELS).as_posix()
    for k, f, (first, last) in SITES:
        if k == kind and f == rel and first <= frame.f_lineno <= last:
            return k, f, (first, last)
    raise AssertionError(f"a {kind} launch from {rel}:{frame.f_lineno}, which the source scan did not find")


@pytest.fixture
def recorded(monkeypatch):
    """Run every smoke case with recorders in place of CuPy's compiled kernels (on NumPy arrays, as
    the emulator takes them) and of ``nbc.launch``; returns the launches."""
    launches = []

    class Recorder:
        def __init__(self, path):
            self.path = Path(path).resolve()
            self.signatures = cuda_load.kernel_signatures(self.path.read_text())

        def get_function(self, name):
            def kernel(grid, block, args):
                launches.append(("cupy", the_site("cupy", sys._getframe(1)), self.path, name, args))

            return kernel

    def launch(kernel, grid, block, *args):
        launches.append(("numba", the_site("numba", sys._getframe(1)), None, kernel, args))

    # imported here, not at the top: importing numba.cuda while the tests are collected would fix
    # its target before the kernel test files select the simulator (tests/kernel_variants.py)
    from minivae.kernels.wiring import numba_cuda as nbc

    monkeypatch.setattr(cuda_load, "load", lambda path, backend="emulate": Recorder(path))
    monkeypatch.setattr(nbc, "launch", launch)
    monkeypatch.setattr(nbc, "array_module", lambda: np)  # GPU or simulator alike: host arrays here
    for case in smoke.cuda_c_cases() + smoke.numba_cuda_cases():
        case.run("emulate")
    return launches


def test_the_source_scan_finds_the_launch_sites():
    cupy_files = {f for kind, f, _ in SITES if kind == "cupy"}
    numba_files = {f for kind, f, _ in SITES if kind == "numba"}
    rooms = ("linear", "latent", "bernoulli", "adam", "importance_weights")
    assert {f"{r}/cuda_c.py" for r in rooms} <= cupy_files
    assert {f"{r}/numba_cuda.py" for r in rooms} <= numba_files
    kinds = [kind for kind, _, _ in SITES]
    assert kinds.count("cupy") >= 7 and kinds.count("numba") >= 7


def test_every_launch_site_and_every_kernel_is_reached(recorded):
    reached = {site for _, site, _, _, _ in recorded}
    missing = [f"{kind} launch at kernels/{f}:{first}" for kind, f, (first, _) in SITES
               if (kind, f, (first, _)) not in reached]
    assert not missing, f"not reached by bench/smoke.py's cases (add a case): {missing}"
    kernels = {(path.name, name) for kind, _, path, name, _ in recorded if kind == "cupy"}
    every = {(p.name, k) for p in PRODUCTION_SOURCES for k in cuda_load.kernel_signatures(p.read_text())}
    assert every - kernels == set(), f"CUDA C kernels no smoke case launches: {sorted(every - kernels)}"


def check_c_arguments(kernel: str, params, args) -> list[str]:
    """What is wrong with ``args`` for a kernel taking ``params`` (empty: nothing)."""
    if len(args) != len(params):
        return [f"{kernel}: {len(args)} arguments for {len(params)} parameters"]
    wrong = []
    for p, a in zip(params, args, strict=True):
        if p.pointer:
            if not (isinstance(a, np.ndarray) and a.dtype == p.dtype and a.flags.c_contiguous):
                wrong.append(f"{kernel}: {p.name} takes a C-contiguous {p.dtype} array, got "
                             f"{type(a).__name__} {getattr(a, 'dtype', '')}")
        elif type(a) is not p.dtype.type:
            wrong.append(f"{kernel}: {p.name} takes np.{p.dtype}, got {type(a).__name__}")
    return wrong


def test_every_cupy_launch_matches_the_kernels_c_signature(recorded):
    wrong = []
    for kind, (_, f, (first, _)), path, name, args in recorded:
        if kind == "cupy":
            wrong += [f"kernels/{f}:{first}: {w}" for w in
                      check_c_arguments(name, cuda_load.kernel_signatures(path.read_text())[name], args)]
    assert not wrong, "\n".join(wrong)


def test_the_c_argument_check_catches_a_python_number_and_a_wrong_dtype():
    params = cuda_load.kernel_signatures(
        'extern "C" __global__ void k(const float* __restrict__ x, float* y, int n, float s) {}')["k"]
    x, y = np.zeros(3, np.float32), np.zeros(3, np.float32)
    assert check_c_arguments("k", params, (x, y, np.int32(3), np.float32(1))) == []
    assert check_c_arguments("k", params, (x, y, 3, np.float32(1))) == ["k: n takes np.int32, got int"]
    assert check_c_arguments("k", params, (x, y, np.int64(3), 1.0)) == [
        "k: n takes np.int32, got int64", "k: s takes np.float32, got float"]
    assert check_c_arguments("k", params, (x.astype(np.float64), y, np.int32(3), np.float32(1))) == [
        "k: x takes a C-contiguous float32 array, got ndarray float64"]
    assert check_c_arguments("k", params, (x, y, np.int32(3))) == ["k: 3 arguments for 4 parameters"]


def python_parameters(kernel) -> list[str]:
    fn = getattr(kernel, "py_func", None) or kernel.fn  # a dispatcher, or the simulator's kernel
    return list(inspect.signature(fn).parameters)


def test_every_numba_launch_matches_the_kernels_parameters_and_dtype(recorded):
    wrong = []
    for kind, (_, f, (first, _)), _, kernel, args in recorded:
        if kind != "numba":
            continue
        where = f"kernels/{f}:{first}"
        names = python_parameters(kernel)
        if len(args) != len(names):
            wrong.append(f"{where}: {len(args)} arguments for {names}")
        for name, a in zip(names, args, strict=False):
            if isinstance(a, np.ndarray) and a.dtype != np.float32:
                wrong.append(f"{where}: {name} is a {a.dtype} array in a float32 case")
            if isinstance(a, float) or (isinstance(a, np.floating) and a.dtype != np.float32):
                wrong.append(f"{where}: {name} is a {type(a).__name__}, typed float64 by Numba")
    assert not wrong, "\n".join(wrong)
