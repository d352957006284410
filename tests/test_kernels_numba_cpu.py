"""The Numba CPU kernels (kernels/*/numba_cpu.py, backend "numba") agree with the NumPy reference.

Every kernel runs on its serial and on its parallel path (each module switches at
``PARALLEL_MIN_ELEMENTS``; the tests move that threshold so small shapes take both), in float32 and
float64, on sizes that are not multiples of anything (1, 17, 129, ...). Outputs the kernels write
into arrays they allocate are compared with a reference in float64 from the same inputs, with
tolerances derived from the unit roundoff u of the kernel's dtype, never tuned:

* linear forward: the GEMM is the same vendor BLAS call as NumPy's; the fused epilogue adds the
  bias and applies the activation: (K + 2) u (|x| @ |W|^T + |b|) for the pre-activation, carried
  through unchanged (every activation is 1-Lipschitz), plus 8 u |y| for the activation's own
  evaluation (the kernels' expm1/log1p/tanh are within a few ulps);
* linear backward: the reference G is formed from the state the kernel's forward kept (so a ReLU
  at a pre-activation within rounding of 0 is judged on the same side), G's float32 error is within
  10 u |dy| s (s >= |act'| the size of the terms act' is made of), and the GEMMs add (K + 10) u;
* latent and Bernoulli ops: 1e-5 relative of the summed magnitudes of the terms in float32 (the
  project's elementwise bound), 1e-12 in float64; Philox normals carry ``philox.EPS_TOLERANCE``;
* Adam: bitwise equal to ``minivae.optim.Adam`` (the kernel runs PyTorch's single-tensor rule in
  the same order without fused multiply-adds, kernels/adam/numba_cpu.py).

Every comparison fails on a NaN or inf, and the kernels are also run on outputs preset to NaN
(``test_every_kernel_writes_every_output_element``): an element a kernel never wrote cannot pass.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

from numba import njit  # noqa: E402
from trajectory import assert_follows_numpy, assert_one_loss_matches_numpy  # noqa: E402

from minivae import latent, optim, philox  # noqa: E402
from minivae.backends import NUMPY, get_backend  # noqa: E402
from minivae.kernels import linear as linear_codes  # noqa: E402
from minivae.kernels.adam import numba_cpu as optim_cpu  # noqa: E402
from minivae.kernels.bernoulli import numba_cpu as likelihood_cpu  # noqa: E402
from minivae.kernels.common import philox_numba  # noqa: E402
from minivae.kernels.latent import numba_cpu as latent_cpu  # noqa: E402
from minivae.kernels.linear import numba_cpu as linear_cpu  # noqa: E402
from minivae.layers import ACTIVATIONS  # noqa: E402
from minivae.likelihoods import Bernoulli  # noqa: E402

ACTS = list(linear_codes.ACT_CODES)
SIZES = st.sampled_from([1, 2, 3, 5, 17, 31, 33, 64, 65, 129])
DTYPES = [np.float32, np.float64]
SEEDS = st.integers(0, 2**32 - 1)
# serial: the threshold above every test shape; parallel: every shape takes the prange path
PATHS = {"serial": 1 << 62, "parallel": 0}
TINY = {np.dtype(np.float32): float(np.finfo(np.float32).tiny), np.dtype(np.float64): 1e-300}
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def unit(dtype) -> float:
    return float(np.finfo(dtype).eps) / 2


def f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float64)


def assert_within(name: str, got, want: np.ndarray, bound) -> None:
    """|got - want| <= bound elementwise, and got all finite."""
    got = f64(got)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    bad = ~np.isfinite(got)
    assert not bad.any(), f"{name}: {bad.sum()} non-finite values, first at {tuple(np.argwhere(bad)[0])}"
    bound = np.broadcast_to(bound, want.shape)
    excess = np.abs(got - want) / (bound + 1e-300)
    worst = np.unravel_index(np.argmax(excess), excess.shape) if excess.size else ()
    assert not excess.size or excess[worst] <= 1, (
        f"{name}: |got - want| = {abs(got[worst] - want[worst]):.3g} at {worst} (got {got[worst]!r}, "
        f"want {want[worst]!r}) exceeds the bound {bound[worst]:.3g}")


def assert_close(name: str, got, want: np.ndarray, scale: np.ndarray, dtype) -> None:
    """|got - want| <= rtol(dtype) * max(scale, the dtype's smallest normal)."""
    dtype = np.dtype(dtype)
    assert_within(name, got, want, RTOL[dtype] * np.maximum(scale, TINY[dtype]))


def test_the_comparisons_fail_on_nan_and_on_error():
    want = np.ones(3)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_within("x", np.array([1, np.nan, 1]), want, want)
    with pytest.raises(AssertionError, match="exceeds"):
        assert_close("x", np.array([1, 1.0001, 1], np.float32), want, want, np.float32)


# The ``path`` fixture only moves a threshold, the same for every example of a test: safe to share.
SHARED_FIXTURE = [HealthCheck.function_scoped_fixture]


@pytest.fixture(params=list(PATHS))
def path(request, monkeypatch):
    """Each kernel on its serial and its parallel path."""
    for module in (linear_cpu, likelihood_cpu, optim_cpu):
        monkeypatch.setattr(module, "PARALLEL_MIN_ELEMENTS", PATHS[request.param])
    monkeypatch.setattr(likelihood_cpu, "F32_PARALLEL_MIN_ELEMENTS", PATHS[request.param])
    return request.param


# ---- linear ----------------------------------------------------------------------------------------

def layer(seed: int, n: int, d_in: int, d_out: int, dtype):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d_in)).astype(dtype)
    W = (rng.standard_normal((d_out, d_in)) * rng.choice([0.3, 1, 3]) / np.sqrt(d_in)).astype(dtype)
    b = rng.standard_normal(d_out).astype(dtype)
    dy = rng.standard_normal((n, d_out)).astype(dtype)
    return x, W, b, dy


