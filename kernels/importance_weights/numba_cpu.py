"""Numba CPU form of the importance weights: per example (column of the (K, N) log-weights), the
K-sample bound log (1/K) sum_k exp(log w_k) and the softmax weights w~_k, in three passes that each
stream the rows of log_w in memory order (the max, the shifted exps and their sums, the scaling).

NumPy reference: ``minivae.iwae.importance_weights``. The column sums accumulate in float64 and the
exps use the vectorisable float32 forms of ``common/vecmath`` for float32 input (libm for float64).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

from minivae.kernels.common.vecmath import exp

_JIT = {"cache": True, "fastmath": {"contract"}, "error_model": "numpy"}


@njit(**_JIT)
def _weights(log_w, bound, w):
    k, n = log_w.shape
    m = np.full(n, -np.inf, log_w.dtype)
    for s in range(k):  # 1: each column's largest log-weight (NaN propagates, as np.max does)
        for i in range(n):
            v = log_w[s, i]
            if v > m[i] or v != v:
                m[i] = v
    total = np.zeros(n, np.float64)
    for s in range(k):  # 2: the shifted exps, stored, and their column sums in float64
        for i in range(n):
            e = exp(log_w[s, i] - m[i])
            w[s, i] = e
            total[i] += e
    log_k = math.log(k)
    for i in range(n):
        bound[i] = m[i] + math.log(total[i]) - log_k
    inv = (1.0 / total).astype(log_w.dtype)
    for s in range(k):  # 3: normalise
        for i in range(n):
            w[s, i] *= inv[i]


def importance_weights(log_w: Any) -> tuple[np.ndarray, np.ndarray]:
    """(bound (N,), w~ (K, N)) from log_w (K, N), float32 or float64, C-contiguous."""
    ok = isinstance(log_w, np.ndarray) and log_w.ndim == 2 and 0 not in log_w.shape
    if not ok or log_w.dtype not in (np.float32, np.float64):
        raise ValueError(f"log_w must be a non-empty (K, N) float32 or float64 array, got "
                         f"{type(log_w).__name__} {getattr(log_w, 'dtype', '')} "
                         f"{getattr(log_w, 'shape', '')}")
    log_w = np.ascontiguousarray(log_w)
    bound = np.empty(log_w.shape[1], log_w.dtype)
    w = np.empty_like(log_w)
    with np.errstate(invalid="ignore"):
        _weights(log_w, bound, w)
    return bound, w
