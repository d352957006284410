"""The latent step (kernels/latent/): reparameterized samples z = mu + exp(logvar / 2) eps and the
KL term in one pass, and their backward, in every variant against ``minivae.latent``.

h = [mu | logvar] is the encoder's head; the noise is given (eps) or drawn in the kernel from the
Philox stream ``key = (seed, offset)`` and regenerated, never stored, in the backward (the CUDA C
kernels always draw it). Every comparison is ``RTOL`` (1e-5 in float32, 1e-12 in float64) of the
summed magnitudes of the terms that make the value, plus, for drawn noise, what the kernel's
normals may differ from the reference's (``philox.EPS_TOLERANCE``) carried through. Outputs start as
NaN (the CUDA C outputs are handed in so; the Numba CUDA launchers allocate so here; the Numba CPU
kernels are run on NaN outputs by ``test_numba_cpu_kernels_write_every_output_element``).
Variants, ids and where they run: tests/kernel_variants.py.
"""

from __future__ import annotations

from kernel_variants import select_simulator

select_simulator()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from kernel_variants import (  # noqa: E402
    DTYPES,
    RTOL,
    TIMEOUT,
    VARIANT_DTYPES,
    assert_close,
    assert_rejects,
    assert_within,
    cuda_c_backend,
    examples,
    f64,
    host,
    kernel_module,
    nan_like,
    numba_cuda_outputs_start_as_nan,  # noqa: F401  (an autouse fixture)
    params,
    to_device,
)

from minivae import latent, philox  # noqa: E402

pytestmark = TIMEOUT
SIZES = st.sampled_from([1, 2, 3, 5, 17, 31, 33, 64, 65])
SEEDS = st.integers(0, 2**32 - 1)
CUDA_C = ("cuda_c", "cupy")


def latent_inputs(seed: int, n: int, d: int, dtype) -> np.ndarray:
    """h = [mu | logvar] (N, 2d): means of three scales, log-variances from -6 to 4."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(n, d)) * rng.choice([0.1, 1, 5])
    logvar = rng.uniform(-6, 4, size=(n, d))
    return np.concatenate([mu, logvar], axis=1).astype(dtype)


def launches(variant: str) -> st.SearchStrategy:
    """A GPU variant's forward and backward launches, block and grid (CUDA C's forward takes whole
    warps only), and for CUDA C whether a single sample's z is 2-D, (N, d); numba_cpu has no knobs."""
    if variant == "numba_cpu":
        return st.just({})
    grids = st.sampled_from([None, 1, 2])
    if variant == "numba_cuda":
        mod = kernel_module("latent", variant)
        forward_blocks, backward_blocks = [mod.FORWARD_BLOCK, 7], [mod.BACKWARD_BLOCK, 33]
        two_d = st.just(False)
    else:
        forward_blocks, backward_blocks, two_d = [32, 64, 96, 128], [1, 17, 32, 100, 256], st.booleans()
    return st.fixed_dictionaries({
        "forward": st.fixed_dictionaries({"block": st.sampled_from(forward_blocks), "grid": grids}),
        "backward": st.fixed_dictionaries({"block": st.sampled_from(backward_blocks), "grid": grids}),
        "two_d": two_d})


def forward(variant: str, h: np.ndarray, samples: int, *, eps=None, key=None, launch=None):
    """(z (L, N, d), kl (N,), what the backward takes) of ``variant``'s forward."""
    launch = launch or {}
    mod = kernel_module("latent", variant)
    if variant == "numba_cpu":
        return mod.latent_forward(h, samples, eps=eps, key=key)
    h_dev = to_device(variant, h)
    if variant == "numba_cuda":
        eps_dev = None if eps is None else to_device(variant, eps)
        z, kl = mod.forward(h_dev, samples, eps=eps_dev, key=key, **launch.get("forward", {}))
        return z, kl, (h_dev, eps_dev, key)
    assert eps is None, "the CUDA C kernels draw their own noise"
    n, d = h.shape[0], h.shape[1] // 2
    mu, logvar = h_dev[:, :d], h_dev[:, d:]  # the halves of h, read in place
    two_d = launch.get("two_d", False) and samples == 1
    z_shape = (n, d) if two_d else (samples, n, d)
    z, kl = mod.forward(mu, logvar, *key, None if two_d else samples, backend=cuda_c_backend(variant),
                        out=(nan_like(variant, z_shape), nan_like(variant, n)), **launch.get("forward", {}))
    assert z.shape == z_shape
    return host(z).reshape(samples, n, d), kl, (mu, logvar, key, two_d)


