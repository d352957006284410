"""The CUDA C kernels of the latent step, the Bernoulli likelihood and Adam, run unchanged on the CPU
emulator and checked against minivae's NumPy reference, tails and odd sizes included.

Tolerances (never bitwise: nvcc contracts multiply-adds into fma, and libdevice's expf, logf, ...
differ from glibc's by ulps). Every comparison is ``|kernel - reference| <= RTOL * scale`` elementwise,
with the reference in float64 from the same float32 inputs and ``scale`` the sum of the magnitudes of
the terms that make the value (so a cancellation, e.g. mu = -std eps, does not demand digits that
float32 cannot hold):

* elementwise outputs: RTOL = 1e-5, the project's float32 bound;
* reductions (KL and log-likelihood per row, sums over d <= a few hundred): also 1e-5 of the summed
  magnitudes; a tree sum's error is ~(log2 d + 2) * 6e-8 of that, so a GPU's other order has ~20x room;
* eps itself: minivae.philox.EPS_TOLERANCE (atol = rtol = 1e-5), which the terms that multiply eps
  inherit.

Outputs are preset to NaN and every comparison fails on a NaN or inf, so a kernel that skips an
element (a tail, a row) fails. Shapes stay small: the emulator spends ~1 us per thread per barrier.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minivae import latent, optim, philox
from minivae.kernels.adam import cuda_c as optim_cuda
from minivae.kernels.bernoulli import cuda_c as likelihood_cuda
from minivae.kernels.latent import cuda_c as latent_cuda
from minivae.kernels.wiring import emulate
from minivae.likelihoods import Bernoulli

pytestmark = pytest.mark.skipif(
    emulate.compiler() is None,
    reason=f"the CUDA emulator needs a C++20 compiler ({emulate.CXX} not on PATH)")

RTOL = 1e-5
EPS_TOL = philox.EPS_TOLERANCE["float32"]
# Sizes around the block and warp sizes, and primes: the tails a kernel must guard.
SIZES = st.sampled_from([1, 2, 3, 5, 17, 31, 32, 33, 63, 64, 65, 100, 129])
SEEDS = st.integers(0, 2**64 - 1)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32, 1.2e-38


def assert_close(name: str, got: np.ndarray, want: np.ndarray, scale: np.ndarray, rtol: float = RTOL) -> None:
    """|got - want| <= rtol * max(scale, float32's smallest normal) everywhere, and got all finite
    (NaN-preset outputs stay NaN)."""
    got64 = np.asarray(got, np.float64)
    assert got64.shape == want.shape, f"{name}: shape {got64.shape}, expected {want.shape}"
    bad = ~np.isfinite(got64)
    assert not bad.any(), f"{name}: {bad.sum()} non-finite values, first at {np.argwhere(bad)[0]}"
    # Relative precision ends where float32's normal range does: below it, compare absolutely.
    excess = np.abs(got64 - want) / (rtol * np.maximum(scale, FLOAT32_TINY))
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert excess[worst] <= 1, (
        f"{name}: |got - want| = {abs(got64[worst] - want[worst]):.3g} at {worst} (got {got64[worst]!r}, "
        f"want {want[worst]!r}) exceeds {rtol} * {scale[worst]:.3g}")


def nan(shape) -> np.ndarray:
    return np.full(shape, np.nan, np.float32)


def test_the_comparison_fails_on_nan_and_on_error():
    want = np.ones(3)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close("x", np.array([1, np.nan, 1], np.float32), want, want)
    with pytest.raises(AssertionError, match="exceeds"):
        assert_close("x", np.array([1, 1.0001, 1], np.float32), want, want)


def latent_inputs(seed: int, n: int, d: int):
    rng = np.random.default_rng(seed)
    mu = (rng.normal(size=(n, d)) * rng.choice([0.1, 1, 5])).astype(np.float32)
    logvar = rng.uniform(-6, 4, size=(n, d)).astype(np.float32)
    return mu, logvar


# ---- latent: reparameterization + KL ---------------------------------------------------------------

@given(n=st.integers(1, 6), d=SIZES, samples=st.sampled_from([None, 1, 2, 3]), seed=SEEDS,
       offset=st.integers(0, 2**40), block=st.sampled_from([32, 64, 96, 128]),
       grid=st.sampled_from([None, 1, 2]), data_seed=st.integers(0, 2**32 - 1))
def test_latent_forward_matches_reparameterize_and_kl(n, d, samples, seed, offset, block, grid, data_seed):
    mu, logvar = latent_inputs(data_seed, n, d)
    shape = (n, d) if samples is None else (samples, n, d)
    z, kl = latent_cuda.forward(mu, logvar, seed, offset, samples, block=block, grid=grid,
                                out=(nan(shape), nan(n)))
    mu64, lv64 = mu.astype(np.float64), logvar.astype(np.float64)
    eps = philox.normal_eps_like(seed, offset, shape)
    z_ref, (std, _) = latent.reparameterize_forward(mu64, lv64, eps)
    z_scale = np.abs(mu64) + std * (1 + np.abs(eps))  # eps itself is within 1e-5 (1 + |eps|)
    assert_close("z", z, z_ref, z_scale)
    kl_scale = 0.5 * np.sum(mu64**2 + np.abs(np.expm1(lv64)) + np.abs(lv64), axis=1)
    assert_close("kl", kl, latent.kl_forward(mu64, lv64), kl_scale)


@pytest.mark.parametrize("seed, offset", [(0, 0), (2**64 - 1, 3), (12345, 2**64 - 4096)])
def test_latent_eps_is_the_philox_stream(seed, offset):
    """mu = 0, logvar = 0 gives z = eps: 4096 draws cover both halves of the radius's branch, offsets
    at every lane of a Philox group and the very end of the 2**64 stream."""
    samples, n, d = 4, 8, 128
    zeros = np.zeros((n, d), np.float32)
    z, _ = latent_cuda.forward(zeros, zeros, seed, offset, samples, out=(nan((samples, n, d)), nan(n)))
    eps = philox.normal_eps_like(seed, offset, (samples, n, d))
    assert_close("eps", z, eps, EPS_TOL["atol"] / RTOL + EPS_TOL["rtol"] / RTOL * np.abs(eps))


@given(n=st.integers(1, 6), d=SIZES, samples=st.sampled_from([None, 1, 2, 3]), seed=SEEDS,
       offset=st.integers(0, 2**40), block=st.sampled_from([1, 17, 32, 100, 256]),
       grid=st.sampled_from([None, 1, 3]), kl_weight=st.floats(-2, 2), data_seed=st.integers(0, 2**32 - 1))
def test_latent_backward_matches_the_reference_backward(n, d, samples, seed, offset, block, grid, kl_weight,
                                                        data_seed):
    mu, logvar = latent_inputs(data_seed, n, d)
    shape = (n, d) if samples is None else (samples, n, d)
    dz = np.random.default_rng(data_seed + 1).normal(size=shape).astype(np.float32)
    dmu, dlogvar = latent_cuda.backward(dz, mu, logvar, seed, offset, kl_weight, block=block, grid=grid,
                                        out=(nan((n, d)), nan((n, d))))
    mu64, lv64, dz64 = mu.astype(np.float64), logvar.astype(np.float64), dz.astype(np.float64)
    eps = philox.normal_eps_like(seed, offset, shape)
    _, cache = latent.reparameterize_forward(mu64, lv64, eps)
    dmu_z, dlv_z = latent.reparameterize_backward(dz64, cache)
    w = np.float32(kl_weight).astype(np.float64)
    dmu_kl, dlv_kl = latent.kl_backward(np.full(n, w), mu64, lv64)
    per_sample = (np.abs(dz64), np.abs(dz64) * (1 + np.abs(eps)))
    sum_abs_dz, sum_abs_dz_eps = (a if samples is None else a.sum(axis=0) for a in per_sample)
    assert_close("dmu", dmu, dmu_z + dmu_kl, sum_abs_dz + np.abs(dmu_kl))
    assert_close("dlogvar", dlogvar, dlv_z + dlv_kl, 0.5 * cache[0] * sum_abs_dz_eps + np.abs(dlv_kl))


@pytest.mark.parametrize(("n", "d", "pad"), [(1, 1, 0), (5, 17, 3), (4, 33, 0), (3, 2, 1)])
def test_latent_kernels_read_h_and_write_dh_in_place(n, d, pad):
    """mu and logvar as the two halves of one head h = [mu | logvar | pad] (row stride 2d + pad),
    dmu and dlogvar into the halves of one dh: bitwise what the contiguous launch gives, and the
    padding columns (a sentinel) untouched."""
    samples, seed, offset, sentinel = 2, 99, 7, -12345.0
    mu, logvar = latent_inputs(n + d + pad, n, d)
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


def test_latent_launchers_check_their_arguments():
    mu = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="logvar must be a float32 numpy array of shape .* adjacent columns"):
        latent_cuda.forward(mu, mu.astype(np.float64), 0, 0)
    with pytest.raises(ValueError, match="logvar.*shape"):
        latent_cuda.forward(mu, np.zeros((3, 2), np.float32), 0, 0)
    with pytest.raises(ValueError, match="mu.*strides"):
        latent_cuda.forward(np.zeros((2, 6), np.float32)[:, ::2], mu, 0, 0)
    with pytest.raises(ValueError, match="block must be a multiple of 32"):
        latent_cuda.forward(mu, mu, 0, 0, block=48)
    with pytest.raises(ValueError, match="offset \\+ z.size must be <= 2\\*\\*64"):
        latent_cuda.forward(mu, mu, 0, 2**64 - 5)
    with pytest.raises(ValueError, match="seed must be an integer"):
        latent_cuda.forward(mu, mu, -1, 0)
    with pytest.raises(ValueError, match="dz must be .* shape \\(any, 2, 3\\)"):
        latent_cuda.backward(np.zeros((2, 2, 2), np.float32), mu, mu, 0, 0, 1.0)
    with pytest.raises(ValueError, match="out\\[1\\] \\(kl\\)"):
        latent_cuda.forward(mu, mu, 0, 0, out=(nan((2, 3)), nan(3)))
    with pytest.raises(ValueError, match="backend must be one of"):
        latent_cuda.forward(mu, mu, 0, 0, backend="opencl")


# ---- Bernoulli likelihood ---------------------------------------------------------------------------

@given(n=st.integers(1, 6), d=SIZES, grey=st.booleans(), extreme=st.sampled_from([3.0, 30.0, 100.0]),
       dlogp=st.floats(-2, 2), block=st.sampled_from([32, 64, 128, 160]), grid=st.sampled_from([None, 1, 2]),
       data_seed=st.integers(0, 2**32 - 1))
def test_bernoulli_matches_the_likelihood_forward_and_backward(n, d, grey, extreme, dlogp, block, grid,
                                                               data_seed):
    rng = np.random.default_rng(data_seed)
    x = (rng.random((n, d)) if grey else rng.random((n, d)) < 0.5).astype(np.float32)
    logits = rng.normal(0, 3, (n, d))
    logits[rng.random((n, d)) < 0.2] = extreme * rng.choice([-1.0, 1.0])
    logits = logits.astype(np.float32)
    logp, dlogits = likelihood_cuda.bernoulli_forward_backward(x, logits, dlogp, block=block, grid=grid,
                                                               out=(nan(n), nan((n, d))))
    lik = Bernoulli(d)
    x64, l64 = x.astype(np.float64), logits.astype(np.float64)
    logp_ref, cache = lik.forward(x64, l64)
    dlogits_ref, _ = lik.backward(np.full(n, np.float32(dlogp), np.float64), cache)
    softplus = np.maximum(l64, 0) + np.log1p(np.exp(-np.abs(l64)))
    assert_close("logp", logp, logp_ref, np.sum(np.abs(x64 * l64) + softplus, axis=1))
    sigmoid = 1 / (1 + np.exp(-l64))
    assert_close("dlogits", dlogits, dlogits_ref, abs(np.float32(dlogp)) * (x64 + sigmoid))


def test_bernoulli_launcher_checks_its_arguments():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="x must be .* shape \\(2, 3\\)"):
        likelihood_cuda.bernoulli_forward_backward(np.zeros((3, 2), np.float32), x, -1.0)
    with pytest.raises(ValueError, match="logits must be .*float32"):
        likelihood_cuda.bernoulli_forward_backward(x, x.astype(np.float16), -1.0)
    with pytest.raises(ValueError, match="dlogp must be a finite number"):
        likelihood_cuda.bernoulli_forward_backward(x, x, float("nan"))


# ---- Adam / AdamW ---------------------------------------------------------------------------------

@given(size=SIZES, steps=st.integers(1, 3), decoupled=st.booleans(), weight_decay=st.sampled_from([0.0, 0.1]),
       lr=st.sampled_from([1e-3, 0.1]), beta1=st.sampled_from([0.0, 0.3, 0.9]),
       beta2=st.sampled_from([0.9, 0.999]), block=st.sampled_from([1, 17, 32, 50, 256]),
       grid=st.sampled_from([None, 1, 2]), data_seed=st.integers(0, 2**32 - 1))
def test_adam_step_matches_minivae_optim(size, steps, decoupled, weight_decay, lr, beta1, beta2, block, grid,
                                         data_seed):
    """beta1 = 0.3 takes the other form of PyTorch's lerp (weight >= 0.5)."""
    rng = np.random.default_rng(data_seed)
    p = rng.normal(size=size).astype(np.float32)
    ref_p = p.copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    cls = optim.AdamW if decoupled else optim.Adam
    ref = cls({"p": ref_p}, lr=lr, betas=(beta1, beta2), weight_decay=weight_decay)
    for step in range(1, steps + 1):
        g = (rng.normal(size=size) * rng.choice([1e-3, 1, 100])).astype(np.float32)
        before = ref_p.astype(np.float64)
        ref.step({"p": g})
        optim_cuda.adam_step(p, g, m, v, step=step, lr=lr, betas=(beta1, beta2), weight_decay=weight_decay,
                             decoupled=decoupled, block=block, grid=grid)
        state = ref.state_dict()
        g64 = np.abs(g.astype(np.float64)) + weight_decay * np.abs(before)
        assert_close(f"exp_avg at step {step}", m, state["exp_avg/p"].astype(np.float64),
                     np.abs(state["exp_avg/p"]) + g64)
        assert_close(f"exp_avg_sq at step {step}", v, state["exp_avg_sq/p"].astype(np.float64),
                     np.abs(state["exp_avg_sq/p"]) + g64**2)
        assert_close(f"param at step {step}", p, ref_p.astype(np.float64),
                     np.abs(before) + np.abs(ref_p - before))


def test_adam_step_with_the_largest_block_and_a_two_dimensional_parameter():
    rng = np.random.default_rng(3)
    p = rng.normal(size=(3, 500)).astype(np.float32)
    ref_p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    g = rng.normal(size=(3, 500)).astype(np.float32)
    optim.Adam({"p": ref_p}, lr=0.01).step({"p": g})
    optim_cuda.adam_step(p, g, m, v, step=1, lr=0.01, block=1024)
    assert_close("param", p, ref_p.astype(np.float64), np.abs(ref_p) + 0.01)


def test_adam_launcher_checks_its_arguments():
    p = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="exp_avg_sq must be .* shape \\(4,\\)"):
        optim_cuda.adam_step(p, p.copy(), p.copy(), np.zeros(5, np.float32), step=1, lr=0.1)
    with pytest.raises(ValueError, match="grad must be .*float32"):
        optim_cuda.adam_step(p, p.astype(np.float64), p.copy(), p.copy(), step=1, lr=0.1)
    with pytest.raises(ValueError, match="step must be an integer in \\[1,"):
        optim_cuda.adam_step(p, p.copy(), p.copy(), p.copy(), step=0, lr=0.1)
    with pytest.raises(ValueError, match="block must be an integer in \\[1, 1024\\]"):
        optim_cuda.adam_step(p, p.copy(), p.copy(), p.copy(), step=1, lr=0.1, block=2048)
    with pytest.raises(ValueError, match="betas must be in \\[0, 1\\)"):
        optim_cuda.adam_step(p, p.copy(), p.copy(), p.copy(), step=1, lr=0.1, betas=(1.0, 0.9))
