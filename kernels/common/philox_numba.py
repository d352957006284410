"""Philox4x32-10 and the standard-normal stream of ``minivae.philox``, as Numba-compilable functions.

The contract is the module docstring of ``minivae/philox.py``: element ``j`` of the stream keyed by a
64-bit ``seed`` is lane ``j % 4`` of the four Box-Muller normals made from
``philox4x32_10(counter = (g mod 2**32, g >> 32, 0, 0), key = (seed mod 2**32, seed >> 32))`` with
``g = j // 4``; lanes 0, 1 come from the word pair (x0, x1) as ``r sin(theta), r cos(theta)``, lanes
2, 3 from (x2, x3). The CUDA C twin is ``common/philox.cuh``.

API (every function is ``@njit``; the same Python bodies compile for the GPU too, see below):

``philox4x32_10(c0, c1, c2, c3, k0, k1) -> (x0, x1, x2, x3)``
    Random123's ``philox4x32_R(10, ...)``. Arguments and results are uint64 scalars holding 32-bit
    words (in [0, 2**32)): a uint64 product of two such words is the exact 64-bit ``mulhilo``.
``normals4(seed_lo, seed_hi, g, one) -> (e0, e1, e2, e3)``
    The four normals of group ``g`` (stream elements ``4g .. 4g + 3``). ``one`` is ``1`` in the
    float type to compute in: float32 follows the float32 recipe of ``minivae.philox`` (log1p
    branch near u = 1, float32 sin/cos of 2 pi u, within ``EPS_TOLERANCE["float32"]``); float64
    evaluates the formulas in float64 (within 1e-12).
``eps_at(seed_lo, seed_hi, j, one) -> float``
    Stream element ``j`` alone: one Philox call for one normal (a GPU thread that owns one element).
``fill_normals(seed_lo, seed_hi, start, out) -> None``
    ``out[:] = eps[start : start + out.size]`` (1-D ``out``, float32 or float64), one Philox call per
    group of four (a CPU loop that owns a whole row).
``split_seed(seed) -> (seed_lo, seed_hi)``
    Plain Python: the key words of a seed in [0, 2**64), as ``np.uint64`` (pass these, not the seed:
    a Python int >= 2**63 does not fit Numba's int64).

``seed_lo``, ``seed_hi``, ``g``, ``j`` and ``start`` are uint64 scalars. Numba types mixed
uint64/int64 arithmetic as float64 (NumPy's legacy rule), so callers convert their indices with
``np.uint64(...)`` before adding them to a uint64 offset.

Numba CUDA: every function here is a plain function of scalars (``fill_normals`` also of a 1-D
array) whose undecorated body is ``.py_func``, so ``cuda.jit(device=True)(philox4x32_10.py_func)``
compiles it as a device function; numba-cuda also compiles ``@njit`` functions called from a
kernel directly. ``math.log``/``log1p``/``sin``/``cos``/``sqrt`` on float32 lower to the float32
libm (CPU) or libdevice (GPU) functions, never to fast-math intrinsics.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Round multipliers and key (Weyl) increments of Philox4x32 (Random123 philox.h), as uint64 so
# every product below is the exact 64-bit product of two 32-bit words.
PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = np.uint64(0x9E3779B9)
PHILOX_W1 = np.uint64(0xBB67AE85)
ROUNDS = 10  # the count Random123 recommends and curand uses (minivae.philox.ROUNDS)
MASK32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)
LANE_BITS = np.uint64(2)  # four normals per Philox call: g = j >> 2, lane = j & 3
LANE_MASK = np.uint64(3)
HALF_RANGE = np.uint64(0x80000000)  # u(x) < 1/2 exactly when x < 2**31
U32_SCALE = 2.0**-32
TWO_PI = 2.0 * math.pi

_JIT = {"cache": True, "fastmath": False, "error_model": "numpy"}


@njit(**_JIT)
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds on the counter (c0..c3) under the key (k0, k1); uint64 words < 2**32."""
    c0, c1, c2, c3 = np.uint64(c0), np.uint64(c1), np.uint64(c2), np.uint64(c3)
    k0, k1 = np.uint64(k0), np.uint64(k1)
    for r in range(ROUNDS):
        if r > 0:
            k0 = (k0 + PHILOX_W0) & MASK32
            k1 = (k1 + PHILOX_W1) & MASK32
        p0 = PHILOX_M0 * c0  # mulhilo: high word p >> 32, low word p & MASK32
        p1 = PHILOX_M1 * c2
        c0, c1, c2, c3 = (p1 >> SHIFT32) ^ c1 ^ k0, p1 & MASK32, (p0 >> SHIFT32) ^ c3 ^ k1, p0 & MASK32
    return c0, c1, c2, c3


