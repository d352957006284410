"""Parity with PyTorch autograd: same weights, same eps -> same loss and gradients.

Runs when torch is installed (CI installs the CPU build); otherwise skipped with the reason.
"""

import math

import numpy as np
import pytest
from strategies import rng_of

from minivae.model import VAE

torch = pytest.importorskip("torch", reason="torch is not installed (pip install minivae[torch])")
F = torch.nn.functional

ACTS = {"relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "softplus": F.softplus,
        "elu": F.elu, "leaky_relu": F.leaky_relu}


def torch_loss(m: VAE, params, x, y1, eps, beta, reduction):
    """The same -ELBO written with torch ops (and torch.distributions for the likelihoods)."""
    act = ACTS[m.activation]

    def mlp(prefix, h, n_layers):
        for i in range(n_layers):
            if i:
                h = act(h)
            h = h @ params[f"{prefix}.{i}.W"].T + params[f"{prefix}.{i}.b"]
        return h

    n, d = x.shape[0], m.z_dim
    n_lin = len(m.hidden) + 1
    enc_in = x if y1 is None else torch.cat([x, y1], 1)
    out = mlp("enc", enc_in, n_lin)
    mu, logvar = out[:, :d], out[:, d:]
    z = mu + torch.exp(0.5 * logvar) * eps  # (L, N, d)
    L = eps.shape[0]
    zf = z.reshape(L * n, d)
    dec_in = zf if y1 is None else torch.cat([zf, y1.repeat(L, 1)], 1)
    o = mlp("dec", dec_in, n_lin)
    xr = x.repeat(L, 1)
    lik = m.likelihood.name
    if lik == "bernoulli":
        logp = -F.binary_cross_entropy_with_logits(o, xr, reduction="none").sum(1)
    elif lik == "cbernoulli":
        logp = torch.distributions.ContinuousBernoulli(logits=o).log_prob(xr).sum(1)
    elif lik == "gaussian":
        logp = torch.distributions.Normal(o, m.likelihood.sigma).log_prob(xr).sum(1)
    else:
        std = torch.exp(0.5 * params["lik.logvar"])
        logp = torch.distributions.Normal(o, std).log_prob(xr).sum(1)
    recon = -logp.reshape(L, n).mean(0)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), 1)
    total = (recon + beta * kl).sum()
    return total / n if reduction == "mean" else total


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("lik, act, n_classes, n_samples, reduction", [
    ("bernoulli", "relu", 0, 1, "mean"),
    ("bernoulli", "tanh", 3, 2, "sum"),
    ("cbernoulli", "elu", 0, 1, "mean"),
    ("cbernoulli", "softplus", 3, 1, "sum"),
    ("gaussian", "leaky_relu", 0, 2, "mean"),
    ("gaussian_learned", "sigmoid", 0, 1, "mean"),
])
def test_loss_and_gradients_match_pytorch(dtype, lik, act, n_classes, n_samples, reduction):
    rng = rng_of(123)
    m = VAE(12, 3, (10, 7), activation=act, likelihood=lik, n_classes=n_classes, sigma=0.8,
            dtype=dtype, rng=rng)
    if lik == "gaussian_learned":
        m.params["lik.logvar"][:] = rng.uniform(-1, 1, 12)
    x = rng.random((5, 12)).astype(dtype)
    if lik == "bernoulli":
        x = (x < 0.5).astype(dtype)
    y = rng.integers(0, 3, 5) if n_classes else None
    eps = m.draw_eps(5, rng, n_samples)
    beta = 0.7
    ours = m.loss(x, y, eps=eps, beta=beta, reduction=reduction)

    # torch's float32 continuous Bernoulli replaces its normaliser by a Taylor polynomial in
    # lambda within 0.499..0.501 whose derivative is off by up to 2e-3 near lambda = 1/2 (ours
    # stays within 2e-6, see test_likelihoods): there, the reference runs in float64.
    ref = np.float64 if lik == "cbernoulli" else dtype

    def t(a):
        return torch.tensor(np.asarray(a, dtype=ref))

    tp = {k: t(v).requires_grad_() for k, v in m.params.items()}
    y1 = None if y is None else t(m.one_hot(y, 5))
    loss = torch_loss(m, tp, t(x), y1, t(eps), beta, reduction)
    loss.backward()

    assert ours.loss == pytest.approx(loss.item(), rel=1e-5)
    rtol = 1e-4 if dtype == "float32" else 1e-9
    for k, t in tp.items():
        g, ref = ours.grads[k], t.grad.numpy()
        # relative to the gradient's scale: a float32 entry that cancels to ~0 has no relative digits
        scale = max(np.abs(ref).max(), 1e-30)
        err = np.abs(g - ref).max() / scale
        assert err <= rtol, f"{k}: max error {err:.2e} of the gradient's scale (rtol {rtol})"
    assert math.isfinite(ours.loss)