def backward(variant: str, state, dz: np.ndarray, kl_weight: float, launch=None):
    """dh = [dmu | dlogvar] (N, 2d) of ``variant``'s backward, from its forward's ``state``."""
    launch = launch or {}
    mod = kernel_module("latent", variant)
    if variant == "numba_cpu":
        return mod.latent_backward(dz, kl_weight, state)
    if variant == "numba_cuda":
        h_dev, eps_dev, key = state
        return mod.backward(to_device(variant, dz), h_dev, kl_weight, eps=eps_dev, key=key,
                            **launch.get("backward", {}))
    mu, logvar, key, two_d = state
    n, d = mu.shape
    dmu, dlogvar = mod.backward(to_device(variant, dz[0] if two_d else dz), mu, logvar, *key, kl_weight,
                                backend=cuda_c_backend(variant),
                                out=(nan_like(variant, (n, d)), nan_like(variant, (n, d))),
                                **launch.get("backward", {}))
    return np.concatenate([host(dmu), host(dlogvar)], axis=1)


@pytest.mark.parametrize(("variant", "dtype"), VARIANT_DTYPES)
def test_latent_forward_and_backward_match_the_reference(variant, dtype):
    """z, kl and dh = [dmu | dlogvar] against reparameterize_* and kl_*, eps given or drawn, offsets
    up to 2**40, KL weights of either sign."""

    @examples(variant, n=15)
    @given(n=st.integers(1, 9), d=SIZES, samples=st.integers(1, 3),
           drawn=st.just(True) if variant in CUDA_C else st.booleans(), seed=st.integers(0, 2**64 - 1),
           offset=st.integers(0, 2**40), kl_weight=st.floats(-2, 2), data=st.data(), data_seed=SEEDS)
    def check(n, d, samples, drawn, seed, offset, kl_weight, data, data_seed):
        launch = data.draw(launches(variant), label="launch")
        h = latent_inputs(data_seed, n, d, dtype)
        rng = np.random.default_rng(data_seed + 1)
        shape = (samples, n, d)
        eps = rng.standard_normal(shape).astype(dtype) if not drawn else philox.normal_eps_like(seed, offset,
                                                                                                 shape)
        noise = {"key": (seed, offset)} if drawn else {"eps": eps}
        z, kl, state = forward(variant, h, samples, **noise, launch=launch)
        mu, logvar = f64(h[:, :d]), f64(h[:, d:])
        eps64 = f64(eps)
        tol = philox.EPS_TOLERANCE[np.dtype(dtype).name]
        eps_err = tol["atol"] + tol["rtol"] * np.abs(eps64) if drawn else 0.0  # the kernel's normals
        rtol = RTOL[np.dtype(dtype)]
        z_ref, z_cache = latent.reparameterize_forward(mu, logvar, eps64)
        std = z_cache[0]
        assert_within("z", z, z_ref, rtol * (np.abs(mu) + std * np.abs(eps64)) + std * eps_err + 1e-300)
        kl_scale = 0.5 * np.sum(mu**2 + np.abs(np.expm1(logvar)) + np.abs(logvar), axis=1)
        assert_close("kl", kl, latent.kl_forward(mu, logvar), kl_scale, dtype)

        dz = rng.standard_normal(shape).astype(dtype)
        dh = backward(variant, state, dz, kl_weight, launch)
        dz64 = f64(dz)
        w = float(np.asarray(kl_weight, dtype))  # the kernels take kl_weight in their dtype
        dmu_z, dlv_z = latent.reparameterize_backward(dz64, z_cache)
        dmu_kl, dlv_kl = latent.kl_backward(np.full(n, w), mu, logvar)
        dmu_scale = np.abs(dz64).sum(axis=0) + np.abs(dmu_kl)
        assert_within("dmu", host(dh)[:, :d], dmu_z + dmu_kl, rtol * dmu_scale + 1e-300)
        dlv_scale = 0.5 * std * (np.abs(dz64) * np.abs(eps64)).sum(axis=0) + np.abs(dlv_kl)
        eps_carried = 0.5 * std * (np.abs(dz64) * eps_err).sum(axis=0)
        assert_within("dlogvar", host(dh)[:, d:], dlv_z + dlv_kl, rtol * dlv_scale + eps_carried + 1e-300)

    check()


