"""The whole -ELBO: every parameter's gradient vs finite differences (eps held fixed), the loss
conventions, the IWAE bound, and bad input."""

import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import ATOL, RTOL, batch, latent, rng_of, seeds, width

from minivae import model as model_mod
from minivae import philox
from minivae.gradcheck import gradcheck
from minivae.model import VAE


def _data(lik, rng, n, d):
    if lik == "bernoulli":
        return (rng.random((n, d)) < 0.5).astype(float)
    if lik == "cbernoulli":
        return rng.random((n, d))
    return rng.normal(0, 1, (n, d))


@given(n=batch, x_dim=width, z_dim=latent, hidden=st.lists(width, max_size=2),
       lik=st.sampled_from(["bernoulli", "cbernoulli", "gaussian", "gaussian_learned"]),
       act=st.sampled_from(["tanh", "softplus", "elu", "sigmoid", "leaky_relu", "relu"]),
       n_classes=st.sampled_from([0, 3]), n_samples=st.integers(1, 2),
       reduction=st.sampled_from(["mean", "sum"]), beta=st.sampled_from([0.0, 0.5, 1.0, 4.0]),
       seed=seeds)
def test_loss_gradients_match_finite_differences(n, x_dim, z_dim, hidden, lik, act, n_classes,
                                                 n_samples, reduction, beta, seed):
    rng = rng_of(seed)
    m = VAE(x_dim, z_dim, hidden, activation=act, likelihood=lik, n_classes=n_classes,
            dtype="float64", rng=rng)
    x = _data(lik, rng, n, x_dim)
    y = rng.integers(0, 3, n) if n_classes else None
    eps = m.draw_eps(n, rng, n_samples)
    kw = dict(eps=eps, beta=beta, reduction=reduction)
    res = m.loss(x, y, **kw)
    assert set(res.grads) == set(m.params)
    check = gradcheck(lambda: m.loss(x, y, **kw).loss, m.params, res.grads, rtol=RTOL, atol=ATOL)
    # ReLU-like nets can land a pre-activation on a kink; the checker reports those separately,
    # and smooth activations must have none.
    assert check.ok, str(check)
    if act not in ("relu", "leaky_relu", "elu"):
        assert all(r.n_kinks == 0 for r in check.rows), str(check)


def test_loss_terms_and_reductions_are_consistent():
    rng = rng_of(0)
    m = VAE(6, 2, (5,), dtype="float64", rng=rng)
    x = (rng.random((4, 6)) < 0.5).astype(float)
    eps = m.draw_eps(4, rng)
    mean = m.loss(x, eps=eps, beta=2.0)
    total = m.loss(x, eps=eps, beta=2.0, reduction="sum")
    assert mean.loss == pytest.approx(mean.recon + 2.0 * mean.kl, rel=1e-12)
    assert total.loss == pytest.approx(4 * mean.loss, rel=1e-12)
    assert total.recon == pytest.approx(mean.recon)  # terms are always reported per example
    for k in m.params:
        np.testing.assert_allclose(total.grads[k], 4 * mean.grads[k], rtol=1e-10, atol=1e-14)
    assert mean.elbo == pytest.approx(-(mean.recon + mean.kl))


def test_float32_is_the_default_and_gradients_keep_the_dtype():
    rng = rng_of(1)
    m = VAE(5, 2, (4,), rng=rng)
    res = m.loss(rng.random((3, 5)), rng=rng)
    assert all(p.dtype == np.float32 for p in m.params.values())
    assert all(g.dtype == np.float32 for g in res.grads.values())


def test_same_seed_gives_bitwise_identical_models_and_losses():
    def run():
        rng = rng_of(42)
        m = VAE(7, 3, (5,), rng=rng)
        return m, m.loss(rng.random((4, 7)), rng=rng)

    (m1, r1), (m2, r2) = run(), run()
    assert r1.loss == r2.loss
    for k in m1.params:
        assert np.array_equal(m1.params[k], m2.params[k])
        assert np.array_equal(r1.grads[k], r2.grads[k])


