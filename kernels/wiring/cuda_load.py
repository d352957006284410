"""Host side of minivae's CUDA C kernels, shared by both ways of running a ``.cu`` file.

* ``backend="emulate"``: the CPU emulator (``emulate.py`` with ``wiring/cuda_emu.h``), NumPy arrays.
  This is what CI runs.
* ``backend="cupy"``: ``cupy.RawModule`` on a GPU, CuPy arrays (the GPU is the final word), compiled
  with ``compile_options``, whose last option carries a hash of the source and every header it
  includes (CuPy's kernel cache would otherwise serve a binary built from an older header).
  tests/test_nvrtc.py compiles every ``.cu`` with these options through NVRTC, on machines without
  a GPU too.

Either way a kernel is called as CuPy calls a ``RawKernel``: ``kernel(grid, block, args)``. Before
any pointer is handed over, every argument is checked against the kernel's C signature, parsed from
the ``extern "C" __global__`` declaration: arrays must have the pointer's element type, be C-contiguous
and aligned (and writeable behind a non-const pointer); scalars must be NumPy scalars of exactly the
parameter's type, because CuPy passes a Python ``float`` as a C ``double`` and a Python ``int`` as a
64-bit integer, whatever the parameter, and the kernel would read garbage. Mistakes raise
``ValueError`` naming the kernel and the argument. Shapes are the op launchers' business
(``check_array``), as only they know them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

KERNELS_DIR = Path(__file__).resolve().parent.parent
COMMON_DIR = KERNELS_DIR / "common"
BACKENDS = ("emulate", "cupy")

# The C parameter types the kernels use, by their spelling in the source.
C_TYPES: dict[str, np.dtype] = {
    "float": np.dtype(np.float32),
    "double": np.dtype(np.float64),
    "int": np.dtype(np.int32),
    "unsigned": np.dtype(np.uint32),
    "unsigned int": np.dtype(np.uint32),
    "long long": np.dtype(np.int64),
    "long long int": np.dtype(np.int64),
    "unsigned long long": np.dtype(np.uint64),
    "unsigned long long int": np.dtype(np.uint64),
}

# A grid-stride or row-stride kernel accepts any grid; this is CUDA's limit on gridDim.x.
MAX_GRID_X = 2**31 - 1
MAX_BLOCK_THREADS = 1024  # CUDA's limit on threads per block
WARP_SIZE = 32
INT32_LIMIT = 2**31  # sizes and leading dimensions are C ints in the kernels
FLOAT32_ITEM = np.dtype(np.float32).itemsize

_KERNEL_DECL = re.compile(
    r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?void\s+(\w+)\s*\(([^)]*)\)')
_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


@dataclass(frozen=True)
class Param:
    """One kernel parameter: ``const float* __restrict__ mu`` -> Param("mu", float32, True, True)."""

    name: str
    dtype: np.dtype
    pointer: bool
    const: bool

    def describe(self) -> str:
        if self.pointer:
            return f"{'read-only ' if self.const else 'writeable '}{self.dtype} array"
        return f"np.{self.dtype} scalar"


def _parse_param(kernel: str, text: str) -> Param:
    words = text.replace("*", " * ").replace("__restrict__", " ").split()
    if len(words) < 2 or words.count("*") > 1:
        raise ValueError(f"kernel {kernel}: cannot parse parameter {text.strip()!r}")
    name = words[-1]
    pointer = "*" in words
    before_star = words[:words.index("*")] if pointer else words[:-1]
    base = " ".join(w for w in before_star if w != "const")
    if base not in C_TYPES:
        raise ValueError(f"kernel {kernel}: parameter {name!r} has type {base!r}; "
                         f"supported: {', '.join(C_TYPES)}")
    return Param(name, C_TYPES[base], pointer, pointer and "const" in before_star)


def kernel_signatures(source: str) -> dict[str, tuple[Param, ...]]:
    """The ``extern "C" __global__`` kernels of a CUDA C source and their parameters, in order."""
    code = _COMMENTS.sub(" ", source)
    return {name: tuple(_parse_param(name, p) for p in params.split(",") if p.strip())
            for name, params in _KERNEL_DECL.findall(code)}


def check_args(kernel: str, params: Sequence[Param], args: Sequence[Any], array_type: type) -> None:
    """ValueError unless ``args`` fit ``params`` (see the module docstring); ``array_type`` is the
    backend's array class (``np.ndarray`` or ``cupy.ndarray``)."""
    if not isinstance(args, (tuple, list)) or len(args) != len(params):
        got = len(args) if isinstance(args, (tuple, list)) else type(args).__name__
        raise ValueError(f"kernel {kernel} takes {len(params)} arguments "
                         f"({', '.join(p.name for p in params)}), got {got}")
    for p, a in zip(params, args, strict=True):
        where = f"kernel {kernel}: argument {p.name!r} must be a {p.describe()}"
        if p.pointer:
            if not isinstance(a, array_type):
                raise ValueError(f"{where} ({array_type.__module__}.{array_type.__name__}), "
                                 f"got {type(a).__name__}")
            if a.dtype != p.dtype:
                raise ValueError(f"{where}, got dtype {a.dtype}")
            if not a.flags.c_contiguous:
                raise ValueError(f"{where}, C-contiguous, got strides {a.strides}")
            if not getattr(a.flags, "aligned", True):
                raise ValueError(f"{where}, aligned to its element size")
            if not p.const and not getattr(a.flags, "writeable", True):
                raise ValueError(f"{where}, got a read-only array")
        elif not isinstance(a, np.generic) or a.dtype != p.dtype:
            raise ValueError(f"{where} (a Python number would reach CuPy's launch as a 64-bit "
                             f"value), got {type(a).__name__} {a!r}")


