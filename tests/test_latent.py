"""The reparameterization and the KL term: backward vs finite differences, and the convention."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from strategies import ATOL, RTOL, batch, latent, rng_of, seeds

from minivae.gradcheck import check_function, gradcheck
from minivae.latent import (
    kl_backward,
    kl_forward,
    latent_backward,
    latent_forward,
    reparameterize_backward,
    reparameterize_forward,
)


def _kl_pair():
    def fwd(mu, logvar):
        return kl_forward(mu, logvar), (mu, logvar)

    def bwd(dkl, cache):
        return kl_backward(dkl, *cache)

    return fwd, bwd


@given(n=batch, d=latent, n_samples=st.integers(1, 3), seed=seeds)
def test_reparameterize_backward_matches_finite_differences(n, d, n_samples, seed):
    rng = rng_of(seed)
    mu = rng.normal(0, 3, (n, d))
    logvar = rng.uniform(-12, 12, (n, d))  # variances e^logvar from 6e-6 to 1.6e5
    eps = rng.standard_normal((n_samples, n, d))

    res = check_function(lambda mu, logvar: reparameterize_forward(mu, logvar, eps),
                         reparameterize_backward, {"mu": mu, "logvar": logvar},
                         rng=rng, rtol=RTOL, atol=ATOL)
    assert res.ok, str(res)


@given(n=batch, d=latent, seed=seeds)
def test_kl_backward_matches_finite_differences(n, d, seed):
    rng = rng_of(seed)
    fwd, bwd = _kl_pair()
    inputs = {"mu": rng.normal(0, 3, (n, d)), "logvar": rng.uniform(-12, 12, (n, d))}
    res = check_function(fwd, bwd, inputs, rng=rng, rtol=RTOL, atol=ATOL)
    assert res.ok, str(res)


@given(n=batch, d=latent, n_samples=st.integers(1, 3), kl_weight=st.sampled_from([0.0, 0.3, 2.0]), seed=seeds)
def test_latent_op_backward_matches_finite_differences(n, d, n_samples, kl_weight, seed):
    """The op the model calls on the encoder's head h = [mu | logvar]: the gradient of
    sum(dz * z) + kl_weight * sum(kl) w.r.t. h, both paths added."""
    rng = rng_of(seed)
    h = np.concatenate([rng.normal(0, 3, (n, d)), rng.uniform(-8, 8, (n, d))], axis=1)
    eps = rng.standard_normal((n_samples, n, d))
    dz = rng.standard_normal((n_samples, n, d))

    def f():
        z, kl, _ = latent_forward(h, n_samples, eps=eps)
        return float(np.sum(dz * z) + kl_weight * np.sum(kl))

    _, _, cache = latent_forward(h, n_samples, eps=eps)
    res = gradcheck(f, {"h": h}, {"h": latent_backward(dz, kl_weight, cache)}, rng=rng, rtol=RTOL,
                    atol=ATOL)
    assert res.ok, str(res)


def test_checker_catches_reparameterization_without_the_half():
    """The classic slip: dlogvar = dz * eps * std, forgetting d/dlogvar exp(logvar/2) = std/2."""
    rng = rng_of(3)
    mu, logvar = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    eps = rng.standard_normal((1, 4, 3))

    def wrong_backward(dz, cache):
        dmu, dlogvar = reparameterize_backward(dz, cache)
        return dmu, 2 * dlogvar

    res = check_function(lambda mu, logvar: reparameterize_forward(mu, logvar, eps),
                         wrong_backward, {"mu": mu, "logvar": logvar}, rng=rng)
    rows = {r.name: r for r in res.rows}
    assert rows["mu"].passed and not rows["logvar"].passed and not res.ok


def test_closed_form_kl_matches_monte_carlo_within_its_standard_error():
    """Pins the convention: the encoder's second output is the log-variance.

    KL = E_q[log q(z) - log p(z)], estimated with 400k seeded samples per example.
    """
    rng = rng_of(7)
    mu = np.array([[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]])
    logvar = np.array([[-1.0, 0.5, 0.0], [1.5, -2.0, 0.2]])
    m = 400_000
    eps = rng.standard_normal((m, *mu.shape))
    z = mu + np.exp(0.5 * logvar) * eps
    log_q = -0.5 * (eps**2 + logvar + np.log(2 * np.pi))
    log_p = -0.5 * (z**2 + np.log(2 * np.pi))
    terms = (log_q - log_p).sum(axis=2)  # (m, N)
    mc, se = terms.mean(axis=0), terms.std(axis=0) / np.sqrt(m)
    closed = kl_forward(mu, logvar)
    assert np.all(np.abs(closed - mc) < 4 * se), (closed, mc, se)
    # The other conventions are many standard errors away: this test can tell them apart.
    as_log_std = kl_forward(mu, 2 * logvar)
    assert np.all(np.abs(as_log_std - mc) > 20 * se)
    # Read as a variance v (where it is positive), the same numbers give 1/2 (mu^2 + v - log v - 1)
    # per dimension: compare dimension by dimension with the per-dimension Monte-Carlo estimate.
    per_dim = log_q - log_p  # (m, N, d)
    mc_d, se_d = per_dim.mean(axis=0), per_dim.std(axis=0) / np.sqrt(m)
    closed_d = 0.5 * (mu**2 + np.expm1(logvar) - logvar)
    assert np.all(np.abs(closed_d - mc_d) < 4 * se_d), (closed_d, mc_d, se_d)
    v = logvar > 0
    as_variance = 0.5 * (mu[v] ** 2 + logvar[v] - np.log(logvar[v]) - 1)
    assert v.sum() == 3 and np.all(np.abs(as_variance - mc_d[v]) > 10 * se_d[v])


def test_kl_is_zero_at_the_prior_and_exact_near_it():
    mu = np.zeros((2, 4))
    assert np.all(kl_forward(mu, np.zeros((2, 4))) == 0)
    tiny = np.full((1, 1), 1e-9)
    # 1/2 (e^t - 1 - t) = t^2/4 + ...: a naive exp(t) - 1 would lose every digit here
    assert np.isclose(kl_forward(np.zeros((1, 1)), tiny)[0], 2.5e-19, rtol=1e-6, atol=0)


def test_directional_mode_on_the_kl_term():
    rng = rng_of(11)
    mu, logvar = rng.normal(size=(64, 32)), rng.normal(size=(64, 32))
    dmu, dlogvar = kl_backward(np.ones(64), mu, logvar)
    res = gradcheck(lambda: float(kl_forward(mu, logvar).sum()), {"mu": mu, "logvar": logvar},
                    {"mu": dmu, "logvar": dlogvar}, mode="directional", rng=rng)
    assert res.ok, str(res)


# ---- robustness: extreme log-variances, logvar +-80, in float32 and float64 ------------------------

EXTREME_MU = np.array([[0.0, 3.0, -1e3, 1e-20, 0.5], [-2.0, 0.0, 5.0, 0.0, -1e-3]])
EXTREME_LOGVAR = np.array([[-80.0, 80.0, 0.0, -80.0, 1e-7], [80.0, 80.0, -80.0, 40.0, -1e-7]])
EXTREME_LATENT_RTOL = {np.float32: 2e-6, np.float64: 1e-14}


def test_kl_and_its_gradient_equal_the_closed_form_at_logvar_80():
    """KL = 1/2 sum_j (mu_j^2 + e^s_j - 1 - s_j), dKL/dmu = mu, dKL/ds = (e^s - 1)/2, computed
    element by element on Python floats: e^80 ~ 5.5e34 still fits float32."""
    dkl = np.array([0.7, -1.3])
    kl_want = [0.5 * sum(m * m + float(np.expm1(s)) - s for m, s in zip(mu, lv, strict=True))
               for mu, lv in zip(EXTREME_MU.tolist(), EXTREME_LOGVAR.tolist(), strict=True)]
    dlogvar_want = [[g * 0.5 * float(np.expm1(s)) for s in lv]
                    for g, lv in zip(dkl.tolist(), EXTREME_LOGVAR.tolist(), strict=True)]
    for dtype, rtol in EXTREME_LATENT_RTOL.items():
        mu, logvar = EXTREME_MU.astype(dtype), EXTREME_LOGVAR.astype(dtype)
        kl = kl_forward(mu, logvar)
        dmu, dlogvar = kl_backward(dkl.astype(dtype), mu, logvar)
        assert kl.dtype == dmu.dtype == dlogvar.dtype == dtype
        np.testing.assert_allclose(kl, kl_want, rtol=rtol, err_msg=str(dtype))
        np.testing.assert_allclose(dmu, dkl[:, None].astype(dtype) * mu, rtol=0, err_msg=str(dtype))
        np.testing.assert_allclose(dlogvar, dlogvar_want, rtol=rtol, err_msg=str(dtype))


def test_reparameterization_and_its_gradient_equal_the_closed_form_at_logvar_80():
    """z = mu + e^{s/2} eps, dmu = sum_l dz, ds = sum_l dz eps e^{s/2} / 2, over 3 samples, against
    float64 (e^40 ~ 2.4e17 and e^-40 ~ 4e-18 are normal numbers in float32 too)."""
    rng = rng_of(12)
    eps64 = rng.standard_normal((3, *EXTREME_MU.shape))
    dz64 = rng.standard_normal((3, *EXTREME_MU.shape))
    for dtype, rtol in EXTREME_LATENT_RTOL.items():
        mu, logvar, eps, dz = (a.astype(dtype) for a in (EXTREME_MU, EXTREME_LOGVAR, eps64, dz64))
        m, s, e, g = (a.astype(np.float64) for a in (mu, logvar, eps, dz))  # the rounded inputs
        std = np.exp(0.5 * s)
        z, cache = reparameterize_forward(mu, logvar, eps)
        dmu, dlogvar = reparameterize_backward(dz, cache)
        assert z.dtype == dmu.dtype == dlogvar.dtype == dtype
        z_want = m + std * e
        # z = mu + (std eps): accurate relative to the sizes of its two parts
        assert np.all(np.abs(z - z_want) <= rtol * (np.abs(m) + np.abs(std * e))), str(dtype)
        np.testing.assert_allclose(dmu, g.sum(axis=0), rtol=0,
                                   atol=rtol * np.abs(g).sum(axis=0).max(), err_msg=str(dtype))
        ds_terms = g * e * std / 2
        assert np.all(np.abs(dlogvar - ds_terms.sum(axis=0))
                      <= rtol * np.abs(ds_terms).sum(axis=0)), str(dtype)
