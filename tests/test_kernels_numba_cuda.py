"""The Numba CUDA kernels (kernels/*/numba_cuda.py, backend "numba-cuda") agree with the NumPy reference.

Where they run: on a GPU when CuPy sees one; otherwise in Numba's CUDA simulator, which this module
selects itself (see ``_select_simulator``), so CI needs no GPU. The simulator runs one Python thread
per CUDA thread, so shapes stay small, yet they include sizes that are not multiples of any tile or
block (1, 17, 33), non-default tiles and blocks, and grids smaller than the work (grid-stride loops).
Every fresh output is preset to NaN, so an element a kernel forgets to write fails the comparison.

Tolerances are derived, not tuned: a sum of K float32 products differs from another evaluation by at
most 2 (K + 2) u sum |terms| (u the unit roundoff; the +2 covers the fused bias or act'); Philox's
float32 normals carry ``philox.EPS_TOLERANCE`` on top; elementwise math is held to 1e-5 relative.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")


def _cupy_sees_a_gpu() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, no driver, no device: all mean "no GPU here"
        return False


def _select_simulator() -> None:
    """Make numba.cuda the simulator unless a GPU is here or the choice is already made.

    Numba picks the simulator or the real target once, when ``numba.cuda`` is first imported, from
    ``numba.config.ENABLE_CUDASIM``, which it reads from the environment when numba is imported and
    again on ``numba.config.reload_config()``. Another test module may have imported numba (for its
    CPU kernels) before this one is collected, so setting the variable is not enough: reload the
    config, import numba.cuda, then restore the environment and config, so that nothing else in the
    test run (subprocesses included) inherits the setting. numba.cuda stays what it was imported as:
    the simulator, for the rest of this process, which is what any later in-process caller of the
    numba-cuda backend or of ``numba.cuda.is_available()`` sees.
    """
    if "numba.cuda" in sys.modules or "NUMBA_ENABLE_CUDASIM" in os.environ or _cupy_sees_a_gpu():
        return
    import numba

    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    try:
        numba.config.reload_config()
        import numba.cuda  # noqa: F401  (the choice is made here)
    finally:
        del os.environ["NUMBA_ENABLE_CUDASIM"]
        numba.config.reload_config()


_select_simulator()

from minivae import philox  # noqa: E402
from minivae.backends import NUMPY, BackendUnavailable, get_backend  # noqa: E402
from minivae.kernels.wiring import numba_cuda as nbc  # noqa: E402
from minivae.layers import ACTIVATIONS, linear_forward  # noqa: E402
from minivae.optim import Adam, AdamW  # noqa: E402

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
dev, host = BACKEND.asarray, BACKEND.to_host

from minivae.kernels.adam import numba_cuda as optim  # noqa: E402
from minivae.kernels.bernoulli import numba_cuda as likelihood  # noqa: E402
from minivae.kernels.latent import numba_cuda as latent  # noqa: E402
from minivae.kernels.linear import numba_cuda as linear  # noqa: E402

# A simulator deadlock (a barrier some threads never reach) would hang the run: fail it instead.
pytestmark = pytest.mark.timeout(120)

# Sizes around the tiles and blocks: 1, one past a 16-multiple, one past a 32-multiple.
SIZES = st.sampled_from([1, 17, 33])
DTYPES = st.sampled_from([np.float32, np.float32, np.float64])  # float32 is what the GPU runs
# Non-default GEMM tiles: not square, bk wider than either patch, 32 threads.
SMALL_TILES = linear.Tiles(bm=16, bn=32, bk=16, tm=2, tn=8)
EPS_TOL = {np.dtype(k): v for k, v in philox.EPS_TOLERANCE.items()}


def few(n: int) -> settings:
    """n draws, no shrinking: each kernel launch costs the simulator up to a second, so shrinking a
    failure would outlast the timeout; the failing draw is reported as drawn (shapes are small anyway)."""
    return settings(max_examples=n, phases=(Phase.explicit, Phase.reuse, Phase.generate))


class _NanFilled:
    """The launchers' array module, with every fresh output preset to NaN."""

    def __init__(self, xp):
        self._xp = xp

    def __getattr__(self, name):
        return getattr(self._xp, name)

    def empty(self, shape, dtype):
        return self._xp.full(shape, np.nan, dtype)

    def empty_like(self, a):
        return self._xp.full_like(a, np.nan)


@pytest.fixture(autouse=True, scope="module")
def _outputs_start_as_nan():
    real = nbc.array_module()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nbc, "array_module", lambda: _NanFilled(real))
        yield


def _unit(dtype) -> float:
    return float(np.finfo(dtype).eps) / 2


