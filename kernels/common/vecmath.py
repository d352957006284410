"""Float32 exp, expm1, log, log1p, sin/cos, softplus and sigmoid that LLVM can vectorise.

The Numba CPU kernels' fast path for float32 arrays.

Why: Numba lowers ``math.exp``/``math.log`` on float32 to calls into the scalar libm (the PyPI
llvmlite has no SVML vector library), and a loop that calls a function is not vectorised: the
Bernoulli pass spent ~10 ns an element there, 13-19 % of a training step on 2 cores. The functions
below are straight-line arithmetic (multiplies, adds, one division, ``floor``, compares and a bit
cast), so a loop over them compiles to 8-lane AVX2 code.

The formulas, for float32 arguments (float64 kernels keep libm: they are the accurate path; the
generic ``exp``/``expm1`` below pick the form by the argument's type when Numba compiles them):

exp(y) (Cody & Waite range reduction, Cephes ``expf`` polynomial):
    n = floor(y log2(e) + 1/2), r = (y - n c1) - n c2 with c1 + c2 = ln 2 (c1 has 9 significant
    bits, so n c1 is exact for |n| < 2**15 and the first subtraction is exact: Sterbenz), |r| <= ln2/2;
    e^r = 1 + r + r^2 P(r) with the degree-5 minimax P of Cephes (|error| < 1 ulp on the interval);
    e^y = e^r 2^n, and 2^n is built from its bits, (n + 127) << 23, in two halves 2^(n - n//2)
    2^(n//2) so that results in the subnormal range (down to y ~ -103.3) keep their bits, below it
    round to 0 and above y ~ 88.72 overflow to inf, as libm's do. y is clamped to [-150, 89] first,
    which also keeps ``floor`` and the integer conversion finite; a NaN y gives NaN.
expm1(y) = e^y - 1 from the same reduction: e^r - 1 = r + r^2 P(r) has no cancellation, and
    e^y - 1 = 2^n (e^r - 1) + (2^n - 1), where 2^n - 1 is exact for the n that matter (n = 0 for
    |y| < ln2/2, where the result is the polynomial itself: accurate relative to tiny y); from
    y ~ 44.7 on, e^y - 1 = e^y in float32 and the exp formula is used (2^n alone may overflow).
log1p(a), -1/2 <= a <= 1 (softplus needs [0, 1]: a = e^-|v|; log needs [sqrt(1/2) - 1, sqrt(2) - 1]):
    log(1 + a) = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = a / (2 + a) in [-1/3, 1/3]; the series
    is cut after s^13/13, where the rest is below (1/9)^7 / 15 < 2**-26 relative. s takes one
    rounding in 2 + a and one in the division, so the result is within 3 ulps, and log1p(a) ~ a
    for tiny a with no cancellation.
log(x), x a positive normal float32: x = 2^e m with m in [sqrt(1/2), sqrt(2)) from x's bits;
    log x = e ln 2 + log1p(m - 1) (m - 1 is exact), e ln 2 added in the two parts c1, c2 of ln 2.
sin(2 pi u), cos(2 pi u): the quadrant k = round(4u), f = u - k/4 in [-1/8, 1/8] (exact: Sterbenz),
    phi = 2 pi f in [-pi/4, pi/4], Cephes' ``sinf``/``cosf`` minimax polynomials on it, then the
    quarter turn k mod 4 as swaps and sign flips. Taking the turn from u itself is what
    ``sincospif(2u)`` does: no float32 rounding of 2 pi u, whose error would grow with u.
softplus(v) = max(v, 0) + log1p(e^-|v|) and sigmoid(v) = (1 if v >= 0 else e^-|v|) / (1 + e^-|v|):
    the stable forms of ``minivae.layers``, sharing the one exp of a non-positive number.

Callers compile with ``fastmath={"contract"}`` (fused multiply-adds, nothing else relaxed): the
bounds below were measured so. Measured accuracy against float64 (tests/test_vecmath.py: dense
grids of float32 values and random values, extremes included): exp within 1.01 ulps (1.008 is
the worst seen), expm1 within 2,
log and log1p within 3, softplus within 4 and sigmoid within 3 ulps; sin and cos of 2 pi u within
2e-7 absolute.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

_F32 = np.float32
LOG2E = _F32(1.44269504088896341)
# ln 2 split for Cody-Waite: C1 = 0.693359375 (9 significant bits), C2 = ln 2 - C1
LN2_HI = _F32(0.693359375)
LN2_LO = _F32(-2.12194440e-4)
# Cephes expf: e^r = 1 + r + r^2 (P0 r^5 + P1 r^4 + ... + P5) on |r| <= ln2 / 2
EXP_P = (_F32(1.9875691500e-4), _F32(1.3981999507e-3), _F32(8.3334519073e-3),
         _F32(4.1665795894e-2), _F32(1.6666665459e-1), _F32(5.0000001201e-1))
EXP_MIN = _F32(-150.0)  # e^-150 rounds to 0 in float32 (the smallest subnormal is e^-103.3)
EXP_MAX = _F32(89.0)  # e^89 overflows float32 (FLT_MAX is e^88.72)
# 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ... + s^12/13)
ATANH_C = tuple(_F32(1.0 / (2 * k + 1)) for k in range(7))
SQRT2 = _F32(1.41421356237309505)
# Cephes sinf / cosf on |x| <= pi/4: sin x = x + x^3 (S0 x^4 + S1 x^2 + S2), cos x = 1 - x^2/2 +
# x^4 (C0 x^4 + C1 x^2 + C2)
SIN_P = (_F32(-1.9515295891e-4), _F32(8.3321608736e-3), _F32(-1.6666654611e-1))
COS_P = (_F32(2.443315711809948e-5), _F32(-1.388731625493765e-3), _F32(4.166664568298827e-2))
TWO_PI = _F32(6.28318530717958648)

_JIT = {"cache": True, "fastmath": False, "error_model": "numpy"}


@intrinsic
def bits_to_float32(typingctx, bits):
    """The float32 whose IEEE-754 bit pattern is the int32 ``bits`` (a bit cast, no conversion)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def float32_to_bits(typingctx, x):
    """The int32 holding the IEEE-754 bit pattern of the float32 ``x`` (a bit cast)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@njit(inline="always")
def _pow2(n):
    """2^n for an integer-valued float32 n in [-126, 127], from its bits."""
    return bits_to_float32(np.int32((n + _F32(127.0)) * _F32(8388608.0)))


@njit(inline="always")
def _reduce(y):
    """(n, r) with y = n ln 2 + r, |r| <= ln2 / 2, y clamped to [EXP_MIN, EXP_MAX] (NaN -> EXP_MIN)."""
    yc = y if y > EXP_MIN else EXP_MIN  # NaN compares false: clamped here, restored by the callers
    yc = yc if yc < EXP_MAX else EXP_MAX
    n = np.floor(yc * LOG2E + _F32(0.5))
    return n, (yc - n * LN2_HI) - n * LN2_LO


@njit(inline="always")
def _expm1_reduced(r):
    """e^r - 1 = r + r^2 P(r) for |r| <= ln2 / 2."""
    p = EXP_P[0]
    p = p * r + EXP_P[1]
    p = p * r + EXP_P[2]
    p = p * r + EXP_P[3]
    p = p * r + EXP_P[4]
    p = p * r + EXP_P[5]
    return p * (r * r) + r


@njit(inline="always")
def exp_f32(y):
    """e^y for a float32 y (NaN -> NaN), vectorisable; see the module docstring."""
    n, r = _reduce(y)
    half = np.floor(n * _F32(0.5))
    e = ((_expm1_reduced(r) + _F32(1.0)) * _pow2(n - half)) * _pow2(half)
    return e if y == y else y


@njit(inline="always")
def expm1_f32(y):
    """e^y - 1 for a float32 y (NaN -> NaN), vectorisable; see the module docstring."""
    n, r = _reduce(y)
    half = np.floor(n * _F32(0.5))
    t_low, t_high = _pow2(n - half), _pow2(half)
    p = _expm1_reduced(r)
    e = (p * t_low) * t_high + (t_low * t_high - _F32(1.0))  # 2^n - 1: exact, or -1 for n < -24
    # from n = 65 on (y > 44.7), 2^n may overflow while e^y does not: e^y - 1 = e^y there
    e = e if n < _F32(65.0) else ((p + _F32(1.0)) * t_low) * t_high
    return e if y == y and y != _F32(0.0) else y  # NaN -> NaN; -0 -> -0, as libm


@njit(inline="always")
def log1p_unit(a):
    """log(1 + a) for a float32 a in [-1/2, 1], vectorisable; see the module docstring."""
    s = a / (_F32(2.0) + a)
    s2 = s * s
    q = ATANH_C[6]
    q = q * s2 + ATANH_C[5]
    q = q * s2 + ATANH_C[4]
    q = q * s2 + ATANH_C[3]
    q = q * s2 + ATANH_C[2]
    q = q * s2 + ATANH_C[1]
    q = q * s2 + ATANH_C[0]
    return (s + s) * q


@njit(inline="always")
def log_f32(x):
    """log x for a positive normal float32 x, vectorisable; see the module docstring."""
    bits = float32_to_bits(x)
    e = np.float32((bits >> np.int32(23)) - np.int32(127))
    m = bits_to_float32(np.int32((bits & np.int32(0x007FFFFF)) | np.int32(0x3F800000)))  # in [1, 2)
    big = m > SQRT2
    m = m * _F32(0.5) if big else m
    e = e + _F32(1.0) if big else e
    return e * LN2_HI + (e * LN2_LO + log1p_unit(m - _F32(1.0)))


@njit(inline="always")
def sincos_2pi(u):
    """(sin 2 pi u, cos 2 pi u) for a float32 u in [0, 1], vectorisable; see the module docstring."""
    k = np.floor(u * _F32(4.0) + _F32(0.5))
    phi = (u - k * _F32(0.25)) * TWO_PI
    x2 = phi * phi
    s = ((SIN_P[0] * x2 + SIN_P[1]) * x2 + SIN_P[2]) * (x2 * phi) + phi
    c = ((COS_P[0] * x2 + COS_P[1]) * x2 + COS_P[2]) * (x2 * x2) - _F32(0.5) * x2 + _F32(1.0)
    q = k - _F32(4.0) * np.floor(k * _F32(0.25))  # the quarter turns, 0..3
    odd = (q == _F32(1.0)) | (q == _F32(3.0))
    sin_ = c if odd else s
    cos_ = s if odd else c
    sin_ = -sin_ if q >= _F32(2.0) else sin_
    cos_ = -cos_ if (q == _F32(1.0)) | (q == _F32(2.0)) else cos_
    return sin_, cos_


@njit(inline="always")
def softplus_sigmoid_f32(v):
    """(softplus(v), sigmoid(v)) of a float32 v, stable and vectorisable (NaN -> NaN, NaN)."""
    e = exp_f32(-abs(v))
    softplus = (v if v > _F32(0.0) else _F32(0.0)) + log1p_unit(e)
    sigmoid = (_F32(1.0) if v >= _F32(0.0) else e) / (_F32(1.0) + e)
    return softplus, sigmoid  # a NaN v makes e NaN, hence both


@njit(fastmath={"reassoc"}, cache=True, error_model="numpy")
def sum_f64(a):
    """sum(a) accumulated in float64, in any order (reassociation lets LLVM vectorise it)."""
    acc = 0.0
    for j in range(a.size):
        acc += np.float64(a[j])
    return acc


# Generic forms for kernels compiled for both dtypes: Numba picks the body by the argument's type
# when it compiles the caller (float32: the vectorisable forms above; otherwise libm, the accurate
# path: glibc's double exp, expm1 and log1p are within an ulp).


@njit(inline="always")
def softplus_sigmoid_libm(v):
    """(softplus(v), sigmoid(v)) on libm, sharing one exp(-|v|): the same stable forms."""
    one = type(v)(1.0)
    e = math.exp(-abs(v))
    return max(v, type(v)(0.0)) + math.log1p(e), (one / (one + e) if v >= 0 else e / (one + e))


def float32_or(f32_form, libm_form, name: str):
    """A function of one argument that compiled code runs as ``f32_form`` for a float32 argument
    and as ``libm_form`` otherwise (plain Python runs ``libm_form``)."""
    def generic(x):
        return libm_form(x)

    generic.__name__ = generic.__qualname__ = name
    generic.__doc__ = f"{name}: ``{f32_form.__name__}`` for float32, ``{libm_form.__name__}`` otherwise."

    @overload(generic)
    def _by_dtype(x):
        if x == types.float32:
            return lambda x: f32_form(x)
        return lambda x: libm_form(x)

    return generic


exp = float32_or(exp_f32, math.exp, "exp")
expm1 = float32_or(expm1_f32, math.expm1, "expm1")
softplus_sigmoid = float32_or(softplus_sigmoid_f32, softplus_sigmoid_libm, "softplus_sigmoid")
