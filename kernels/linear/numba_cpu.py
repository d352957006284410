"""Numba CPU form of the fused linear(+activation) op: ``y = act(x W^T + b)`` and its backward.

NumPy reference: ``minivae.layers.linear_act_forward/linear_act_backward`` (the numpy backend's
op); same signatures and results (tests/test_kernels_linear.py).

The GEMMs stay with NumPy's vendor BLAS (OpenBLAS here): it is register-blocked, vectorised and
cache-tiled for this very CPU, and a hand-written Numba GEMM reaches a fraction of it; the CUDA
forms of this op show that ladder. What a CPU kernel can still save is the elementwise traffic
around the GEMM, which NumPy spreads over several passes and temporaries:

- forward: one pass over ``x W^T`` that adds the bias and applies the activation in place; the
  output is all the backward needs, for every activation (docs/derivations.md, "Activations");
- backward: one pass that forms ``G = dy * act'(.)`` and accumulates ``db`` (the column sums of G)
  on the way, then BLAS for ``dx = G W`` and ``dW = G^T x``.

Float32 arrays are computed in float32 (constants cast to the array's type), float64 in float64;
``db`` is accumulated in float64 and rounded once, so it is at least as accurate as NumPy's sum.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from minivae.kernels.common.vecmath import expm1, softplus_sigmoid
from minivae.kernels.linear import ACT_CODES, ELU_ALPHA, LEAKY_RELU_SLOPE, act_code
from minivae.kernels.wiring import numba_threads  # noqa: F401  (before any parallel kernel runs)

# The kernels branch on the activation's code (module globals are compile-time constants to Numba).
NONE, RELU, LEAKY_RELU, ELU = ACT_CODES[None], ACT_CODES["relu"], ACT_CODES["leaky_relu"], ACT_CODES["elu"]
TANH, SIGMOID, SOFTPLUS = ACT_CODES["tanh"], ACT_CODES["sigmoid"], ACT_CODES["softplus"]
# Below this many elements a pass runs on one thread: waking the thread pool (10-185 us on 2 cores,
# wiring/numba_threads.py) costs more than it saves (measured: a 128 x 784 relu backward pass takes
# ~60 us serial; the training step at batch 128 ran 5.1 -> 4.6 ms with every such pass serial).
PARALLEL_MIN_ELEMENTS = 1 << 20
# The backward splits the columns into blocks, one task each, so that every column's db sum stays
# with one thread (no atomics, no per-thread partials); 64 columns = 256 B of float32 per row.
COLUMN_BLOCK = 64

# Fused multiply-adds allowed (no reassociation, no finite-math assumptions): the float32 forms of
# common/vecmath are accurate as measured with them.
_JIT = {"cache": True, "fastmath": {"contract"}, "error_model": "numpy"}


# Transcendentals: common/vecmath's generic expm1 and softplus_sigmoid, which compile to the
# vectorisable float32 forms for float32 arrays (the loops below then run 8 lanes at a time) and to
# libm for float64; tanh is built from expm1.


@njit(inline="always")
def _tanh(v):
    """tanh(|v|) = -t / (2 + t) with t = expm1(-2 |v|): no cancellation near 0, no overflow."""
    two = type(v)(2.0)
    t = expm1(-two * abs(v))
    r = -t / (two + t)
    return r if v >= 0 else -r


# Elementwise activations: y = f(v) and the backward's dy * f'(.) from the output s = y. Formulas as
# in minivae.layers.


@njit(inline="always")
def _identity(v):
    return v


@njit(inline="always")
def _relu(v):
    return max(v, type(v)(0.0))


@njit(inline="always")
def _relu_grad(dy, s):
    return dy if s > 0 else type(dy)(0.0)


@njit(inline="always")
def _leaky_relu(v):
    return v if v > 0 else v * type(v)(LEAKY_RELU_SLOPE)


@njit(inline="always")
def _leaky_relu_grad(dy, s):
    return dy if s > 0 else dy * type(dy)(LEAKY_RELU_SLOPE)  # slope > 0: sign(y) = sign(x)


@njit(inline="always")
def _elu(v):
    return v if v > 0 else type(v)(ELU_ALPHA) * expm1(v)


@njit(inline="always")
def _elu_grad(dy, s):
    return dy if s > 0 else dy * (s + type(s)(ELU_ALPHA))  # alpha e^x = y + alpha


@njit(inline="always")
def _tanh_grad(dy, s):
    return dy * (type(s)(1.0) - s * s)


@njit(inline="always")
def _sigmoid(v):
    return softplus_sigmoid(v)[1]


@njit(inline="always")
def _sigmoid_grad(dy, s):
    return dy * s * (type(s)(1.0) - s)


@njit(inline="always")
def _softplus(v):
    return softplus_sigmoid(v)[0]


@njit(inline="always")
def _softplus_grad(dy, s):
    return dy * -expm1(-s)  # softplus'(x) = sigmoid(x) = 1 - e^-y


# Row loops, specialised per activation: Numba compiles one loop per function it is handed, so a
# ReLU row is a plain select that LLVM vectorises (a branch on the code inside the loop would
# keep every row scalar: measured 4 us against 40 us for 128 x 400).


@njit(inline="always")
def _apply(yi, b, f):
    """yi = f(yi + b) in place."""
    for j in range(yi.size):
        yi[j] = f(yi[j] + b[j])


@njit(inline="always")
def _grad(dyi, si, gi, acc, f):
    """gi = f(dyi, si) (dy * act'), acc += gi."""
    for j in range(dyi.size):
        g = f(dyi[j], si[j])
        gi[j] = g
        acc[j] += g


@njit(inline="always")
def _forward_row(yi, b, code):
    """One row of the forward, in place."""
    if code == RELU:
        _apply(yi, b, _relu)
    elif code == LEAKY_RELU:
        _apply(yi, b, _leaky_relu)
    elif code == ELU:
        _apply(yi, b, _elu)
    elif code == TANH:
        _apply(yi, b, _tanh)
    elif code == SIGMOID:
        _apply(yi, b, _sigmoid)
    elif code == SOFTPLUS:
        _apply(yi, b, _softplus)
    else:
        _apply(yi, b, _identity)


@njit(inline="always")
def _backward_row(dyi, si, gi, acc, code):
    """One row segment of the backward (an activation, never NONE: there G = dy)."""
    if code == RELU:
        _grad(dyi, si, gi, acc, _relu_grad)
    elif code == LEAKY_RELU:
        _grad(dyi, si, gi, acc, _leaky_relu_grad)
    elif code == ELU:
        _grad(dyi, si, gi, acc, _elu_grad)
    elif code == TANH:
        _grad(dyi, si, gi, acc, _tanh_grad)
    elif code == SIGMOID:
        _grad(dyi, si, gi, acc, _sigmoid_grad)
    else:
        _grad(dyi, si, gi, acc, _softplus_grad)


@njit(**_JIT)
def _forward_serial(y, b, code):
    """y = act(y + b) in place, row by row."""
    for i in range(y.shape[0]):
        _forward_row(y[i], b, code)


@njit(parallel=True, **_JIT)
def _forward_parallel(y, b, code):
    """_forward_serial with the rows shared between threads."""
    for i in prange(y.shape[0]):
        _forward_row(y[i], b, code)


@njit(**_JIT)
def _backward_serial(dy, saved, code, g, db):
    """G = dy * act'(saved) and db = column sums of G (accumulated in float64), row by row."""
    acc = np.zeros(dy.shape[1])
    for i in range(dy.shape[0]):
        _backward_row(dy[i], saved[i], g[i], acc, code)
    db[:] = acc


@njit(parallel=True, **_JIT)
def _backward_parallel(dy, saved, code, g, db):
    """_backward_serial with the columns split into blocks, one thread per block at a time."""
    m = dy.shape[1]
    acc = np.zeros(m)
    for blk in prange((m + COLUMN_BLOCK - 1) // COLUMN_BLOCK):
        lo, hi = blk * COLUMN_BLOCK, min(blk * COLUMN_BLOCK + COLUMN_BLOCK, m)
        for i in range(dy.shape[0]):
            _backward_row(dy[i, lo:hi], saved[i, lo:hi], g[i, lo:hi], acc[lo:hi], code)
    db[:] = acc


def linear_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray, act: str | None) -> tuple[np.ndarray, Any]:
    """y = act(x W^T + b). x: (N, D_in), W: (D_out, D_in), b: (D_out,) -> y (N, D_out), cache.

    The cache is (x, W, saved, code): saved is y itself (every activation's derivative is a
    function of its output), None without activation.
    """
    code = act_code(act)
    y = x @ W.T  # vendor BLAS (see the module docstring)
    b = np.ascontiguousarray(b, dtype=y.dtype)
    kernel = _forward_parallel if y.size >= PARALLEL_MIN_ELEMENTS else _forward_serial
    kernel(y, b, code)
    saved = None if code == NONE else y
    return y, (x, W, saved, code)


def linear_backward(dy: np.ndarray, cache: Any, need_dx: bool = True):
    """With G = dy * act'(.): dx = G W (N, D_in) or None, dW = G^T x (D_out, D_in), db = sum_n G."""
    x, W, saved, code = cache
    want = (x.shape[0], W.shape[0])
    if getattr(dy, "shape", None) != want:  # the kernels index saved by dy's rows and columns
        raise ValueError(f"dy must have the forward output's shape {want} (N, D_out), "
                         f"got {getattr(dy, 'shape', type(dy).__name__)}")
    if code == NONE:
        g, db = dy, dy.sum(axis=0)  # G = dy: the column sum is the only pass
    else:
        dy = np.ascontiguousarray(dy)
        g, db = np.empty_like(dy), np.empty(dy.shape[1], dy.dtype)
        kernel = _backward_parallel if dy.size >= PARALLEL_MIN_ELEMENTS else _backward_serial
        kernel(dy, saved, code, g, db)
    dx = g @ W if need_dx else None
    return dx, g.T @ x, db