def assert_within(name: str, got, ref, tol) -> None:
    """|got - ref| <= tol elementwise (NaN fails: an element never written)."""
    got, ref = np.asarray(host(got), np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{name}: shape {got.shape}, expected {ref.shape}"
    err = np.abs(got - ref)
    bad = ~(err <= tol)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, np.nan_to_num(err, nan=np.inf), -1)), err.shape)
        pytest.fail(f"{name}: {bad.sum()} of {err.size} elements out of tolerance; worst at {i}: got "
                    f"{got[i]!r}, reference {ref[i]!r}, tolerance {np.broadcast_to(tol, err.shape)[i]!r}")


def _gemm_tol(a, b):
    """2 (K + 2) u (|a| @ |b|): the gap two evaluations of a @ b in a's dtype can have (the + 2
    covers an operand formed on the fly: the bias, or act')."""
    u = _unit(a.dtype)
    a, b = np.abs(np.asarray(a, np.float64)), np.abs(np.asarray(b, np.float64))
    return 2 * (a.shape[1] + 2) * u * (a @ b)


# ------------------------------------------------------------------------------------------------
# linear


def _layer(rng, n, d_in, d_out, dtype):
    x = rng.standard_normal((n, d_in)).astype(dtype)
    W = (rng.standard_normal((d_out, d_in)) / np.sqrt(d_in)).astype(dtype)
    b = rng.standard_normal(d_out).astype(dtype)
    return x, W, b


def _reference_g(dy, pre, act):
    """G = dy * act'(pre), by the reference activation pair."""
    if act is None:
        return dy
    fwd, bwd, _, _ = ACTIVATIONS[act]
    return bwd(dy, fwd(pre)[1])