def reference_g(dy: np.ndarray, saved: np.ndarray | None, act: str | None) -> np.ndarray:
    """G = dy * act'(.) by the reference activation backward, from the state the kernel kept: the
    output, what minivae.layers' caches hold too."""
    if act is None:
        return dy
    _, bwd, key, default = ACTIVATIONS[act]
    return bwd(dy, saved if key is None else (saved, default))


def size_of_act_grad(saved: np.ndarray, act: str | None) -> np.ndarray:
    """s >= |act'|: the size of the terms act' is computed from."""
    if act == "softplus":  # act' = -expm1(-y): relatively as accurate as an expm1
        return -np.expm1(-saved)
    s = np.abs(saved)
    return {"elu": s + 1, "tanh": 1 + s * s, "sigmoid": s * (1 + s)}.get(act, np.ones_like(s))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
@settings(max_examples=10, suppress_health_check=SHARED_FIXTURE)
@given(n=SIZES, d_in=SIZES, d_out=SIZES, need_dx=st.booleans(), seed=SEEDS)
def test_linear_forward_and_backward_match_the_reference(path, act, dtype, n, d_in, d_out, need_dx, seed):
    u = unit(dtype)
    x, W, b, dy = layer(seed, n, d_in, d_out, dtype)
    y, cache = linear_cpu.linear_forward(x, W, b, act)
    assert y.dtype == dtype and y.shape == (n, d_out)
    want, _ = NUMPY.linear_forward(f64(x), f64(W), f64(b), act)
    pre_bound = (d_in + 2) * u * (np.abs(f64(x)) @ np.abs(f64(W)).T + np.abs(f64(b)))
    assert_within(f"y ({act}, {path})", y, want, pre_bound + 8 * u * np.abs(want) + TINY[np.dtype(dtype)])

    dx, dW, db = linear_cpu.linear_backward(dy, cache, need_dx)
    saved = None if act is None else f64(cache[2])
    g = reference_g(f64(dy), saved, act)
    g_size = np.abs(f64(dy)) * (1 if act is None else size_of_act_grad(saved, act))
    tiny = TINY[np.dtype(dtype)]
    if need_dx:
        assert dx.dtype == dtype
        assert_within("dx", dx, g @ f64(W), (d_out + 10) * u * (g_size @ np.abs(f64(W))) + tiny)
    else:
        assert dx is None
    assert dW.dtype == dtype and db.dtype == dtype
    assert_within("dW", dW, g.T @ f64(x), (n + 10) * u * (g_size.T @ np.abs(f64(x))) + tiny)
    assert_within("db", db, g.sum(axis=0), (n + 10) * u * g_size.sum(axis=0) + tiny)


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "elu", "tanh", "sigmoid", "softplus"])
def test_linear_activation_matches_the_layers_at_extreme_pre_activations(path, act):
    """Pre-activations +-1e4, +-88 (float32's exp range), +-1e-30 and 0: the stable forms hold."""
    v = np.array([-1e4, -88.0, -20.0, -1e-30, 0.0, 1e-30, 20.0, 88.0, 1e4], np.float32)
    x, W, b = np.eye(len(v), dtype=np.float32), np.diag(v), np.zeros(len(v), np.float32)
    y, cache = linear_cpu.linear_forward(x, W, b, act)
    fwd = ACTIVATIONS[act][0]
    want = fwd(f64(v))[0]
    bound = 8 * unit(np.float32) * np.abs(want) + TINY[np.dtype(np.float32)]
    assert_within(f"{act}(v)", np.diag(y), want, bound)
    dy = np.ones_like(y)
    _, _, db = linear_cpu.linear_backward(dy, cache, False)
    assert np.isfinite(db).all(), f"{act}': {db}"


