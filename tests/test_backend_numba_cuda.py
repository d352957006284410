"""The ``numba-cuda`` backend (kernels/wiring/numba_cuda.py): its registration, where it runs, and the
whole model's loss, gradients and training through its table, against the numpy backend. Each op's
kernel against the reference: tests/test_kernels_<op>.py.

Where it runs: on a GPU when CuPy sees one; otherwise in Numba's CUDA simulator, which this module
selects itself (tests/kernel_variants.py: ``select_simulator``), so CI needs no GPU. Every fresh
output of a launcher is preset to NaN, so an element a kernel forgets to write fails the comparison.
"""

from __future__ import annotations

from kernel_variants import select_simulator

select_simulator()

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

pytest.importorskip("numba")

from kernel_variants import cupy_sees_a_gpu, numba_cuda_outputs_start_as_nan  # noqa: E402, F401

from minivae.backends import BackendUnavailable, get_backend  # noqa: E402
from minivae.kernels.wiring import numba_cuda as nbc  # noqa: E402

if not (nbc.SIMULATED or nbc.gpu_available()):
    # a failure, not a skip: another test module imported numba.cuda while the tests were collected
    # (import it inside the test instead), and a skip here would hide every Numba CUDA test
    pytest.fail("numba.cuda was imported for the real target before this module and there is no GPU: "
                "a module collected earlier imports numba.cuda at its top (move that import into its "
                "tests), or run with NUMBA_ENABLE_CUDASIM=1", pytrace=False)
try:
    BACKEND = get_backend("numba-cuda")
except BackendUnavailable as e:  # a GPU without CuPy
    pytest.skip(str(e), allow_module_level=True)

from minivae.kernels.adam import numba_cuda as optim  # noqa: E402
from minivae.kernels.bernoulli import numba_cuda as likelihood  # noqa: E402
from minivae.kernels.latent import numba_cuda as latent  # noqa: E402
from minivae.kernels.linear import numba_cuda as linear  # noqa: E402

# A simulator deadlock (a barrier some threads never reach) would hang the run: fail it instead.
pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(("n_classes", "activation", "dtype"), [(0, "tanh", "float32"),
                                                                 (3, "elu", "float64")])
def test_vae_loss_and_gradients_match_the_numpy_backend(n_classes, activation, dtype):
    """One -ELBO evaluation through every kernel (tests/trajectory.py says what is compared)."""
    from trajectory import assert_one_loss_matches_numpy

    assert_one_loss_matches_numpy("numba-cuda", 9, 2, (5,), 4, dtype=dtype, activation=activation,
                                  n_classes=n_classes)


@pytest.fixture
def small_launches(monkeypatch):
    """In the simulator, which spends its time per thread, the 1-D kernels launch with blocks of 32 (a
    warp) instead of their defaults of up to 256, and the GEMMs with 16 x 16 tiles of 16 threads
    instead of 64 (tests/test_kernels_*.py hold other blocks and tiles to the reference); on a GPU
    the defaults run."""
    if nbc.SIMULATED:
        for fn in (latent.forward, latent.backward, likelihood.bernoulli, optim.adam_step):
            monkeypatch.setitem(fn.__kwdefaults__, "block", 32)
        for fn in (linear.forward, linear.backward):
            monkeypatch.setitem(fn.__kwdefaults__, "tiles", linear.Tiles(bm=16, bn=16, bk=8, tm=4, tn=4))


@pytest.mark.parametrize("likelihood", ["bernoulli", "cbernoulli", "gaussian", "gaussian_learned"])
def test_every_likelihood_trains_through_the_models_own_networks(small_launches, likelihood):
    """Every likelihood, in a conditional model, trains on this backend (Bernoulli through its kernel,
    the others through the reference code on the backend's arrays), and model.encoder / model.decoder
    compute what the loss used after the steps (tests/one_path.py)."""
    from one_path import assert_trains_through_its_networks

    assert_trains_through_its_networks(BACKEND, likelihood, n_classes=3, steps=1)


def test_backend_is_registered_with_its_device():
    assert BACKEND.name == "numba-cuda"
    assert BACKEND.on_gpu == (not nbc.SIMULATED)
    assert BACKEND.adam is not None  # called with optim.Adam's keywords by the trajectory test


@pytest.mark.skipif(cupy_sees_a_gpu(), reason="a GPU is here: the backend is available")
def test_without_simulator_or_gpu_the_backend_is_unavailable():
    code = "from minivae.backends import available; print(available()['numba-cuda'])"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=100)
    assert "no CUDA GPU" in out.stdout, out.stdout + out.stderr


@pytest.mark.timeout(400)
def test_training_follows_the_numpy_backends_loss_trajectory(small_launches):
    """20 Adam steps of a small model with Philox noise through the backend table: every kernel,
    every step (in the simulator with small launches, see ``small_launches``)."""
    from trajectory import assert_follows_numpy

    assert_follows_numpy("numba-cuda", "float32")


def test_auto_never_picks_the_simulator():
    """numba-cuda is available here in the simulator, yet "auto" must choose a CPU backend."""
    from minivae.backends import auto_backend

    if nbc.SIMULATED:
        assert auto_backend().name in ("numba", "numpy")
    else:
        assert auto_backend().on_gpu
