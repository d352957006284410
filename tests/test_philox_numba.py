"""The Numba CPU form of the Philox 4x32-10 stream (kernels/common/philox_numba.py), which the Numba
CPU latent kernel draws its noise from: the generator in uint32 lanes bit for bit, the float32
Box-Muller within the stream's tolerance (``minivae.philox.EPS_TOLERANCE``), and the vectorised
float32 fill against the reference stream, whatever range draws an element.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from kernel_variants import assert_within  # noqa: E402
from numba import njit  # noqa: E402

from minivae import philox  # noqa: E402
from minivae.kernels.common import philox_numba  # noqa: E402


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
