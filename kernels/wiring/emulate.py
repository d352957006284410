"""Run a CUDA C ``.cu`` file on the CPU: compile it unchanged as C++20 with ``wiring/cuda_emu.h``
(see that header for how blocks, barriers, shared memory and warp intrinsics are emulated).

Two products:

* a shared library, called through ctypes (``EmulatedModule``): a generated shim exports one
  ``extern "C" int emu_launch_<kernel>(cfg, args, err, errlen)`` per ``extern "C" __global__``
  kernel, with cuLaunchKernel's convention (``args[i]`` points at parameter ``i``'s value);
* a standalone executable (``build_executable``) around a small C++ ``main``, for builds under
  ThreadSanitizer or AddressSanitizer, whose runtimes cannot be loaded into a running Python.

Builds are cached on disk, keyed by a hash of the compiler's version, the flags, the ``.cu`` and
every header in ``common/`` and beside the ``.cu``; the cache lives in ``$MINIVAE_KERNEL_CACHE``, else
``$XDG_CACHE_HOME/minivae/cuda-emu`` (``~/.cache``), else the temp directory -- never in the package.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from minivae.kernels.wiring.cuda_load import COMMON_DIR, kernel_signatures

HEADER = Path(__file__).resolve().with_name("cuda_emu.h")
CXX = os.environ.get("CXX", "g++")
# -O1: fast enough to run and to build (the emulator's cost is threads and barriers, not code);
# -g keeps sanitizer reports readable. #pragma unroll is CUDA's, unknown to g++.
FLAGS = ("-std=c++20", "-O1", "-g", "-pthread", "-Wall", "-Wno-unknown-pragmas")
SANITIZERS = {"thread": ("-fsanitize=thread",),
              "address": ("-fsanitize=address", "-fno-omit-frame-pointer")}
STATUS = {9: "invalid configuration (cudaErrorInvalidConfiguration)",
          719: "launch failure (cudaErrorLaunchFailure)"}
ERROR_BUFFER = 1024  # bytes for the launch's reason on failure


def compiler() -> str | None:
    """The C++ compiler's path, or None if it is not installed."""
    return shutil.which(CXX)


@functools.lru_cache(maxsize=1)
def _compiler_version() -> str:
    exe = compiler()
    if exe is None:
        raise RuntimeError(f"the CUDA emulator needs a C++20 compiler: {CXX!r} is not on PATH "
                           "(set CXX to choose another)")
    return subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout


def cache_dir() -> Path:
    """Where builds are kept (created on first use)."""
    env = os.environ.get("MINIVAE_KERNEL_CACHE")
    root = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "minivae" \
        / "cuda-emu"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except OSError:
        pass
    root = Path(tempfile.gettempdir()) / f"minivae-cuda-emu-{os.getuid()}"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _build(sources: Sequence[Path], main_text: str, flags: Sequence[str], name: str) -> Path:
    """Compile ``main_text`` (which includes ``sources``) with ``flags`` into the cache as ``name``."""
    dirs = {COMMON_DIR, *(s.parent for s in sources)}
    headers = (p for d in dirs for pattern in ("*.h", "*.cuh") for p in d.glob(pattern))
    deps = sorted({HEADER, *sources, *headers})
    h = hashlib.sha256()
    for part in (_compiler_version(), "\0".join(flags), main_text, *(f"{p}\0{p.read_text()}" for p in deps)):
        h.update(part.encode())
    out_dir = cache_dir() / h.hexdigest()[:20]
    out = out_dir / name
    if out.exists():
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    main_path = out_dir / f"{name}.cpp"
    main_path.write_text(main_text)
    tmp = out_dir / f".{name}.{os.getpid()}.tmp"  # renamed into place: concurrent builds are safe
    cmd = [compiler() or CXX, *flags, "-include", str(HEADER), *(f"-I{d}" for d in sorted(dirs)),
           str(main_path), "-o", str(tmp)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"compiling {', '.join(map(str, sources))} for the CPU emulator failed:\n"
                           f"{' '.join(cmd)}\n{done.stderr}")
    os.replace(tmp, out)
    return out