def test_iwae_with_one_sample_is_the_elbo_and_tightens_with_k():
    rng = rng_of(5)
    m = VAE(8, 2, (6,), dtype="float64", rng=rng)
    x = (rng.random((30, 8)) < 0.5).astype(float)
    # K = 1: log w = log p(x|z) + log p(z) - log q(z|x), an unbiased estimate of the ELBO
    # (whose KL part the loss computes in closed form): compare with a 2000-sample ELBO.
    k1 = m.iwae(x, k=1, rng=rng_of(9))
    many = m.loss(x, rng=rng_of(3), n_samples=2000)
    assert k1.nll == pytest.approx(-many.elbo, abs=4 * k1.stderr)
    k100 = m.iwae(x, k=100, rng=rng_of(9))
    assert k100.nll < k1.nll  # a tighter bound: a smaller NLL estimate
    assert k100.nll >= 0 or m.likelihood.name != "bernoulli"


def test_iwae_chunking_does_not_change_the_estimate(monkeypatch):
    rng = rng_of(2)
    m = VAE(10, 3, (8,), dtype="float64", rng=rng)
    x = rng.random((5, 10))
    full = m.iwae(x, k=64, rng=rng_of(4), batch_size=5)
    monkeypatch.setattr(model_mod, "IWAE_CHUNK_ELEMENTS", 5 * 10 * 7)  # 7 samples a chunk
    chunked = m.iwae(x, k=64, rng=rng_of(4), batch_size=5)
    np.testing.assert_allclose(chunked.log_px, full.log_px, rtol=1e-12)