def test_linear_rejects_an_unknown_activation():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="act must be None or one of"):
        linear_cpu.linear_forward(x, np.zeros((4, 3), np.float32), np.zeros(4, np.float32), "gelu")


# ---- latent: reparameterization + KL, eps given or drawn from the Philox stream ---------------------

def latent_inputs(seed: int, n: int, d: int, dtype):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(n, d)) * rng.choice([0.1, 1, 5])
    logvar = rng.uniform(-6, 4, size=(n, d))
    return np.concatenate([mu, logvar], axis=1).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=15)
@given(n=st.integers(1, 9), d=SIZES, samples=st.integers(1, 3), drawn=st.booleans(),
       seed=st.integers(0, 2**64 - 1), offset=st.integers(0, 2**40), kl_weight=st.floats(-2, 2),
       data_seed=SEEDS)
def test_latent_forward_and_backward_match_the_reference(dtype, n, d, samples, drawn, seed, offset, kl_weight,
                                                         data_seed):
    h = latent_inputs(data_seed, n, d, dtype)
    rng = np.random.default_rng(data_seed + 1)
    shape = (samples, n, d)
    eps = philox.normal_eps_like(seed, offset, shape) if drawn else rng.standard_normal(shape)
    noise = {"key": (seed, offset)} if drawn else {"eps": eps.astype(dtype)}
    z, kl, cache = latent_cpu.latent_forward(h, samples, **noise)
    assert z.dtype == dtype and kl.dtype == dtype
    h64 = f64(h)
    mu, logvar = h64[:, :d], h64[:, d:]
    eps64 = eps if drawn else f64(eps.astype(dtype))
    z_ref, z_cache = latent.reparameterize_forward(mu, logvar, eps64)
    std = z_cache[0]
    eps_err = 1 + np.abs(eps64) if drawn and dtype == np.float32 else 0  # the float32 Philox recipe
    eps_scale = philox.EPS_TOLERANCE["float32"]["rtol"] / RTOL[np.dtype(dtype)] * eps_err
    assert_close("z", z, z_ref, np.abs(mu) + std * (np.abs(eps64) + eps_scale), dtype)
    kl_scale = 0.5 * np.sum(mu**2 + np.abs(np.expm1(logvar)) + np.abs(logvar), axis=1)
    assert_close("kl", kl, latent.kl_forward(mu, logvar), kl_scale, dtype)

    dz = rng.standard_normal(shape).astype(dtype)
    dh = latent_cpu.latent_backward(dz, kl_weight, cache)
    assert dh.dtype == dtype and dh.shape == h.shape
    dz64 = f64(dz)
    w = float(np.asarray(kl_weight, dtype))
    dmu_z, dlv_z = latent.reparameterize_backward(dz64, z_cache)
    dmu_kl, dlv_kl = latent.kl_backward(np.full(n, w), mu, logvar)
    sum_abs_dz = np.abs(dz64).sum(axis=0)
    sum_abs_dz_eps = (np.abs(dz64) * (np.abs(eps64) + eps_scale)).sum(axis=0)
    assert_close("dmu", dh[:, :d], dmu_z + dmu_kl, sum_abs_dz + np.abs(dmu_kl), dtype)
    assert_close("dlogvar", dh[:, d:], dlv_z + dlv_kl, 0.5 * std * sum_abs_dz_eps + np.abs(dlv_kl), dtype)


