"""The importance-weighted bound's own op: K log-weights per example -> the bound and the weights.

Burda, Grosse & Salakhutdinov (2015): with z_k = mu + sigma * eps_k drawn from q(z|x),

    log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x)          (K, N): sample k, example n
    L_n     = log (1/K) sum_k exp(log w_kn)                          the K-sample bound, (N,)
    dL_n / d log w_kn = w~_kn = exp(log w_kn) / sum_j exp(log w_jn)  softmax over the samples

``importance_weights`` computes both in one pass over the log-weights, as a log-mean-exp shifted by
each column's largest log-weight (so no exp overflows, and the largest weight's exp is 1). The
model (``VAE.loss`` with ``objective="iwae"``) turns the weights into the gradient of every
log-weight (docs/derivations.md, "The importance-weighted bound"). Kernels: ``kernels/iwae``.
"""

from __future__ import annotations

import math

import numpy as np


def importance_weights(log_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log_w: (K, N) log importance weights -> (bound (N,), normalised weights w~ (K, N)).

    bound_n = m_n + log(sum_k exp(log w_kn - m_n)) - log K with m_n = max_k log w_kn; w~_kn =
    exp(log w_kn - m_n) / sum_j exp(log w_jn - m_n), so each column of w~ sums to 1. A column
    whose largest log-weight is not finite (NaN, +inf, or every weight -inf) gives NaN there: the
    caller reports it.
    """
    k = log_w.shape[0]
    m = log_w.max(axis=0)
    with np.errstate(invalid="ignore"):  # inf - inf in a non-finite column: NaN, reported upstream
        shifted = np.exp(log_w - m)
    total = shifted.sum(axis=0)
    bound = m + np.log(total) - math.log(k)
    return bound, shifted / total
