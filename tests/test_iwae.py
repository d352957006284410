"""Training on the importance-weighted bound (Burda et al., 2015) and its doubly-reparameterized
gradient (DReG, Tucker et al., 2018): ``VAE.loss(..., objective="iwae", estimator=...)``.

Properties proven: with eps fixed the bound is a deterministic function of the parameters, and
the standard estimator is its exact gradient (float64 central differences, every parameter, every
likelihood, K in {1, 2, 5}, conditional or not); its value is the definition computed here from
the parameters, and log p(x) in closed form when every weight is one known number; with K = 1 it is
the one-sample ELBO with the Monte-Carlo KL (log q - log p at the sample), whose decoder gradient
is the closed-form ELBO's; DReG is the exact gradient of the surrogate the derivation names; both
agree with PyTorch autograd (DReG as the paper writes it); and the K-sample step runs on every
backend with the numpy backend's results.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import rng_of
from test_cupy_backend_emulated import emulated_cupy  # noqa: F401  (the fixture)

from minivae.gradcheck import gradcheck
from minivae.kernels.wiring import emulate
from minivae.model import VAE

LIKELIHOODS = ["bernoulli", "cbernoulli", "gaussian", "gaussian_learned"]


def _model(likelihood="bernoulli", n_classes=0, dtype="float64", seed=0, hidden=(5,), act="tanh"):
    rng = rng_of(seed)
    m = VAE(6, 3, hidden, activation=act, likelihood=likelihood, n_classes=n_classes, sigma=0.8,
            dtype=dtype, rng=rng)
    if likelihood == "gaussian_learned":
        m.params["lik.logvar"][:] = rng.uniform(-1, 1, 6)
    return m


def _batch(m: VAE, rng: np.random.Generator, n: int = 4):
    x = rng.random((n, m.x_dim)).astype(m.dtype)
    if m.likelihood.name == "bernoulli":
        x = (x < 0.5).astype(m.dtype)
    elif m.likelihood.name == "cbernoulli":
        x = np.clip(x, 0.05, 0.95)
    y = rng.integers(0, m.n_classes, n) if m.n_classes else None
    return x, y


# ---- the standard estimator is the bound's gradient ---------------------------------------------

@given(likelihood=st.sampled_from(LIKELIHOODS), k=st.sampled_from([1, 2, 5]),
       n_classes=st.sampled_from([0, 3]), seed=st.integers(0, 2**31 - 1),
       reduction=st.sampled_from(["mean", "sum"]))
def test_the_standard_gradient_is_the_bounds_gradient(likelihood, k, n_classes, seed, reduction):
    m = _model(likelihood, n_classes, seed=seed)
    rng = rng_of(seed + 1)
    x, y = _batch(m, rng)
    eps = rng.standard_normal((k, 4, m.z_dim)) * 1.5  # samples well into the tails too
    res = m.loss(x, y, eps=eps, objective="iwae", reduction=reduction)
    check = gradcheck(lambda: m.loss(x, y, eps=eps, objective="iwae", reduction=reduction).loss,
                      m.params, res.grads)
    assert check.ok, str(check)


def _log_weights_by_hand(m: VAE, x, y, eps) -> np.ndarray:
    """log p(x|z_k) + log p(z_k) - log q(z_k|x) from the networks' forward passes and the
    densities written out here (Bernoulli likelihood)."""
    y1 = None if y is None else np.eye(m.n_classes)[y]
    enc_in = x if y1 is None else np.concatenate([x, y1], 1)
    h, _ = m.encoder.forward(enc_in)
    d = m.z_dim
    mu, logvar = h[:, :d], h[:, d:]
    z = mu + np.exp(0.5 * logvar) * eps
    out = []
    for zk in z:
        dec_in = zk if y1 is None else np.concatenate([zk, y1], 1)
        logits, _ = m.decoder.forward(dec_in)
        logp = np.sum(x * logits - np.logaddexp(0.0, logits), axis=1)
        log_prior = np.sum(-0.5 * zk**2 - 0.5 * math.log(2 * math.pi), axis=1)
        log_q = np.sum(-0.5 * ((zk - mu) ** 2 / np.exp(logvar) + logvar + math.log(2 * math.pi)), axis=1)
        out.append(logp + log_prior - log_q)
    return np.array(out)


@pytest.mark.parametrize("n_classes", [0, 3])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_the_bounds_value_is_its_definition(k, n_classes):
    """loss = -(1/N) sum_n log (1/K) sum_k w_kn with the weights computed here from the densities
    (log q as N(z; mu, sigma^2), not through eps): a missing - log K, a wrong log q or log p(z),
    or a label decoded with the wrong sample shows."""
    m = _model(n_classes=n_classes, seed=5)
    rng = rng_of(6)
    x, y = _batch(m, rng, 5)
    eps = rng.standard_normal((k, 5, m.z_dim))
    lw = _log_weights_by_hand(m, x, y, eps)
    want = -np.mean(np.logaddexp.reduce(lw, axis=0) - math.log(k))
    res = m.loss(x, y, eps=eps, objective="iwae")
    assert res.loss == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(res.recon_per_example + res.kl_per_example, -lw.mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize("k", [1, 4, 50])
def test_the_bound_is_log_p_x_when_every_weight_is_the_same_known_number(k):
    """Decoder blind to z, q(z|x) = p(z): every log w_k is log p(x | the decoder's constant
    output), so the bound is that for every K (the - log K and the log-mean-exp cancel exactly)."""
    m = _model(seed=7)
    d = m.z_dim
    m.params["enc.1.W"][:] = 0
    m.params["enc.1.b"][:] = 0
    m.params["dec.0.W"][:, :d] = 0
    rng = rng_of(8)
    x, _ = _batch(m, rng)
    logits = np.tanh(m.params["dec.0.b"]) @ m.params["dec.1.W"].T + m.params["dec.1.b"]
    want = np.sum(x * logits - np.logaddexp(0.0, logits), axis=1)
    res = m.loss(x, eps=rng.standard_normal((k, 4, d)), objective="iwae")
    assert res.loss == pytest.approx(-want.mean(), rel=1e-12)


def test_with_one_sample_the_bound_is_the_elbo_with_the_monte_carlo_kl():
    """K = 1: log w = log p(x|z) - (log q(z|x) - log p(z)), the one-sample ELBO whose KL is the
    Monte-Carlo estimate at z. Its reconstruction term is the closed-form ELBO's, so the decoder's
    gradient is the same to the last bit; the encoder's differs by the KL estimate's gradient."""
    m = _model(seed=9)
    rng = rng_of(10)
    x, _ = _batch(m, rng)
    eps = rng.standard_normal((1, 4, m.z_dim))
    iw, elbo = m.loss(x, eps=eps, objective="iwae"), m.loss(x, eps=eps)
    assert iw.recon == pytest.approx(elbo.recon, rel=1e-14)
    lw = _log_weights_by_hand(m, x, None, eps)[0]
    assert iw.loss == pytest.approx(-lw.mean(), rel=1e-12)
    for key, g in elbo.grads.items():
        if key.startswith("dec."):
            np.testing.assert_array_equal(iw.grads[key], g)
        else:
            assert not np.allclose(iw.grads[key], g), key


# ---- DReG ---------------------------------------------------------------------------------------

def _dreg_surrogate(m: VAE, x, eps):
    """The function whose exact gradient DReG is (docs/derivations.md), at the current parameters
    with everything marked "held" frozen at the values of the moment this is called:

        S = -(1/N) sum_kn [ w~_kn log p_theta(x | z_kn held)
                            + w~_kn^2 ( log p_theta held(x | z_kn) + log p(z_kn)
                                        - log q_phi held(z_kn | x) ) ]

    with z_kn = mu_phi + sigma_phi eps_kn and w~ held. Returns a closure of the current params."""
    k, n, d = eps.shape
    base = VAE(m.x_dim, m.z_dim, m.hidden, activation=m.activation, dtype=m.dtype, rng=rng_of(0))
    for key, v in m.params.items():  # the held decoder and the held q
        base.params[key][...] = v
    h0, _ = base.encoder.forward(x)
    mu0, logvar0 = h0[:, :d], h0[:, d:]
    z0 = mu0 + np.exp(0.5 * logvar0) * eps
    w0 = m.backend.importance_weights(_log_weights_by_hand(base, x, None, eps))[1]

    def bern(net, z):
        logits, _ = net.forward(z.reshape(k * n, d))
        xr = np.tile(x, (k, 1))
        return np.sum(xr * logits - np.logaddexp(0.0, logits), axis=1).reshape(k, n)

    def surrogate() -> float:
        h, _ = m.encoder.forward(x)
        z = h[:, :d] + np.exp(0.5 * h[:, d:]) * eps
        log_prior = np.sum(-0.5 * z**2, axis=2)
        log_q_held = np.sum(-0.5 * (z - mu0) ** 2 / np.exp(logvar0) - 0.5 * logvar0, axis=2)
        decoder_term = w0 * bern(m.decoder, z0)
        encoder_term = w0**2 * (bern(base.decoder, z) + log_prior - log_q_held)
        return float(-(decoder_term + encoder_term).sum() / n)

    return surrogate


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_dreg_is_the_exact_gradient_of_its_surrogate(k, seed):
    m = _model(seed=20 + seed)
    rng = rng_of(30 + seed)
    x, _ = _batch(m, rng)
    eps = rng.standard_normal((k, 4, m.z_dim)) * 1.5
    res = m.loss(x, eps=eps, objective="iwae", estimator="dreg")
    check = gradcheck(_dreg_surrogate(m, x, eps), m.params, res.grads)
    assert check.ok, str(check)
    standard = m.loss(x, eps=eps, objective="iwae")
    assert res.loss == standard.loss
    for key, g in standard.grads.items():  # the decoder keeps the IWAE gradient
        if key.startswith("dec."):
            np.testing.assert_array_equal(res.grads[key], g)


def test_the_estimator_and_objective_are_checked():
    m = _model()
    x, _ = _batch(m, rng_of(0))
    eps = rng_of(1).standard_normal((2, 4, 3))
    with pytest.raises(ValueError, match="expected objective='iwae'"):
        m.loss(x, eps=eps, estimator="dreg")
    with pytest.raises(ValueError, match="weighs its KL by 1: expected beta = 1"):
        m.loss(x, eps=eps, objective="iwae", beta=0.5)
    with pytest.raises(ValueError, match="objective must be one of 'elbo', 'iwae'"):
        m.loss(x, eps=eps, objective="vimco")
    with pytest.raises(ValueError, match="estimator must be one of 'standard', 'dreg'"):
        m.loss(x, eps=eps, objective="iwae", estimator="stl")


# ---- PyTorch ------------------------------------------------------------------------------------

def _torch_log_weights(torch, m: VAE, params, x, eps, hold_q: bool, hold_z: bool = False):
    F = torch.nn.functional

    def mlp(prefix, h):
        n_lin = len(m.hidden) + 1
        for i in range(n_lin):
            if i:
                h = torch.tanh(h)
            h = h @ params[f"{prefix}.{i}.W"].T + params[f"{prefix}.{i}.b"]
        return h

    k, n, d = eps.shape
    h = mlp("enc", x)
    mu, logvar = h[:, :d], h[:, d:]
    std = torch.exp(0.5 * logvar)
    z = mu + std * eps
    if hold_z:
        z = z.detach()
    q = torch.distributions.Normal(mu.detach() if hold_q else mu, std.detach() if hold_q else std)
    log_q = q.log_prob(z).sum(-1)
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    logits = mlp("dec", z.reshape(k * n, d))
    logp = -F.binary_cross_entropy_with_logits(logits, x.repeat(k, 1), reduction="none").sum(1)
    return logp.reshape(k, n) + log_prior - log_q


@pytest.mark.parametrize("k", [1, 3, 10])
def test_iwae_and_dreg_agree_with_pytorch(k):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install minivae[torch])")
    m = _model(seed=40, hidden=(7, 5))
    rng = rng_of(41)
    x, _ = _batch(m, rng, 6)
    eps = rng.standard_normal((k, 6, m.z_dim))
    tx, teps = torch.tensor(x), torch.tensor(eps)

    def fresh():
        return {name: torch.tensor(v, requires_grad=True) for name, v in m.params.items()}

    # IWAE: autograd of the bound itself
    p = fresh()
    log_w = _torch_log_weights(torch, m, p, tx, teps, hold_q=False)
    loss = -(torch.logsumexp(log_w, 0) - math.log(k)).mean()
    loss.backward()
    ours = m.loss(x, eps=eps, objective="iwae")
    assert ours.loss == pytest.approx(loss.item(), rel=1e-12)
    for name, t in p.items():
        np.testing.assert_allclose(ours.grads[name], t.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)

    # DReG as Tucker et al. write it: the encoder's loss -(w~^2 held * log w with q held), the
    # decoder's the IWAE loss with z held
    p_enc, p_dec = fresh(), fresh()
    log_w_enc = _torch_log_weights(torch, m, p_enc, tx, teps, hold_q=True)
    w_tilde = torch.softmax(log_w_enc, 0).detach()
    (-(w_tilde**2 * log_w_enc).sum(0).mean()).backward()
    log_w_dec = _torch_log_weights(torch, m, p_dec, tx, teps, hold_q=False, hold_z=True)
    (-(torch.logsumexp(log_w_dec, 0) - math.log(k)).mean()).backward()
    dreg = m.loss(x, eps=eps, objective="iwae", estimator="dreg")
    for name in m.params:
        want = (p_enc if name.startswith("enc.") else p_dec)[name].grad.numpy()
        np.testing.assert_allclose(dreg.grads[name], want, rtol=1e-9, atol=1e-12, err_msg=name)


# ---- every backend ------------------------------------------------------------------------------

def _same_step(backend: str, estimator: str, dtype: str = "float32") -> None:
    """One K-sample step on ``backend`` against the numpy backend: same loss and gradients to
    float32 rounding."""
    ref = _model(dtype=dtype, seed=50, hidden=(9,), act="relu")
    other = VAE(6, 3, (9,), activation="relu", dtype=dtype, rng=rng_of(50), backend=backend)
    for key, v in ref.params.items():
        other.params[key][...] = other.backend.asarray(v)
    rng = rng_of(51)
    x, _ = _batch(ref, rng, 7)
    eps = rng.standard_normal((5, 7, 3)).astype(dtype)
    want = ref.loss(x, eps=eps, objective="iwae", estimator=estimator)
    got = other.loss(other.backend.asarray(x), eps=other.backend.asarray(eps), objective="iwae",
                     estimator=estimator)
    assert got.loss == pytest.approx(want.loss, rel=1e-5)
    for key, g in want.grads.items():
        np.testing.assert_allclose(other.backend.to_host(got.grads[key]), g, rtol=2e-4, atol=2e-5,
                                   err_msg=key)


@pytest.mark.parametrize("estimator", ["standard", "dreg"])
def test_the_k_sample_step_on_the_numba_backend(estimator):
    pytest.importorskip("numba")
    _same_step("numba", estimator)


SIMULATOR_STEP = """
import sys
sys.path.insert(0, sys.argv[1])
from test_iwae import _same_step
for estimator in ("standard", "dreg"):
    _same_step("numba-cuda", estimator)
print("ok")
"""


@pytest.mark.timeout(300)
def test_the_k_sample_step_on_the_numba_cuda_backend_in_the_simulator(tmp_path):
    pytest.importorskip("numba")
    tests = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", SIMULATOR_STEP, tests], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env=os.environ | {"NUMBA_ENABLE_CUDASIM": "1"})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


@pytest.mark.skipif(emulate.compiler() is None, reason=f"the CUDA emulator needs a C++20 compiler "
                    f"({emulate.CXX} not on PATH)")
@pytest.mark.parametrize("estimator", ["standard", "dreg"])
def test_the_k_sample_step_on_the_cupy_backends_stand_in(emulated_cupy, estimator):  # noqa: F811
    """The cupy backend's wiring, with NumPy standing in for CuPy and its CUDA C kernels (the
    importance weights' included) on the emulator."""
    _same_step(emulated_cupy, estimator)
