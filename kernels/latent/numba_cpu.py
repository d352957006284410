"""Numba CPU form of the latent ops: the reparameterized sample with the KL term, and its backward.

NumPy reference: ``minivae.latent.latent_forward/latent_backward`` (the numpy backend's op).
``h = [mu | logvar]`` (N, 2d); L samples; eps is given (L, N, d) or drawn from the Philox stream
``key = (seed, offset)``: element ``e`` of the C-order flat (L, N, d) tensor is stream element
``offset + e`` (``minivae.philox``). The forward keeps the noise it used (L N d floats, as the
NumPy reference does) and the backward reads it: on the CPU, running Philox and
Box-Muller again cost more than the memory (measured on one core at 1024 x 20, float32: the
backward took ~0.5 ms regenerating eps with the libm forms, ~0.1 ms reading it, vectorised). The
GPU kernels regenerate it instead.

The forward draws the whole (L, N, d) noise tensor in one call (it is one contiguous range of the
stream), then makes one pass over the rows of h: per example the KL sum and the L sample rows; the
backward's pass adds the sums over samples. Float32 arrays compute in float32, with the vectorised
forms of ``common/vecmath`` (exp, expm1) and ``philox_numba.fill_normals_f32`` (the Philox float32
recipe); float64 in float64 on libm. The KL sum accumulates in float64 and is rounded once. The rows
are tiny (d ~ 2..100) and the whole op is a few tens of microseconds at training sizes, so it runs
on one thread (measured at 1024 x 20, float32: forward ~0.95 ms -> ~0.15 ms, backward ~0.5 ms ->
~0.1 ms against the libm forms that regenerated the noise).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

from minivae import _checks
from minivae.kernels.common.philox_numba import fill_stream, split_seed
from minivae.kernels.common.vecmath import exp, expm1, sum_f64
from minivae.philox import STREAM_LENGTH

_JIT = {"cache": True, "fastmath": {"contract"}, "error_model": "numpy"}


@njit(**_JIT)
def _forward(h, eps, use_key, seed_lo, seed_hi, offset, z, kl):
    """z[l, i] = mu_i + exp(logvar_i / 2) eps[l, i]; kl[i] = 1/2 sum_j (mu^2 + expm1(logvar) - logvar).

    eps: (L, N, d), read; or written when use_key: element e of its C-order flat form is then stream
    element offset + e.
    """
    n, d = z.shape[1], z.shape[2]
    half = h.dtype.type(0.5)
    if use_key:
        fill_stream(seed_lo, seed_hi, offset, eps.reshape(-1))
    terms, std = np.empty(d, h.dtype), np.empty(d, h.dtype)
    for i in range(n):
        for j in range(d):  # staged, then summed: a reduction in this loop would keep it scalar
            mu, logvar = h[i, j], h[i, d + j]
            terms[j] = mu * mu + expm1(logvar) - logvar
            std[j] = exp(half * logvar)
        kl[i] = sum_f64(terms) * 0.5
        for s in range(z.shape[0]):
            for j in range(d):
                z[s, i, j] = h[i, j] + std[j] * eps[s, i, j]


@njit(**_JIT)
def _backward(dz, kl_weight, h, eps, dh):
    """dh = [dmu | dlogvar] (N, 2d): dmu = sum_l dz + w mu, dlogvar = (sum_l dz eps) std / 2
    + w expm1(logvar) / 2 (docs/derivations.md, "Reparameterization" and "KL term")."""
    n_samples, n, d = dz.shape
    half = h.dtype.type(0.5)
    w = h.dtype.type(kl_weight)
    sum_dz, sum_dz_eps = np.empty(d, h.dtype), np.empty(d, h.dtype)
    for i in range(n):
        # the sums over samples, accumulated in sample order (as NumPy's sum)
        sum_dz[:] = 0
        sum_dz_eps[:] = 0
        for s in range(n_samples):
            for j in range(d):
                sum_dz[j] += dz[s, i, j]
                sum_dz_eps[j] += dz[s, i, j] * eps[s, i, j]
        for j in range(d):
            mu, logvar = h[i, j], h[i, d + j]
            dh[i, j] = sum_dz[j] + w * mu
            dh[i, d + j] = sum_dz_eps[j] * (half * exp(half * logvar)) + w * (half * expm1(logvar))


def _stream(key: tuple[int, int], count: int) -> tuple[np.uint64, np.uint64, np.uint64]:
    """(seed_lo, seed_hi, offset) of a key, checked so that offset + count stays in the stream."""
    try:
        seed, offset = key
    except (TypeError, ValueError):
        raise ValueError(f"key must be a pair (seed, offset), got {key!r}") from None
    seed_lo, seed_hi = split_seed(seed)
    offset = _checks.integer("key's offset", offset, 0)
    if offset + count > STREAM_LENGTH:
        raise ValueError(f"key's offset + z.size must be <= 2**64 (the stream's length), "
                         f"got offset={offset}, "
                         f"z.size={count}")
    return seed_lo, seed_hi, np.uint64(offset)


def _noise(h: np.ndarray, shape: tuple[int, int, int], eps, key):
    """The forward kernel's noise arguments: (eps, use_key, seed_lo, seed_hi, offset); with a key,
    eps is a new array the kernel fills."""
    if eps is not None:
        eps = np.ascontiguousarray(eps, dtype=h.dtype)
        if eps.shape != shape:
            raise ValueError(f"eps must have shape {shape} (L, N, d), got {eps.shape}")
        return eps, False, np.uint64(0), np.uint64(0), np.uint64(0)
    if key is None:
        raise ValueError("give eps or key: the noise comes from an explicit array or Philox stream")
    return (np.empty(shape, h.dtype), True, *_stream(key, math.prod(shape)))


def latent_forward(h: np.ndarray, n_samples: int, eps=None, key=None) -> tuple[np.ndarray, np.ndarray, Any]:
    """h = [mu | logvar] (N, 2d) -> z (L, N, d), kl (N,), cache; eps (L, N, d) or key = (seed, offset)."""
    h = np.ascontiguousarray(h)
    if h.ndim != 2 or h.shape[1] % 2 or h.shape[1] == 0:
        raise ValueError(f"h must be [mu | logvar] of shape (N, 2d) with d >= 1, got shape {h.shape}")
    n, d = h.shape[0], h.shape[1] // 2
    shape = (_checks.integer("n_samples", n_samples, 1) if eps is None else len(eps), n, d)
    noise = _noise(h, shape, eps, key)
    z, kl = np.empty(shape, h.dtype), np.empty(n, h.dtype)
    _forward(h, *noise, z, kl)
    return z, kl, (h, noise[0], shape)


def latent_backward(dz: np.ndarray, kl_weight: float, cache: Any) -> np.ndarray:
    """dz (L, N, d) -> dh = [dmu | dlogvar] (N, 2d), the KL gradient weighted by kl_weight included."""
    h, eps, shape = cache
    dz = np.ascontiguousarray(dz, dtype=h.dtype)
    if dz.shape != shape:
        raise ValueError(f"dz must have z's shape {shape} (L, N, d), got {dz.shape}")
    dh = np.empty_like(h)
    _backward(dz, float(kl_weight), h, eps, dh)
    return dh