@njit(**_JIT)
def _uniform(x, one):
    """u(x) = (x + 1/2) 2**-32 in one's type: exact in float64, then rounded once."""
    return type(one)((np.float64(x) + 0.5) * U32_SCALE)


@njit(**_JIT)
def _radius(x, one):
    """sqrt(-2 ln u(x)). In float32, u near 1 is a multiple of 2**-24 and ln u would lose every
    digit, so the upper half takes log1p(-(1 - u)) with 1 - u(x) = u(2**32 - 1 - x), exact."""
    if x < HALF_RANGE:
        minus_log_u = -math.log(_uniform(x, one))
    else:
        minus_log_u = -math.log1p(-_uniform(MASK32 - x, one))
    return math.sqrt(type(one)(2.0) * minus_log_u)


@njit(**_JIT)
def _angle(x, one):
    """theta = 2 pi u(x), in one's type (sin/cos of it: float32 libm in float32, never fast-math)."""
    return type(one)(TWO_PI) * _uniform(x, one)


@njit(**_JIT)
def _words(seed_lo, seed_hi, g):
    """Philox of group g under the seed's key."""
    g = np.uint64(g)
    return philox4x32_10(g & MASK32, g >> SHIFT32, 0, 0, seed_lo, seed_hi)


@njit(**_JIT)
def normals4(seed_lo, seed_hi, g, one):
    """The four normals of stream group g (elements 4g .. 4g + 3), in one's float type."""
    x0, x1, x2, x3 = _words(seed_lo, seed_hi, g)
    r01, t01 = _radius(x0, one), _angle(x1, one)
    r23, t23 = _radius(x2, one), _angle(x3, one)
    return r01 * math.sin(t01), r01 * math.cos(t01), r23 * math.sin(t23), r23 * math.cos(t23)


@njit(**_JIT)
def eps_at(seed_lo, seed_hi, j, one):
    """Stream element j, in one's float type: the pair of its lane, sin for even lanes, cos for odd."""
    j = np.uint64(j)
    x0, x1, x2, x3 = _words(seed_lo, seed_hi, j >> LANE_BITS)
    lane = j & LANE_MASK
    radius_word, angle_word = (x0, x1) if lane < 2 else (x2, x3)
    r, theta = _radius(radius_word, one), _angle(angle_word, one)
    return r * (math.cos(theta) if lane & np.uint64(1) else math.sin(theta))


@njit(**_JIT)
def fill_normals(seed_lo, seed_hi, start, out):
    """out[k] = eps[start + k] for k < out.size: one Philox call per group of four elements."""
    one = out.dtype.type(1.0)
    n = out.size
    k = 0
    while k < n:
        j = np.uint64(start) + np.uint64(k)
        four = normals4(seed_lo, seed_hi, j >> LANE_BITS, one)
        lane = np.int64(j & LANE_MASK)
        while lane < 4 and k < n:
            out[k] = four[lane]
            lane += 1
            k += 1


def split_seed(seed: int) -> tuple[np.uint64, np.uint64]:
    """The Philox key words (seed mod 2**32, seed >> 32) of a seed in [0, 2**64), as np.uint64."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    seed = int(seed)
    return np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