@pytest.mark.parametrize(("seed", "offset"), [(0, 0), (2**64 - 1, 3), (12345, 2**64 - 4096)])
def test_latent_noise_is_the_philox_stream(seed, offset):
    """mu = 0, logvar = 0 gives z = eps: offsets at every lane of a Philox group and the very end of
    the 2**64 stream; float64 computes the stream's formulas in float64."""
    samples, n, d = 4, 8, 128
    want = philox.normal_eps_like(seed, offset, (samples, n, d))
    f64_tol = {"atol": 1e-12, "rtol": 1e-12}
    for dtype, tol in ((np.float32, philox.EPS_TOLERANCE["float32"]), (np.float64, f64_tol)):
        z, kl, _ = latent_cpu.latent_forward(np.zeros((n, 2 * d), dtype), samples, key=(seed, offset))
        assert_within(f"eps ({np.dtype(dtype)})", z, want, tol["atol"] + tol["rtol"] * np.abs(want))
        assert (kl == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_latent_extreme_log_variances_stay_finite(dtype):
    """logvar +-80, mu +-1e4: KL and every gradient stay finite and accurate."""
    lv = np.array([[-80.0, 80.0, 0.0, -80.0]])
    mu = np.array([[1e4, -1e4, 0.0, 1e-30]])
    h = np.concatenate([mu, lv], axis=1).astype(dtype)
    z, kl, cache = latent_cpu.latent_forward(h, 2, key=(7, 0))
    dh = latent_cpu.latent_backward(np.ones_like(z), 1.0, cache)
    assert np.isfinite(z).all() and np.isfinite(kl).all() and np.isfinite(dh).all()
    mu64, lv64 = f64(h[:, :4]), f64(h[:, 4:])
    want = latent.kl_forward(mu64, lv64)
    assert_close("kl", kl, want, want, dtype)


def _adam(**changed):
    """optim_cpu.adam on 3 zeros with sound hyperparameters, ``changed`` replaced."""
    args = {"p": np.zeros(3), "g": np.zeros(3), "m": np.zeros(3), "v": np.zeros(3), "lr": 0.1, "beta1": 0.9,
            "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.0, "decoupled": False, "step": 1} | changed
    return optim_cpu.adam(args.pop("p"), args.pop("g"), args.pop("m"), args.pop("v"), **args)


@pytest.mark.parametrize(("call", "match"), [
    (lambda: latent_cpu.latent_forward(np.zeros((2, 3)), 1, key=(0, 0)), r"shape \(N, 2d\)"),
    (lambda: latent_cpu.latent_forward(np.zeros((2, 4)), 1), "give eps or key"),
    (lambda: latent_cpu.latent_forward(np.zeros((2, 4)), 0, key=(0, 0)), "n_samples"),
    (lambda: latent_cpu.latent_forward(np.zeros((2, 4)), 1, key=(0, 2**64 - 3)), "offset"),
    (lambda: latent_cpu.latent_forward(np.zeros((2, 4)), 1, key=(-1, 0)), "seed"),
    (lambda: latent_cpu.latent_forward(np.zeros((2, 4)), 1, key=7), "pair"),
    (lambda: latent_cpu.latent_forward(np.zeros((2, 4)), 1, eps=np.zeros((1, 2, 3))), r"eps must have shape"),
    (lambda: latent_cpu.latent_backward(np.zeros((1, 2, 3)),
                                        1.0, latent_cpu.latent_forward(np.zeros((2, 4)), 1, key=(0, 0))[2]),
     "dz must have"),
    (lambda: likelihood_cpu.bernoulli(np.zeros((2, 3)), np.zeros((2, 4)), -1.0), "same shape"),
    (lambda: likelihood_cpu.bernoulli(np.zeros((2, 3)), np.zeros((2, 3), np.int64), -1.0),
     "float32 or float64"),
    (lambda: _adam(g=np.zeros(4)), "g must be"),
    (lambda: _adam(step=0), "step"),
    (lambda: _adam(beta1=1.0), r"betas must be in \[0, 1\)"),
    (lambda: _adam(lr=float("nan")), "lr must be"),
    (lambda: _adam(p=np.zeros(3, np.int64)), "p must be"),
    (lambda: _adam(p=np.zeros((3, 2)), g=np.zeros((3, 2)), m=np.zeros((2, 3)).T, v=np.zeros((3, 2))),
     "C-contiguous"),
])
def test_bad_arguments_are_value_errors_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---- Bernoulli likelihood -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=15, suppress_health_check=SHARED_FIXTURE)
@given(n=SIZES, dim=SIZES, grey=st.booleans(), extreme=st.sampled_from([3.0, 30.0, 1e4]),
       dlogp=st.floats(-2, 2), seed=SEEDS)
def test_bernoulli_matches_the_likelihood(path, dtype, n, dim, grey, extreme, dlogp, seed):
    rng = np.random.default_rng(seed)
    x = (rng.random((n, dim)) if grey else (rng.random((n, dim)) < 0.5)).astype(dtype)
    x[:, 0] = 0.0  # the support's edges, always
    x[-1, -1] = 1.0
    logits = (rng.normal(size=(n, dim)) * extreme).astype(dtype)
    logp, dlogits = likelihood_cpu.bernoulli(x, logits, dlogp)
    assert logp.dtype == dtype and dlogits.dtype == dtype
    lik = Bernoulli(dim, dtype=np.float64)
    want, cache = lik.forward(f64(x), f64(logits))
    w = float(np.asarray(dlogp, dtype))
    want_grad, _ = lik.backward(np.full(n, w), cache)
    l64 = np.abs(f64(logits))
    assert_close("logp", logp, want, np.sum(f64(x) * l64 + l64 + np.log(2), axis=1), dtype)
    assert_close("dlogits", dlogits, want_grad, abs(w) * (f64(x) + 1), dtype)


# ---- Adam / AdamW ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW])
@settings(max_examples=10, suppress_health_check=SHARED_FIXTURE)
@given(shape=st.sampled_from([(1,), (17,), (129,), (3, 65), (64, 33)]), steps=st.integers(1, 4),
       weight_decay=st.sampled_from([0.0, 0.1]), lr=st.sampled_from([1e-3, 0.1]),
       betas=st.sampled_from([(0.9, 0.999), (0.3, 0.9), (0.0, 0.5)]), seed=SEEDS)
def test_adam_equals_minivae_optim_bit_for_bit(path, dtype, cls, shape, steps, weight_decay, lr, betas, seed):
    """beta1 = 0.3 takes the other form of PyTorch's lerp (weight >= 0.5); the kernel runs through
    the optimiser's own backend hook, as training does."""
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


# ---- the backend, and the whole model -------------------------------------------------------------

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


def test_linear_backward_refuses_a_dy_of_another_shape():
    x, W, b, dy = layer(0, 4, 3, 5, np.float32)
    _, cache = linear_cpu.linear_forward(x, W, b, "relu")
    with pytest.raises(ValueError, match=r"dy must have the forward output's shape \(4, 5\)"):
        linear_cpu.linear_backward(np.zeros((5, 5), np.float32), cache)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("serial", [True, False])
def test_every_kernel_writes_every_output_element(dtype, serial):
    """The launchers allocate with np.empty; here the kernels themselves get outputs preset to NaN
    (odd sizes, both paths): an element a kernel skipped stays NaN and fails."""
    rng = np.random.default_rng(5)
    n, m, d = 17, 129, 5
    pick = (lambda a, b: a) if serial else (lambda a, b: b)
    y = rng.standard_normal((n, m)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    for act in ACTS:
        code = linear_codes.ACT_CODES[act]
        yy = y.copy()  # the forward works in place: every element must be overwritten by act(y + b)
        pick(linear_cpu._forward_serial, linear_cpu._forward_parallel)(yy, b, code)
        assert np.isfinite(yy).all(), act
        if act is not None:
            g, db = np.full_like(y, np.nan), np.full(m, np.nan, dtype)
            pick(linear_cpu._backward_serial, linear_cpu._backward_parallel)(y, yy, code, g, db)
            assert np.isfinite(g).all() and np.isfinite(db).all(), act
    rows = 2 * likelihood_cpu.ROW_BLOCK + 3  # the parallel float32 kernel: three row blocks, one short
    y_b = rng.standard_normal((rows, m)).astype(dtype)
    x = (rng.random((rows, m)) < 0.5).astype(dtype)
    logp, dlogits = np.full(rows, np.nan, dtype), np.full((rows, m), np.nan, dtype)
    likelihood_cpu.kernel(dtype, not serial)(x, y_b, dtype(-0.5), logp, dlogits)
    assert np.isfinite(logp).all() and np.isfinite(dlogits).all()
    h = latent_inputs(3, n, d, dtype)
    z, kl = np.full((2, n, d), np.nan, dtype), np.full(n, np.nan, dtype)
    noise = latent_cpu._noise(h, (2, n, d), None, (7, 11))
    noise[0][...] = np.nan  # the noise the forward draws, kept for the backward: every entry
    latent_cpu._forward(h, *noise, z, kl)
    assert np.isfinite(z).all() and np.isfinite(kl).all() and np.isfinite(noise[0]).all()
    dh = np.full_like(h, np.nan)
    latent_cpu._backward(rng.standard_normal((2, n, d)).astype(dtype), 0.5, h, noise[0], dh)
    assert np.isfinite(dh).all()


# ---- the vectorised float32 Philox fill (kernels/common/philox_numba.py) -------------------------

@njit
def _philox32_words(c0, c1, k0, k1, out):
    for t in range(c0.size):
        out[t, 0], out[t, 1], out[t, 2], out[t, 3] = philox_numba._philox32(c0[t], c1[t], k0[t], k1[t])


@njit
def _box_muller4_f32(words, out):
    for t in range(words.shape[0]):
        out[t, 0], out[t, 1], out[t, 2], out[t, 3] = philox_numba.box_muller4_f32(
            words[t, 0], words[t, 1], words[t, 2], words[t, 3])


def test_philox_in_uint32_lanes_is_the_uint64_form_bit_for_bit():
    rng = np.random.default_rng(11)
    c0, c1, k0, k1 = (rng.integers(0, 2**32, 2000, dtype=np.uint64).astype(np.uint32) for _ in range(4))
    got = np.empty((2000, 4), np.uint32)
    _philox32_words(c0, c1, k0, k1, got)
    want = philox.philox4x32(np.stack([c0, c1, 0 * c0, 0 * c0], axis=1), np.stack([k0, k1], axis=1))
    np.testing.assert_array_equal(got, want)


def test_float32_box_muller_meets_the_stream_tolerance_on_the_hard_words():
    """Every pairing of the radius words where the recipe branches or u nears 0 or 1 with the angle
    words at each quarter turn (tests/test_philox.py's hard set), plus random words."""
    from test_philox import _hard_words

    words = _hard_words()
    got = np.empty(words.shape, np.float32)
    _box_muller4_f32(words, got)
    want = philox.box_muller4(words)
    assert_within("box-muller", got, want, philox.EPS_TOLERANCE["float32"]["atol"]
                  + philox.EPS_TOLERANCE["float32"]["rtol"] * np.abs(want))


@pytest.mark.parametrize(("seed", "offset"), [(0, 0), (12345, 1), (2**64 - 1, 2), (99, 3),
                                              (7, 4 * (2**32 - 5) + 3),  # the group counter's carry
                                              (5, 2**64 - 1003), (3, 2**64 - 9)])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 9, 1000])
