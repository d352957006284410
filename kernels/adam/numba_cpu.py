"""Numba CPU form of one Adam / AdamW step: a single pass over param, grad, exp_avg, exp_avg_sq.

NumPy reference: ``minivae.optim.Adam._update`` (PyTorch's single-tensor rule), which streams every
parameter through ~12 separate ufunc passes; this kernel reads each entry of the four arrays once
and writes three. The step-dependent scalars are computed here in Python double precision, exactly
as ``optim.Adam`` computes them, then cast to the parameter's dtype (what NumPy does with a Python
float operand), and the per-element operations run in the same order without fused multiply-adds,
so the results equal ``optim.Adam``'s bit for bit (tests/test_kernels_adam.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from numba import njit, prange

from minivae._checks import is_int
from minivae.kernels.adam import WEIGHT_DECAY_DECOUPLED, WEIGHT_DECAY_L2, check_hyperparameters, step_scalars
from minivae.kernels.wiring import numba_threads  # noqa: F401  (before any parallel kernel runs)

# Entries at which the update is shared between threads; smaller arrays run on one thread, where
# waking the pool (10-185 us on 2 cores, wiring/numba_threads.py) would cost more than it saves
# (measured on 2 cores: 313,600 float32 entries take 0.15 ms serial, 0.31 ms on two threads).
PARALLEL_MIN_ELEMENTS = 1 << 20

_JIT = {"cache": True, "fastmath": False, "error_model": "numpy"}


@njit(inline="always")
def _entry(p, g, m, v, k, s):
    """Entry k. s = (weight, 1 - weight, beta2, 1 - beta2, -lr / bc1, sqrt(bc2), eps, weight_decay,
    1 - lr * weight_decay, weight < 0.5, mode): ``kernels/optim``'s step_scalars, with mode its
    weight_decay_mode (none, L2 for Adam, decoupled for AdamW)."""
    weight, one_minus_weight, beta2, one_minus_beta2, neg_step_size, bc2_sqrt, eps, wd, decay, small, mode = s
    pk, gk = p[k], g[k]
    if mode == WEIGHT_DECAY_DECOUPLED:
        pk = pk * decay
    elif mode == WEIGHT_DECAY_L2:
        gk = pk * wd + gk
    diff = gk - m[k]
    mk = m[k] + diff * weight if small else gk - diff * one_minus_weight  # PyTorch's lerp
    vk = v[k] * beta2 + (gk * one_minus_beta2) * gk
    m[k] = mk
    v[k] = vk
    p[k] = pk + (mk * neg_step_size) / (math.sqrt(vk) / bc2_sqrt + eps)


@njit(**_JIT)
def _adam_serial(p, g, m, v, s):
    for k in range(p.size):
        _entry(p, g, m, v, k, s)


@njit(parallel=True, **_JIT)
def _adam_parallel(p, g, m, v, s):
    for k in prange(p.size):
        _entry(p, g, m, v, k, s)


# adam_many hands the pool fixed-size chunks of the concatenated parameters: the two threads of a
# 2-core machine then share every parameter tensor evenly, whatever the sizes of the tensors (a
# 784 x 400 weight and a 20-entry bias alike). 16K float32 entries: 64 KiB per array, chunks big
# enough that a task's bookkeeping is noise, small enough that the last ones balance the threads.
MANY_CHUNK = 1 << 14
# From this many entries in all, adam_many shares the chunks between threads. As high as
# PARALLEL_MIN_ELEMENTS: a wake-up of the pool costs up to ~0.15 ms on these VMs, and the
# 784-400-20 model's update (652,824 entries) was no faster on two threads (wiring/numba_threads.py).
MANY_PARALLEL_MIN_ELEMENTS = PARALLEL_MIN_ELEMENTS


@njit(**_JIT)
def _adam_range(p, g, m, v, lo, hi, s):
    """Entries lo..hi-1, as a loop from 0 over views: LLVM vectorises a loop whose index is known
    to be >= 0 (no negative-index wraparound to test), and not one from lo (measured 3.4x slower)."""
    p, g, m, v = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
    for k in range(p.size):
        _entry(p, g, m, v, k, s)


@njit(**_JIT)
def _adam_many_serial(ps, gs, ms, vs, chunks, s):
    for c in range(chunks.shape[0]):
        t = chunks[c, 0]
        _adam_range(ps[t], gs[t], ms[t], vs[t], chunks[c, 1], chunks[c, 2], s)


@njit(parallel=True, **_JIT)
def _adam_many_parallel(ps, gs, ms, vs, chunks, s):
    """_adam_many_serial with the chunks (rows of ``chunks``: tensor, first entry, end) shared
    between threads."""
    for c in prange(chunks.shape[0]):
        t = chunks[c, 0]
        _adam_range(ps[t], gs[t], ms[t], vs[t], chunks[c, 1], chunks[c, 2], s)


@functools.lru_cache(maxsize=32)
def _chunks(sizes: tuple[int, ...]) -> np.ndarray:
    """(tensor, lo, hi) rows covering every entry of tensors of ``sizes``, MANY_CHUNK at most each."""
    rows = [(t, lo, min(lo + MANY_CHUNK, n)) for t, n in enumerate(sizes) for lo in range(0, n, MANY_CHUNK)]
    out = np.array(rows, dtype=np.int64).reshape(-1, 3)
    out.flags.writeable = False
    return out


def _flat(name: str, a: np.ndarray, like: np.ndarray) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.shape != like.shape or a.dtype != like.dtype:
        raise ValueError(f"{name} must be an array of shape {like.shape} and dtype {like.dtype} like param, "
                         f"got {type(a).__name__} {getattr(a, 'shape', '')} {getattr(a, 'dtype', '')}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (the kernel updates it in place as a flat array)")
    return a.reshape(-1)


def adam(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, *, lr: float, beta1: float,
         beta2: float, eps: float, weight_decay: float, decoupled: bool, step: int) -> None:
    """Step ``step`` (1, 2, ...) of Adam (L2 added to the gradient) or AdamW (``decoupled``) in place.

    p (param), m (exp_avg), v (exp_avg_sq) are updated; g is only read. All four: one shape and
    dtype, C-contiguous.
    """
    if not isinstance(p, np.ndarray) or p.dtype not in (np.float32, np.float64):
        raise ValueError(f"p must be a float32 or float64 array, "
                         f"got {type(p).__name__} {getattr(p, 'dtype', '')}")
    flat = [_flat(name, a, p) for name, a in (("p", p), ("g", g), ("m", m), ("v", v))]
    s = _checked_scalars(lr, beta1, beta2, eps, weight_decay, decoupled, step, p.dtype)
    kernel = _adam_parallel if p.size >= PARALLEL_MIN_ELEMENTS else _adam_serial
    kernel(*flat, s)


def adam_many(params: Sequence[np.ndarray], grads: Sequence[np.ndarray], exp_avgs: Sequence[np.ndarray],
              exp_avg_sqs: Sequence[np.ndarray], *, lr: float, beta1: float, beta2: float, eps: float,
              weight_decay: float, decoupled: bool, step: int) -> None:
    """``adam`` on every parameter of a model in one call (what ``torch.optim.Adam(fused=True)``
    does): the same rule entry by entry, bit for bit, but one Python call and, for a model of
    more than MANY_PARALLEL_MIN_ELEMENTS entries, one wake-up of the thread pool for all of its
    tensors, which share the threads in chunks of MANY_CHUNK entries. The i-th entries of the four
    sequences belong together, as ``adam``'s p, g, m and v."""
    n = len(params)
    if not (len(grads) == len(exp_avgs) == len(exp_avg_sqs) == n) or n == 0:
        raise ValueError(f"params, grads, exp_avgs and exp_avg_sqs must be non-empty sequences of one "
                         f"length, got {n}, {len(grads)}, {len(exp_avgs)}, {len(exp_avg_sqs)}")
    dtype = getattr(params[0], "dtype", None)
    flats: list[list[np.ndarray]] = [[], [], [], []]
    for i, p in enumerate(params):
        if not isinstance(p, np.ndarray) or p.dtype not in (np.float32, np.float64) or p.dtype != dtype:
            raise ValueError(f"params[{i}] must be a float32 or float64 array of the first one's dtype "
                             f"({dtype}), got {type(p).__name__} {getattr(p, 'dtype', '')}")
        for j, (name, a) in enumerate((("params", p), ("grads", grads[i]), ("exp_avgs", exp_avgs[i]),
                                       ("exp_avg_sqs", exp_avg_sqs[i]))):
            flats[j].append(_flat(f"{name}[{i}]", a, p))
    s = _checked_scalars(lr, beta1, beta2, eps, weight_decay, decoupled, step, dtype)
    sizes = tuple(f.size for f in flats[0])
    kernel = _adam_many_parallel if sum(sizes) >= MANY_PARALLEL_MIN_ELEMENTS else _adam_many_serial
    kernel(*(tuple(f) for f in flats), _chunks(sizes), s)


def _checked_scalars(lr, beta1, beta2, eps, weight_decay, decoupled, step, dtype) -> tuple:
    """The kernel's scalar tuple, after ValueError for a step that is not an integer >= 1 or a bad
    hyperparameter."""
    if not is_int(step) or step < 1:
        raise ValueError(f"step must be an integer >= 1 (the step being taken), got {step!r}")
    check_hyperparameters(lr, beta1, beta2, eps, weight_decay)
    # Python floats, as optim.Adam holds them: the scalars are computed in double precision
    return _kernel_scalars(float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
                           bool(decoupled), int(step), dtype)


@functools.lru_cache(maxsize=8)
def _kernel_scalars(lr, beta1, beta2, eps, weight_decay, decoupled, step, dtype) -> tuple:
    """The kernel's scalar tuple ``s`` (see ``_entry``) from checked Python floats; cached, because
    every parameter of one optimiser step asks for the same one (it was a third of the call's
    Python time)."""
    scalars, mode = step_scalars(lr, beta1, beta2, eps, weight_decay, decoupled, step)
    return (*(dtype.type(c) for c in scalars), abs(scalars[0]) < 0.5, mode)
