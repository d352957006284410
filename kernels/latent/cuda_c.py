"""Launchers for ``cuda_c.cu``: ``forward`` (z and KL) and ``backward`` (dmu, dlogvar).

Same results as ``minivae.latent`` with ``eps = minivae.philox.normal_eps_like(seed, offset,
z.shape)``, to float32 tolerances (see tests/test_kernels_latent.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from minivae.kernels.wiring import cuda_load
from minivae.philox import STREAM_LENGTH

SOURCE = Path(__file__).with_name("cuda_c.cu")
# One block per example row. Latent widths are small (2 to a few hundred), so two warps cover a
# typical row in one pass and a bigger block would mostly idle; a multiple of 32 because the KL
# reduction shuffles whole warps.
FORWARD_BLOCK = 64
# The backward is elementwise over (N, d): 8 warps per block is the usual size for a memory-bound
# elementwise kernel (enough warps in flight per block, several blocks per SM).
BACKWARD_BLOCK = 256


def _stream(seed: int, offset: int, count: int) -> tuple[np.uint64, np.uint64]:
    seed = cuda_load.check_int("seed", seed, 0, STREAM_LENGTH)
    offset = cuda_load.check_int("offset", offset, 0, STREAM_LENGTH)
    if offset + count > STREAM_LENGTH:
        raise ValueError(f"offset + z.size must be <= 2**64 (the stream's length), got offset={offset}, "
                         f"z.size={count}")
    return np.uint64(seed), np.uint64(offset)


def forward(mu: Any, logvar: Any, seed: int, offset: int, samples: int | None = None, *,
            backend: str = "emulate", block: int = FORWARD_BLOCK, grid: int | None = None,
            out: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
    """z = mu + exp(logvar / 2) eps and the per-example KL, in one pass.

    mu, logvar: (N, d) float32, row-strided views allowed (e.g. the two halves of the encoder's
    head h = [mu | logvar], read in place). samples: None for z of shape (N, d), else L >= 1 for
    (L, N, d). eps[e] = eps[offset + e] of the stream keyed by seed, e the C-order flat index in z.
    Returns (z, kl) with kl (N,), written into ``out`` if given (arrays of those shapes).
    """
    xp = cuda_load.array_module(backend)
    mu, mu_k, ld_mu = cuda_load.check_matrix("mu", mu, (None, None), xp)
    n, d = mu.shape
    logvar, logvar_k, ld_logvar = cuda_load.check_matrix("logvar", logvar, (n, d), xp)
    cuda_load.check_int("N", n, 1, cuda_load.INT32_LIMIT)
    cuda_load.check_int("d", d, 1, cuda_load.INT32_LIMIT)
    z_shape = (n, d) if samples is None else (
        cuda_load.check_int("samples", samples, 1, cuda_load.INT32_LIMIT), n, d)
    seed_, offset_ = _stream(seed, offset, n * d * (1 if samples is None else samples))
    block = cuda_load.check_block("block", block, whole_warps=True)
    grid = cuda_load.check_grid("grid", grid, n)
    if out is None:
        z, kl = xp.empty(z_shape, np.float32), xp.empty(n, np.float32)
    else:
        z = cuda_load.check_array("out[0] (z)", out[0], z_shape, xp)
        kl = cuda_load.check_array("out[1] (kl)", out[1], (n,), xp)
    kernel = cuda_load.load(SOURCE, backend).get_function("latent_forward")
    kernel(grid, block, (mu_k, np.int32(ld_mu), logvar_k, np.int32(ld_logvar), z, kl, np.int32(n),
                         np.int32(d), np.int32(z.size // (n * d)), seed_, offset_))
    return z, kl


def backward(dz: Any, mu: Any, logvar: Any, seed: int, offset: int, kl_weight: float, *,
             backend: str = "emulate", block: int = BACKWARD_BLOCK, grid: int | None = None,
             out: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
    """Gradients of ``loss = f(z) + kl_weight * sum(kl)`` w.r.t. mu and logvar, eps regenerated.

    dz: (N, d) or (L, N, d) float32 (d loss / d z); mu, logvar: (N, d); seed, offset: those of the
    forward. kl_weight: d loss / d kl[n], the same for every example (beta times the loss scale).
    Returns (dmu, dlogvar), (N, d) each, written into ``out`` if given; mu, logvar and the ``out``
    arrays may be row-strided views (e.g. the halves of h and of dh = [dmu | dlogvar]).
    """
    xp = cuda_load.array_module(backend)
    mu, mu_k, ld_mu = cuda_load.check_matrix("mu", mu, (None, None), xp)
    n, d = mu.shape
    logvar, logvar_k, ld_logvar = cuda_load.check_matrix("logvar", logvar, (n, d), xp)
    if getattr(dz, "ndim", None) == 2:
        dz = cuda_load.check_array("dz", dz, (n, d), xp)
    else:
        dz = cuda_load.check_array("dz", dz, (None, n, d), xp)
    samples = 1 if dz.ndim == 2 else cuda_load.check_int("dz.shape[0] (samples)", dz.shape[0], 1,
                                                     cuda_load.INT32_LIMIT)
    cuda_load.check_int("N", n, 1, cuda_load.INT32_LIMIT)
    cuda_load.check_int("d", d, 1, cuda_load.INT32_LIMIT)
    seed_, offset_ = _stream(seed, offset, dz.size)
    if not np.isfinite(kl_weight):
        raise ValueError(f"kl_weight must be a finite number, got {kl_weight!r}")
    block = cuda_load.check_block("block", block, whole_warps=False)
    grid = cuda_load.check_grid("grid", grid, -(-n * d // block))
    if out is None:
        out = xp.empty((n, d), np.float32), xp.empty((n, d), np.float32)
    check = cuda_load.check_matrix
    dmu, dmu_k, ld_dmu = check("out[0] (dmu)", out[0], (n, d), xp, writeable=True)
    dlogvar, dlogvar_k, ld_dlogvar = check("out[1] (dlogvar)", out[1], (n, d), xp, writeable=True)
    kernel = cuda_load.load(SOURCE, backend).get_function("latent_backward")
    kernel(grid, block, (dz, mu_k, np.int32(ld_mu), logvar_k, np.int32(ld_logvar), dmu_k, np.int32(ld_dmu),
                         dlogvar_k, np.int32(ld_dlogvar), np.int32(n), np.int32(d), np.int32(samples), seed_,
                         offset_, np.float32(kl_weight)))
    return dmu, dlogvar