def launch_dims(name: str, value: int | Sequence[int]) -> tuple[int, int, int]:
    """``grid`` or ``block`` as three dimensions (missing ones are 1); ValueError otherwise. Range
    limits are the launch's to check, as on a GPU."""
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and 0 <= d < 2**32 for d in dims):
        raise ValueError(f"{name} must be an integer or 1 to 3 integers in [0, 2**32), got {value!r}")
    return tuple(int(d) for d in dims) + (1,) * (3 - len(dims))  # type: ignore[return-value]


class CheckedModule:
    """A compiled ``.cu``: ``get_function(name)`` returns a kernel that checks its arguments first."""

    def __init__(self, source_path: Path, backend_module: Any, array_type: type):
        self.path = Path(source_path)
        self.signatures = kernel_signatures(self.path.read_text())
        self._module = backend_module
        self._array_type = array_type

    def get_function(self, name: str):
        if name not in self.signatures:
            raise ValueError(f"{self.path.name} has no extern \"C\" __global__ kernel {name!r}; "
                             f"it has {sorted(self.signatures)}")
        raw, params, array_type = self._module.get_function(name), self.signatures[name], self._array_type

        def kernel(grid: int | Sequence[int], block: int | Sequence[int], args: Sequence[Any]) -> None:
            g, b = launch_dims("grid", grid), launch_dims("block", block)
            check_args(name, params, args, array_type)
            raw(g, b, tuple(args))

        kernel.__name__ = name
        return kernel


_MODULES: dict[tuple[str, str], CheckedModule] = {}


