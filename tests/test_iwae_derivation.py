"""What docs/derivations.md, "The importance-weighted bound", claims beyond the exact gradients that
tests/test_iwae.py checks: statements about expectations over the noise, and about samples the
model finds impossible.

Properties proven:

* DReG's encoder gradient has the standard estimator's expectation (the doubly reparameterized
  identity removes the score term without bias), for K = 5 and for K = 1 (where it is the path
  gradient with q held);
* with K = 1 the encoder's gradient, which differs from the closed-form ELBO's on every draw, has
  the same expectation (E[z] = mu, E[z eps sigma / 2] = e^v / 2);
* a sample whose log-weight is -inf gets weight 0: the bound is the other samples' bound minus
  log(K / (K - 1)) and every gradient is theirs; a NaN log-weight is a FloatingPointError.

The expectations are Monte-Carlo averages over many draws of eps, taken as ``GROUPS`` independent
group means of the paired difference (the same eps for both estimators), so each difference is
compared with its own standard error. Changing DReG's weight w~^2 to w~ or w~^3 (K = 5), keeping
the logvar term, or flipping the sign of the held q's slope or of the logvar term moves the largest
|difference| / SE from about 3 to between 30 and several hundred.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from strategies import rng_of

from minivae.model import VAE

# Group means over REPS draws each: with 20 groups a difference over its standard error is Student-t
# with 19 degrees of freedom, above 6 in size with probability 9e-6; over the 71 encoder parameters
# the largest stays below 6 with probability 0.999 when the expectations agree, while each broken
# form tried gives 30 or more.
GROUPS, REPS = 20, 500
MAX_T = 6.0


def _model(seed: int) -> VAE:
    return VAE(6, 3, (5,), activation="tanh", dtype="float64", rng=rng_of(seed))


def _binary(rng: np.random.Generator, n: int) -> np.ndarray:
    return (rng.random((n, 6)) < 0.5).astype(np.float64)


def _encoder_difference_t(m: VAE, x: np.ndarray, k: int, rng: np.random.Generator, first, second):
    """Largest |mean / SE| over the encoder's parameters of the paired difference first - second,
    each a function (model, x, eps) -> LossResult; x is tiled REPS times so one call averages REPS
    independent draws. A difference that is exactly 0 on every draw (a weight of an input column
    that is 0 in every example) counts as 0."""
    xr = np.tile(x, (REPS, 1))
    groups = []
    for _ in range(GROUPS):
        eps = rng.standard_normal((k, len(xr), m.z_dim))
        a, b = first(m, xr, eps).grads, second(m, xr, eps).grads
        groups.append(np.concatenate([(a[key] - b[key]).ravel() for key in sorted(a)
                                      if key.startswith("enc.")]))
    groups = np.array(groups)
    mean, se = groups.mean(axis=0), groups.std(axis=0, ddof=1) / math.sqrt(GROUPS)
    assert np.all(mean[se == 0] == 0)
    return float(np.max(np.abs(mean[se > 0]) / se[se > 0]))


def _standard(m, x, eps):
    return m.loss(x, eps=eps, objective="iwae")


def _dreg(m, x, eps):
    return m.loss(x, eps=eps, objective="iwae", estimator="dreg")


@pytest.mark.parametrize("k", [1, 5])
def test_dreg_has_the_standard_estimators_expectation(k):
    m = _model(3)
    rng = rng_of(4)
    x = _binary(rng, 4)
    eps = rng.standard_normal((k, 4, m.z_dim))
    one_draw = _dreg(m, x, eps).grads["enc.1.W"] - _standard(m, x, eps).grads["enc.1.W"]
    assert np.abs(one_draw).max() > 1e-3  # per draw the two differ: only the expectations agree
    assert _encoder_difference_t(m, x, k, rng, _dreg, _standard) < MAX_T


def test_with_one_sample_the_encoder_gradient_is_the_closed_form_elbos_in_expectation():
    m = _model(5)
    rng = rng_of(6)
    x = _binary(rng, 4)
    closed_form = lambda m, x, eps: m.loss(x, eps=eps)  # noqa: E731
    assert _encoder_difference_t(m, x, 1, rng, _standard, closed_form) < MAX_T


def _saturating(last_weight: float) -> VAE:
    """Bernoulli decoder relu(z) -> logits = last_weight * 3 relu(z): with |last_weight| = 1e38 a
    positive z drives float32 logits to +-inf, a z <= 0 gives logits 0."""
    m = VAE(4, 1, (3,), activation="relu", likelihood="bernoulli", rng=rng_of(0))
    for v in m.params.values():
        v[:] = 0
    m.params["enc.0.W"][:] = 0.3
    m.params["enc.1.W"][:] = 0.2
    m.params["enc.1.b"][:] = 0.1
    m.params["dec.0.W"][:] = 1.0
    m.params["dec.1.W"][:] = last_weight
    return m


def test_an_impossible_sample_gets_weight_zero_and_a_nan_is_an_error():
    x = np.ones((2, 4), np.float32)
    eps = np.array([[[-1.0], [-1.0]], [[2.0], [2.0]]], np.float32)  # sample 2 has z > 0
    m = _saturating(-1e38)  # logit -inf at x = 1: log p(x|z_2) = -inf
    with np.errstate(over="ignore", invalid="ignore"):
        both = m.loss(x, eps=eps, objective="iwae")
    alone = m.loss(x, eps=eps[:1], objective="iwae")
    assert np.isinf(both.recon_per_example).all() and both.recon == math.inf
    assert both.loss == pytest.approx(alone.loss + math.log(2), rel=1e-6)
    for key, g in alone.grads.items():
        assert np.isfinite(both.grads[key]).all(), key
        np.testing.assert_allclose(both.grads[key], g, rtol=1e-6, atol=1e-7, err_msg=key)
    assert np.abs(alone.grads["enc.1.W"]).max() > 0.1

    m = _saturating(1e38)  # logit +inf at x = 1: log p = inf - softplus(inf), NaN
    with np.errstate(over="ignore", invalid="ignore"), \
            pytest.raises(FloatingPointError, match="not finite"):
        m.loss(x, eps=eps, objective="iwae")
