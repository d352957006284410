"""The ``cupy`` backend's glue (kernels/wiring/cupy_backend.py), run on the CPU: NumPy stands in for CuPy
and the CUDA C kernels run on the emulator, so the table's wiring (which launcher gets which array,
views instead of copies, the eps-given path, Adam through the optimiser's hook) is checked on every
commit, not only on a GPU. The stand-in is NumPy itself under CuPy's name; nothing here shows that
CuPy behaves like NumPy, which tests/test_backend_cupy.py and the cupy variant of tests/test_kernels_*.py
do on a GPU.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from minivae import philox
from minivae.backends import NUMPY
from minivae.kernels.wiring import cuda_load, emulate
from minivae.model import VAE
from minivae.optim import Adam

pytestmark = [pytest.mark.skipif(emulate.compiler() is None, reason="the CUDA emulator needs a C++20 "
                                 f"compiler ({emulate.CXX} not on PATH)"), pytest.mark.timeout(300)]


@pytest.fixture
def emulated_cupy(monkeypatch):
    """The cupy backend built over a stand-in cupy module (NumPy's namespace, one "device") whose
    launches go to the emulator."""
    fake = types.ModuleType("cupy")
    fake.__dict__.update({k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    fake.get_array_module = lambda *arrays: np
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    load = cuda_load.load
    monkeypatch.setattr(cuda_load, "array_module", lambda backend: np)
    monkeypatch.setattr(cuda_load, "load", lambda source, backend: load(source, "emulate"))
    from minivae.kernels.wiring import cupy_backend

    return cupy_backend.backend()


def test_the_latent_ops_read_h_in_place_and_match_the_reference(emulated_cupy):
    be = emulated_cupy
    rng = np.random.default_rng(0)
    n, d = 5, 3
    h = rng.standard_normal((n, 2 * d)).astype(np.float32)
    z, kl, cache = be.latent_forward(h, 2, key=(3, 4))
    mu, logvar = cache[1]
    assert np.shares_memory(mu, h) and np.shares_memory(logvar, h)  # views, not copies
    z_ref, kl_ref, cache_ref = NUMPY.latent_forward(h.astype(np.float64), 2, key=(3, 4))
    np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kl, kl_ref, rtol=1e-5, atol=1e-6)
    dz = rng.standard_normal((2, n, d)).astype(np.float32)
    dh = be.latent_backward(dz, 0.7, cache)
    assert dh.shape == (n, 2 * d)
    np.testing.assert_allclose(dh, NUMPY.latent_backward(dz.astype(np.float64), 0.7, cache_ref), rtol=1e-5,
                               atol=1e-5)
    eps = rng.standard_normal((2, n, d)).astype(np.float32)  # eps handed over: the reference ops
    _, _, cache_eps = be.latent_forward(h, 2, eps=eps)
    _, _, cache_eps_ref = NUMPY.latent_forward(h, 2, eps=eps)
    np.testing.assert_allclose(be.latent_backward(dz, 0.7, cache_eps),
                               NUMPY.latent_backward(dz, 0.7, cache_eps_ref), rtol=1e-6)


@pytest.mark.parametrize("n_classes", [0, 2])
def test_the_model_trains_through_the_table_like_numpy(emulated_cupy, n_classes):
    """Loss, gradients and three Adam steps through every op of the table (the conditional model
    slices dz out of a wider gradient): float32 agreement with backend="numpy"."""
    runs = {}
    for name, backend in (("numpy", "numpy"), ("cupy", emulated_cupy)):
        rng = np.random.default_rng(3)
        model = VAE(20, 3, (9,), activation="tanh", n_classes=n_classes, rng=rng, backend=backend)
        opt = Adam(model.params, lr=1e-2, backend=model.backend)
        x = (rng.random((6, 20)) < 0.5).astype(np.float32)
        y = rng.integers(0, max(n_classes, 1), 6) if n_classes else None
        stream = philox.Stream(1, 2)
        losses = []
        for _ in range(3):
            res = model.loss(x, y, rng=stream, n_samples=2)
            opt.step(res.grads)
            losses.append(res.loss)
        runs[name] = (losses, res.grads, model.params)
    (want, want_g, want_p), (got, got_g, got_p) = runs["numpy"], runs["cupy"]
    np.testing.assert_allclose(got, want, rtol=2e-5)
    for k, g in want_g.items():
        np.testing.assert_allclose(got_g[k], g, rtol=1e-4, atol=2e-5 * np.abs(g).max(), err_msg=k)
        np.testing.assert_allclose(got_p[k], want_p[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_training_follows_the_numpy_backends_loss_trajectory(emulated_cupy):
    """The 20-step trajectory every backend must follow (tests/trajectory.py), through the cupy table
    on the emulator."""
    from trajectory import assert_follows_numpy

    assert_follows_numpy(emulated_cupy, "float32", n_classes=3)


@pytest.mark.parametrize("noise", ["philox", "generator"])
def test_one_loss_matches_numpy_with_either_noise(emulated_cupy, noise):
    from trajectory import assert_one_loss_matches_numpy

    assert_one_loss_matches_numpy(emulated_cupy, 70, 3, (33,), 17, noise=noise, activation="elu", n_classes=3)


@pytest.mark.parametrize(("likelihood", "n_classes", "steps"), [
    ("bernoulli", 3, 3), ("cbernoulli", 0, 2), ("gaussian", 3, 2), ("gaussian_learned", 3, 2)])
def test_every_likelihood_trains_through_the_models_own_networks(emulated_cupy, likelihood, n_classes, steps):
    """Every likelihood and the conditional model train on the cupy backend (Bernoulli through its
    kernel, the others through the reference code on the backend's arrays), and after the steps
    model.encoder / model.decoder compute what the loss used: the weights were never copied away
    (the stand-in's asarray copies, as a move to a GPU does; tests/one_path.py)."""
    from one_path import assert_trains_through_its_networks

    assert_trains_through_its_networks(emulated_cupy, likelihood, n_classes, steps)
