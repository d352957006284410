"""Launcher for ``iwae.cu``: the K-sample bound and the softmax weights of the log-weights.

Same results as ``minivae.iwae.importance_weights`` to float32 tolerances (see
tests/test_kernels_iwae.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from minivae.kernels import _cuda

SOURCE = Path(__file__).with_name("iwae.cu")
# One thread per example, elementwise over N: 8 warps per block, the usual size for a memory-bound
# elementwise kernel (enough warps in flight per block, several blocks per SM).
BLOCK = 256


def importance_weights(log_w: Any, *, backend: str = "emulate", block: int = BLOCK,
                       grid: int | None = None) -> tuple[Any, Any]:
    """log_w: (K, N) float32 -> (bound (N,), w~ (K, N))."""
    xp = _cuda.array_module(backend)
    log_w = _cuda.check_array("log_w", log_w, (None, None), xp)
    k, n = log_w.shape
    _cuda.check_int("K", k, 1, _cuda.INT32_LIMIT)
    _cuda.check_int("N", n, 1, _cuda.INT32_LIMIT)
    block = _cuda.check_block("block", block, whole_warps=False)
    grid = _cuda.check_grid("grid", grid, -(-n // block))
    bound, w = xp.empty(n, np.float32), xp.empty((k, n), np.float32)
    kernel = _cuda.load(SOURCE, backend).get_function("importance_weights")
    kernel(grid, block, (log_w, bound, w, np.int32(k), np.int32(n)))
    return bound, w
