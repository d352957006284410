"""The ``cupy`` backend (kernels/wiring/cupy_backend.py) on a GPU: its registration, each op of its
table and the whole model's loss, gradients and training, against the numpy backend; without a GPU,
that it is unavailable and says why. Each op's CUDA C kernel against the reference, on the emulator
and on a GPU: tests/test_kernels_<op>.py; the table's glue on the CPU, with NumPy standing in for
CuPy: tests/test_cupy_backend_emulated.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from kernel_variants import GPU, assert_within, f64

from minivae.backends import NUMPY, BackendUnavailable, get_backend

gpu_only = pytest.mark.skipif(not GPU, reason="no CUDA GPU")


@pytest.mark.skipif(GPU, reason="a GPU is here: the backend is available")
def test_without_a_gpu_the_cupy_backend_is_unavailable_naming_why():
    with pytest.raises(BackendUnavailable, match=r"backend 'cupy' is not available: "
                                                 r"(cupy is not installed|no CUDA GPU)"):
        get_backend("cupy")


@gpu_only
def test_the_cupy_backend_is_registered_with_its_device():
    import cupy

    backend = get_backend("cupy")
    assert backend.name == "cupy" and backend.on_gpu and backend.xp is cupy and backend.adam is not None


@gpu_only
@pytest.mark.parametrize(("n_classes", "activation", "noise"), [(0, "tanh", "philox"), (3, "elu", "philox"),
                                                                 (0, "softplus", "generator")])
def test_vae_loss_and_gradients_match_the_numpy_backend(n_classes, activation, noise):
    """One -ELBO evaluation through every kernel (tests/trajectory.py says what is compared), with
    Philox noise or eps handed over."""
    from trajectory import assert_one_loss_matches_numpy

    assert_one_loss_matches_numpy("cupy", 70, 3, (33,), 17, noise=noise, activation=activation,
                                  n_classes=n_classes)


@gpu_only
def test_every_op_of_the_cupy_backend_matches_numpy_on_the_device():
    """The table's latent, Bernoulli and Adam ops (the CUDA C kernels of latent/, bernoulli/, adam/)
    on the GPU through the table, against the reference table."""
    from minivae.optim import Adam

    gpu = get_backend("cupy")
    rng = np.random.default_rng(4)
    n, d, samples = 33, 5, 2
    h = rng.standard_normal((n, 2 * d)).astype(np.float32)
    key = (123, 456)
    z, kl, cache = gpu.latent_forward(gpu.asarray(h), samples, key=key)
    z_ref, kl_ref, cache_ref = NUMPY.latent_forward(f64(h), samples, key=key)
    eps_bound = 1e-5 * (1 + np.abs(z_ref)) * (1 + np.exp(0.5 * np.abs(f64(h[:, d:]))))
    assert_within("z", z, z_ref, eps_bound)
    assert_within("kl", kl, kl_ref, 1e-5 * (np.abs(kl_ref) + d))
    dz = rng.standard_normal((samples, n, d)).astype(np.float32)
    dh = gpu.latent_backward(gpu.asarray(dz), 0.7, cache)
    dh_ref = NUMPY.latent_backward(f64(dz), 0.7, cache_ref)
    assert_within("dh", dh, dh_ref, 1e-5 * (np.abs(dh_ref) + 1) * (1 + np.exp(0.5 * np.abs(f64(h))).max()))
    x = (rng.random((n, 70)) < 0.5).astype(np.float32)
    logits = rng.normal(0, 3, (n, 70)).astype(np.float32)
    logp, dlogits = gpu.bernoulli(gpu.asarray(x), gpu.asarray(logits), -0.25)
    logp_ref, dlogits_ref = NUMPY.bernoulli(f64(x), f64(logits), -0.25)
    assert_within("logp", logp, logp_ref, 1e-5 * np.sum(np.abs(f64(logits)) + 1, axis=1))
    assert_within("dlogits", dlogits, dlogits_ref, 1e-5 * 0.25 * 2)
    p = rng.standard_normal(70).astype(np.float32)
    grads = [rng.standard_normal(70).astype(np.float32) for _ in range(3)]
    on_gpu, ref = {"p": gpu.asarray(p)}, {"p": p.copy()}
    opt_gpu = Adam(on_gpu, lr=0.01, weight_decay=0.1, backend=gpu)
    opt_ref = Adam(ref, lr=0.01, weight_decay=0.1)
    for g in grads:
        opt_gpu.step({"p": gpu.asarray(g)})
        opt_ref.step({"p": g})
    assert_within("param after 3 Adam steps", on_gpu["p"], f64(ref["p"]), 1e-5 * (np.abs(f64(p)) + 0.03))


@gpu_only
@pytest.mark.parametrize("n_classes", [0, 3])
def test_training_on_the_gpu_follows_the_numpy_backends_loss_trajectory(n_classes):
    from trajectory import assert_follows_numpy

    assert_follows_numpy("cupy", "float32", n_classes)
