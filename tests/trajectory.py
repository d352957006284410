"""The loss trajectory of a short training run on one backend: what every backend must follow.

The contract for the kernel backends: whole-model training with every available backend
follows the numpy backend's loss trajectory (same seed, 20 steps) within float32 tolerance. One
function makes the trajectory so that each backend's test module (which selects its own device or
simulator first) runs exactly the same run.
"""

from __future__ import annotations

import numpy as np

from minivae import philox
from minivae.model import VAE
from minivae.optim import Adam

STEPS = 20
# 20 Adam steps at lr 1e-2 amplify float32 rounding (the kernels round differently from NumPy's
# ufuncs and sum in other orders) by about the steps' count: 1e-7 per op becomes ~1e-5 of the loss.
RTOL = {"float32": 1e-4, "float64": 1e-10}


def loss_trajectory(backend: str, dtype: str = "float32", steps: int = STEPS, n_classes: int = 0):
    """(losses per step, final parameters on the host) of a small conditional or plain VAE trained
    with Adam and Philox noise on seeded binary data."""
    rng = np.random.default_rng(0)
    model = VAE(20, 3, (12,), activation="tanh", n_classes=n_classes, dtype=dtype, rng=rng, backend=backend)
    data = (rng.random((steps, 8, 20)) < 0.4).astype(dtype)
    labels = rng.integers(0, max(n_classes, 1), (steps, 8))
    opt = Adam(model.params, lr=1e-2, backend=model.backend)
    stream = philox.Stream(5, 0)
    losses = []
    for xb, yb in zip(data, labels, strict=True):
        res = model.loss(xb, yb if n_classes else None, rng=stream, n_samples=2)
        opt.step(res.grads)
        losses.append(res.loss)
    return np.array(losses), {k: model.backend.to_host(v) for k, v in model.params.items()}


def assert_follows_numpy(backend: str, dtype: str = "float32", n_classes: int = 0) -> None:
    want, want_params = loss_trajectory("numpy", dtype, n_classes=n_classes)
    got, got_params = loss_trajectory(backend, dtype, n_classes=n_classes)
    assert np.isfinite(got).all(), f"{backend}: non-finite losses {got}"
    assert want[-1] < want[0], "the reference run did not train: the comparison would be empty"
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype], err_msg=f"{backend}'s loss per step vs numpy's")
    for k, p in want_params.items():
        np.testing.assert_allclose(got_params[k], p, rtol=RTOL[dtype], atol=RTOL[dtype] * np.abs(p).max(),
                                   err_msg=f"{backend}'s {k} after {STEPS} steps vs numpy's")


def assert_one_loss_matches_numpy(backend, x_dim: int, z_dim: int, hidden: tuple[int, ...], n: int, *,
                                  dtype: str = "float32", noise: str = "philox", **model_kwargs) -> None:
    """One -ELBO evaluation (loss, KL, every gradient) on ``backend`` matches backend="numpy": the
    same weights and data, and the same noise (a Philox stream key, which the kernels draw from and
    regenerate, or eps drawn by a numpy Generator and handed over). A conditional model slices dz
    out of a wider gradient on its way to the latent backward."""
    results = {}
    for name in ("numpy", backend):
        rng = np.random.default_rng(3)
        model = VAE(x_dim, z_dim, hidden, dtype=dtype, rng=rng, backend=name, **model_kwargs)
        x = (rng.random((n, x_dim)) < 0.5).astype(dtype)
        k = model_kwargs.get("n_classes", 0)
        y = rng.integers(0, k, n) if k else None
        draw = philox.Stream(11, 5) if noise == "philox" else np.random.default_rng(5)
        results["ref" if name == "numpy" else "got"] = model.loss(x, y, rng=draw, n_samples=2, beta=0.5)
    ref, got = results["ref"], results["got"]
    rtol = 2e-5 if dtype == "float32" else 1e-12
    assert np.isclose(got.loss, ref.loss, rtol=rtol, atol=0), (got.loss, ref.loss)
    assert np.isclose(got.kl, ref.kl, rtol=rtol, atol=0), (got.kl, ref.kl)
    assert set(got.grads) == set(ref.grads)
    for key, g in ref.grads.items():
        g = np.asarray(g, np.float64)
        h = np.asarray(got.grads[key].get() if hasattr(got.grads[key], "get") else got.grads[key], np.float64)
        bound = rtol * (np.abs(g) + np.abs(g).max()) + 1e-30
        assert np.isfinite(h).all() and (np.abs(h - g) <= bound).all(), (
            f"grads[{key!r}]: worst |got - ref| {np.abs(h - g).max():.3g}, bound {bound.max():.3g}")
