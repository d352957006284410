"""Likelihoods: gradients vs finite differences at extreme logits, and the densities are normalised."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import ATOL, RTOL, batch, rng_of, seeds, width, with_extremes

from minivae.gradcheck import check_function, gradcheck
from minivae.likelihoods import (
    CB_SERIES_BELOW,
    LIKELIHOODS,
    cb_log_norm,
    cb_log_norm_grad,
    cb_mean,
    make_likelihood,
)


def _data(name, rng, shape):
    if name == "bernoulli":
        return (rng.random(shape) < 0.5).astype(float)
    if name == "cbernoulli":
        x = rng.random(shape)
        x[rng.random(shape) < 0.2] = 0.0  # all-black and all-white pixels are in the support
        x[rng.random(shape) < 0.2] = 1.0
        return x
    return rng.normal(0, 2, shape)


def _out(name, rng, shape, regime):
    if name in ("bernoulli", "cbernoulli"):
        if regime == "near_half":  # continuous Bernoulli near lambda = 1/2, either side of the series
            return rng.uniform(-2 * CB_SERIES_BELOW, 2 * CB_SERIES_BELOW, shape)
        if regime == "tiny":
            return rng.uniform(-1e-4, 1e-4, shape)
        return with_extremes(rng, shape, 3.0, 30.0)  # lambda near 0 and 1: logits up to +-30
    return rng.normal(0, 3, shape)


@given(name=st.sampled_from(sorted(LIKELIHOODS)), n=batch, d=width, seed=seeds,
       regime=st.sampled_from(["extreme", "near_half", "tiny"]))
def test_likelihood_gradient_matches_finite_differences(name, n, d, seed, regime):
    rng = rng_of(seed)
    lik = make_likelihood(name, d, np.float64, sigma=0.7)
    x = _data(name, rng, (n, d))
    out = _out(name, rng, (n, d), regime)
    if name == "gaussian_learned":
        lik.params["logvar"][:] = rng.uniform(-3, 3, d)
        dlogp = rng.normal(size=n)
        logp, cache = lik.forward(x, out)
        dout, g = lik.backward(dlogp, cache)
        res = gradcheck(lambda: float(dlogp @ lik.forward(x, out)[0]),
                        {"out": out, "logvar": lik.params["logvar"]},
                        {"out": dout, "logvar": g["logvar"]}, rtol=RTOL, atol=ATOL)
    else:
        res = check_function(lambda out: lik.forward(x, out),
                             lambda dlogp, cache: (lik.backward(dlogp, cache)[0],),
                             {"out": out}, rng=rng, rtol=RTOL, atol=ATOL)
    assert res.ok, str(res)


@pytest.mark.parametrize("logit", [0.0, 1e-7, -3e-3, 0.0999, 0.1, 0.1001, -0.5, 5.0, -40.0, 1e4])
def test_continuous_bernoulli_density_integrates_to_one(logit):
    lik = make_likelihood("cbernoulli", 1, np.float64)
    xs = np.linspace(0, 1, 200_001)[:, None]
    logp, _ = lik.forward(xs, np.full_like(xs, logit))
    p = np.exp(logp)
    # steep densities (|l| = 1e4) put their mass within 1e-4 of an end: integrate in log space there
    if abs(logit) > 100:
        # p(x) = |l| e^{-|l| (1-x)} / (1 - e^{-|l|}) for l > 0: its integral is 1 by construction;
        # check the closed form at two points instead of a quadrature that cannot resolve it.
        np.testing.assert_allclose(logp[-1], np.log(abs(logit)), rtol=1e-12)
        return
    assert np.trapezoid(p, xs[:, 0]) == pytest.approx(1.0, abs=1e-8)
    mean = np.trapezoid(p * xs[:, 0], xs[:, 0])
    assert cb_mean(np.array([logit]))[0] == pytest.approx(mean, abs=1e-8)


def test_continuous_bernoulli_is_smooth_across_the_series_switch():
    t = CB_SERIES_BELOW
    for f in (cb_log_norm, cb_log_norm_grad, cb_mean):
        below, above = f(np.array([t * (1 - 1e-12)])), f(np.array([t]))
        np.testing.assert_allclose(below, above, rtol=1e-11)


def _cb_reference(logit: float) -> tuple[float, float, float]:
    """log C(l), d log C / dl and E[x] from 50-digit decimal arithmetic (no code of minivae's)."""
    import decimal

    with decimal.localcontext() as ctx:
        ctx.prec = 50
        one, two = decimal.Decimal(1), decimal.Decimal(2)
        l = decimal.Decimal(logit)  # noqa: E741  (the logit's name in the derivation)
        e_l = l.exp()
        tanh_u = (e_l - one) / (e_l + one)  # tanh(l / 2)
        sinh_l = (e_l - one / e_l) / two
        log_c = (l / tanh_u).ln()
        dlog_c = one / l - one / sinh_l
        mean = one / two + (one / tanh_u - two / l) / two  # 1/2 + (coth u - 1/u) / 2, u = l / 2
        return float(log_c), float(dlog_c), float(mean)


# The relative accuracy docs/derivations.md states ("Series near l = 0"): the series below the
# switch, the closed forms above it (where the derivative's cancellation costs ~6 eps / l^2).
CB_SERIES_RTOL = (4e-16, 2e-15, 2e-16)
CB_CLOSED_RTOL = (2e-15, 2e-13, 5e-15)


@pytest.mark.parametrize(("lo", "hi", "rtol"), [(1e-8, CB_SERIES_BELOW * (1 - 1e-9), CB_SERIES_RTOL),
                                                (CB_SERIES_BELOW, 30.0, CB_CLOSED_RTOL)])
def test_continuous_bernoulli_functions_match_50_digit_references(lo, hi, rtol):
    logits = np.geomspace(lo, hi, 300)
    logits = np.concatenate([logits, -logits])
    got = [f(logits) for f in (cb_log_norm, cb_log_norm_grad, cb_mean)]
    want = np.array([_cb_reference(float(v)) for v in logits]).T
    for name, g, w, r in zip(("log C", "d log C / dl", "E[x]"), got, want, rtol, strict=True):
        worst = np.max(np.abs(g - w) / np.abs(w))
        assert worst <= r, f"{name}: relative error {worst:.3g} over {lo:g} <= |l| <= {hi:g}, stated {r:g}"


@given(logit=st.floats(-1e4, 1e4))
def test_continuous_bernoulli_float32_agrees_with_float64(logit):
    l64 = np.array([logit])
    for f in (cb_log_norm, cb_log_norm_grad, cb_mean):
        v32, v64 = f(l64.astype(np.float32)), f(l64)
        assert np.isfinite(v32).all()
        assert abs(float(v32[0]) - v64[0]) <= 2e-6 * max(1.0, abs(v64[0]))


def test_continuous_bernoulli_samples_have_the_right_mean():
    rng = rng_of(0)
    lik = make_likelihood("cbernoulli", 1, np.float64)
    for logit in (-8.0, -0.3, 0.0, 2e-7, 1.0, 25.0):
        s = lik.sample(np.full((200_000, 1), logit), rng)
        assert s.min() >= 0 and s.max() <= 1
        se = s.std() / np.sqrt(s.size)
        assert abs(s.mean() - cb_mean(np.array([logit]))[0]) < 5 * se + 1e-12


def test_bernoulli_log_prob_is_finite_at_huge_logits():
    lik = make_likelihood("bernoulli", 2, np.float32)
    x = np.array([[1.0, 0.0]], dtype=np.float32)
    logits = np.array([[-1e4, 1e4]], dtype=np.float32)
    logp, cache = lik.forward(x, logits)
    assert logp[0] == pytest.approx(-2e4)
    dout, _ = lik.backward(np.ones(1, np.float32), cache)
    np.testing.assert_array_equal(dout, [[1.0, -1.0]])


def test_gaussian_log_prob_matches_the_closed_form():
    lik = make_likelihood("gaussian", 3, np.float64, sigma=0.5)
    x, m = np.array([[0.1, 0.2, 0.3]]), np.array([[0.0, 0.5, 0.3]])
    expect = sum(-0.5 * ((a - b) / 0.5) ** 2 - np.log(0.5) - 0.5 * np.log(2 * np.pi)
                 for a, b in zip(x[0], m[0], strict=True))
    assert lik.forward(x, m)[0][0] == pytest.approx(expect, rel=1e-14)


@pytest.mark.parametrize("name, match", [("poisson", "likelihood must be one of")])
def test_unknown_likelihood_is_rejected(name, match):
    with pytest.raises(ValueError, match=match):
        make_likelihood(name, 3)


def test_non_positive_sigma_is_rejected():
    with pytest.raises(ValueError, match="sigma"):
        make_likelihood("gaussian", 3, sigma=0.0)


# ---- extreme inputs in float32 and float64, against float64 references -----------------------------

# |logit| >= 17 saturates float32's sigmoid; 89 overflows float32's exp; 1e4 is far past both.
EXTREME_OUTS = np.array([-1e4, -1e3, -100.0, -89.0, -30.0, -17.0, 17.0, 30.0, 89.0, 100.0, 1e3, 1e4])
EXTREME_LOGVARS = np.tile([80.0, -80.0, 0.0], 4)  # gaussian_learned's own log-variance per dimension
EXTREME_RTOL = {np.float32: 2e-6, np.float64: 1e-13}


def _extreme_inputs(name: str, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(x, out) with rows all-black, all-white, grey (binary for bernoulli) and mixed, and outputs
    +-17 ... +-1e4 in every row. gaussian_learned's dimensions with log-variance -80 get residuals
    of 1e-3 instead: r^2 e^80 / 2 with r = 1e4 is ~3e42, beyond float32 (tested on its own)."""
    rng = rng_of(5)
    d = len(EXTREME_OUTS)
    grey = (rng.random(d) < 0.5).astype(float) if name == "bernoulli" else rng.random(d)
    x = np.stack([np.zeros(d), np.ones(d), grey, np.where(np.arange(d) % 2, 1.0, grey)])
    out = np.tile(EXTREME_OUTS, (4, 1))
    if name == "gaussian_learned":
        tiny = EXTREME_LOGVARS < 0
        out[:, tiny] = x[:, tiny] + 1e-3 * rng.choice([-1.0, 1.0], size=(4, int(tiny.sum())))
    return x.astype(dtype), out.astype(dtype)


def _reference_terms(name: str, x: np.ndarray, out: np.ndarray, sigma: float):
    """float64, written apart from minivae.likelihoods: log p per element, d log p / d out, the
    size each is accurate relative to (the sum of the magnitudes of its parts: x - sigmoid(l) at
    x = 1, l = 17 cancels to 4e-8 that float32 cannot resolve next to 1), and d log p / d logvar
    per element (gaussian_learned) or None."""
    from scipy.special import expit, log_expit

    x, out = x.astype(np.float64), out.astype(np.float64)
    if name in ("bernoulli", "cbernoulli"):
        logp = x * log_expit(out) + (1 - x) * log_expit(-out)  # = x l - softplus(l)
        logp_size = np.abs(x * out) + np.logaddexp(0, out)
        dout, dout_size = x - expit(out), x + expit(out)
        if name == "cbernoulli":  # + log C(l) = log(l / tanh(l/2)): no cancellation for |l| >= 17
            with np.errstate(over="ignore"):
                log_c, dlog_c = np.log(out / np.tanh(out / 2)), 1 / out - 1 / np.sinh(out)
            logp, logp_size = logp + log_c, logp_size + np.abs(log_c)
            dout, dout_size = dout + dlog_c, dout_size + np.abs(dlog_c)
        return logp, logp_size, dout, dout_size, None
    if name == "gaussian":
        r = (x - out) / sigma
        logp = -0.5 * r**2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)
        return logp, np.abs(logp), r / sigma, np.abs(r / sigma), None
    s = EXTREME_LOGVARS
    r2 = (x - out) ** 2 * np.exp(-s)
    logp = -0.5 * (r2 + s + np.log(2 * np.pi))
    dout = (x - out) * np.exp(-s)
    return logp, 0.5 * (r2 + np.abs(s) + np.log(2 * np.pi)), dout, np.abs(dout), 0.5 * (r2 - 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_likelihoods_and_gradients_are_accurate_at_extreme_inputs(name, dtype):
    """Property: at logits (means) up to +-1e4, log-variances +-80, all-zero and all-one images, the
    log-density and every gradient are finite and within a few ulps of float64 references, in both
    dtypes (float32 is compared with the reference at its own rounded inputs)."""
    lik = make_likelihood(name, len(EXTREME_OUTS), dtype, sigma=0.5)
    if name == "gaussian_learned":
        lik.params["logvar"][:] = EXTREME_LOGVARS
    x, out = _extreme_inputs(name, dtype)
    dlogp = rng_of(6).normal(size=len(x)).astype(dtype)
    logp, cache = lik.forward(x, out)
    dout, grads = lik.backward(dlogp, cache)
    terms, term_size, dterm, dterm_size, dterm_ds = _reference_terms(name, x, out, 0.5)
    rtol, tiny = EXTREME_RTOL[dtype], np.finfo(dtype).tiny  # below tiny: subnormals, fewer digits
    dlogp64 = dlogp.astype(np.float64)
    g = np.abs(dlogp64)
    assert logp.dtype == dtype and dout.dtype == dtype
    assert np.isfinite(logp).all() and np.isfinite(dout).all()
    assert np.all(np.abs(logp - terms.sum(axis=1)) <= rtol * term_size.sum(axis=1) + tiny)
    err = np.abs(dout - dlogp64[:, None] * dterm)
    assert np.all(err <= rtol * g[:, None] * dterm_size + tiny), err.max()
    if dterm_ds is None:
        assert grads == {}
    else:
        want_ds = dlogp64 @ dterm_ds
        assert grads["logvar"].dtype == dtype
        assert np.all(np.abs(grads["logvar"] - want_ds) <= rtol * (g @ np.abs(dterm_ds)) + tiny)


def test_learned_gaussian_beyond_float32_overflows_to_minus_inf_never_nan():
    """logvar -80 with a residual of 1e4: log p = -(1e8 e^80 + ...)/2 ~ -2.8e42, beyond float32.
    float64 gets it right; float32 returns exactly -inf (an honest overflow that VAE.loss turns into
    a FloatingPointError naming the reconstruction term), never NaN or a wrong finite number."""
    for dtype in (np.float64, np.float32):
        lik = make_likelihood("gaussian_learned", 2, dtype)
        lik.params["logvar"][:] = -80.0
        x, out = np.zeros((1, 2), dtype), np.array([[1e4, -1e4]], dtype)
        with np.errstate(over="ignore"):
            logp, cache = lik.forward(x, out)
            dout, grads = lik.backward(np.ones(1, dtype), cache)
        if dtype == np.float64:
            want = -0.5 * (2e8 * np.exp(80.0) + 2 * (-80.0 + np.log(2 * np.pi)))
            assert logp[0] == pytest.approx(want, rel=1e-15)
            np.testing.assert_allclose(dout, [[-1e4 * np.exp(80.0), 1e4 * np.exp(80.0)]], rtol=1e-15)
        else:
            assert logp[0] == -np.inf
            np.testing.assert_array_equal(dout, [[-np.inf, np.inf]])
            np.testing.assert_array_equal(grads["logvar"], [np.inf, np.inf])


@pytest.mark.parametrize("fn", [cb_log_norm, cb_log_norm_grad, cb_mean])
def test_continuous_bernoulli_functions_refuse_integer_logits(fn):
    """They compute in float64 and cast back to the input's dtype: an integer dtype would truncate
    the result (log C(3) = 1.13 -> 1), so it is refused."""
    with pytest.raises(ValueError, match="logits must be a float32 or float64 array, got dtype int64"):
        fn(np.array([3, -2], np.int64))
    with pytest.raises(ValueError, match="logits must be a float32 or float64 array, got list"):
        fn([0.5])
    assert fn(np.array([3.0], np.float32)).dtype == np.float32


def test_the_learned_log_variance_has_no_minimum_where_the_mean_fits_exactly():
    """What GaussianLearned's docstring warns about: where the residual is 0, d log p / d s = -1/2
    per example at every s (log p grows without bound as s falls), and once e^-s overflows the
    model's loss raises FloatingPointError instead of returning a number."""
    from minivae.model import VAE

    lik = make_likelihood("gaussian_learned", 3, np.float64)
    x = np.array([[0.0, 1.0, -2.0], [0.0, 1.0, -2.0]])
    for s in (0.0, -30.0, -300.0):
        lik.params["logvar"][:] = s
        logp, cache = lik.forward(x, x.copy())
        _, grads = lik.backward(np.ones(2), cache)
        np.testing.assert_array_equal(grads["logvar"], [-1.0, -1.0, -1.0])  # two examples, -1/2 each
        assert logp[0] == pytest.approx(-0.5 * 3 * (s + np.log(2 * np.pi)), rel=1e-15)
    m = VAE(3, 2, (4,), likelihood="gaussian_learned", rng=rng_of(0))  # float32: e^-s overflows at s < -88.7
    m.params["lik.logvar"][:] = -100.0
    with np.errstate(over="ignore", invalid="ignore"), pytest.raises(FloatingPointError, match="not finite"):
        m.loss(x.astype(np.float32), rng=rng_of(1))
