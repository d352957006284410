"""The Bernoulli likelihood on logits in Numba CUDA: per-example log-likelihood and its gradient in
one pass. Reference: ``minivae.likelihoods.bernoulli`` (the numpy backend's op: ``Bernoulli``'s
forward, then backward); derivation in docs/derivations.md, "Likelihoods". The CUDA C twin is
``cuda_c.cu``.

    logp[n]      = sum_j x_nj l_nj - softplus(l_nj)
    dlogits[n,j] = dlogp (x_nj - sigmoid(l_nj))

dlogp is d loss / d logp[n], the same for every example (-1 / (N L) for a mean loss): the backward's
scale is known before the forward runs, so both come from one read of x and the logits.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from numba import cuda, from_dtype

from minivae.kernels.common.reduce_numba import block_sum
from minivae.kernels.wiring import numba_cuda as nbc

# One block per example row; rows are images (64 to a few thousand pixels), so 4 warps stride a row
# in a handful of passes while the row's sum stays one block reduction.
BLOCK = 128


@functools.cache
def _kernel(dtype_str: str):
    """The kernel for one dtype (compiled on first launch)."""
    dtype = np.dtype(dtype_str)
    nb_type = from_dtype(dtype)
    scratch_size = nbc.MAX_BLOCK_THREADS  # block_sum's slots; a closure variable is a compile-time constant
    zero, one = dtype.type(0), dtype.type(1)

    @cuda.jit
    def bernoulli(x, logits, dlogp, logp, dlogits):
        """Grid-stride over rows; exp is only ever taken of -|l|, so nothing overflows."""
        scratch = cuda.shared.array(scratch_size, nb_type)
        n_rows, dim = logits.shape
        for row in range(cuda.blockIdx.x, n_rows, cuda.gridDim.x):
            terms = zero
            for j in range(cuda.threadIdx.x, dim, cuda.blockDim.x):
                logit, xv = logits[row, j], x[row, j]
                e = math.exp(-abs(logit))
                terms += xv * logit - (max(logit, zero) + math.log1p(e))  # softplus(l) = max(l, 0) + log1p(e)
                sigmoid = (one if logit >= zero else e) / (one + e)
                dlogits[row, j] = dlogp * (xv - sigmoid)
            total = block_sum(terms, scratch)
            if cuda.threadIdx.x == 0:
                logp[row] = total

    return bernoulli


def bernoulli(x: Any, logits: Any, dlogp: float, *, block: int = BLOCK,
              grid: int | None = None) -> tuple[Any, Any]:
    """(logp (N,), dlogits (N, D)) from x, logits: (N, D), one dtype (float32 or float64),
    C-contiguous; dlogp: d loss / d logp[n], a finite number."""
    logits = nbc.check_array("logits", logits, (None, None))
    n, d = logits.shape
    x = nbc.check_array("x", x, (n, d), logits.dtype)
    nbc.check_dims(N=n, D=d)
    if not np.isfinite(dlogp):
        raise ValueError(f"dlogp must be a finite number, got {dlogp!r}")
    block = nbc.check_block("block", block)
    grid = nbc.check_grid("grid", grid, n)
    xp = nbc.array_module()
    logp, dlogits = xp.empty(n, logits.dtype), xp.empty((n, d), logits.dtype)
    nbc.launch(_kernel(logits.dtype.str), grid, block, x, logits, nbc.scalar(logits.dtype, dlogp), logp,
               dlogits)
    return logp, dlogits
