"""The latent part of a VAE: the reparameterized sample and the KL term, forward and backward.

q(z|x) = N(mu, diag(exp(logvar))): the encoder outputs the mean and the *log-variance* (not the
standard deviation, not the variance), so any real output is a valid variance and exp never has to
be inverted. Derivations: docs/derivations.md, "Reparameterization" and "KL term".

``latent_forward``/``latent_backward`` compose the two pairs on the encoder's head ``h = [mu |
logvar]``: they are the numpy backend's latent op (minivae.backends), the one the model calls.

Shapes: ``N`` examples, ``d`` latent dimensions, ``L`` samples per example. The functions use
NumPy's functions only, so they also run on CuPy arrays.
"""

from __future__ import annotations

import numpy as np

from minivae import philox
from minivae._arrays import array_module


def reparameterize_forward(mu: np.ndarray, logvar: np.ndarray, eps: np.ndarray):
    """z = mu + exp(logvar / 2) * eps.

    mu, logvar: (N, d); eps: (N, d) or (L, N, d) -> z with eps's shape (mu broadcasts over L).
    eps ~ N(0, I) is drawn by the caller from a seeded generator (or a Philox stream), so the sample
    is reproducible, and the cache keeps it, so the backward sees the very same eps.
    """
    std = np.exp(0.5 * logvar)
    z = mu + std * eps
    return z, (std, eps)


def reparameterize_backward(dz: np.ndarray, cache):
    """Derivation: "Reparameterization".

    dmu = sum over samples of dz;  dlogvar = sum over samples of dz * eps * std / 2.
    """
    std, eps = cache
    g = dz * eps
    if dz.ndim == 3:
        dz, g = dz.sum(axis=0), g.sum(axis=0)
    return dz, g * (0.5 * std)


def kl_forward(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """KL(N(mu, exp(logvar)) || N(0, I)) per example, in nats: (N, d) -> (N,).

    KL = 1/2 sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j); expm1 keeps it accurate near logvar = 0.
    """
    return 0.5 * np.sum(mu * mu + np.expm1(logvar) - logvar, axis=1)


def kl_backward(dkl: np.ndarray, mu: np.ndarray, logvar: np.ndarray):
    """Derivation: "KL term". dkl: (N,) -> dmu = dkl mu, dlogvar = dkl (exp(logvar) - 1) / 2."""
    d = dkl[:, None]
    return d * mu, d * (0.5 * np.expm1(logvar))


def latent_forward(h: np.ndarray, n_samples: int, eps: np.ndarray | None = None,
                   key: tuple[int, int] | None = None):
    """h = [mu | logvar] (N, 2d) -> z (L, N, d), the per-example KL (N,), and the cache.

    The noise is ``eps`` (L, N, d), or the Philox stream's normals for ``key = (seed, offset)``:
    element j of the flat (L, N, d) tensor is stream element offset + j (``minivae.philox``), the
    noise a kernel backend draws and, on a GPU, regenerates in its backward instead of storing.
    """
    d = h.shape[1] // 2
    mu, logvar = h[:, :d], h[:, d:]
    if eps is None:
        seed, offset = key  # type: ignore[misc]
        eps = array_module(h).asarray(philox.normal_eps_like(seed, offset, (n_samples, h.shape[0], d),
                                                             h.dtype))
    z, z_cache = reparameterize_forward(mu, logvar, eps)
    return z, kl_forward(mu, logvar), (mu, logvar, z_cache)


def latent_backward(dz: np.ndarray, kl_weight: float, cache) -> np.ndarray:
    """dz (L, N, d) -> dh = [dmu | dlogvar] (N, 2d): the sample's backward plus ``kl_weight`` (the
    same d loss / d kl for every example) times the KL's; the two paths add (fan-out).

    Derivation: docs/derivations.md, "KL term" (its last paragraph, "The latent op").
    """
    mu, logvar, z_cache = cache
    dmu, dlogvar = reparameterize_backward(dz, z_cache)
    xp = array_module(mu)
    dmu_kl, dlogvar_kl = kl_backward(xp.full(mu.shape[0], kl_weight, dtype=mu.dtype), mu, logvar)
    return xp.concatenate([dmu + dmu_kl, dlogvar + dlogvar_kl], axis=1)


def gaussian_log_density(z: np.ndarray, mu: np.ndarray | float = 0.0,
                         logvar: np.ndarray | float = 0.0) -> np.ndarray:
    """log N(z; mu, diag(exp(logvar))) summed over the last axis."""
    diff = z - mu
    return -0.5 * np.sum(diff * diff * np.exp(-logvar) + logvar + np.log(2 * np.pi), axis=-1)
