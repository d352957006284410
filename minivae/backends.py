"""The backend table: every costly op of a training step, one signature, several implementations.

The model composes these ops and nothing else, so ``backend="numba"`` swaps every costly op at once.
``numpy`` is the reference: each op of its table is a public function of ``layers``, ``latent`` or
``likelihoods``, composed from their hand-derived pairs; every other backend is tested against it.
The ops (``xp`` is the backend's array module; N examples, d latent dimensions, L samples):

``linear_forward(x, W, b, act) -> (y, cache)``  (numpy: ``layers.linear_act_forward``)
    y = act(x W^T + b); ``act`` is an activation name or None. Every activation's derivative is a
    function of its output (docs/derivations.md, "Activations"), so the kernels keep y and nothing
    else for the backward.
``linear_backward(dy, cache, need_dx) -> (dx | None, dW, db)``  (numpy: ``layers.linear_act_backward``)
    with G = dy * act'(.): dx = G W, dW = G^T x, db = column sums of G.
``latent_forward(h, n_samples, eps=None, key=None) -> (z, kl, cache)``  (numpy: ``latent.latent_forward``)
    h = [mu | logvar] (N, 2d), the encoder's head. z = mu + exp(logvar/2) * eps, (L, N, d); kl the
    per-example KL (N,). eps is given (L, N, d), or drawn from the Philox stream ``key = (seed,
    offset)`` (``minivae.philox``: element j of the flat (L, N, d) tensor is stream element
    offset + j), which a GPU kernel regenerates in the backward instead of storing.
``latent_backward(dz, kl_weight, cache) -> dh``  (numpy: ``latent.latent_backward``)
    dh = [dmu | dlogvar] (N, 2d): the sampling backward plus ``kl_weight`` times the KL's gradient.
``bernoulli(x, logits, dlogp) -> (logp, dlogits)``  (numpy: ``likelihoods.bernoulli``)
    per-example log-likelihood (N,) and ``dlogp * d logp / d logits`` in one pass (dlogp a scalar:
    the loss weights every example alike). The other likelihoods have no kernel: every backend runs
    their reference code (``likelihoods.score``) on its own arrays.

``importance_weights(log_w) -> (bound, w)``  (numpy: ``iwae.importance_weights``)
    the K-sample bound's op: log_w (K, N) -> per-example log (1/K) sum_k exp(log w_k) (N,) and the
    softmax over the samples (K, N), each log-weight's gradient of the bound.

``adam(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, decoupled, step) -> None``
    optional: one Adam (or, ``decoupled``, AdamW) step in place, one pass over parameter, gradient
    and both moments; ``minivae.optim.Adam`` calls it when the backend has one (the backend's
    optimiser tests step ``optim.Adam`` through it).

``adam_many(params, grads, exp_avgs, exp_avg_sqs, *, lr, ...) -> None``
    optional: ``adam`` over sequences of tensors (the i-th of each belong together) in one call,
    bit for bit the same; ``optim.Adam`` prefers it (one call and one thread-pool wake-up per step
    instead of one per parameter).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from minivae import _arrays, _checks
from minivae.iwae import importance_weights
from minivae.latent import latent_backward, latent_forward
from minivae.layers import linear_act_backward, linear_act_forward
from minivae.likelihoods import bernoulli


@dataclass(frozen=True)
class Backend:
    name: str
    xp: Any
    linear_forward: Callable
    linear_backward: Callable
    latent_forward: Callable
    latent_backward: Callable
    bernoulli: Callable
    importance_weights: Callable = importance_weights
    adam: Callable | None = None
    adam_many: Callable | None = None
    on_gpu: bool = False

    def asarray(self, a, dtype=None):
        """``a`` on this backend's device (a no-op for CPU backends)."""
        return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a) -> np.ndarray:
        return _arrays.to_host(a)


# The reference: the hand-derived functions themselves.
NUMPY = Backend("numpy", np, linear_act_forward, linear_act_backward, latent_forward, latent_backward,
                bernoulli)

# ------------------------------------------------------------------------------------------------
# registry

BACKENDS = ("numpy", "numba", "cupy", "numba-cuda")
_loaded: dict[str, Backend] = {"numpy": NUMPY}


class BackendUnavailable(ValueError):
    """A backend that is not installed here, or a GPU backend without a GPU."""


def _load(name: str) -> Backend:
    if name == "numba":
        from minivae.kernels.wiring import numba_cpu

        return numba_cpu.backend()
    if name == "cupy":
        from minivae.kernels.wiring import cupy_backend

        return cupy_backend.backend()
    if name == "numba-cuda":
        from minivae.kernels.wiring import numba_cuda

        return numba_cuda.backend()
    raise AssertionError(name)


def get_backend(name: str | Backend = "numpy") -> Backend:
    """The backend called ``name`` (numpy, numba, cupy, numba-cuda, or auto: ``auto_backend()``).

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


# The GPU backends first, CUDA C before Numba CUDA, by design: no GPU run has been timed yet. Then
# numba before numpy, as measured (bench/results/*/train.md: about twice the steps per second).
AUTO_ORDER = ("cupy", "numba-cuda", "numba", "numpy")


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

