"""Launcher for ``cuda_c.cu``: the Bernoulli log-likelihood and its gradient in one pass.

Same results as ``minivae.likelihoods.Bernoulli`` (forward, then backward with a constant dlogp),
to float32 tolerances (see tests/test_kernels_bernoulli.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from minivae.kernels.wiring import cuda_load

SOURCE = Path(__file__).with_name("cuda_c.cu")
# One block per example row; rows are images (64 to a few thousand pixels), so 4 warps stride a
# row in a handful of passes while the row sum stays one block_sum; a multiple of 32 because that
# reduction shuffles whole warps.
BLOCK = 128


def bernoulli_forward_backward(x: Any, logits: Any, dlogp: float, *, backend: str = "emulate",
                               block: int = BLOCK, grid: int | None = None,
                               out: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
    """logp[n] = sum_j x l - softplus(l), and dlogits = dlogp * (x - sigmoid(l)).

    x, logits: (N, D) float32; dlogp: d loss / d logp[n], the same for every example.
    Returns (logp (N,), dlogits (N, D)), written into ``out`` if given.
    """
    xp = cuda_load.array_module(backend)
    logits = cuda_load.check_array("logits", logits, (None, None), xp)
    n, d = logits.shape
    x = cuda_load.check_array("x", x, (n, d), xp)
    cuda_load.check_int("N", n, 1, cuda_load.INT32_LIMIT)
    cuda_load.check_int("D", d, 1, cuda_load.INT32_LIMIT)
    if not np.isfinite(dlogp):
        raise ValueError(f"dlogp must be a finite number, got {dlogp!r}")
    block = cuda_load.check_block("block", block, whole_warps=True)
    grid = cuda_load.check_grid("grid", grid, n)
    if out is None:
        logp, dlogits = xp.empty(n, np.float32), xp.empty((n, d), np.float32)
    else:
        logp = cuda_load.check_array("out[0] (logp)", out[0], (n,), xp)
        dlogits = cuda_load.check_array("out[1] (dlogits)", out[1], (n, d), xp)
    kernel = cuda_load.load(SOURCE, backend).get_function("bernoulli_forward_backward")
    kernel(grid, block, (x, logits, logp, dlogits, np.int32(n), np.int32(d), np.float32(dlogp)))
    return logp, dlogits