@pytest.mark.parametrize(("variant", "dtype"), VARIANT_DTYPES)
@pytest.mark.parametrize(("seed", "offset"), [(0, 0), (2**64 - 1, 3), (12345, 2**64 - 4096)])
def test_latent_noise_is_the_philox_stream(variant, dtype, seed, offset):
    """mu = 0, logvar = 0 gives z = eps and kl = 0: 4096 draws cover both halves of the radius's
    branch, offsets at every lane of a Philox group and the very end of the 2**64 stream; float64
    computes the stream's formulas in float64."""
    samples, n, d = 4, 8, 128
    want = philox.normal_eps_like(seed, offset, (samples, n, d))
    z, kl, _ = forward(variant, np.zeros((n, 2 * d), dtype), samples, key=(seed, offset))
    tol = philox.EPS_TOLERANCE[np.dtype(dtype).name]
    assert_within(f"eps ({np.dtype(dtype)})", z, want, tol["atol"] + tol["rtol"] * np.abs(want))
    assert (host(kl) == 0).all()


@pytest.mark.parametrize(("variant", "dtype"), VARIANT_DTYPES)
def test_latent_extreme_log_variances_stay_finite(variant, dtype):
    """logvar +-80, mu +-1e4: KL and every gradient stay finite, KL accurate."""
    lv = np.array([[-80.0, 80.0, 0.0, -80.0]])
    mu = np.array([[1e4, -1e4, 0.0, 1e-30]])
    h = np.concatenate([mu, lv], axis=1).astype(dtype)
    z, kl, state = forward(variant, h, 2, key=(7, 0))
    dh = backward(variant, state, np.ones((2, 1, 4), dtype), 1.0)
    for name, a in (("z", z), ("kl", kl), ("dh", dh)):
        assert np.isfinite(host(a)).all(), f"{name}: {host(a)}"
    want = latent.kl_forward(f64(h[:, :4]), f64(h[:, 4:]))
    assert_close("kl", kl, want, want, dtype)


@pytest.mark.parametrize(("n", "d", "pad"), [(1, 1, 0), (5, 17, 3), (4, 33, 0), (3, 2, 1)])
def test_cuda_c_kernels_read_h_and_write_dh_in_place(n, d, pad):
    """mu and logvar as the two halves of one head h = [mu | logvar | pad] (row stride 2d + pad),
    dmu and dlogvar into the halves of one dh: bitwise what the contiguous launch gives, and the
    padding columns (a sentinel) untouched."""
    latent_cuda = kernel_module("latent", "cuda_c")
    samples, seed, offset, sentinel = 2, 99, 7, -12345.0
    h0 = latent_inputs(n + d + pad, n, d, np.float32)
    mu, logvar = h0[:, :d].copy(), h0[:, d:].copy()
    h = np.full((n, 2 * d + pad), sentinel, np.float32)
    h[:, :d], h[:, d:2 * d] = mu, logvar
    z, kl = latent_cuda.forward(h[:, :d], h[:, d:2 * d], seed, offset, samples)
    z_ref, kl_ref = latent_cuda.forward(mu, logvar, seed, offset, samples)
    np.testing.assert_array_equal(z, z_ref)
    np.testing.assert_array_equal(kl, kl_ref)
    dz = np.random.default_rng(n * d).normal(size=(samples, n, d)).astype(np.float32)
    dh = np.full((n, 2 * d + pad), sentinel, np.float32)
    latent_cuda.backward(dz, h[:, :d], h[:, d:2 * d], seed, offset, 0.3, out=(dh[:, :d], dh[:, d:2 * d]))
    want = latent_cuda.backward(dz, mu, logvar, seed, offset, 0.3)
    np.testing.assert_array_equal(dh[:, :d], want[0])
    np.testing.assert_array_equal(dh[:, d:2 * d], want[1])
    assert (dh[:, 2 * d:] == sentinel).all()


@pytest.mark.parametrize("dtype", DTYPES["numba_cpu"])
def test_numba_cpu_kernels_write_every_output_element(dtype):
    """The launchers allocate with np.empty; here the kernels themselves get outputs preset to NaN,
    the noise the forward draws (kept for the backward) included: an element skipped stays NaN."""
    latent_cpu = kernel_module("latent", "numba_cpu")
    n, d = 17, 5
    h = latent_inputs(3, n, d, dtype)
    z, kl = np.full((2, n, d), np.nan, dtype), np.full(n, np.nan, dtype)
    noise = latent_cpu._noise(h, (2, n, d), None, (7, 11))
    noise[0][...] = np.nan
    latent_cpu._forward(h, *noise, z, kl)
    assert np.isfinite(z).all() and np.isfinite(kl).all() and np.isfinite(noise[0]).all()
    dh = np.full_like(h, np.nan)
    dz = np.random.default_rng(5).standard_normal((2, n, d)).astype(dtype)
    latent_cpu._backward(dz, 0.5, h, noise[0], dh)
    assert np.isfinite(dh).all()


# ---- launcher checks: each names the argument (a raw kernel would silently misread the memory) -----

