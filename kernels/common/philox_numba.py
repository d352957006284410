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
``fill_normals_f32(seed_lo, seed_hi, start, out) -> None``
    The same for a float32 ``out``, written so that LLVM vectorises it over the groups (CPU only):
    Philox on uint32 words, the radius and angle with ``common/vecmath``'s log, log1p and
    sin/cos of a turn fraction instead of the scalar libm. Same recipe, same tolerance
    (``EPS_TOLERANCE["float32"]``).
``fill_stream(seed_lo, seed_hi, start, out) -> None``
    Either of the two by ``out``'s dtype, chosen when Numba compiles the caller.
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
from numba import njit, types
from numba.extending import overload

from minivae._checks import is_int
from minivae.kernels.common.vecmath import log1p_unit, log_f32, sincos_2pi

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
    if not is_int(seed) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    seed = int(seed)
    return np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)


# ---- the vectorised float32 fill ------------------------------------------------------------
# LLVM vectorises the loop over groups only when a group is straight-line code in 32-bit lanes
# stored to separate arrays: the uint64 form above (64-bit multiplies, a loop of rounds,
# interleaved stores) stays scalar (measured: 16.7 ns a group against 2.7 ns for this one).

PHILOX_M0_32, PHILOX_M1_32 = np.uint32(PHILOX_M0), np.uint32(PHILOX_M1)
PHILOX_W0_32, PHILOX_W1_32 = np.uint32(PHILOX_W0), np.uint32(PHILOX_W1)
SIGN32 = np.uint32(0x80000000)
TWO31_PLUS_HALF = 2.0**31 + 0.5


@njit(inline="always")
def _round32(c0, c1, c2, c3, k0, k1):
    """One Philox round on uint32 words (the 64-bit products from zero-extended words)."""
    p0 = np.uint64(c0) * np.uint64(PHILOX_M0_32)
    p1 = np.uint64(c2) * np.uint64(PHILOX_M1_32)
    return (np.uint32(p1 >> SHIFT32) ^ c1 ^ k0, np.uint32(p1),
            np.uint32(p0 >> SHIFT32) ^ c3 ^ k1, np.uint32(p0))


@njit(inline="always")
def _bump32(k0, k1):
    return np.uint32(k0 + PHILOX_W0_32), np.uint32(k1 + PHILOX_W1_32)


@njit(inline="always")
def _philox32(c0, c1, k0, k1):
    """philox4x32_10((c0, c1, 0, 0), (k0, k1)) on uint32 words, the ten rounds written out."""
    c2, c3 = np.uint32(0), np.uint32(0)
    c0, c1, c2, c3 = _round32(c0, c1, c2, c3, k0, k1)
    k0, k1 = _bump32(k0, k1)
    c0, c1, c2, c3 = _round32(c0, c1, c2, c3, k0, k1)
    k0, k1 = _bump32(k0, k1)
    c0, c1, c2, c3 = _round32(c0, c1, c2, c3, k0, k1)
    k0, k1 = _bump32(k0, k1)
    c0, c1, c2, c3 = _round32(c0, c1, c2, c3, k0, k1)
    k0, k1 = _bump32(k0, k1)
    c0, c1, c2, c3 = _round32(c0, c1, c2, c3, k0, k1)
    k0, k1 = _bump32(k0, k1)
    c0, c1, c2, c3 = _round32(c0, c1, c2, c3, k0, k1)
    k0, k1 = _bump32(k0, k1)
    c0, c1, c2, c3 = _round32(c0, c1, c2, c3, k0, k1)
    k0, k1 = _bump32(k0, k1)
    c0, c1, c2, c3 = _round32(c0, c1, c2, c3, k0, k1)
    k0, k1 = _bump32(k0, k1)
    c0, c1, c2, c3 = _round32(c0, c1, c2, c3, k0, k1)
    k0, k1 = _bump32(k0, k1)
    return _round32(c0, c1, c2, c3, k0, k1)


@njit(inline="always")
def _uniform_f32(x):
    """u(x) of a uint32 word in float32: exact in float64 (through the signed word x - 2**31, which
    converts natively), then rounded once, as ``_uniform``."""
    return np.float32((np.float64(np.int32(x ^ SIGN32)) + TWO31_PLUS_HALF) * U32_SCALE)