@pytest.mark.parametrize("act", [None, "relu", "leaky_relu", "elu", "tanh", "sigmoid", "softplus"])
@few(3)  # per activation
@given(n=SIZES, d_in=SIZES, d_out=SIZES, dtype=DTYPES, tiles=st.sampled_from([linear.TILES, SMALL_TILES]),
       need_dx=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_linear_forward_and_backward_match_the_reference(act, n, d_in, d_out, dtype, tiles, need_dx, seed):
    """y, dx, dW, db of the fused tiled GEMMs are the reference's to within the GEMM error bound."""
    rng = np.random.default_rng(seed)
    x, W, b = _layer(rng, n, d_in, d_out, dtype)
    u = _unit(dtype)
    y_ref, cache_ref = NUMPY.linear_forward(x, W, b, act)
    pre_ref, _ = linear_forward(x, W, b)
    pre_tol = _gemm_tol(x, W.T) + 2 * (d_in + 2) * u * np.abs(b)
    y = linear.forward(dev(x), dev(W), dev(b), act, tiles=tiles)
    # every activation is 1-Lipschitz, so the pre-activation's error bounds the output's
    assert_within("y", y, y_ref, pre_tol + 1e-5 * np.abs(y_ref) + 1e-30)

    # The backward from the reference's own output, so a kink (relu at 0) cannot differ.
    dy = rng.standard_normal((n, d_out)).astype(dtype)
    dx_ref, dW_ref, db_ref = NUMPY.linear_backward(dy, cache_ref, need_dx)
    g = np.abs(_reference_g(dy, pre_ref, act))
    dx, dW, db = linear.backward(dev(dy), dev(x), dev(W), None if act is None else dev(y_ref), act,
                                 need_dx=need_dx, tiles=tiles)
    if need_dx:
        assert_within("dx", dx, dx_ref, _gemm_tol(g, W) + 1e-30)
    else:
        assert dx is None
    assert_within("dW", dW, dW_ref, _gemm_tol(g.T, x) + 1e-30)
    assert_within("db", db, db_ref, 2 * (n + 2) * u * g.sum(axis=0) + 1e-30)


# ------------------------------------------------------------------------------------------------
# latent


@few(6)
@given(n=SIZES, d=st.sampled_from([1, 3, 9]), samples=st.integers(1, 2), dtype=DTYPES,
       drawn=st.booleans(), offset=st.sampled_from([0, 3, 2**40 + 1]),
       forward_block=st.sampled_from([latent.FORWARD_BLOCK, 7]),
       backward_block=st.sampled_from([latent.BACKWARD_BLOCK, 33]), grid=st.sampled_from([None, 2]),
       kl_weight=st.sampled_from([0.0, 0.25]), seed=st.integers(0, 2**64 - 1))
def test_latent_forward_and_backward_match_the_reference(n, d, samples, dtype, drawn, offset, forward_block,
                                                         backward_block, grid, kl_weight, seed):
    """z, kl and dh = [dmu | dlogvar] of the fused kernels are the reference's, with eps either given or
    drawn from the Philox stream in the kernel (and regenerated, never stored, in the backward)."""
    rng = np.random.default_rng(seed % 2**32)
    mu = rng.standard_normal((n, d))
    logvar = rng.uniform(-3, 3, (n, d))
    h = np.concatenate([mu, logvar], axis=1).astype(dtype)
    mu, logvar = h[:, :d].astype(np.float64), h[:, d:].astype(np.float64)
    key = (seed, offset) if drawn else None
    eps = philox.normal_eps_like(seed, offset, (samples, n, d), dtype) if drawn else \
        rng.standard_normal((samples, n, d)).astype(dtype)
    given_eps = None if drawn else eps
    u = _unit(dtype)
    tol = EPS_TOL[np.dtype(dtype)] if drawn else {"rtol": 0.0, "atol": 0.0}
    eps_err = tol["atol"] + tol["rtol"] * np.abs(eps)  # the kernel's own normals vs the reference's

    z_ref, kl_ref, cache_ref = NUMPY.latent_forward(h, samples, eps=eps)
    z, kl = latent.forward(dev(h), samples, eps=None if given_eps is None else dev(given_eps), key=key,
                           block=forward_block, grid=grid)
    sd = np.exp(0.5 * logvar)
    # exp, the product and the sum round in both: a few u of each term, twice over
    assert_within("z", z, z_ref, sd * eps_err + 8 * u * (np.abs(mu) + sd * np.abs(eps)) + 1e-30)
    terms = mu * mu + np.abs(np.expm1(logvar)) + np.abs(logvar)
    assert_within("kl", kl, kl_ref, (d + 4) * u * terms.sum(axis=1) + 1e-30)

    dz = rng.standard_normal((samples, n, d)).astype(dtype)
    dh_ref = NUMPY.latent_backward(dz, kl_weight, cache_ref)
    dh = latent.backward(dev(dz), dev(h), kl_weight, eps=None if given_eps is None else dev(given_eps),
                         key=key, block=backward_block, grid=grid)
    adz = np.abs(dz.astype(np.float64))
    dmu_tol = 2 * (samples + 2) * u * (adz.sum(axis=0) + kl_weight * np.abs(mu))
    half_kl = kl_weight * 0.5 * np.abs(np.expm1(logvar))
    dlogvar_tol = 0.5 * sd * (adz * eps_err).sum(axis=0) \
        + 2 * (samples + 4) * u * (0.5 * sd * (adz * np.abs(eps)).sum(axis=0) + half_kl)
    assert_within("dh", dh, dh_ref, np.concatenate([dmu_tol, dlogvar_tol], axis=1) + 1e-30)


# ------------------------------------------------------------------------------------------------
# bernoulli


@few(6)
@given(n=st.sampled_from([1, 5, 17]), dim=SIZES, dtype=DTYPES, grey=st.booleans(),
       block=st.sampled_from([likelihood.BLOCK, 16]), grid=st.sampled_from([None, 3]),
       dlogp=st.sampled_from([-1.0, -1 / 17, 2.5]), seed=st.integers(0, 2**32 - 1))
def test_bernoulli_matches_the_reference(n, dim, dtype, grey, block, grid, dlogp, seed):
    """logp (a row sum: one block reduction per row) and dlogits of one pass, logits as large as
    +-100 included (no overflow in exp)."""
    rng = np.random.default_rng(seed)
    x = (rng.random((n, dim)) if grey else rng.random((n, dim)) < 0.5).astype(dtype)
    logits = rng.normal(0, 4, (n, dim))
    logits[rng.random((n, dim)) < 0.1] = 100.0 * rng.choice([-1, 1])
    logits = logits.astype(dtype)
    logp_ref, dlogits_ref = NUMPY.bernoulli(x, logits, dlogp)
    logp, dlogits = likelihood.bernoulli(dev(x), dev(logits), dlogp, block=block, grid=grid)
    u = _unit(dtype)
    lg, ax = logits.astype(np.float64), x.astype(np.float64)
    terms = np.abs(ax * lg) + np.logaddexp(0, lg)
    assert_within("logp", logp, logp_ref, 2 * (dim + 4) * u * terms.sum(axis=1) + 1e-30)
    sigmoid = 1 / (1 + np.exp(-lg))
    assert_within("dlogits", dlogits, dlogits_ref, 1e-5 * abs(dlogp) * (ax + sigmoid) + 1e-30)


# ------------------------------------------------------------------------------------------------
# adam


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("cls", "weight_decay"), [(Adam, 0.0), (Adam, 0.1), (AdamW, 0.1)])
@pytest.mark.parametrize(("shape", "block", "grid"), [((1,), optim.BLOCK, None), ((5, 33), 32, 2)])
def test_adam_matches_the_reference_optimiser(dtype, cls, weight_decay, shape, block, grid):
    """Three steps of the one-pass kernel track minivae.optim's Adam / AdamW (PyTorch's rule)."""
    rng = np.random.default_rng(0)
    p = rng.standard_normal(shape).astype(dtype)
    p_ref = p.copy()  # the reference updates it in place
    ref = cls({"p": p_ref}, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay)
    p_dev, m, v = dev(p), dev(np.zeros_like(p)), dev(np.zeros_like(p))
    for step in (1, 2, 3):
        g = rng.standard_normal(shape).astype(dtype)
        ref.step({"p": g})
        optim.adam_step(p_dev, dev(g), m, v, step=step, lr=0.01, betas=(0.8, 0.99), eps=1e-6,
                        weight_decay=weight_decay, decoupled=cls is AdamW, block=block, grid=grid)
    state = ref.state_dict()
    for name, got, want in (("p", p_dev, p_ref), ("exp_avg", m, state["exp_avg/p"]),
                            ("exp_avg_sq", v, state["exp_avg_sq/p"])):
        assert_within(name, got, want, 1e-5 * np.abs(want) + 1e-7 * (name == "p"))