def test_vectorised_float32_fill_is_the_stream(seed, offset, n):
    """Partial groups at either end (every start lane, every length mod 4), the counter's low word
    wrapping into its high word, the stream's last elements."""
    if offset + n > 2**64:
        n = 2**64 - offset
    lo, hi = philox_numba.split_seed(seed)
    out = np.full(n, np.nan, np.float32)
    philox_numba.fill_normals_f32(lo, hi, np.uint64(offset), out)
    want = philox.normal_eps(seed, offset, n)
    tol = philox.EPS_TOLERANCE["float32"]
    assert_within("eps", out, want, tol["atol"] + tol["rtol"] * np.abs(want))


def test_a_float32_stream_element_has_the_same_bits_whatever_range_draws_it():
    """A resumed run or another batch size draws the same element from another start: every start
    lane and length against one long draw, bit for bit."""
    lo, hi = philox_numba.split_seed(2024)
    ref = np.empty(64, np.float32)
    philox_numba.fill_normals_f32(lo, hi, np.uint64(1000), ref)
    for start in range(9):
        for n in range(0, 14):
            out = np.full(n, np.nan, np.float32)
            philox_numba.fill_normals_f32(lo, hi, np.uint64(1000 + start), out)
            np.testing.assert_array_equal(out, ref[start:start + n])


def test_adam_takes_hyperparameters_as_python_floats_of_any_numeric_type():
    """np.float32(0.5), 0.5 and a 0-d array give the same step (optim.Adam's double-precision
    scalars), whichever came first: the cached scalars are keyed by value as a Python float."""
    results = []
    for lr in (np.float32(0.5), 0.5, np.array(0.5)):
        p, g = np.ones(5), np.linspace(-1, 1, 5)
        m, v = np.zeros(5), np.zeros(5)
        optim_cpu.adam(p, g, m, v, lr=lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                       decoupled=False, step=3)
        results.append(p)
    want = {"w": np.ones(5)}
    opt = optim.Adam(want, lr=0.5)
    opt._step = 2
    opt.step({"w": np.linspace(-1, 1, 5)})
    for got in results:
        np.testing.assert_array_equal(got, want["w"])
