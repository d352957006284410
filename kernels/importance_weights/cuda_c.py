"""Launcher for ``cuda_c.cu``: the K-sample bound and the softmax weights of the log-weights.

Same results as ``minivae.iwae.importance_weights`` to float32 tolerances (see
tests/test_kernels_importance_weights.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from minivae.kernels.wiring import cuda_load

SOURCE = Path(__file__).with_name("cuda_c.cu")
# One thread per example, elementwise over N: 8 warps per block, the usual size for a memory-bound
# elementwise kernel (enough warps in flight per block, several blocks per SM).
BLOCK = 256


def importance_weights(log_w: Any, *, backend: str = "emulate", block: int = BLOCK,
                       grid: int | None = None) -> tuple[Any, Any]:
    """log_w: (K, N) float32 -> (bound (N,), w~ (K, N))."""
    xp = cuda_load.array_module(backend)
    log_w = cuda_load.check_array("log_w", log_w, (None, None), xp)
    k, n = log_w.shape
    cuda_load.check_int("K", k, 1, cuda_load.INT32_LIMIT)
    cuda_load.check_int("N", n, 1, cuda_load.INT32_LIMIT)
    block = cuda_load.check_block("block", block, whole_warps=False)
    grid = cuda_load.check_grid("grid", grid, -(-n // block))
    bound, w = xp.empty(n, np.float32), xp.empty((k, n), np.float32)
    kernel = cuda_load.load(SOURCE, backend).get_function("importance_weights")
    kernel(grid, block, (log_w, bound, w, np.int32(k), np.int32(n)))
    return bound, w
