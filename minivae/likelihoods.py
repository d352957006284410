"""Likelihoods p(x|z) on the decoder's output, each with a stable log-density and its gradient.

Each likelihood follows the layer protocol: ``forward(x, out) -> (logp, cache)`` with ``logp`` the
per-example log-density summed over the data dimensions, shape (N,), and
``backward(dlogp, cache) -> (dout, grads)`` with ``dout = dlogp[:, None] * d logp / d out`` and
``grads`` the gradients of the likelihood's own parameters (only the learned-variance Gaussian has
one). Derivations: docs/derivations.md, "Likelihoods".

- ``bernoulli``: out = logits l; log p = x l - softplus(l). For binary x this is a likelihood; for
  grey x in [0, 1] it is the (negated) binary cross-entropy that the PyTorch VAE example reports,
  which is *not* a normalised density on [0, 1] (see docs/faq.md).
- ``cbernoulli``: the continuous Bernoulli (Loaiza-Ganem & Cunningham, 2019), the normalised fix for
  grey values: log p = x l - softplus(l) + log C(l), with log C(l) = log(l / tanh(l / 2)).
- ``gaussian``: out = mean m, fixed sigma.
- ``gaussian_learned``: out = mean m, a learned per-dimension log-variance ``logvar`` (D,),
  unbounded (see ``GaussianLearned``).

The model scores a batch with ``score`` (forward, then backward with one weight for every example);
``bernoulli`` is that for the Bernoulli likelihood, the numpy backend's fused op (the kernel backends
compute it in one pass). Everything here uses NumPy's functions only, so it also runs on CuPy arrays:
the GPU backends train every likelihood but Bernoulli through this very code.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minivae import _checks
from minivae._arrays import array_module, to_host
from minivae.layers import sigmoid, softplus

LOG_2PI = float(np.log(2 * np.pi))

# Below this |logit| the continuous Bernoulli's normaliser, its derivative and its mean use their
# Taylor series: the closed forms subtract two numbers of size 1/|l| (cancellation: the
# derivative's relative error is ~6 eps / l^2, 1.4e-13 at the switch), while the series as
# truncated below stay within 1.4e-15 relative of 50-digit references (docs/derivations.md,
# "Series near l = 0", and the test that holds them to it).
# These functions compute in float64 whatever the input dtype and cast back: in float32 the
# closed form just above the switch would lose ~760 ulps. Integer logits are refused, not cast
# back (that would truncate the result).
CB_SERIES_BELOW = 0.1


def _float64(logits: np.ndarray) -> np.ndarray:
    """``logits`` in float64, or ValueError unless they are a floating-point array."""
    dtype = getattr(logits, "dtype", None)
    if dtype is None or not np.issubdtype(dtype, np.floating):
        got = f"dtype {dtype}" if dtype is not None else type(logits).__name__
        raise ValueError(f"logits must be a float32 or float64 array, got {got}")
    return logits.astype(np.float64)


def _bernoulli_part(x: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """x l - softplus(l) elementwise: log sigmoid(l) if x = 1, log sigmoid(-l) if x = 0."""
    return x * logits - softplus(logits)


def cb_log_norm(logits: np.ndarray) -> np.ndarray:
    """log C(l) for the continuous Bernoulli, C(l) = l / tanh(l/2) (C(0) = 2), elementwise.

    Even in l. For |l| >= CB_SERIES_BELOW, with a = |l|: log a - log tanh(a/2) and
    log tanh(a/2) = log(-expm1(-a)) - log1p(e^{-a}), which stays exact for huge |l| too.
    Near 0, with u = l/2: log 2 + u^2/3 - 7u^4/90 + 62u^6/2835 - 127u^8/18900.
    """
    a = np.abs(_float64(logits))
    small = a < CB_SERIES_BELOW
    a_big = np.where(small, 1, a)  # keep log() away from 0 on the lanes the series covers
    e = np.exp(-a_big)
    exact = np.log(a_big) - (np.log(-np.expm1(-a_big)) - np.log1p(e))
    u2 = (0.5 * a) ** 2
    series = np.log(2) + u2 * (1 / 3 + u2 * (-7 / 90 + u2 * (62 / 2835 - u2 * 127 / 18900)))
    return np.where(small, series, exact).astype(logits.dtype, copy=False)


def cb_log_norm_grad(logits: np.ndarray) -> np.ndarray:
    """d log C / dl = 1/l - 1/sinh(l), elementwise (odd in l, 0 at l = 0).

    1/sinh(l) = 2 sign(l) e^{-|l|} / (1 - e^{-2|l|}) never overflows. Near 0, with u = l/2:
    u/3 - 7u^3/45 + 62u^5/945 - 127u^7/4725 + 146u^9/13365.
    """
    a = np.abs(_float64(logits))
    small = a < CB_SERIES_BELOW
    a_big = np.where(small, 1, a)
    e = np.exp(-a_big)
    exact = 1 / a_big - 2 * e / -np.expm1(-2 * a_big)
    u = 0.5 * a
    u2 = u * u
    series = u * (1 / 3 + u2 * (-7 / 45 + u2 * (62 / 945 + u2 * (-127 / 4725
                                                                  + u2 * 146 / 13365))))
    return (np.sign(logits) * np.where(small, series, exact)).astype(logits.dtype, copy=False)


def cb_mean(logits: np.ndarray) -> np.ndarray:
    """E[x] of the continuous Bernoulli: 1/2 + (coth(u) - 1/u)/2 with u = l/2 (1/2 at l = 0).

    Near 0: coth(u) - 1/u = u/3 - u^3/45 + 2u^5/945 - u^7/4725 + 2u^9/93555.
    """
    u = 0.5 * _float64(logits)
    small = np.abs(u) < 0.5 * CB_SERIES_BELOW
    u_big = np.where(small, 1, u)
    exact = 1 / np.tanh(u_big) - 1 / u_big
    u2 = u * u
    series = u * (1 / 3 + u2 * (-1 / 45 + u2 * (2 / 945 + u2 * (-1 / 4725 + u2 * 2 / 93555))))
    return (0.5 + 0.5 * np.where(small, series, exact)).astype(logits.dtype, copy=False)


class Bernoulli:
    """Bernoulli with logits; data in [0, 1] (binary for a true likelihood)."""

    name = "bernoulli"

    def __init__(self, x_dim: int, dtype=np.float32):
        self.params: dict[str, np.ndarray] = {}

    def check_data(self, name: str, x: np.ndarray) -> None:
        _checks.in_unit_interval(name, x)

    def forward(self, x: np.ndarray, logits: np.ndarray):
        return _bernoulli_part(x, logits).sum(axis=1), (x, logits)

    def backward(self, dlogp: np.ndarray, cache):
        """d/dl (x l - softplus(l)) = x - sigmoid(l)."""
        x, logits = cache
        return dlogp[:, None] * (x - sigmoid(logits)), {}

    def mean(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits)

    def sample(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return (rng.random(logits.shape) < sigmoid(logits)).astype(logits.dtype)


class ContinuousBernoulli(Bernoulli):
    """Continuous Bernoulli with logits: a normalised density for grey values in [0, 1]."""

    name = "cbernoulli"

    def forward(self, x: np.ndarray, logits: np.ndarray):
        logp = (_bernoulli_part(x, logits) + cb_log_norm(logits)).sum(axis=1)
        return logp, (x, logits)

    def backward(self, dlogp: np.ndarray, cache):
        x, logits = cache
        return dlogp[:, None] * (x - sigmoid(logits) + cb_log_norm_grad(logits)), {}

    def mean(self, logits: np.ndarray) -> np.ndarray:
        return cb_mean(logits)

    def sample(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Inverse CDF: x = log(1 + u (e^l - 1)) / l, in float64 and without forming e^l.

        For l > 0 it equals (l + log(u + (1 - u) e^-l)) / l; the tail log(...) is written as
        log1p((1 - u) expm1(-l)) below |l| = 1, where it is tiny and must not be rounded away.
        For l < 0, x(l, u) = 1 - x(-l, 1 - u) (the density mirrors).
        """
        u = rng.random(logits.shape)
        a = np.abs(_float64(logits))
        v = np.where(logits >= 0, u, 1 - u)
        zero = a == 0
        a_safe = np.where(zero, 1.0, a)
        tail = np.where(a_safe < 1, np.log1p((1 - v) * np.expm1(-a_safe)),
                        np.log(v + (1 - v) * np.exp(-a_safe)))
        t = (a_safe + tail) / a_safe
        x = np.where(zero, u, np.where(logits >= 0, t, 1 - t))
        return np.clip(x, 0, 1).astype(logits.dtype)


