"""The ``numba-cuda`` backend: minivae's costly ops as Numba CUDA kernels, and what they share.

The kernels live beside their CUDA C twins, one folder per op (``linear/numba_cuda.py``,
``latent/numba_cuda.py``, ``bernoulli/numba_cuda.py``, ``importance_weights/numba_cuda.py``,
``adam/numba_cuda.py``; the block reduction they share is ``common/reduce_numba.py``); this module
holds the host-side rules every one of their launchers follows and ``backend()``, which maps
``minivae.backends``' table onto them.

Where the kernels run, decided once, when ``numba.cuda`` is first imported:

* on a GPU: arrays are CuPy arrays, handed to the kernels through ``__cuda_array_interface__`` with
  no copy, and every launch goes on CuPy's current stream, so kernels and CuPy ops stay in order;
* under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` in the environment before numba is
  imported): arrays are NumPy arrays and every CUDA thread is a Python thread. This is what CI runs;
  it checks indexing, barriers and tail guards, not speed, so keep its shapes small;
* neither: ``backend()`` raises ImportError and the registry reports the backend unavailable.

Every launcher checks each array's type, dtype (float32 or float64), C-contiguity and shape before
a kernel sees it, and raises ValueError naming the argument: a kernel compiled for float32 and
handed a float64 array would not fail, it would read the wrong numbers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from numba import cuda

from minivae.kernels.wiring import cuda_load

# What numba.cuda *is* (the simulator's module or the real one), not what the environment says
# now: the choice is made at import and cannot change afterwards.
SIMULATED = cuda.jit.__module__.startswith("numba.cuda.simulator")
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
MAX_BLOCK_THREADS = cuda_load.MAX_BLOCK_THREADS
MAX_GRID_X = cuda_load.MAX_GRID_X
MAX_GRID_Y = 65535  # CUDA's limit on gridDim.y


def gpu_available() -> bool:
    """A real GPU behind numba.cuda (never true under the simulator)."""
    return not SIMULATED and cuda.is_available()


def array_module() -> Any:
    """Where the launchers allocate: numpy under the simulator, cupy on a GPU."""
    if SIMULATED:
        return np
    import cupy

    return cupy


# ------------------------------------------------------------------------------------------------
# launcher checks


def check_array(name: str, a: Any, shape: Sequence[int | None], dtype: Any = None,
                writeable: bool = False) -> Any:
    """``a`` if it is a C-contiguous array of ``array_module()`` with ``shape`` (None: any size) and
    ``dtype`` (None: float32 or float64), else ValueError naming ``name``."""
    xp = array_module()
    kinds = " or ".join(map(str, DTYPES)) if dtype is None else str(np.dtype(dtype))
    dims = ["any" if s is None else str(s) for s in shape]
    want = f"({dims[0]},)" if len(dims) == 1 else "(" + ", ".join(dims) + ")"
    what = f"{name} must be a C-contiguous {kinds} {xp.__name__} array of shape {want}"
    if not isinstance(a, xp.ndarray):
        raise ValueError(f"{what}, got {type(a).__name__}")
    if (a.dtype not in DTYPES if dtype is None else a.dtype != dtype) or a.ndim != len(shape) or any(
            s is not None and s != n for s, n in zip(shape, a.shape, strict=True)):
        raise ValueError(f"{what}, got dtype {a.dtype} and shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{what}, got strides {a.strides}")
    if writeable and not getattr(a.flags, "writeable", True):  # CuPy arrays have no such flag
        raise ValueError(f"{name} must be writeable (it is updated in place), got a read-only array")
    return a


def check_dims(**dims: int) -> None:
    """Every size of a launch at least 1 (an empty grid is a launch error) and below 2**31."""
    for name, n in dims.items():
        cuda_load.check_int(name, n, 1, 2**31)


def check_block(name: str, block: int) -> int:
    """A 1-D block: 1..1024 threads. The shared-memory reduction below takes any count."""
    return cuda_load.check_block(name, block, whole_warps=False)


def check_grid(name: str, grid: int | None, default: int) -> int:
    """A 1-D grid: ``default`` (capped at CUDA's limit) unless given; grid-stride kernels take any."""
    return cuda_load.check_grid(name, grid, default)


@functools.cache
def _placeholder_cached(dtype: str, ndim: int) -> Any:
    return array_module().zeros((1,) * ndim, dtype)


def placeholder(dtype: Any, ndim: int) -> Any:
    """A 1-element stand-in for an array argument a launch does not use (a kernel's signature is
    fixed). Never an alias of a real argument: the simulator copies every array argument back
    after the kernel, and a stale copy of an output would overwrite what the kernel wrote."""
    return _placeholder_cached(np.dtype(dtype).str, ndim)


def scalar(dtype: Any, value: float) -> Any:
    """``value`` as a NumPy scalar of the arrays' dtype: Numba types a Python float as float64, and
    float64 arithmetic in a float32 kernel is a silent slowdown on the GPU."""
    return np.dtype(dtype).type(value)


def launch(kernel: Any, grid: int | tuple[int, ...], block: int, *args: Any) -> None:
    """``kernel[grid, block](*args)``; on a GPU on CuPy's current stream, CuPy arrays viewed without
    a copy. Numba would otherwise synchronise the host on each array's stream before every launch;
    the launch goes on that very stream, so it is already ordered after the array's producers."""
    if SIMULATED:
        kernel[grid, block](*args)
        return
    import cupy

    stream = cuda.external_stream(cupy.cuda.get_current_stream().ptr)
    views = [cuda.from_cuda_array_interface(a.__cuda_array_interface__, owner=a, sync=False)
             if hasattr(a, "__cuda_array_interface__") else a for a in args]
    kernel[grid, block, stream](*views)


# ------------------------------------------------------------------------------------------------
# the backend table


def backend():
    """The ``numba-cuda`` Backend (see the module docstring for where it runs)."""
    from minivae.backends import Backend
    from minivae.kernels.adam import numba_cuda as optim
    from minivae.kernels.bernoulli import numba_cuda as likelihood
    from minivae.kernels.importance_weights import numba_cuda as iwae
    from minivae.kernels.latent import numba_cuda as latent
    from minivae.kernels.linear import numba_cuda as linear

    if not SIMULATED and not cuda.is_available():
        raise ImportError("no CUDA GPU: numba.cuda finds no device (set NUMBA_ENABLE_CUDASIM=1 before "
                          "numba is imported to run these kernels in Numba's simulator)")
    xp = array_module()  # on a GPU: ImportError if cupy is missing, the registry reports that too
    # The table takes arrays in any layout (the model slices dz out of a wider gradient); the
    # launchers demand C order, so the table makes a copy only where an array is not in it.
    c = xp.ascontiguousarray

    def linear_forward(x, W, b, act):
        x = c(x)
        y = linear.forward(x, W, b, act)
        return y, (x, W, act, None if act is None else y)  # y: all the backward needs

    def linear_backward(dy, cache, need_dx=True):
        x, W, act, y = cache
        return linear.backward(c(dy), x, W, y, act, need_dx=need_dx)

    def latent_forward(h, n_samples, eps=None, key=None):
        h = c(h)
        eps = None if eps is None else c(eps)
        z, kl = latent.forward(h, n_samples, eps=eps, key=key)
        return z, kl, (h, eps, key)

    def latent_backward(dz, kl_weight, cache):
        h, eps, key = cache
        return latent.backward(c(dz), h, kl_weight, eps=eps, key=key)

    def bernoulli(x, logits, dlogp):
        return likelihood.bernoulli(c(x), c(logits), dlogp)

    def adam(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, decoupled, step):
        optim.adam_step(p, g, m, v, step=step, lr=lr, betas=(beta1, beta2), eps=eps,
                        weight_decay=weight_decay, decoupled=decoupled)

    def importance_weights(log_w):
        return iwae.importance_weights(c(log_w))

    return Backend("numba-cuda", xp, linear_forward, linear_backward, latent_forward, latent_backward,
                   bernoulli, importance_weights=importance_weights, adam=adam, on_gpu=not SIMULATED)
