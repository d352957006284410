"""The ``numba`` backend (kernels/wiring/numba_cpu.py): its registration, the threading layer its
parallel kernels start, Adam through the optimiser's backend hook, and the whole model's loss,
gradients and training through its table, against the numpy backend. Each op's kernel against the
reference: tests/test_kernels_<op>.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

from trajectory import assert_follows_numpy, assert_one_loss_matches_numpy  # noqa: E402

from minivae import optim  # noqa: E402
from minivae.backends import get_backend  # noqa: E402
from minivae.kernels.adam import numba_cpu as optim_cpu  # noqa: E402


def test_backend_is_registered_on_the_cpu():
    backend = get_backend("numba")
    assert backend.name == "numba" and backend.xp is np and not backend.on_gpu
    assert backend.adam is optim_cpu.adam


@pytest.mark.parametrize(("n_classes", "activation", "dtype", "likelihood"), [
    (0, "relu", "float32", "bernoulli"), (3, "elu", "float64", "bernoulli"),
    (0, "softplus", "float32", "gaussian_learned"), (2, "tanh", "float64", "cbernoulli")])
def test_vae_loss_and_gradients_match_the_numpy_backend(n_classes, activation, dtype, likelihood):
    """One -ELBO evaluation through every kernel (tests/trajectory.py says what is compared)."""
    assert_one_loss_matches_numpy("numba", 17, 3, (9, 5), 6, dtype=dtype, activation=activation,
                                  n_classes=n_classes, likelihood=likelihood)


@pytest.mark.parametrize(("dtype", "n_classes"), [("float32", 0), ("float64", 3)])
def test_training_follows_the_numpy_backends_loss_trajectory(dtype, n_classes):
    assert_follows_numpy("numba", dtype, n_classes)


def test_parallel_kernels_run_on_the_sleeping_workqueue_layer(monkeypatch):
    """The OpenMP layer's spinning threads starve the BLAS GEMMs between fused passes
    (kernels/wiring/numba_threads.py): minivae's kernels start Numba's pool on workqueue."""
    import numba

    from minivae.kernels.wiring import numba_threads

    if numba_threads.USER_CHOICE is not None:
        pytest.skip(f"NUMBA_THREADING_LAYER={numba_threads.USER_CHOICE} was set: the user's choice stands")
    monkeypatch.setattr(optim_cpu, "PARALLEL_MIN_ELEMENTS", 0)
    p = np.zeros(64)
    optim_cpu.adam(p, np.ones(64), np.zeros(64), np.zeros(64), lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8,
                   weight_decay=0.0, decoupled=False, step=1)
    assert numba.threading_layer() == "workqueue"


# serial: the threshold above every test shape; parallel: every shape takes the prange path
PATHS = {"serial": 1 << 62, "parallel": 0}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW])
@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.sampled_from([(1,), (17,), (129,), (3, 65), (64, 33)]), steps=st.integers(1, 4),
       weight_decay=st.sampled_from([0.0, 0.1]), lr=st.sampled_from([1e-3, 0.1]),
       betas=st.sampled_from([(0.9, 0.999), (0.3, 0.9), (0.0, 0.5)]), seed=st.integers(0, 2**32 - 1))
def test_adam_equals_minivae_optim_bit_for_bit(monkeypatch, path, dtype, cls, shape, steps, weight_decay, lr,
                                              betas, seed):
    """The kernel through the optimiser's own backend hook, as training runs it, on its serial and
    parallel paths; beta1 = 0.3 takes the other form of PyTorch's lerp (weight >= 0.5)."""
    monkeypatch.setattr(optim_cpu, "PARALLEL_MIN_ELEMENTS", PATHS[path])
    rng = np.random.default_rng(seed)
    p0 = rng.normal(size=shape).astype(dtype)
    ref_p, ker_p = {"p": p0.copy()}, {"p": p0.copy()}
    ref = cls(ref_p, lr=lr, betas=betas, weight_decay=weight_decay)
    ker = cls(ker_p, lr=lr, betas=betas, weight_decay=weight_decay, backend=get_backend("numba"))
    for step in range(1, steps + 1):
        g = (rng.normal(size=shape) * rng.choice([1e-3, 1, 100])).astype(dtype)
        ref.step({"p": g.copy()})
        ker.step({"p": g.copy()})
        a, b = ref.state_dict(), ker.state_dict()
        for name in ("exp_avg/p", "exp_avg_sq/p"):
            np.testing.assert_array_equal(b[name], a[name], err_msg=f"{name} at step {step}")
        np.testing.assert_array_equal(ker_p["p"], ref_p["p"], err_msg=f"param at step {step}")
