"""Numba CPU form of one Adam / AdamW step: a single pass over param, grad, exp_avg, exp_avg_sq.

NumPy reference: ``minivae.optim.Adam._update`` (PyTorch's single-tensor rule), which streams every
parameter through ~12 separate ufunc passes; this kernel reads each entry of the four arrays once
and writes three. The step-dependent scalars are computed here in Python double precision, exactly
as ``optim.Adam`` computes them, then cast to the parameter's dtype (what NumPy does with a Python
float operand), and the per-element operations run in the same order without fused multiply-adds,
so the results equal ``optim.Adam``'s bit for bit (tests/test_kernels_numba_cpu.py).
"""

from __future__ import annotations

import functools
import math

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
    if not is_int(step) or step < 1:
        raise ValueError(f"step must be an integer >= 1 (the step being taken), got {step!r}")
    check_hyperparameters(lr, beta1, beta2, eps, weight_decay)
    # Python floats, as optim.Adam holds them: the scalars are computed in double precision
    hyper = (float(lr), float(beta1), float(beta2), float(eps), float(weight_decay))
    kernel = _adam_parallel if p.size >= PARALLEL_MIN_ELEMENTS else _adam_serial
    kernel(*flat, _kernel_scalars(*hyper, bool(decoupled), int(step), p.dtype))


@functools.lru_cache(maxsize=8)
def _kernel_scalars(lr, beta1, beta2, eps, weight_decay, decoupled, step, dtype) -> tuple:
    """The kernel's scalar tuple ``s`` (see ``_entry``) from checked Python floats; cached, because
    every parameter of one optimiser step asks for the same one (it was a third of the call's
    Python time)."""
    scalars, mode = step_scalars(lr, beta1, beta2, eps, weight_decay, decoupled, step)
    return (*(dtype.type(c) for c in scalars), abs(scalars[0]) < 0.5, mode)