def build_library(source: str | Path, defines: Sequence[str] = ()) -> Path:
    """The shared library of ``source``'s kernels (``defines``: ``NAME`` or ``NAME=VALUE``)."""
    source = Path(source).resolve()
    shim = [f'#include "{source}"']
    for name in kernel_signatures(source.read_text()):
        shim.append(f'extern "C" int emu_launch_{name}(const unsigned* cfg, void** args, char* err, '
                    f'unsigned long errlen) {{ return emu::launch_packed({name}, cfg, args, err, errlen); }}')
    flags = (*FLAGS, "-fPIC", "-shared", *(f"-D{d}" for d in defines))
    return _build([source], "\n".join(shim) + "\n", flags, f"{source.stem}.so")


def build_executable(sources: str | Path | Sequence[str | Path], main_body: str, sanitize: str | None = None,
                     defines: Sequence[str] = ()) -> Path:
    """An executable of the ``.cu`` file(s) ``sources`` plus ``main_body`` (C++ that defines ``main``
    and calls ``emu::launch``), built under ``sanitize`` ("thread", "address" or None)."""
    if sanitize is not None and sanitize not in SANITIZERS:
        raise ValueError(f"sanitize must be one of {tuple(SANITIZERS)} or None, got {sanitize!r}")
    paths = [Path(s).resolve() for s in ([sources] if isinstance(sources, (str, Path)) else sources)]
    flags = (*FLAGS, *SANITIZERS.get(sanitize, ()), *(f"-D{d}" for d in defines))
    text = "".join(f'#include "{p}"\n' for p in paths) + main_body + "\n"
    return _build(paths, text, flags, f"{paths[0].stem}-{sanitize or 'plain'}")


@functools.cache
def sanitizer_works(sanitize: str) -> str | None:
    """None if a ``-fsanitize=<sanitize>`` program builds and runs here, else the reason it does not."""
    if compiler() is None:
        return f"no C++ compiler ({CXX!r} not on PATH)"
    with tempfile.TemporaryDirectory() as d:
        src, exe = Path(d) / "probe.cpp", Path(d) / "probe"
        src.write_text("#include <thread>\nint main() { std::thread t([] {}); t.join(); }\n")
        built = subprocess.run([compiler(), "-pthread", *SANITIZERS[sanitize], str(src), "-o", str(exe)],
                               capture_output=True, text=True)
        if built.returncode != 0:
            return f"{CXX} cannot build with -fsanitize={sanitize}: {built.stderr.strip()[:300]}"
        ran = subprocess.run([str(exe)], capture_output=True, text=True)
        if ran.returncode != 0:
            return f"a -fsanitize={sanitize} program does not run here: {ran.stderr.strip()[:300]}"
    return None


class EmulatedModule:
    """The kernels of one ``.cu`` file, compiled for the emulator and loaded with ctypes; called as
    ``get_function(name)(grid, block, args)`` with 3-tuples and NumPy arrays / scalars that
    ``cuda_load.check_args`` has already checked against the signature."""

    def __init__(self, source: str | Path, defines: Sequence[str] = ()):
        self.path = Path(source).resolve()
        self.signatures = kernel_signatures(self.path.read_text())
        self._lib = ctypes.CDLL(str(build_library(self.path, defines)))

    def get_function(self, name: str):
        fn = getattr(self._lib, f"emu_launch_{name}")
        fn.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p,
                       ctypes.c_ulong]
        fn.restype = ctypes.c_int
        params = self.signatures[name]

        def launch(grid: Sequence[int], block: Sequence[int], args: Sequence[Any]) -> None:
            values = [ctypes.c_void_p(a.ctypes.data) if p.pointer
                      else np.ctypeslib.as_ctypes_type(p.dtype)(a.item())
                      for p, a in zip(params, args, strict=True)]
            addresses = (ctypes.c_void_p * max(1, len(values)))(*[ctypes.addressof(v) for v in values])
            cfg = (ctypes.c_uint * 6)(*grid, *block)
            err = ctypes.create_string_buffer(ERROR_BUFFER)
            status = fn(cfg, addresses, err, ERROR_BUFFER)  # ctypes releases the GIL meanwhile
            if status != 0:
                message = f"emulated launch of {name}<<<{tuple(grid)}, {tuple(block)}>>>: " \
                          f"{STATUS.get(status, status)}: {err.value.decode(errors='replace')}"
                raise (ValueError if status == 9 else RuntimeError)(message)

        return launch