@njit(inline="always")
def _radius_f32(x):
    """``_radius`` of a uint32 word in float32 without branches: the log of whichever of u and
    1 - u = u(2**32 - 1 - x) is at most 1/2."""
    small = x < SIGN32
    w = _uniform_f32(x if small else ~x)
    via_log, via_log1p = -log_f32(w), -log1p_unit(-w)  # both, then a select: no branch in the loop
    minus_log_u = via_log if small else via_log1p
    return math.sqrt(np.float32(2.0) * minus_log_u)


@njit(inline="always")
def box_muller4_f32(x0, x1, x2, x3):
    """The four float32 normals of one group's uint32 words: (r sin, r cos) of (x0, x1), of (x2, x3)."""
    r01, r23 = _radius_f32(x0), _radius_f32(x2)
    s01, c01 = sincos_2pi(_uniform_f32(x1))
    s23, c23 = sincos_2pi(_uniform_f32(x3))
    return r01 * s01, r01 * c01, r23 * s23, r23 * c23


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _groups_f32(seed_lo, seed_hi, g0, lanes):
    """lanes[l, t] = lane l of group g0 + t (a uint64 g0; t < lanes.shape[1] <= 2**32)."""
    g_lo, g_hi = np.uint32(g0 & MASK32), np.uint32(g0 >> SHIFT32)
    k0, k1 = np.uint32(seed_lo), np.uint32(seed_hi)
    for t in range(lanes.shape[1]):
        c0 = np.uint32(g_lo + np.uint32(t))
        c1 = np.uint32(g_hi + np.uint32(c0 < g_lo))  # the carry into the counter's high word
        x0, x1, x2, x3 = _philox32(c0, c1, k0, k1)
        lanes[0, t], lanes[1, t], lanes[2, t], lanes[3, t] = box_muller4_f32(x0, x1, x2, x3)


@njit(cache=True, error_model="numpy")
def _full_groups_f32(seed_lo, seed_hi, g0, out):
    """out[4t .. 4t + 3] = the four normals of group g0 + t, for every t < out.size // 4: computed
    lane by lane into a (4, groups) scratch, then interleaved."""
    groups = out.size // 4
    lanes = np.empty((4, groups), np.float32)
    _groups_f32(seed_lo, seed_hi, g0, lanes)
    for t in range(groups):
        for lane in range(4):
            out[4 * t + lane] = lanes[lane, t]


@njit(cache=True, error_model="numpy")
def fill_normals_f32(seed_lo, seed_hi, start, out):
    """out[k] = eps[start + k] for a float32 1-D out: the whole groups vectorised; a partial group
    at either end (start or the end not a multiple of four) is computed whole by the same formulas
    and the lanes inside the range copied, so element e has the same bits whatever the range that
    draws it (a resumed run, another batch size)."""
    n = out.size
    start = np.uint64(start)
    first_lane = np.int64(start & LANE_MASK)
    lead = min(n, (4 - first_lane) % 4)
    group = np.empty(4, np.float32)
    if lead > 0:
        _full_groups_f32(seed_lo, seed_hi, start >> LANE_BITS, group)
        out[:lead] = group[first_lane:first_lane + lead]
    whole = (n - lead) // 4 * 4
    _full_groups_f32(seed_lo, seed_hi, (start + np.uint64(lead)) >> LANE_BITS, out[lead:lead + whole])
    if lead + whole < n:
        _full_groups_f32(seed_lo, seed_hi, (start + np.uint64(lead + whole)) >> LANE_BITS, group)
        out[lead + whole:] = group[:n - lead - whole]


def fill_stream(seed_lo, seed_hi, start, out):  # pragma: no cover - Numba compiles the overload
    """``fill_normals_f32`` for a float32 ``out``, ``fill_normals`` otherwise (in compiled code)."""
    fill_normals(seed_lo, seed_hi, start, out)


@overload(fill_stream)
def _fill_stream_overload(seed_lo, seed_hi, start, out):
    if out.dtype == types.float32:
        return lambda seed_lo, seed_hi, start, out: fill_normals_f32(seed_lo, seed_hi, start, out)
    return lambda seed_lo, seed_hi, start, out: fill_normals(seed_lo, seed_hi, start, out)
