"""The backend table: every costly op of a training step, one signature, several implementations.

The model composes these ops and nothing else, so ``backend="numba"`` swaps every costly op at once.
``numpy`` is the reference: it composes the hand-derived function pairs of ``layers``, ``latent``
and ``likelihoods``; every other backend is tested against it. The ops (``xp`` is the backend's
array module; N examples, d latent dimensions, L samples):

``linear_forward(x, W, b, act) -> (y, cache)``
    y = act(x W^T + b); ``act`` is an activation name or None. The cache keeps what the backward
    needs (the output suffices for relu, sigmoid and tanh).
``linear_backward(dy, cache, need_dx) -> (dx | None, dW, db)``
    with G = dy * act'(.): dx = G W, dW = G^T x, db = column sums of G.
``latent_forward(h, n_samples, eps=None, key=None) -> (z, kl, cache)``
    h = [mu | logvar] (N, 2d), the encoder's head. z = mu + exp(logvar/2) * eps, (L, N, d); kl the
    per-example KL (N,). eps is given (L, N, d), or drawn from the Philox stream ``key = (seed,
    offset)`` (``minivae.philox``: element j of the flat (L, N, d) tensor is stream element
    offset + j), which a kernel regenerates instead of storing.
``latent_backward(dz, kl_weight, cache) -> dh``
    dh = [dmu | dlogvar] (N, 2d): the sampling backward plus ``kl_weight`` times the KL's gradient.
``bernoulli(x, logits, dlogp) -> (logp, dlogits)``
    per-example log-likelihood (N,) and ``dlogp * d logp / d logits`` in one pass (dlogp a scalar:
    the loss weights every example alike).

``adam(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, decoupled, step) -> None``
    optional: one Adam (or, ``decoupled``, AdamW) step in place, one pass over parameter, gradient
    and both moments; ``minivae.optim.Adam`` calls it when the backend has one (the backend's
    optimiser tests step ``optim.Adam`` through it).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from minivae import _checks, philox
from minivae.latent import kl_backward, kl_forward, reparameterize_backward, reparameterize_forward
from minivae.layers import ACTIVATIONS, linear_backward, linear_forward
from minivae.likelihoods import Bernoulli


@dataclass(frozen=True)
class Backend:
    name: str
    xp: Any
    linear_forward: Callable
    linear_backward: Callable
    latent_forward: Callable
    latent_backward: Callable
    bernoulli: Callable
    adam: Callable | None = None
    on_gpu: bool = False

    def asarray(self, a, dtype=None):
        """``a`` on this backend's device (a no-op for CPU backends)."""
        return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a) -> np.ndarray:
        return a.get() if hasattr(a, "get") else np.asarray(a)


# ------------------------------------------------------------------------------------------------
# numpy: the reference, composed from the hand-derived pairs


def _np_linear_forward(x, W, b, act):
    y, lin_cache = linear_forward(x, W, b)
    if act is None:
        return y, (lin_cache, None, None)
    fwd, bwd, _, _ = ACTIVATIONS[act]
    y, act_cache = fwd(y)
    return y, (lin_cache, bwd, act_cache)


def _np_linear_backward(dy, cache, need_dx=True):
    lin_cache, act_bwd, act_cache = cache
    g = dy if act_bwd is None else act_bwd(dy, act_cache)
    return linear_backward(g, lin_cache, need_dx=need_dx)


def draw_eps(key: tuple[int, int], shape: tuple[int, ...], dtype) -> np.ndarray:
    """The Philox stream's normals for ``key = (seed, offset)``, laid out in C order."""
    seed, offset = key
    return philox.normal_eps_like(seed, offset, shape, dtype)


def array_module(a) -> Any:
    """numpy, or cupy for a CuPy array: the reference ops below run on either (CuPy implements
    NumPy's ufunc and function protocols; only fresh arrays must be made with the right module)."""
    cupy = sys.modules.get("cupy")
    return cupy.get_array_module(a) if cupy is not None else np


def _np_latent_forward(h, n_samples, eps=None, key=None):
    d = h.shape[1] // 2
    mu, logvar = h[:, :d], h[:, d:]
    if eps is None:
        eps = array_module(h).asarray(draw_eps(key, (n_samples, h.shape[0], d), h.dtype))
    z, z_cache = reparameterize_forward(mu, logvar, eps)
    return z, kl_forward(mu, logvar), (mu, logvar, z_cache)


def _np_latent_backward(dz, kl_weight, cache):
    mu, logvar, z_cache = cache
    dmu, dlogvar = reparameterize_backward(dz, z_cache)
    xp = array_module(mu)
    w = xp.full(mu.shape[0], kl_weight, dtype=mu.dtype)
    dmu_kl, dlogvar_kl = kl_backward(w, mu, logvar)
    return xp.concatenate([dmu + dmu_kl, dlogvar + dlogvar_kl], axis=1)


_BERNOULLI = Bernoulli(1)


def _np_bernoulli(x, logits, dlogp):
    logp, cache = _BERNOULLI.forward(x, logits)
    dlogits, _ = _BERNOULLI.backward(array_module(logits).full(x.shape[0], dlogp, dtype=logits.dtype), cache)
    return logp, dlogits


NUMPY = Backend("numpy", np, _np_linear_forward, _np_linear_backward, _np_latent_forward,
                _np_latent_backward, _np_bernoulli)

# ------------------------------------------------------------------------------------------------
# registry

BACKENDS = ("numpy", "numba", "cupy", "numba-cuda")
_loaded: dict[str, Backend] = {"numpy": NUMPY}


class BackendUnavailable(ValueError):
    """A backend that is not installed here, or a GPU backend without a GPU."""


def _load(name: str) -> Backend:
    if name == "numba":
        from minivae.kernels import numba_cpu

        return numba_cpu.backend()
    if name == "cupy":
        from minivae.kernels import cupy_backend

        return cupy_backend.backend()
    if name == "numba-cuda":
        from minivae.kernels import numba_cuda

        return numba_cuda.backend()
    raise AssertionError(name)


def get_backend(name: str | Backend = "numpy") -> Backend:
    """The backend called ``name`` (numpy, numba, cupy, numba-cuda, or auto: the fastest here).

    Raises BackendUnavailable (a ValueError) naming what is missing.
    """
    if isinstance(name, Backend):
        return name
    if name == "auto":
        return auto_backend()
    _checks.choice("backend", name, (*BACKENDS, "auto"))
    if name not in _loaded:
        try:
            _loaded[name] = _load(name)
        except ImportError as e:
            raise BackendUnavailable(f"backend {name!r} is not available: {e}") from None
    return _loaded[name]


def available() -> dict[str, str]:
    """Each backend with "ok" or the reason it cannot be used here."""
    out = {}
    for name in BACKENDS:
        try:
            get_backend(name)
            out[name] = "ok"
        except BackendUnavailable as e:
            out[name] = str(e)
    return out


AUTO_ORDER = ("cupy", "numba-cuda", "numba", "numpy")  # fastest first, as measured in bench/


GPU_BACKENDS = ("cupy", "numba-cuda")


def auto_backend() -> Backend:
    """The first of AUTO_ORDER that runs here. A GPU backend counts only on a real GPU: under
    Numba's CUDA simulator (tests) numba-cuda is available but runs on the CPU, thousands of
    times slower than any CPU backend."""
    for name in AUTO_ORDER:
        try:
            backend = get_backend(name)
        except BackendUnavailable:
            continue
        if name in GPU_BACKENDS and not backend.on_gpu:
            continue
        return backend
    return NUMPY

