"""The latent step of a VAE in Numba CUDA: reparameterized samples and the KL term, fused.

Reference: ``minivae.latent.latent_forward/latent_backward`` (reparameterize_*, kl_*); derivations in
docs/derivations.md, "Reparameterization" and "KL term". The CUDA C twin is ``cuda_c.cu``.

h = [mu | logvar] (N, 2d) is the encoder's head, read in place (no split). The noise is either given
(eps, (L, N, d)) or drawn in the kernel from the Philox stream ``key = (seed, offset)``: element e of
z (its C-order flat index in (L, N, d)) uses stream element offset + e (``minivae.philox``), so eps is
never written to memory and the backward regenerates the very same values.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from numba import cuda, from_dtype

from minivae import _checks, philox
from minivae.kernels.common import philox_numba
from minivae.kernels.common.reduce_numba import block_sum
from minivae.kernels.wiring import cuda_load
from minivae.kernels.wiring import numba_cuda as nbc

# One block per example row. Latent widths are small (20 by default, rarely above a few dozen), so a
# single warp covers a row in one or two passes; a wider block would mostly idle at the reduction.
FORWARD_BLOCK = 32
# The backward is elementwise over (N, d): 8 warps per block is the usual size for a memory-bound
# elementwise kernel (enough loads in flight per block, several blocks per SM).
BACKWARD_BLOCK = 256


@functools.cache
def _kernels(dtype_str: str):
    """The forward and backward kernels for one dtype (compiled on first launch)."""
    dtype = np.dtype(dtype_str)
    nb_type = from_dtype(dtype)
    scratch_size = nbc.MAX_BLOCK_THREADS  # block_sum's slots; a closure variable is a compile-time constant
    zero, one, half = dtype.type(0), dtype.type(1), dtype.type(0.5)

    @cuda.jit(device=True)
    def noise(eps, have_eps, s, row, j, e, seed_lo, seed_hi, offset):
        """eps[s, row, j]: given, or stream element offset + e (e: the flat index of that element)."""
        if have_eps:
            return eps[s, row, j]
        return philox_numba.eps_at(seed_lo, seed_hi, offset + np.uint64(e), one)

    @cuda.jit
    def forward(h, eps, have_eps, seed_lo, seed_hi, offset, z, kl):
        """z[s, n] = mu_n + exp(logvar_n / 2) eps[s, n]; kl[n] = 1/2 sum_j (mu^2 + e^logvar - 1 - logvar).
        Grid-stride over rows: block b takes rows b, b + gridDim.x, ..."""
        scratch = cuda.shared.array(scratch_size, nb_type)
        samples, n_rows, d = z.shape
        for row in range(cuda.blockIdx.x, n_rows, cuda.gridDim.x):
            terms = zero
            for j in range(cuda.threadIdx.x, d, cuda.blockDim.x):
                m, lv = h[row, j], h[row, d + j]
                sd = math.exp(half * lv)
                terms += m * m + math.expm1(lv) - lv  # expm1: accurate near logvar = 0
                for s in range(samples):
                    e = (s * n_rows + row) * d + j
                    z[s, row, j] = m + sd * noise(eps, have_eps, s, row, j, e, seed_lo, seed_hi, offset)
            total = block_sum(terms, scratch)
            if cuda.threadIdx.x == 0:
                kl[row] = half * total

    @cuda.jit
    def backward(dz, h, eps, have_eps, seed_lo, seed_hi, offset, kl_weight, dh):
        """With w = kl_weight (d loss / d kl[n]), elementwise over (N, d), eps regenerated:
        dmu = sum_s dz_s + w mu;  dlogvar = (sum_s dz_s eps_s) exp(logvar / 2) / 2 + w (e^logvar - 1) / 2."""
        samples, n_rows, d = dz.shape
        for i in range(cuda.grid(1), n_rows * d, cuda.gridsize(1)):
            row, j = i // d, i % d
            m, lv = h[row, j], h[row, d + j]
            sum_dz, sum_dz_eps = zero, zero
            for s in range(samples):
                g = dz[s, row, j]
                e = s * n_rows * d + i
                sum_dz += g
                sum_dz_eps += g * noise(eps, have_eps, s, row, j, e, seed_lo, seed_hi, offset)
            dh[row, j] = sum_dz + kl_weight * m
            dh[row, d + j] = sum_dz_eps * (half * math.exp(half * lv)) + kl_weight * (half * math.expm1(lv))

    return forward, backward


def _noise_args(eps: Any, key: tuple[int, int] | None, shape: tuple[int, int, int], dtype: np.dtype):
    """The kernels' (eps, have_eps, seed_lo, seed_hi, offset) for exactly one of eps and key."""
    if (eps is None) == (key is None):
        raise ValueError("give exactly one of eps (the noise) and key ((seed, offset) of the Philox stream), "
                         f"got eps={'None' if eps is None else 'an array'} and key={key!r}")
    if eps is not None:
        eps = nbc.check_array("eps", eps, shape, dtype)
        return eps, True, np.uint64(0), np.uint64(0), np.uint64(0)
    try:
        seed, offset = key
    except (TypeError, ValueError):
        raise ValueError(f"key must be a pair (seed, offset), got {key!r}") from None
    seed_lo, seed_hi = philox_numba.split_seed(seed)
    offset = _checks.integer("key's offset", offset, 0, philox.STREAM_LENGTH)
    count = math.prod(shape)
    if offset + count > philox.STREAM_LENGTH:
        raise ValueError(f"offset + z.size must be <= 2**64 (the stream's length), got offset={offset}, "
                         f"z.size={count}")
    return nbc.placeholder(dtype, 3), False, seed_lo, seed_hi, np.uint64(offset)