class Gaussian:
    """Gaussian with mean = decoder output and a fixed standard deviation ``sigma``."""

    name = "gaussian"

    def __init__(self, x_dim: int, dtype=np.float32, sigma: float = 1.0):
        self.sigma = _checks.positive_float("sigma", sigma)
        self.params: dict[str, np.ndarray] = {}

    def check_data(self, name: str, x: np.ndarray) -> None:
        """Any finite value is in the support."""

    def forward(self, x: np.ndarray, mean: np.ndarray):
        r = (x - mean) / x.dtype.type(self.sigma)
        d = x.shape[1]
        logp = -0.5 * np.sum(r * r, axis=1) - d * (np.log(self.sigma) + 0.5 * LOG_2PI)
        return logp.astype(x.dtype, copy=False), r

    def backward(self, dlogp: np.ndarray, r):
        """d/dm of -(x - m)^2 / (2 sigma^2) = (x - m) / sigma^2 = r / sigma."""
        return dlogp[:, None] * r / r.dtype.type(self.sigma), {}

    def mean(self, out: np.ndarray) -> np.ndarray:
        return out

    def sample(self, out: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return (out + self.sigma * rng.standard_normal(out.shape)).astype(out.dtype)


class GaussianLearned:
    """Gaussian with mean = decoder output and a learned log-variance ``s`` per data dimension.

    ``s`` is unbounded. Where the decoder fits a dimension ever better (a pixel that is 0 in every
    image), the maximum-likelihood variance of that dimension is 0 and training drives its ``s``
    down without end: log p grows without bound, and once ``e^-s`` overflows (s < -88 in float32)
    the loss is not finite and ``VAE.loss`` raises FloatingPointError (training stops on a
    non-finite loss). Data with constant or near-constant dimensions want the fixed-sigma
    ``gaussian`` instead.
    """

    name = "gaussian_learned"

    def __init__(self, x_dim: int, dtype=np.float32):
        self.params = {"logvar": np.zeros(_checks.positive_int("x_dim", x_dim), dtype=dtype)}

    def check_data(self, name: str, x: np.ndarray) -> None:
        """Any finite value is in the support."""

    def forward(self, x: np.ndarray, mean: np.ndarray):
        s = self.params["logvar"]
        inv_var = np.exp(-s)
        diff = x - mean
        logp = -0.5 * np.sum(diff * diff * inv_var + s + LOG_2PI, axis=1)
        return logp.astype(x.dtype, copy=False), (diff, inv_var)

    def backward(self, dlogp: np.ndarray, cache):
        """d/dm = (x - m) e^{-s};  d/ds = ((x - m)^2 e^{-s} - 1) / 2, summed over examples."""
        diff, inv_var = cache
        w = diff * inv_var
        dmean = dlogp[:, None] * w
        dlogvar = 0.5 * (dlogp @ (diff * w) - dlogp.sum())
        return dmean, {"logvar": dlogvar.astype(diff.dtype, copy=False)}

    def mean(self, out: np.ndarray) -> np.ndarray:
        return out

    def sample(self, out: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        std = np.exp(0.5 * to_host(self.params["logvar"]))  # the parameter may live on a GPU
        return (out + std * rng.standard_normal(out.shape)).astype(out.dtype)


def score(likelihood: Any, x: np.ndarray, out: np.ndarray, dlogp: float):
    """log p(x | out) per example (N,), ``dout = dlogp * d log p / d out`` and the likelihood's own
    parameters' gradients: ``forward``, then ``backward`` with the same weight ``dlogp`` for every
    example (the loss weights them alike)."""
    logp, cache = likelihood.forward(x, out)
    dout, grads = likelihood.backward(array_module(out).full(logp.shape[0], dlogp, dtype=out.dtype), cache)
    return logp, dout, grads


_BERNOULLI = Bernoulli(1)


def bernoulli(x: np.ndarray, logits: np.ndarray, dlogp: float):
    """The numpy backend's ``bernoulli`` op: ``score`` of the Bernoulli likelihood -> (logp, dlogits).

    Derivation: docs/derivations.md, "Bernoulli with logits".
    """
    logp, dlogits, _ = score(_BERNOULLI, x, logits, dlogp)
    return logp, dlogits


LIKELIHOODS = {
    cls.name: cls for cls in (Bernoulli, ContinuousBernoulli, Gaussian, GaussianLearned)
}


def make_likelihood(name: str, x_dim: int, dtype=np.float32, *, sigma: float = 1.0):
    """The likelihood called ``name`` (one of LIKELIHOODS) for ``x_dim``-dimensional data."""
    cls = LIKELIHOODS[_checks.choice("likelihood", name, tuple(LIKELIHOODS))]
    if cls is Gaussian:
        return cls(x_dim, dtype, sigma=sigma)
    return cls(x_dim, dtype)
