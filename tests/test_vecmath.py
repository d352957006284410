"""The vectorisable float32 functions of kernels/common/vecmath.py against float64 references, in ulps.

The grids are dense (every exponent, every region where a branch or the range reduction changes)
plus random values; the extremes are spelled out: 0, -0, the smallest subnormal results, the point
where e^y rounds to 0, -inf and NaN. An error is measured in ulps of the float32 result nearest to
the float64 reference (``np.spacing``), so subnormal results are judged on their own, coarser grid.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")
from numba import njit  # noqa: E402

from minivae.kernels.common import vecmath  # noqa: E402

F32 = np.float32


@njit(error_model="numpy", fastmath={"contract"})
def _exp(y, out):
    for j in range(y.size):
        out[j] = vecmath.exp_f32(y[j])


@njit(error_model="numpy", fastmath={"contract"})
def _log1p(a, out):
    for j in range(a.size):
        out[j] = vecmath.log1p_unit(a[j])


@njit(error_model="numpy", fastmath={"contract"})
def _softplus_sigmoid(v, sp, sg):
    for j in range(v.size):
        sp[j], sg[j] = vecmath.softplus_sigmoid_f32(v[j])


def run(kernel, *args):
    outs = [np.full_like(args[0], np.nan) for _ in range(kernel.__code__.co_argcount - len(args))]
    kernel(*args, *outs)
    return outs


def ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|got - want| in ulps of the float32 nearest to want (exact agreement, inf included: 0)."""
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf where both are inf: agreement
        unit = np.spacing(np.abs(want).astype(F32)).astype(np.float64)
        diff = np.abs(got.astype(np.float64) - want)
    return np.where(got.astype(np.float64) == want, 0.0, diff / unit)


def exp_arguments(rng) -> np.ndarray:
    return np.concatenate([
        -np.linspace(0, 110, 400_001, dtype=F32),               # every region, normal to zero
        -np.linspace(86, 105, 40_001, dtype=F32),               # the subnormal results
        -rng.exponential(5, 200_000).astype(F32),
        -(F32(2.0) ** -np.arange(0, 150, dtype=F32)),           # tiny arguments: e^y = 1 - ...
        np.array([0.0, -0.0, -5.8752837, -87.33654, -88.72284, -103.27893, -103.972, -104.0, -149.9,
                  -150.0, -151.0, -1e30, -np.finfo(F32).max], F32)])


def test_exp_is_within_1_01_ulps_everywhere_on_its_domain():
    y = exp_arguments(np.random.default_rng(0))
    (got,) = run(_exp, y)
    want = np.exp(y.astype(np.float64))
    err = ulps(got, want)
    assert err.max() <= 1.01, (y[err.argmax()], got[err.argmax()], want[err.argmax()])
    assert np.all(got >= 0) and np.all(got <= 1)


def test_exp_extremes_are_exact():
    y = np.array([0.0, -0.0, -np.inf, np.nan, -200.0, -104.0], F32)
    (got,) = run(_exp, y)
    assert got[0] == 1 and got[1] == 1
    assert got[2] == 0 and got[4] == 0 and got[5] == 0   # below the smallest subnormal: 0, as libm
    assert np.isnan(got[3])


def test_log1p_is_within_three_ulps_from_minus_one_half_to_one():
    rng = np.random.default_rng(1)
    a = np.concatenate([np.linspace(-0.5, 1, 600_001, dtype=F32),
                        -(F32(10) ** -rng.uniform(0.302, 44, 100_000)).astype(F32),
                        (F32(10) ** -rng.uniform(0, 44, 200_000)).astype(F32),
                        np.array([0.0, np.finfo(F32).tiny, 1.4e-45, 1e-38, 0.5, 1.0], F32)])
    (got,) = run(_log1p, a)
    want = np.log1p(a.astype(np.float64))
    err = ulps(got, want)
    assert err.max() <= 3.0, (a[err.argmax()], got[err.argmax()], want[err.argmax()])
    zeros = run(_log1p, np.array([0.0, -0.0], F32))[0]
    assert zeros[0] == 0 and not np.signbit(zeros[0]) and np.signbit(zeros[1])  # +-0 kept, as libm