def _check_head(h: Any) -> tuple[Any, int, int]:
    """h = [mu | logvar] (N, 2d) -> (h, N, d)."""
    h = nbc.check_array("h", h, (None, None))
    n, two_d = h.shape
    if two_d % 2:
        raise ValueError(f"h must be [mu | logvar] with an even number of columns, got shape {h.shape}")
    nbc.check_dims(N=n, d=two_d // 2)
    return h, n, two_d // 2


def forward(h: Any, samples: int, *, eps: Any = None, key: tuple[int, int] | None = None,
            block: int = FORWARD_BLOCK, grid: int | None = None) -> tuple[Any, Any]:
    """z = mu + exp(logvar / 2) eps (L, N, d) and the per-example KL (N,), in one pass.

    h = [mu | logvar]: (N, 2d) float32 or float64, C-contiguous. samples: L. Exactly one of eps
    ((L, N, d), h's dtype) and key ((seed, offset): eps drawn in the kernel).
    """
    h, n, d = _check_head(h)
    samples = cuda_load.check_int("samples", samples, 1, 2**31)
    shape = (samples, n, d)
    noise = _noise_args(eps, key, shape, h.dtype)
    block = nbc.check_block("block", block)
    grid = nbc.check_grid("grid", grid, n)
    xp = nbc.array_module()
    z, kl = xp.empty(shape, h.dtype), xp.empty(n, h.dtype)
    kernel, _ = _kernels(h.dtype.str)
    nbc.launch(kernel, grid, block, h, *noise, z, kl)
    return z, kl


def backward(dz: Any, h: Any, kl_weight: float, *, eps: Any = None, key: tuple[int, int] | None = None,
             block: int = BACKWARD_BLOCK, grid: int | None = None) -> Any:
    """dh = [dmu | dlogvar] (N, 2d) of ``loss = f(z) + kl_weight * sum(kl)``.

    dz: (L, N, d) (d loss / d z); h, and eps or key: those of the forward. kl_weight: d loss / d kl[n],
    the same for every example (beta times the loss scale).
    """
    h, n, d = _check_head(h)
    dz = nbc.check_array("dz", dz, (None, n, d), h.dtype)
    nbc.check_dims(L=dz.shape[0])
    noise = _noise_args(eps, key, dz.shape, h.dtype)
    if not np.isfinite(kl_weight):
        raise ValueError(f"kl_weight must be a finite number, got {kl_weight!r}")
    block = nbc.check_block("block", block)
    grid = nbc.check_grid("grid", grid, -(-n * d // block))
    dh = nbc.array_module().empty((n, 2 * d), h.dtype)
    _, kernel = _kernels(h.dtype.str)
    nbc.launch(kernel, grid, block, dz, h, *noise, nbc.scalar(h.dtype, kl_weight), dh)
    return dh