def test_iwae_with_k_5000_on_784_dimensions_fits_in_memory():
    rng = rng_of(0)
    m = VAE(784, 20, (400,), rng=rng)
    x = (rng.random((3, 784)) < 0.3).astype(np.float32)
    tracemalloc.start()
    try:
        res = m.iwae(x, k=5000, rng=rng, batch_size=3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.isfinite(res.log_px).all()
    assert peak < 256 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_conditional_model_uses_the_label():
    rng = rng_of(3)
    m = VAE(6, 2, (5,), n_classes=4, dtype="float64", rng=rng)
    x = rng.random((2, 6))
    eps = m.draw_eps(2, rng)
    a = m.loss(x, np.array([0, 1]), eps=eps).loss
    b = m.loss(x, np.array([2, 3]), eps=eps).loss
    assert a != b
    assert m.sample(4, rng_of(0), y=np.array([0, 1, 2, 3])).shape == (4, 6)


BAD_CALLS = [
    (lambda m, r: m.loss(np.ones((2, 5)), rng=r), "x must have shape"),
    (lambda m, r: m.loss(np.full((2, 4), np.nan), rng=r), "x must be finite"),
    (lambda m, r: m.loss(np.full((2, 4), np.inf), rng=r), "x must be finite"),
    (lambda m, r: m.loss(np.full((2, 4), 1.5), rng=r), r"x must lie in \[0, 1\]"),
    (lambda m, r: m.loss(np.full((2, 4), -0.1), rng=r), r"x must lie in \[0, 1\]"),
    (lambda m, r: m.loss(np.ones((0, 4)), rng=r), "at least one example"),
    (lambda m, r: m.loss(np.ones((2, 4))), "give eps or rng"),
    (lambda m, r: m.loss(np.ones((2, 4)), eps=np.ones((1, 3, 2))), r"eps must have shape \(L, 2, 2\)"),
    (lambda m, r: m.loss(np.ones((2, 4)), rng=r, beta=-1), "beta must be"),
    (lambda m, r: m.loss(np.ones((2, 4)), rng=r, reduction="avg"), "reduction must be one of"),
    (lambda m, r: m.loss(np.ones((2, 4)), rng=r, n_samples=0), "n_samples must be a positive"),
    (lambda m, r: m.loss(np.ones((2, 4)), np.array([0, 1]), rng=r), "not conditional"),
    (lambda m, r: m.iwae(np.ones((2, 4)), k=0, rng=r), "k must be a positive"),
    (lambda m, r: m.decode(np.ones((2, 3))), "z must have shape"),
    (lambda m, r: m.loss(np.ones((2, 4)), rng=3), "rng must be a numpy.random.Generator or a minivae.philox"),
    (lambda m, r: m.iwae(np.ones((2, 4)), k=2, rng=None), "rng must be a numpy.random.Generator"),
    (lambda m, r: m.sample(2, None), "rng must be a numpy.random.Generator"),
    (lambda m, r: m.draw_eps(2, np.random.RandomState(0)), "rng must be a numpy.random.Generator"),
]


@pytest.mark.parametrize("call, match", BAD_CALLS)
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    m = VAE(4, 2, (3,), rng=rng_of(0))
    with pytest.raises(ValueError, match=match):
        call(m, rng_of(1))


@pytest.mark.parametrize("kwargs, match", [
    (dict(x_dim=0), "x_dim must be a positive integer"),
    (dict(z_dim=-2), "z_dim must be a positive integer"),
    (dict(hidden=(4, 0)), r"hidden\[1\] must be a positive integer"),
    (dict(activation="swish"), "activation must be one of"),
    (dict(likelihood="poisson"), "likelihood must be one of"),
    (dict(dtype="float16"), "dtype must be 'float32' or 'float64'"),
    (dict(n_classes=-1), "n_classes must be an integer >= 0"),
    (dict(rng=np.random.RandomState(0)), "rng must be a numpy.random.Generator"),
])
def test_bad_model_arguments_raise_value_error(kwargs, match):
    args = dict(x_dim=4, z_dim=2, hidden=(3,)) | kwargs
    with pytest.raises(ValueError, match=match):
        VAE(args.pop("x_dim"), **({"rng": rng_of(0)} | args))


def test_conditional_model_checks_labels():
    m = VAE(4, 2, (3,), n_classes=3, rng=rng_of(0))
    with pytest.raises(ValueError, match="y .* is required"):
        m.loss(np.ones((2, 4)), rng=rng_of(0))
    with pytest.raises(ValueError, match=r"y must lie in 0..2"):
        m.loss(np.ones((2, 4)), np.array([0, 3]), rng=rng_of(0))
    with pytest.raises(ValueError, match="y must be 2 integer labels"):
        m.loss(np.ones((2, 4)), np.array([0.0, 1.0]), rng=rng_of(0))


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_overflowing_loss_is_reported_not_propagated():
    m = VAE(4, 2, (3,), likelihood="gaussian", rng=rng_of(0))
    m.params["dec.1.W"][:] = 1e30
    with pytest.raises(FloatingPointError, match="not finite"):
        m.loss(np.ones((2, 4)), rng=rng_of(1))


def test_a_philox_stream_draws_the_documented_noise_and_advances():
    """With a philox.Stream, eps is element offset + j of the counter-based stream: the noise
    every kernel backend regenerates instead of storing."""
    rng = rng_of(8)
    m = VAE(6, 3, (5,), dtype="float64", rng=rng)
    x = rng.random((4, 6))
    stream = philox.Stream(seed=77, offset=10)
    a = m.loss(x, rng=stream, n_samples=2)
    assert stream.offset == 10 + 2 * 4 * 3
    eps = philox.normal_eps_like(77, 10, (2, 4, 3), "float64")
    b = m.loss(x, eps=eps)
    assert a.loss == b.loss
    assert all(np.array_equal(a.grads[k], b.grads[k]) for k in a.grads)


# ---- one training path: the networks a reader studies are the ones the loss runs -------------------

@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize(("likelihood", "n_classes", "steps"), [
    ("bernoulli", 0, 0), ("bernoulli", 3, 3), ("cbernoulli", 0, 2), ("gaussian", 3, 2),
    ("gaussian_learned", 0, 2)])
def test_the_model_trains_through_its_encoder_and_decoder_objects(backend, likelihood, n_classes, steps):
    """After any number of steps, model.encoder.forward / model.decoder.forward give bit for bit what
    the loss used (tests/one_path.py)."""
    from one_path import assert_trains_through_its_networks

    if backend == "numba":
        pytest.importorskip("numba")
    assert_trains_through_its_networks(backend, likelihood, n_classes, steps)


# ---- forward values against closed forms (a gradient check cannot see a wrong forward) -------------

def _bernoulli_logp(x: np.ndarray, logits: np.ndarray) -> np.ndarray:
    return np.sum(x * logits - np.logaddexp(0.0, logits), axis=-1)


@pytest.mark.parametrize("k", [1, 2, 7, 100])
@pytest.mark.parametrize("n_classes", [0, 3])
def test_iwae_is_log_p_x_exactly_when_the_decoder_ignores_z_and_q_is_the_prior(k, n_classes):
    """Zero weights in the decoder's first layer (on z) and a zero encoder head make every importance
    weight p(x|z) p(z) / q(z|x) the same known number p(x | the decoder's constant output), so the
    estimate is log p(x) for every K: a missing - log K, or a wrong log q or log p(z), shows."""
    rng = rng_of(11)
    d, x_dim, c = 3, 6, n_classes
    m = VAE(x_dim, d, (5,), activation="tanh", n_classes=c, dtype="float64", rng=rng)
    m.params["enc.1.W"][:] = 0  # the encoder's head: mu = 0, logvar = 0, q(z|x) = N(0, I) = p(z)
    m.params["enc.1.b"][:] = 0
    m.params["dec.0.W"][:, :d] = 0  # the decoder sees z through nothing
    x = (rng.random((4, x_dim)) < 0.5).astype(float)
    y = rng.integers(0, c, 4) if c else None
    # the decoder's output, by hand: tanh(b0 + W0 y1) then the last Linear layer
    label_in = 0.0 if y is None else m.params["dec.0.W"][:, d + y].T
    hidden = np.tanh(m.params["dec.0.b"] + label_in)
    logits = hidden @ m.params["dec.1.W"].T + m.params["dec.1.b"]
    want = _bernoulli_logp(x, np.broadcast_to(logits, x.shape))
    got = m.iwae(x, y, k=k, rng=rng_of(3), batch_size=3).log_px
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_classes", [0, 3])
def test_the_loss_value_is_the_hand_computed_elbo_with_each_sample_decoded_with_its_own_label(n_classes):
    """The -ELBO's two terms per example, computed here from the parameters with no code of the
    model's: with 2 samples per example, every sample's decoder input carries its own example's
    label (a repeat for a tile, or a dropped label, changes the reconstruction term)."""
    rng = rng_of(12)
    d, x_dim, n, c = 2, 5, 3, n_classes
    m = VAE(x_dim, d, (), n_classes=c, dtype="float64", rng=rng)  # one Linear layer each: no hidden
    for k in m.params:
        m.params[k][...] = rng.normal(0, 1.5, m.params[k].shape)  # labels that matter a lot
    x = (rng.random((n, x_dim)) < 0.5).astype(float)
    y = np.array([0, 2, 1]) if c else None
    eps = rng.standard_normal((2, n, d))
    res = m.loss(x, y, eps=eps, beta=0.5)

    y1 = np.eye(c)[y] if c else np.zeros((n, 0))
    We, be, Wd, bd = (m.params[k] for k in ("enc.0.W", "enc.0.b", "dec.0.W", "dec.0.b"))
    h = np.concatenate([x, y1], axis=1) @ We.T + be
    mu, logvar = h[:, :d], h[:, d:]
    kl = 0.5 * np.sum(mu**2 + np.exp(logvar) - 1 - logvar, axis=1)
    recon = np.zeros(n)
    for sample in eps:
        z = mu + np.exp(0.5 * logvar) * sample
        logits = np.concatenate([z, y1], axis=1) @ Wd.T + bd  # example i's own label, every sample
        recon -= _bernoulli_logp(x, logits) / len(eps)
    np.testing.assert_allclose(res.kl_per_example, kl, rtol=1e-12)
    np.testing.assert_allclose(res.recon_per_example, recon, rtol=1e-12)
    assert res.loss == pytest.approx(np.mean(recon + 0.5 * kl), rel=1e-12)
