"""Philox4x32-10 and the stream of standard normals every backend draws ``eps`` from.

A counter-based generator is a keyed bijection: ``words = philox(counter, key)``. Nothing is carried
from one draw to the next, so a GPU thread computes the noise of element ``j`` from ``(seed, j)`` alone,
never writes ``eps`` to memory, and the backward recomputes the very same ``eps``. Philox is from
Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2, 3" (SC11); ``philox4x32``
here is bit-exact with Random123's ``philox4x32_R`` and curand's ``curand_Philox4x32_10``.

The contract (what every kernel backend implements)
----------------------------------------------------
The stream keyed by ``seed`` (an integer in [0, 2**64)) is an infinite-in-practice sequence of
normals ``eps[j]``, ``j`` in [0, 2**64). ``normal_eps(seed, offset, n)`` returns
``eps[offset : offset + n]``. Element ``j`` is computed as:

1. group and lane: ``g = j // 4``, ``lane = j % 4`` (four normals per Philox call);
2. key ``k = (seed mod 2**32, seed >> 32)``; counter ``c = (g mod 2**32, g >> 32, 0, 0)``;
3. ``(x0, x1, x2, x3) = philox4x32(c, k)`` with 10 rounds (uint32 words);
4. uniforms in the open interval (0, 1): ``u(x) = (x + 1/2) * 2**-32``. They are never 0 (the log
   stays finite) and never 1; the extremes are ``2**-33`` and ``1 - 2**-33``;
5. Box-Muller on the pair ``(x0, x1)`` for lanes 0, 1 and on ``(x2, x3)`` for lanes 2, 3:
   ``r = sqrt(-2 ln u(x0))``, ``theta = 2 pi u(x1)``, ``eps[4g] = r sin(theta)``,
   ``eps[4g + 1] = r cos(theta)``, and likewise ``x2, x3`` for ``eps[4g + 2]`` and ``eps[4g + 3]``.

Why Box-Muller gives N(0, 1): for U1, U2 ~ U(0, 1) independent, R**2 = -2 ln U1 is exponential with mean 2,
i.e. chi-square with 2 degrees of freedom, and Theta = 2 pi U2 is uniform on the circle, so
(R sin Theta, R cos Theta) is a standard 2-D Gaussian written in polar coordinates: two independent
N(0, 1). Because ``u >= 2**-33``, ``|eps| <= sqrt(66 ln 2) = 6.764``: the 32-bit uniforms cut the
tails at 6.76 sigma, where the normal has mass 1.3e-11.

This is exactly curand's ``curand_normal4`` for a state made by ``curand_init(seed, 0, 4 * g, &st)``
(same key, counter, uniform map, pairing and sin-then-cos order), so curand can serve as a further
cross-check on the GPU; curand's own float32 evaluation is too coarse to be the kernels' recipe, below.

A thread that owns element ``j`` calls Philox once for its group and keeps the two words of its pair;
a thread that owns a whole group keeps all four. Tensors drawn with the same seed must use disjoint
ranges of ``j``: the caller owns the offsets (``normal_eps_like`` numbers a tensor's elements in C
order from ``offset``).

Float32 kernels and the tolerance they must meet (``EPS_TOLERANCE``)
--------------------------------------------------------------------
The reference is evaluated in float64 (``u`` is exact there) and cast. A float32 kernel evaluates:

- radius: the plain ``sqrtf(-2 logf(u))`` is wrong near ``u = 1``: float32 rounds ``u(x)`` to a multiple
  of 2**-24 there, so ``-ln u ~ 1 - u`` loses every digit and ``r`` is off by up to 2**-12 = 2.4e-4
  absolute (100% relative; measured over every ``x`` in the top 2**24). Kernels instead take the log of
  whichever of ``u`` and ``1 - u`` is smaller, each exact in integers:
  ``x0 < 2**31 ? -2 logf(u(x0)) : -2 log1pf(-u(0xFFFFFFFF - x0))`` (``1 - u(x) = u(2**32 - 1 - x)``),
  then ``sqrtf``. Measured radius error: 1.3e-7 relative everywhere, 4e-7 absolute.
- angle: ``sincospif(2 u(x1))`` (error 2e-7 absolute), or ``sinf``/``cosf`` of ``2 pi u(x1)`` in float32
  (6e-7 absolute: the float32 angle itself is off by a few ulps of 2 pi). Not the fast-math
  intrinsics (``__sinf``, ``--use_fast_math``), whose error grows outside [-pi, pi].

So ``|eps_f32 - eps| <= 1.3e-7 |eps| + r * 6e-7 <= 1.3e-7 |eps| + 4.1e-6`` (r <= 6.76). The error is
absolute where ``sin`` or ``cos`` crosses zero (there ``eps ~ 0`` and no relative bound holds), hence
``|kernel - ref| <= atol + rtol |ref|`` with rtol = atol = 1e-5: 2.5 times the worst case at the very tail,
over ten times the error at typical ``r ~ 1``. curand's float32 ``curand_normal4`` (plain ``logf``) needs
atol 2.5e-4 and does not meet it. Float64 kernels evaluate the formulas directly (``u`` is exact, no
branch needed) and meet 1e-12.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from minivae import _checks
from minivae._checks import is_int

ROUNDS = 10  # Philox4x32-10: the round count Random123 recommends and curand uses
STREAM_LENGTH = 2**64  # element indices j are uint64 in every kernel
LANES = 4  # normals per Philox call: 4 words -> 2 Box-Muller pairs -> 4 normals
U32_SCALE = 2.0**-32

# |kernel - reference| <= atol + rtol * |reference|, per output dtype; derivation in the module docstring.
EPS_TOLERANCE = {
    "float32": {"rtol": 1e-5, "atol": 1e-5},
    "float64": {"rtol": 1e-12, "atol": 1e-12},
}


class _Word(NamedTuple):
    """The constants of one Philox word size (Random123 philox.h: PHILOX_M4xW_*, PHILOX_W*_*)."""

    dtype: type
    bits: int
    multipliers: tuple[int, int]
    weyl: tuple[int, int]  # key increments: golden ratio and sqrt(3) - 1, as W-bit fractions
    mulhilo: Callable[[int, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _mulhilo32(a: int, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) 32-bit halves of the 64-bit product a * b."""
    p = np.uint64(a) * b.astype(np.uint64)
    return (p >> np.uint64(32)).astype(np.uint32), p.astype(np.uint32)