def load(source_path: str | Path, backend: str = "emulate") -> CheckedModule:
    """The kernels of ``source_path`` for ``backend`` (compiled once per process, and on disk for the
    emulator)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    path = Path(source_path).resolve()
    key = (str(path), backend)
    if key not in _MODULES:
        if backend == "emulate":
            from minivae.kernels.wiring import emulate

            _MODULES[key] = CheckedModule(path, emulate.EmulatedModule(path), np.ndarray)
        else:
            import cupy

            raw = cupy.RawModule(code=path.read_text(), options=compile_options(path))
            _MODULES[key] = CheckedModule(path, _CupyModule(raw), cupy.ndarray)
    return _MODULES[key]


# ------------------------------------------------------------------------------------------------
# how cupy.RawModule compiles a .cu

# What cupy.RawModule (CuPy 13 and 14, cupy/cuda/compiler.py) adds to ``compile_options`` before
# NVRTC sees them, besides ``-arch=sm_XX`` for the device (a cubin): flush float32 denormals to
# zero, and every function a device function unless marked otherwise. It also adds ``-I`` for its
# own headers and the CUDA toolkit's, which these kernels do not include. tests/test_nvrtc.py
# compiles every .cu with exactly these options.
CUPY_ADDED_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"', re.M)


def include_dirs(source_path: str | Path) -> tuple[Path, Path]:
    """The ``-I`` folders of a kernel source: ``common/`` and the source's own folder (NVRTC compiles
    a copy of the text elsewhere, so even a header beside the source needs its folder named)."""
    return COMMON_DIR, Path(source_path).resolve().parent


def included_files(source_path: str | Path) -> list[Path]:
    """``source_path`` and every header it includes, transitively, found as the compiler finds a
    quoted include: beside the including file, then in ``include_dirs``. ValueError for one that is
    nowhere."""
    root = Path(source_path).resolve()
    found, todo = [root], [root]
    while todo:
        current = todo.pop()
        for name in _INCLUDE.findall(_COMMENTS.sub(" ", current.read_text())):
            where = [d / name for d in (current.parent, *include_dirs(root)) if (d / name).is_file()]
            if not where:
                raise ValueError(f"{current.name} includes {name!r}, which is in none of "
                                 f"{[str(d) for d in (current.parent, *include_dirs(root))]}")
            header = where[0].resolve()
            if header not in found:
                found.append(header)
                todo.append(header)
    return found


def source_digest(source_path: str | Path) -> str:
    """SHA-256 (hex) of a kernel source and every header it includes, names and contents."""
    digest = hashlib.sha256()
    for f in sorted(included_files(source_path)):
        digest.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()


def compile_options(source_path: str | Path) -> tuple[str, ...]:
    """The options ``load`` hands cupy.RawModule for ``source_path``. CuPy's on-disk kernel cache
    keys on the source text and the options, not on included headers, so the last option, a macro
    no kernel reads, carries ``source_digest``: an edit to ``launch.cuh`` or ``philox.cuh`` changes
    the key and is compiled, never served a binary built from the old header."""
    common, own = include_dirs(source_path)
    return ("-std=c++17", f"-I{common}", f"-I{own}",
            f"-DMINIVAE_SOURCE_SHA256={source_digest(source_path)[:32]}")


class _CupyModule:
    """cupy.RawModule with the (grid, block, args) call of the emulated module."""

    def __init__(self, raw: Any):
        self._raw = raw

    def get_function(self, name: str):
        fn = self._raw.get_function(name)
        return lambda grid, block, args: fn(grid, block, args)


def array_module(backend: str):
    """numpy for the emulator, cupy on a GPU: where the op launchers allocate their outputs."""
    if backend == "cupy":
        import cupy

        return cupy
    if backend != "emulate":
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return np


def check_array(name: str, a: Any, shape: Sequence[int | None], xp: Any, dtype=np.float32) -> Any:
    """``a`` if it is a C-contiguous ``dtype`` array of ``xp`` with ``shape`` (None: any size), else
    ValueError naming ``name``."""
    dims = ["any" if s is None else str(s) for s in shape]
    want = f"({dims[0]},)" if len(dims) == 1 else f"({', '.join(dims)})"
    what = f"{name} must be a C-contiguous {np.dtype(dtype)} {xp.__name__} array of shape {want}"
    if not isinstance(a, xp.ndarray):
        raise ValueError(f"{what}, got {type(a).__name__}")
    if a.dtype != dtype or a.ndim != len(shape) or any(
            s is not None and s != n for s, n in zip(shape, a.shape, strict=True)):
        raise ValueError(f"{what}, got dtype {a.dtype} and shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{what}, got strides {a.strides}")
    return a


def check_matrix(name: str, a: Any, shape: tuple[int | None, int | None], xp: Any,
                 writeable: bool = False) -> tuple[Any, Any, int]:
    """(a, what the kernel gets, ld) for a float32 2-D array of ``xp`` with ``shape`` (None: any
    size) whose columns are adjacent and whose rows are ``ld >= width`` elements apart; else
    ValueError naming ``name``. The kernel gets ``a`` itself if it is C-contiguous, otherwise the 1-D
    view of its span (first element to last)."""
    want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
    what = f"{name} must be a float32 {xp.__name__} array of shape {want} with adjacent columns"
    if not isinstance(a, xp.ndarray):
        raise ValueError(f"{what}, got {type(a).__name__}")
    if a.dtype != np.float32 or a.ndim != 2 or any(
            s is not None and s != n for s, n in zip(shape, a.shape, strict=True)):
        raise ValueError(f"{what}, got dtype {a.dtype} and shape {a.shape}")
    rows, cols = a.shape
    check_int(f"{name}.shape[0]", rows, 1, INT32_LIMIT)
    check_int(f"{name}.shape[1]", cols, 1, INT32_LIMIT)
    if writeable and not getattr(a.flags, "writeable", True):  # CuPy arrays have no such flag
        raise ValueError(f"{name} must be writeable, got a read-only array")
    if a.flags.c_contiguous:
        return a, a, cols
    item = FLOAT32_ITEM
    row_stride, col_stride = a.strides
    if (cols > 1 and col_stride != item) or (rows > 1 and (row_stride % item or row_stride < cols * item)):
        raise ValueError(f"{what}, i.e. strides ({item} ld, {item}) with ld >= {cols}, got {a.strides}")
    ld = row_stride // item if rows > 1 else cols
    check_int(f"{name}'s leading dimension", ld, 1, INT32_LIMIT)
    span = xp.lib.stride_tricks.as_strided(a, shape=((rows - 1) * ld + cols,), strides=(item,))
    return a, span, ld


def check_block(name: str, block: int, whole_warps: bool) -> int:
    """A 1-D block size: 1..1024 threads, a multiple of 32 where the kernel shuffles whole warps."""
    ok = isinstance(block, (int, np.integer)) and not isinstance(block, bool) \
        and 1 <= block <= MAX_BLOCK_THREADS and (not whole_warps or block % WARP_SIZE == 0)
    if not ok:
        rule = f"a multiple of {WARP_SIZE} in [32, 1024]" if whole_warps else "an integer in [1, 1024]"
        raise ValueError(f"{name} must be {rule}, got {block!r}")
    return int(block)


def check_grid(name: str, grid: int | None, default: int) -> int:
    """A 1-D grid size: ``default`` (the work divided by the block, at least 1) unless given."""
    if grid is None:
        return max(1, min(default, MAX_GRID_X))
    if not isinstance(grid, (int, np.integer)) or isinstance(grid, bool) or not 1 <= grid <= MAX_GRID_X:
        raise ValueError(f"{name} must be an integer in [1, 2**31 - 1], got {grid!r}")
    return int(grid)


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in [low, high), else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value < high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}), got {value!r}")
    return int(value)