def _cpu_cache(mod, z):
    return mod.latent_forward(z(2, 4), 1, key=(0, 0))[2]


def _cases_of(variant: str):
    return lambda call, match, id: params(variant, call, match, id=id)


cpu, nbcuda, cuda_c = _cases_of("numba_cpu"), _cases_of("numba_cuda"), _cases_of("cuda_c")
REJECTED = [
    cpu(lambda m, z: m.latent_forward(z(2, 3), 1, key=(0, 0)), r"shape \(N, 2d\)", "odd h"),
    cpu(lambda m, z: m.latent_forward(z(2, 4), 1), "give eps or key", "no noise"),
    cpu(lambda m, z: m.latent_forward(z(2, 4), 0, key=(0, 0)), "n_samples", "0 samples"),
    cpu(lambda m, z: m.latent_forward(z(2, 4), 1, key=(0, 2**64 - 3)), "offset", "offset past the stream"),
    cpu(lambda m, z: m.latent_forward(z(2, 4), 1, key=(-1, 0)), "seed", "seed -1"),
    cpu(lambda m, z: m.latent_forward(z(2, 4), 1, key=7), "pair", "key not a pair"),
    cpu(lambda m, z: m.latent_forward(z(2, 4), 1, eps=z(1, 2, 3)), "eps must have shape", "eps shape"),
    cpu(lambda m, z: m.latent_backward(z(1, 2, 3), 1.0, _cpu_cache(m, z)), "dz must have", "dz shape"),
    nbcuda(lambda m, z: m.forward(z(2, 3), 1, key=(0, 0)), "even number of columns", "odd h"),
    nbcuda(lambda m, z: m.forward(z(2, 4), 1), "exactly one of eps", "no noise"),
    nbcuda(lambda m, z: m.forward(z(2, 4), 1, eps=z(1, 2, 2), key=(0, 0)), "exactly one of eps",
           "eps and key"),
    nbcuda(lambda m, z: m.forward(z(2, 4), 2, eps=z(1, 2, 2)), r"eps must .* shape \(2, 2, 2\)", "eps shape"),
    nbcuda(lambda m, z: m.forward(z(2, 4), 1, key=(0, 2**64 - 3)), "offset", "offset past the stream"),
    nbcuda(lambda m, z: m.forward(z(2, 4), 1, key=(-1, 0)), "seed", "seed -1"),
    nbcuda(lambda m, z: m.forward(z(2, 4), 1, key=(0, 0), block=2048), "block", "block 2048"),
    nbcuda(lambda m, z: m.backward(z(1, 2, 3), z(2, 4), 1.0, key=(0, 0)), r"dz must .* shape \(any, 2, 2\)",
           "dz shape"),
    nbcuda(lambda m, z: m.backward(z(1, 2, 2), z(2, 4), float("nan"), key=(0, 0)), "kl_weight",
           "kl_weight nan"),
    cuda_c(lambda m, z: m.forward(z(2, 3), z(2, 3, dtype=np.float64), 0, 0),
           "logvar must be a float32 numpy array of shape .* adjacent columns", "logvar float64"),
    cuda_c(lambda m, z: m.forward(z(2, 3), z(3, 2), 0, 0), "logvar.*shape", "logvar shape"),
    cuda_c(lambda m, z: m.forward(z(2, 6)[:, ::2], z(2, 3), 0, 0), "mu.*strides", "mu strided"),
    cuda_c(lambda m, z: m.forward(z(2, 3), z(2, 3), 0, 0, block=48), "block must be a multiple of 32",
           "block 48"),
    cuda_c(lambda m, z: m.forward(z(2, 3), z(2, 3), 0, 2**64 - 5), r"offset \+ z.size must be <= 2\*\*64",
           "offset past the stream"),
    cuda_c(lambda m, z: m.forward(z(2, 3), z(2, 3), -1, 0), "seed must be an integer", "seed -1"),
    cuda_c(lambda m, z: m.backward(z(2, 2, 2), z(2, 3), z(2, 3), 0, 0, 1.0),
           r"dz must be .* shape \(any, 2, 3\)", "dz shape"),
    cuda_c(lambda m, z: m.forward(z(2, 3), z(2, 3), 0, 0, out=(z(2, 3), z(3))), r"out\[1\] \(kl\)",
           "out kl shape"),
    cuda_c(lambda m, z: m.forward(z(2, 3), z(2, 3), 0, 0, backend="opencl"), "backend must be one of",
           "backend opencl"),
]


@pytest.mark.parametrize(("variant", "call", "match"), REJECTED)
def test_launchers_reject_bad_arguments_naming_them(variant, call, match):
    assert_rejects("latent", variant, call, match)
