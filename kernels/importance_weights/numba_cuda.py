"""The importance weights in Numba CUDA: per example, the K-sample bound (a log-mean-exp of its K
log-weights) and their softmax. Reference: ``minivae.iwae.importance_weights``; the CUDA C twin is
``cuda_c.cu``, with the same layout and the same rung 1 (one thread per example).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from numba import cuda

from minivae.kernels.wiring import numba_cuda as nbc

# One thread per example, elementwise over N: 8 warps per block, as cuda_c.cu.
BLOCK = 256


@functools.cache
def _kernel(dtype_str: str):
    """The kernel for one dtype (compiled on first launch)."""
    dtype = np.dtype(dtype_str)
    neg_inf = dtype.type(-np.inf)
    zero = dtype.type(0)

    @cuda.jit
    def importance_weights(log_w, log_k, bound, w):
        """Grid-stride over examples; three passes over the column (max, exps and sum, scale)."""
        k, n = log_w.shape
        start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        for i in range(start, n, cuda.gridDim.x * cuda.blockDim.x):
            m = neg_inf
            for s in range(k):
                v = log_w[s, i]
                if v > m or v != v:  # NaN propagates, as NumPy's max
                    m = v
            total = zero
            for s in range(k):
                e = math.exp(log_w[s, i] - m)
                w[s, i] = e
                total += e
            bound[i] = m + math.log(total) - log_k
            for s in range(k):
                w[s, i] = w[s, i] / total

    return importance_weights


def importance_weights(log_w: Any, *, block: int = BLOCK, grid: int | None = None) -> tuple[Any, Any]:
    """(bound (N,), w~ (K, N)) from log_w (K, N), float32 or float64, C-contiguous."""
    log_w = nbc.check_array("log_w", log_w, (None, None))
    k, n = log_w.shape
    nbc.check_dims(K=k, N=n)
    block = nbc.check_block("block", block)
    grid = nbc.check_grid("grid", grid, -(-n // block))
    xp = nbc.array_module()
    bound, w = xp.empty(n, log_w.dtype), xp.empty((k, n), log_w.dtype)
    nbc.launch(_kernel(log_w.dtype.str), grid, block, log_w, nbc.scalar(log_w.dtype, math.log(k)), bound, w)
    return bound, w
