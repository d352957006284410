"""Numba CPU form of the Bernoulli likelihood: per-example log p(x|z) and its gradient in one pass.

NumPy reference: ``minivae.likelihoods.bernoulli`` (the numpy backend's op). With
logits l: log p = sum_j x l - softplus(l), d log p / d l = x - sigmoid(l); both share the one
``exp(-|l|)`` per element (the stable forms of ``minivae.layers``).

Two element functions, one per dtype:

- float32 (training): ``common/vecmath.softplus_sigmoid_f32``, straight-line arithmetic that LLVM
  turns into 8-lane AVX2 code, compiled with fused multiply-adds (``fastmath={"contract"}``: no
  reassociation, no finite-math assumptions). The per-element terms of a row go to a scratch row
  that ``vecmath.sum_f64`` adds up in float64 (a reduction in the same loop would keep the loop
  scalar). Measured on 2 cores at 128 x 784: ~0.2 ms against ~1.3 ms for the libm form.
- float64 (gradient checks, accuracy): ``vecmath.softplus_sigmoid_libm``, on the scalar libm.

Float32 arrays compute in float32, float64 in float64; the row sum accumulates in float64 and is
rounded once.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from minivae.kernels.common.vecmath import softplus_sigmoid_f32, softplus_sigmoid_libm, sum_f64
from minivae.kernels.wiring import numba_threads  # noqa: F401  (before any parallel kernel runs)

# Rows are shared between threads from this many elements on; below it one thread is faster than
# waking the pool (10-185 us on 2 cores, wiring/numba_threads.py; the float64 libm form takes
# ~6 ns an element, so 64k elements are ~0.4 ms of serial work).
PARALLEL_MIN_ELEMENTS = 1 << 16
# The vectorised float32 form gains less from a second thread (measured on 2 cores: 128 x 784
# takes 0.18 ms serial, 0.35 ms on two; 1024 x 784 1.5 ms serial, 1.35 ms on two).
F32_PARALLEL_MIN_ELEMENTS = 1 << 19
ROW_BLOCK = 64  # rows per task of the parallel float32 kernel

_JIT = {"cache": True, "fastmath": False, "error_model": "numpy"}
_JIT_F32 = {"cache": True, "fastmath": {"contract"}, "error_model": "numpy"}


@njit(inline="always")
def _row(x, logits, dlogp, logp, dlogits, i):
    """Row i: logp[i] = sum_j x l - softplus(l); dlogits[i] = dlogp (x - sigmoid(l))."""
    acc = 0.0
    for j in range(logits.shape[1]):
        v, xv = logits[i, j], x[i, j]
        softplus, sigmoid = softplus_sigmoid_libm(v)
        acc += xv * v - softplus
        dlogits[i, j] = dlogp * (xv - sigmoid)
    logp[i] = acc


@njit(inline="always")
def _row_f32(x, logits, dlogp, logp, dlogits, i, terms):
    """Row i in float32: the same, the terms x l - softplus(l) staged in ``terms`` and summed after."""
    for j in range(logits.shape[1]):
        v, xv = logits[i, j], x[i, j]
        softplus, sigmoid = softplus_sigmoid_f32(v)
        terms[j] = xv * v - softplus
        dlogits[i, j] = dlogp * (xv - sigmoid)
    logp[i] = sum_f64(terms)


@njit(**_JIT)
def _bernoulli_serial(x, logits, dlogp, logp, dlogits):
    for i in range(logits.shape[0]):
        _row(x, logits, dlogp, logp, dlogits, i)


@njit(parallel=True, **_JIT)
def _bernoulli_parallel(x, logits, dlogp, logp, dlogits):
    for i in prange(logits.shape[0]):
        _row(x, logits, dlogp, logp, dlogits, i)


@njit(**_JIT_F32)
def _rows_f32(x, logits, dlogp, logp, dlogits, start, stop):
    """Rows [start, stop) in float32, one scratch row for all of them."""
    terms = np.empty(logits.shape[1], np.float32)
    for i in range(start, stop):
        _row_f32(x, logits, dlogp, logp, dlogits, i, terms)


@njit(**_JIT_F32)
def _bernoulli_f32_serial(x, logits, dlogp, logp, dlogits):
    _rows_f32(x, logits, dlogp, logp, dlogits, 0, logits.shape[0])


@njit(parallel=True, **_JIT_F32)
def _bernoulli_f32_parallel(x, logits, dlogp, logp, dlogits):
    # Blocks of ROW_BLOCK rows, each a call of the serial function. The same code runs ~25 % slower
    # per element inside Numba's parallel region than called on its own (measured with one block;
    # why is not known), hence F32_PARALLEL_MIN_ELEMENTS.
    n = logits.shape[0]
    for b in prange((n + ROW_BLOCK - 1) // ROW_BLOCK):
        _rows_f32(x, logits, dlogp, logp, dlogits, b * ROW_BLOCK, min(n, (b + 1) * ROW_BLOCK))


def _parallel(dtype, size: int) -> bool:
    """Whether arrays of this dtype and size take the parallel kernel."""
    return size >= (F32_PARALLEL_MIN_ELEMENTS if np.dtype(dtype) == np.float32 else PARALLEL_MIN_ELEMENTS)


def kernel(dtype, parallel: bool):
    """The kernel for arrays of ``dtype`` (float32: vectorised; float64: libm), on one or all threads."""
    if np.dtype(dtype) == np.float32:
        return _bernoulli_f32_parallel if parallel else _bernoulli_f32_serial
    return _bernoulli_parallel if parallel else _bernoulli_serial


def bernoulli(x: np.ndarray, logits: np.ndarray, dlogp: float) -> tuple[np.ndarray, np.ndarray]:
    """x, logits: (N, D) -> logp (N,), dlogits = dlogp * (x - sigmoid(logits)) (N, D)."""
    logits = np.ascontiguousarray(logits)
    x = np.ascontiguousarray(x, dtype=logits.dtype)
    if x.shape != logits.shape or logits.ndim != 2:
        raise ValueError(f"x and logits must have the same shape (N, D), got {x.shape} and {logits.shape}")
    if logits.dtype not in (np.float32, np.float64):
        raise ValueError(f"logits must be float32 or float64, got {logits.dtype}")
    logp, dlogits = np.empty(logits.shape[0], logits.dtype), np.empty_like(logits)
    run = kernel(logits.dtype, _parallel(logits.dtype, logits.size))
    run(x, logits, logits.dtype.type(dlogp), logp, dlogits)
    return logp, dlogits
