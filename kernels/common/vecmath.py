"""Float32 exp, log1p, softplus and sigmoid that LLVM can vectorise: the Numba CPU kernels' fast path.

Why: Numba lowers ``math.exp``/``math.log`` on float32 to calls into the scalar libm (the PyPI
llvmlite has no SVML vector library), and a loop that calls a function is not vectorised: the
Bernoulli pass spent ~10 ns an element there, 13-19 % of a training step on 2 cores. The functions
below are straight-line arithmetic (multiplies, adds, one division, ``floor``, compares and a bit
cast), so a loop over them compiles to 8-lane AVX2 code.

The formulas, for float32 arguments (float64 kernels keep libm: they are the accurate path):

exp(y), y <= 0 (Cody & Waite range reduction, Cephes ``expf`` polynomial):
    n = floor(y log2(e) + 1/2), r = (y - n c1) - n c2 with c1 + c2 = ln 2 (c1 has 9 significant
    bits, so n c1 is exact for |n| < 2**15 and the first subtraction is exact: Sterbenz), |r| <= ln2/2;
    e^r = 1 + r + r^2 P(r) with the degree-5 minimax P of Cephes (|error| < 1 ulp on the interval);
    e^y = e^r 2^n, and 2^n is built from its bits, (n + 127) << 23, in two halves 2^(n - n//2)
    2^(n//2) so that results in the subnormal range (down to y ~ -103.3) keep their bits and below
    it round to 0, as libm's do. y is clamped at -150 first (e^-150 = 0 in float32), which also
    keeps ``floor`` and the integer conversion away from -inf; a NaN y gives NaN.
log1p(a), 0 <= a <= 1 (the only range softplus needs: a = e^-|v|):
    log(1 + a) = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = a / (2 + a) in [0, 1/3]; the series
    is cut after s^13/13, where the rest is below (1/9)^7 / 15 < 2**-26 relative. s is one correctly
    rounded division of exact inputs, so the result is within 3 ulps, and log1p(a) ~ a for tiny a
    with no cancellation.
softplus(v) = max(v, 0) + log1p(e^-|v|) and sigmoid(v) = (1 if v >= 0 else e^-|v|) / (1 + e^-|v|):
    the stable forms of ``minivae.layers``, sharing the one exp of a non-positive number.

Measured accuracy against float64 (tests/test_vecmath.py runs it on every float32 pattern of a
dense grid and on random values, extremes included): exp within 1 ulp, log1p within 3 ulps,
softplus within 4 ulps and sigmoid within 3 ulps.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

_F32 = np.float32
LOG2E = _F32(1.44269504088896341)
# ln 2 split for Cody-Waite: C1 = 0.693359375 (9 significant bits), C2 = ln 2 - C1
LN2_HI = _F32(0.693359375)
LN2_LO = _F32(-2.12194440e-4)
# Cephes expf: e^r = 1 + r + r^2 (P0 r^5 + P1 r^4 + ... + P5) on |r| <= ln2 / 2
EXP_P = (_F32(1.9875691500e-4), _F32(1.3981999507e-3), _F32(8.3334519073e-3),
         _F32(4.1665795894e-2), _F32(1.6666665459e-1), _F32(5.0000001201e-1))
EXP_MIN = _F32(-150.0)  # e^-150 rounds to 0 in float32 (the smallest subnormal is e^-103.3)
# 2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + ... + s^12/13)
ATANH_C = tuple(_F32(1.0 / (2 * k + 1)) for k in range(7))

_JIT = {"cache": True, "fastmath": False, "error_model": "numpy"}


@intrinsic
def bits_to_float32(typingctx, bits):
    """The float32 whose IEEE-754 bit pattern is the int32 ``bits`` (a bit cast, no conversion)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@njit(inline="always")
def _pow2(n):
    """2^n for an integer-valued float32 n in [-126, 127], from its bits."""
    return bits_to_float32(np.int32((n + _F32(127.0)) * _F32(8388608.0)))


@njit(inline="always")
def exp_nonpositive(y):
    """e^y for a float32 y <= 0 (NaN -> NaN), vectorisable; see the module docstring."""
    yc = y if y > EXP_MIN else EXP_MIN  # NaN compares false: clamped here, restored below
    n = np.floor(yc * LOG2E + _F32(0.5))
    r = (yc - n * LN2_HI) - n * LN2_LO
    p = EXP_P[0]
    p = p * r + EXP_P[1]
    p = p * r + EXP_P[2]
    p = p * r + EXP_P[3]
    p = p * r + EXP_P[4]
    p = p * r + EXP_P[5]
    er = (p * (r * r) + r) + _F32(1.0)
    half = np.floor(n * _F32(0.5))
    e = (er * _pow2(n - half)) * _pow2(half)
    return e if y == y else y


@njit(inline="always")
def log1p_unit(a):
    """log(1 + a) for a float32 a in [0, 1], vectorisable; see the module docstring."""
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
def softplus_sigmoid_f32(v):
    """(softplus(v), sigmoid(v)) of a float32 v, stable and vectorisable (NaN -> NaN, NaN)."""
    e = exp_nonpositive(-abs(v))
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