def reference_softplus_sigmoid(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = v.astype(np.float64)
    return np.logaddexp(0.0, v), np.exp(-np.logaddexp(0.0, -v))


@settings(max_examples=30, deadline=None)
@given(scale=st.sampled_from([1e-30, 1e-3, 1.0, 10.0, 100.0, 1e4, 1e38]), seed=st.integers(0, 2**32 - 1))
def test_softplus_within_four_ulps_and_sigmoid_within_three(scale, seed):
    rng = np.random.default_rng(seed)
    v = np.clip(rng.standard_normal(5000) * scale, -3e38, 3e38).astype(F32)
    v[:4] = [0.0, -0.0, np.finfo(F32).max, -np.finfo(F32).max]
    sp, sg = run(_softplus_sigmoid, v)
    want_sp, want_sg = reference_softplus_sigmoid(v)
    # softplus(v < 0) = log1p(e^v): exp's 1 ulp carried through log1p's 3
    for name, got, want, bound in (("softplus", sp, want_sp, 4.0), ("sigmoid", sg, want_sg, 3.0)):
        err = ulps(got, want)
        assert err.max() <= bound, (name, v[err.argmax()], got[err.argmax()], want[err.argmax()])


def test_softplus_and_sigmoid_on_a_dense_grid_and_at_the_extremes():
    v = np.concatenate([np.linspace(-120, 120, 480_001, dtype=F32),
                        np.array([np.inf, -np.inf], F32)])
    sp, sg = run(_softplus_sigmoid, v)
    want_sp, want_sg = reference_softplus_sigmoid(v)
    assert ulps(sp, want_sp).max() <= 4.0 and ulps(sg, want_sg).max() <= 3.0
    assert sp[-2] == np.inf and sg[-2] == 1 and sp[-1] == 0 and sg[-1] == 0
    nan_sp, nan_sg = run(_softplus_sigmoid, np.array([np.nan], F32))
    assert np.isnan(nan_sp[0]) and np.isnan(nan_sg[0])  # a NaN logit is never hidden


def test_sum_f64_accumulates_in_float64():
    a = np.full(1 << 20, F32(0.1))
    a[0] = F32(1e8)  # float32 accumulation would drop every 0.1 after this one
    got = vecmath.sum_f64(a)
    # any float64 summation order is within n u of the sum; a float32 accumulator running from 1e8
    # drops every 0.1 (half an ulp of 1e8 is 4) and ends 1e5 short
    assert got == pytest.approx(float(np.sum(a, dtype=np.float64)), rel=a.size * 2.0**-53)
    assert got - 1e8 == pytest.approx(float(F32(0.1)) * (a.size - 1), abs=1.0)
    assert vecmath.sum_f64(np.zeros(0, F32)) == 0.0


def test_bits_to_float32_is_a_bit_cast():
    @njit
    def cast(bits, out):
        for j in range(bits.size):
            out[j] = vecmath.bits_to_float32(bits[j])

    bits = np.array([0, 1, 0x3F800000, 0x7F800000, -0x80000000, 0x00800000], np.int32)
    out = np.empty(bits.size, F32)
    cast(bits, out)
    np.testing.assert_array_equal(out.view(np.int32), bits)


@njit(error_model="numpy", fastmath={"contract"})
def _expm1(y, out):
    for j in range(y.size):
        out[j] = vecmath.expm1_f32(y[j])


@njit(error_model="numpy", fastmath={"contract"})
def _log(x, out):
    for j in range(x.size):
        out[j] = vecmath.log_f32(x[j])


@njit(error_model="numpy", fastmath={"contract"})
def _sincos(u, s, c):
    for j in range(u.size):
        s[j], c[j] = vecmath.sincos_2pi(u[j])


@njit(error_model="numpy", fastmath={"contract"})
def _generic(y, e, m):
    for j in range(y.size):
        e[j], m[j] = vecmath.exp(y[j]), vecmath.expm1(y[j])


def test_exp_on_positive_arguments_and_overflow():
    y = np.concatenate([np.linspace(0, 88.72, 400_001, dtype=F32),
                        np.array([26.7169, 88.7228, 88.7229, 89.0, 100.0, np.inf], F32)])
    (got,) = run(_exp, y)
    want = np.exp(y.astype(np.float64))
    fits = want <= np.finfo(F32).max
    assert ulps(got[fits], want[fits]).max() <= 1.01
    assert np.all(got[~fits] == np.inf)  # overflow: inf, as libm


def test_expm1_is_within_two_ulps_and_exact_in_its_limits():
    rng = np.random.default_rng(2)
    y = np.concatenate([np.linspace(-110, 88.7, 800_001, dtype=F32),
                        np.linspace(-1, 1, 200_001, dtype=F32),
                        (rng.choice([-1, 1], 100_000) * F32(10) ** -rng.uniform(0, 40, 100_000)).astype(F32),
                        np.array([0.0, -0.0, 1e-30, -1e-30, 0.34657, -0.34657, 44.7, 44.8, 88.5], F32)])
    (got,) = run(_expm1, y)
    want = np.expm1(y.astype(np.float64))
    err = ulps(got, want)
    assert err.max() <= 2.0, (y[err.argmax()], got[err.argmax()], want[err.argmax()])
    ext = np.array([np.inf, -np.inf, np.nan, 100.0, -200.0, 0.0, -0.0], F32)
    (got,) = run(_expm1, ext)
    assert got[0] == np.inf and got[1] == -1 and np.isnan(got[2]) and got[3] == np.inf and got[4] == -1
    assert got[5] == 0 and not np.signbit(got[5]) and np.signbit(got[6])  # +-0 kept, as libm


def test_log_is_within_three_ulps_over_the_normal_floats():
    rng = np.random.default_rng(4)
    x = np.concatenate([np.linspace(0.25, 4, 400_001, dtype=F32),                 # around 1: cancellation
                        (F32(2) ** rng.uniform(-126, 128, 300_000)).astype(F32),   # every exponent
                        np.array([np.finfo(F32).tiny, np.finfo(F32).max, 1.0, 0.5, 2.0,
                                  np.sqrt(F32(2)), np.nextafter(np.sqrt(F32(2)), F32(2))], F32)])
    x = x[np.isfinite(x) & (x >= np.finfo(F32).tiny)]
    (got,) = run(_log, x)
    want = np.log(x.astype(np.float64))
    err = ulps(got, want)
    assert err.max() <= 3.0, (x[err.argmax()], got[err.argmax()], want[err.argmax()])  # log1p's 3
    assert got[x == 1].max() == 0


def test_sincos_of_a_turn_fraction_is_within_2e_7():
    rng = np.random.default_rng(6)
    u = np.concatenate([np.linspace(0, 1, 1_000_001, dtype=F32), rng.random(200_000).astype(F32),
                        np.array([0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0,
                                  2.0**-33, 1 - 2.0**-24], F32)])
    s, c = run(_sincos, u)
    theta = 2 * np.pi * u.astype(np.float64)
    assert np.abs(s - np.sin(theta)).max() <= 2e-7 and np.abs(c - np.cos(theta)).max() <= 2e-7
    quarter = u[-11:-2]  # exact quarter turns and eighths: the signs and swaps of every quadrant
    sq, cq = run(_sincos, quarter)
    np.testing.assert_allclose(sq, np.sin(2 * np.pi * quarter.astype(np.float64)), atol=1e-7)
    np.testing.assert_allclose(cq, np.cos(2 * np.pi * quarter.astype(np.float64)), atol=1e-7)


def test_generic_exp_and_expm1_pick_the_form_by_dtype():
    y32 = np.array([-3.0, 1e-6, 5.0], F32)
    e32, m32 = run(_generic, y32)
    np.testing.assert_array_equal(e32, run(_exp, y32)[0])
    np.testing.assert_array_equal(m32, run(_expm1, y32)[0])
    y64 = np.array([-3.0, 1e-12, 5.0])
    e64, m64 = run(_generic, y64)
    np.testing.assert_array_equal(e64, np.exp(y64))  # libm: correctly rounded here
    np.testing.assert_allclose(m64, np.expm1(y64), rtol=1e-15)