def _mulhilo64(a: int, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(high, low) 64-bit halves of the 128-bit product a * b, from four 32x32 -> 64 products."""
    m, s = np.uint64(0xFFFFFFFF), np.uint64(32)
    a0, a1 = np.uint64(a & 0xFFFFFFFF), np.uint64(a >> 32)
    b0, b1 = b & m, b >> s
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = (p00 >> s) + (p01 & m) + (p10 & m)  # < 3 * 2**32: no overflow
    return p11 + (p01 >> s) + (p10 >> s) + (mid >> s), np.uint64(a) * b  # low half wraps mod 2**64


_W32 = _Word(np.uint32, 32, (0xD2511F53, 0xCD9E8D57), (0x9E3779B9, 0xBB67AE85), _mulhilo32)
_W64 = _Word(np.uint64, 64, (0xD2E7470EE14C6C93, 0xCA5A826395121157),
             (0x9E3779B97F4A7C15, 0xBB67AE8584CAA73B), _mulhilo64)


def _words(name: str, x: object, word: _Word, shape: tuple[int | None, int]) -> np.ndarray:
    """``x`` as an array of ``word``-sized unsigned integers with ``shape`` (None: any length)."""
    arr = np.asarray(x)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be an array of integers in [0, 2**{word.bits}), got dtype {arr.dtype}")
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape, strict=True)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    if arr.size and (arr.min() < 0 or int(arr.max()) >= 2**word.bits):
        raise ValueError(f"{name} must hold integers in [0, 2**{word.bits}), "
                         f"got values in [{arr.min()}, {arr.max()}]")
    return arr.astype(word.dtype)


def _philox4(counter: object, key: object, rounds: int, word: _Word) -> np.ndarray:
    """Philox4xW: ``rounds`` rounds of the Random123 round function, the key bumped between rounds."""
    rounds = _checks.positive_int("rounds", rounds)
    c = _words("counter", counter, word, (None, 4))
    k = np.asarray(key)
    if k.ndim not in (1, 2):
        raise ValueError(f"key must have shape (2,) or (N, 2) with N = {c.shape[0]} rows, got {k.shape}")
    k = _words("key", k, word, (2,) if k.ndim == 1 else (c.shape[0], 2)).reshape(-1, 2)
    c0, c1, c2, c3 = c.T
    k0, k1 = k.T  # length N or 1 (one key for every row); arrays, so the Weyl adds wrap silently
    (m0, m1), (w0, w1) = word.multipliers, word.weyl
    for r in range(rounds):
        if r:
            k0, k1 = k0 + word.dtype(w0), k1 + word.dtype(w1)
        hi0, lo0 = word.mulhilo(m0, c0)
        hi1, lo1 = word.mulhilo(m1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return np.stack([c0, c1, c2, c3], axis=1)


def philox4x32(counter: np.ndarray, key: np.ndarray, rounds: int = ROUNDS) -> np.ndarray:
    """Random123's Philox4x32-R (curand's Philox4_32_10 at ``rounds=10``), one call per row.

    counter: (N, 4) integers in [0, 2**32); key: (2,) for every row or (N, 2) -> (N, 4) uint32.
    Word 0 of each is the first of Random123's ``ctr.v[]``/``key.v[]`` (curand's ``.x``).
    """
    return _philox4(counter, key, rounds, _W32)


def philox4x64(counter: np.ndarray, key: np.ndarray, rounds: int = ROUNDS) -> np.ndarray:
    """Random123's Philox4x64-R: counter (N, 4), key (2,) or (N, 2), integers in [0, 2**64) -> (N, 4).

    The kernels do not use it. It runs the very round loop of ``philox4x32`` at 64-bit words, and NumPy's
    own ``np.random.Philox`` is Philox4x64-10, so agreement with NumPy independently checks the round
    function, key schedule and word order that ``philox4x32`` shares.
    """
    return _philox4(counter, key, rounds, _W64)


def box_muller4(words: np.ndarray) -> np.ndarray:
    """The four normals of one Philox output, in float64: (N, 4) uint32 -> (N, 4) (steps 4-5 above).

    Lanes (0, 1) are ``r sin(theta), r cos(theta)`` from the pair (x0, x1); lanes (2, 3) from (x2, x3).
    """
    u = (words.astype(np.float64) + 0.5) * U32_SCALE  # exact: 33 significant bits fit a float64
    r = np.sqrt(-2.0 * np.log(u[:, 0::2]))
    theta = (2.0 * np.pi) * u[:, 1::2]
    z = np.empty(u.shape)
    z[:, 0::2] = r * np.sin(theta)
    z[:, 1::2] = r * np.cos(theta)
    return z


def _index(name: str, value: object, limit: int) -> int:
    """``value`` as an int in [0, limit), else ValueError naming ``name``."""
    if not is_int(value) or not 0 <= value < limit:
        raise ValueError(f"{name} must be an integer in [0, 2**{limit.bit_length() - 1}), got {value!r}")
    return int(value)


def normal_eps(seed: int, offset: int, n: int, dtype: object = "float64") -> np.ndarray:
    """Elements ``offset .. offset + n - 1`` of the standard-normal stream keyed by ``seed``: (n,).

    seed in [0, 2**64), offset >= 0, n >= 0, offset + n <= 2**64; dtype float32 or float64 (computed in
    float64, then cast). The mapping from element index to Philox counter is the module docstring's.
    """
    seed = _index("seed", seed, STREAM_LENGTH)
    offset = _index("offset", offset, STREAM_LENGTH)
    if not is_int(n) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    n = int(n)
    if offset + n > STREAM_LENGTH:
        raise ValueError(f"offset + n must be <= 2**64 (the stream's length), got offset={offset}, n={n}")
    dt = _checks.float_dtype("dtype", dtype)
    if n == 0:
        return np.empty(0, dt)
    first, last = offset // LANES, (offset + n - 1) // LANES
    groups = np.arange(last - first + 1, dtype=np.uint64) + np.uint64(first)
    counter = np.zeros((groups.size, 4), np.uint32)
    counter[:, 0] = groups & np.uint64(0xFFFFFFFF)
    counter[:, 1] = groups >> np.uint64(32)
    key = np.array([seed & 0xFFFFFFFF, seed >> 32], np.uint32)
    z = box_muller4(philox4x32(counter, key)).reshape(-1)
    start = offset - first * LANES
    return z[start:start + n].astype(dt)


def normal_eps_like(seed: int, offset: int, shape: int | Sequence[int],
                    dtype: object = "float64") -> np.ndarray:
    """``normal_eps`` reshaped: element ``offset + i`` lands at C-order flat index ``i`` of ``shape``."""
    dims = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    for i, d in enumerate(dims):
        if not is_int(d) or d < 0:
            raise ValueError(f"shape[{i}] must be an integer >= 0, got {d!r} (shape={shape!r})")
    return normal_eps(seed, offset, math.prod(dims), dtype).reshape(dims)


class Stream:
    """A position in the normal stream of ``seed``: hands out disjoint ``(seed, offset)`` keys.

    The counter-based counterpart of a ``numpy.random.Generator`` for ``eps``: ``take(n)`` returns
    the key of the next ``n`` elements and advances past them, so consecutive draws never overlap
    and a run's noise is fixed by ``(seed, offset)`` alone (two integers to checkpoint).
    """

    def __init__(self, seed: int, offset: int = 0):
        self.seed = _index("seed", seed, STREAM_LENGTH)
        self.offset = _index("offset", offset, STREAM_LENGTH)

    def take(self, n: int) -> tuple[int, int]:
        if not is_int(n) or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        if self.offset + n > STREAM_LENGTH:
            raise ValueError(f"the stream of seed {self.seed} is exhausted (offset {self.offset} + {n})")
        key = (self.seed, self.offset)
        self.offset += int(n)
        return key

    def normal(self, shape: Sequence[int], dtype: object = "float64") -> np.ndarray:
        """The next ``prod(shape)`` normals, materialised (what the NumPy reference does)."""
        seed, offset = self.take(math.prod(shape))
        return normal_eps_like(seed, offset, shape, dtype)

    def __repr__(self) -> str:
        return f"Stream(seed={self.seed}, offset={self.offset})"