# ------------------------------------------------------------------------------------------------
# the whole model


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
    instead of 64 (the tests above hold other blocks and tiles to the reference); on a GPU the
    defaults run."""
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


@pytest.mark.skipif(_cupy_sees_a_gpu(), reason="a GPU is here: the backend is available")
def test_without_simulator_or_gpu_the_backend_is_unavailable():
    code = "from minivae.backends import available; print(available()['numba-cuda'])"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=100)
    assert "no CUDA GPU" in out.stdout, out.stdout + out.stderr


# ------------------------------------------------------------------------------------------------
# launcher checks: each names the argument (a raw kernel would silently misread the memory)


def _f32(*shape):
    return dev(np.zeros(shape, np.float32))


@pytest.mark.parametrize(("call", "match"), [
    (lambda: linear.forward(_f32(2, 3), dev(np.zeros((4, 3))), _f32(4)), "W must be .* float32"),
    (lambda: linear.forward(dev(np.zeros((2, 3), np.float16)), _f32(4, 3), _f32(4)),
     "x must be .*float32 or float64"),
    (lambda: linear.forward(_f32(3, 2).T, _f32(4, 3), _f32(4)), "x must be a C-contiguous"),
    (lambda: linear.forward(_f32(2, 3), _f32(4, 2), _f32(4)), r"W must .* shape \(any, 3\)"),
    (lambda: linear.forward(_f32(2, 3), _f32(4, 3), _f32(5)), r"b must .* shape \(4,\)"),
    (lambda: linear.forward([[0.0]], _f32(1, 1), _f32(1)), "x must be .* got list"),
    (lambda: linear.forward(_f32(2, 3), _f32(4, 3), _f32(4), "gelu"), "act must be"),
    (lambda: linear.forward(_f32(0, 3), _f32(4, 3), _f32(4)), "N must be"),
    (lambda: linear.forward(_f32(2, 3), _f32(4, 3), _f32(4), tiles=linear.Tiles(32, 32, 8, 3, 4)), "tiles"),
    (lambda: linear.backward(_f32(2, 4), _f32(2, 3), _f32(4, 3), None, "relu"), "y must be"),
    (lambda: latent.forward(_f32(2, 3), 1, key=(0, 0)), "even number of columns"),
    (lambda: latent.forward(_f32(2, 4), 1), "exactly one of eps"),
    (lambda: latent.forward(_f32(2, 4), 1, eps=_f32(1, 2, 2), key=(0, 0)), "exactly one of eps"),
    (lambda: latent.forward(_f32(2, 4), 2, eps=_f32(1, 2, 2)), r"eps must .* shape \(2, 2, 2\)"),
    (lambda: latent.forward(_f32(2, 4), 1, key=(0, 2**64 - 3)), "offset"),
    (lambda: latent.forward(_f32(2, 4), 1, key=(-1, 0)), "seed"),
    (lambda: latent.forward(_f32(2, 4), 1, key=(0, 0), block=2048), "block"),
    (lambda: latent.backward(_f32(1, 2, 3), _f32(2, 4), 1.0, key=(0, 0)), r"dz must .* shape \(any, 2, 2\)"),
    (lambda: latent.backward(_f32(1, 2, 2), _f32(2, 4), float("nan"), key=(0, 0)), "kl_weight"),
    (lambda: likelihood.bernoulli(_f32(2, 3), dev(np.zeros((2, 3))), -1.0), "x must be .* float64"),
    (lambda: likelihood.bernoulli(_f32(2, 3), _f32(2, 3), float("inf")), "dlogp"),
    (lambda: optim.adam_step(_f32(3), _f32(4), _f32(3), _f32(3), step=1, lr=0.1), r"grad must .* \(3,\)"),
    (lambda: optim.adam_step(_f32(3), _f32(3), _f32(3), _f32(3), step=0, lr=0.1), "step"),
])
def test_launchers_reject_bad_arguments_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


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
