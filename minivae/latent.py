"""The latent part of a VAE: the reparameterized sample and the KL term, forward and backward.

q(z|x) = N(mu, diag(exp(logvar))): the encoder outputs the mean and the *log-variance* (not the
standard deviation, not the variance), so any real output is a valid variance and exp never has to
be inverted. Derivations: docs/derivations.md, "Reparameterization" and "KL term".

Shapes: ``N`` examples, ``d`` latent dimensions, ``L`` samples per example.
"""

from __future__ import annotations

import numpy as np


def reparameterize_forward(mu: np.ndarray, logvar: np.ndarray, eps: np.ndarray):
    """z = mu + exp(logvar / 2) * eps.

    mu, logvar: (N, d); eps: (N, d) or (L, N, d) -> z with eps's shape (mu broadcasts over L).
    eps ~ N(0, I) is drawn by the caller from a seeded generator, so the sample is reproducible and
    the backward sees the very same eps.
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


def gaussian_log_density(z: np.ndarray, mu: np.ndarray | float = 0.0,
                         logvar: np.ndarray | float = 0.0) -> np.ndarray:
    """log N(z; mu, diag(exp(logvar))) summed over the last axis."""
    diff = z - mu
    return -0.5 * np.sum(diff * diff * np.exp(-logvar) + logvar + np.log(2 * np.pi), axis=-1)
